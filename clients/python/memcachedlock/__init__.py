"""memcachedlock: locks served by the memcachedlock proxy.

    from memcachedlock import lock, rlock, zlock

The proxy address comes from MEMCACHEDLOCK_ADDR (as for the memcachedlock
CLI), else MEMCACHEDLOCK_SERVERS (the old library's variable); default
127.0.0.1:11311, where the proxy listens by default.
"""

from .adapters import extend_with, lock_with, unlock_with
from .client import (Grant, Keeper, LockClient, LockError, NotFound, NotLocked,
                     NotMemcachedlock, NotOwner, Unavailable, owner_id)
from .decorators import ConflictError, DontLock, lock, rlock, zlock

__version__ = "0.2.0"

__all__ = [
    "lock", "rlock", "zlock", "DontLock", "ConflictError",
    "LockClient", "Keeper", "Grant", "LockError", "NotLocked", "NotOwner", "NotFound",
    "Unavailable", "NotMemcachedlock", "owner_id", "lock_with", "unlock_with", "extend_with",
]
