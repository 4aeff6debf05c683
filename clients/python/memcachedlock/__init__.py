"""memcachedlock: locks served by the memcachedlock proxy.

    from memcachedlock import lock, rlock, zlock

The proxy address comes from MEMCACHEDLOCK_SERVERS (default
127.0.0.1:11211; point it at the proxy).
"""

from .adapters import extend_with, lock_with, unlock_with
from .client import (Grant, LockClient, LockError, NotFound, NotLocked,
                     NotOwner, Unavailable, owner_id)
from .decorators import ConflictError, DontLock, lock, rlock, zlock

__all__ = [
    "lock", "rlock", "zlock", "DontLock", "ConflictError",
    "LockClient", "Grant", "LockError", "NotLocked", "NotOwner", "NotFound", "Unavailable",
    "owner_id", "lock_with", "unlock_with", "extend_with",
]
