"""The decorators of the old library, lock, rlock and zlock, served by the
proxy's blocking waits instead of polling."""

import functools
import logging
import threading
import time

from .client import Keeper, LockClient, NotFound, NotLocked, NotOwner, Unavailable, owner_id

logger = logging.getLogger("memcachedlock")

#: What lock and rlock do when the proxy cannot be reached: "run" the
#: function unlocked with a warning (the old behaviour, so a site does not
#: go down with its lock service), or "raise" Unavailable.
ON_UNAVAILABLE = "run"

#: The longest ttl, in seconds, sent to the proxy. A decorator whose
#: timeout is longer takes a lease of LEASE_TTL seconds and keeps it alive
#: while the call runs, up to timeout: a process that dies holding it
#: blocks the others for LEASE_TTL seconds at most, not for timeout.
LEASE_TTL = 30

#: Pauses, in seconds, before trying a release again when the proxy could
#: not be reached (it is restarting, or another in MEMCACHEDLOCK_ADDR
#: answers): 1.55 s in all, instead of leaving the lock to run out its ttl
#: while other processes wait for it.
RELEASE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)


class DontLock(Exception):
    """Raised by a get_key function to run the call without a lock."""


try:
    from ZODB.POSException import ConflictError
except ImportError:  # no ZODB here: a stand-in, or pass conflict_error=
    class ConflictError(Exception):
        """Stand-in for ZODB.POSException.ConflictError."""


_local = threading.local()


def _client():
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = LockClient()
    return client


def _held():
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def _name(fun, key):
    return "%s.%s:%s" % (fun.__module__, fun.__name__, key)


def _options(timeout, interval, wait, kw):
    if "intervall" in kw:  # the old library's spelling
        interval = kw.pop("intervall")
    if kw:
        raise TypeError("unexpected keyword arguments: %s" % ", ".join(sorted(kw)))
    del interval  # accepted for compatibility: the proxy waits, nobody polls
    return timeout, (timeout if wait is None else wait)


class _Lease(object):
    """A grant taken for one call, kept alive by a Keeper when the call may
    outlive the ttl sent on the wire."""

    def __init__(self, client, key, timeout, wait, reentrant):
        ttl = min(timeout, LEASE_TTL)
        if timeout > ttl:
            ttl = max(ttl, 2)  # a one-second grant may end before its first extend
        self.grant = client.lock(key, ttl, wait, owner_id(), reentrant)
        self.keeper = None
        if timeout > ttl:  # the lock's lifetime counts from the grant, as before
            self.keeper = Keeper(self.grant, ttl, time.monotonic() + timeout, client.servers)

    def stop_keeper(self):
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None


def _decorator(get_key, locked_call):
    """Wrap a function so that each call is named by get_key(fun, *args,
    **kw) and run as locked_call(name, call); a get_key that raises DontLock
    runs the call unlocked."""
    def decorator(fun):
        @functools.wraps(fun)
        def replacement(*args, **kwargs):
            call = functools.partial(fun, *args, **kwargs)
            try:
                name = _name(fun, get_key(fun, *args, **kwargs))
            except DontLock:
                return call()
            return locked_call(name, call)
        return replacement
    return decorator


def _locking(get_key, timeout, wait, reentrant, on_unavailable):
    def locked_call(key, call):
        held = _held()
        if key in held and not reentrant:
            # This thread holds it already (a nested call): the outermost
            # call releases it.
            return call()
        try:
            lease = _Lease(_client(), key, timeout, wait, reentrant)
        except Unavailable as err:
            if (on_unavailable or ON_UNAVAILABLE) == "raise":
                raise
            logger.warning("lock service unavailable (%s); running %s unlocked", err, key)
            return call()
        held[key] = held.get(key, 0) + 1
        try:
            return call()
        finally:
            held[key] -= 1
            if not held[key]:
                del held[key]
            lease.stop_keeper()
            _release(_client(), lease.grant)
    return _decorator(get_key, locked_call)


def lock(get_key, timeout=30, interval=0.05, wait=None, on_unavailable=None, **kw):
    """Exclusive lock around the call, named by get_key(fun, *args, **kw).

    timeout: lock lifetime in seconds (a call running longer than
    LEASE_TTL keeps its lease alive up to timeout); interval: accepted, no
    longer used (the wait happens in the proxy); wait: how long to wait,
    default timeout.
    """
    timeout, wait = _options(timeout, interval, wait, kw)
    return _locking(get_key, timeout, wait, False, on_unavailable)


def rlock(get_key, timeout=30, interval=0.05, wait=None, on_unavailable=None, **kw):
    """Reentrant lock: the same thread may nest calls under one key."""
    timeout, wait = _options(timeout, interval, wait, kw)
    return _locking(get_key, timeout, wait, True, on_unavailable)


def zlock(get_key, timeout=30, interval=0.05, wait=None, conflict_error=None, hold="call", **kw):
    """Lock for ZODB writes. The lock is taken before the call and released
    after it, or with hold="transaction" when the thread's current
    transaction ends (commit or abort), so that the writes the call made
    are committed before the next holder reads them. If the call, or with
    hold="transaction" the commit, raises ConflictError, the grant is
    shortened to one second, a reservation for this thread's retry, and
    the error is raised again so the application server retries the
    transaction. If the lock cannot be had within the wait, ConflictError
    is raised so that the request is retried later instead of failing."""
    timeout, wait = _options(timeout, interval, wait, kw)
    conflict = conflict_error or ConflictError
    if hold not in ("call", "transaction"):
        raise ValueError("hold must be 'call' or 'transaction', not %r" % (hold,))

    def take(client, key):
        try:
            return _Lease(client, key, timeout, wait, False)
        except NotLocked:
            logger.warning("%s busy; raising ConflictError so the request is retried", key)
            raise conflict()

    def locked_call(key, call):
        client = _client()
        try:
            lease = take(client, key)
        except Unavailable as err:
            logger.warning("lock service unavailable (%s); running %s unlocked", err, key)
            return call()
        try:
            result = call()
        except conflict:
            _reserve(client, lease)
            raise
        except BaseException:
            lease.stop_keeper()
            _release(client, lease.grant)
            raise
        lease.stop_keeper()
        _release(client, lease.grant)
        return result

    def locked_transaction(key, call):
        import transaction
        txn = transaction.get()
        held = _held_for_transaction()
        if key in held and held[key].txn is txn:
            return call()  # taken earlier in this transaction: its end releases it
        client = _client()
        try:
            lease = take(client, key)
        except Unavailable as err:
            logger.warning("lock service unavailable (%s); running %s unlocked", err, key)
            return call()
        hold = held[key] = _TransactionHold(txn, key, client, lease, held)
        try:
            return call()
        except conflict:
            hold.end(reserve=True)
            raise

    return _decorator(get_key, locked_transaction if hold == "transaction" else locked_call)


def _held_for_transaction():
    held = getattr(_local, "held_for_transaction", None)
    if held is None:
        held = _local.held_for_transaction = {}
    return held


class _TransactionHold(object):
    """A zlock grant that lives until its transaction ends: released after
    a commit or an abort, reserved for the retry after a commit that
    failed (the abort that follows then changes nothing)."""

    def __init__(self, txn, key, client, lease, held):
        self.txn, self.key, self.client, self.lease, self.held = txn, key, client, lease, held
        self.ended = False
        txn.addAfterCommitHook(self.after_commit)
        txn.addAfterAbortHook(self.end)

    def after_commit(self, committed):
        self.end(reserve=not committed)

    def end(self, reserve=False):
        if self.ended:
            return
        self.ended = True
        if self.held.get(self.key) is self:
            del self.held[self.key]
        if reserve:
            _reserve(self.client, self.lease)
        else:
            self.lease.stop_keeper()
            _release(self.client, self.lease.grant)


def _reserve(client, lease):
    """Shorten a grant to one second, for the retry of the same thread."""
    lease.stop_keeper()
    try:
        client.extend(lease.grant, 1)
        logger.info("ConflictError in %s: lock reserved 1s for the retry", lease.grant.key)
    except Exception as err:
        logger.warning("could not reserve %s for the retry: %s", lease.grant.key, err)


def _release(client, grant):
    """Unlock grant. When the proxy cannot be reached (it is restarting),
    try again on a new connection for a moment rather than leave the lock
    to run out its ttl. Only a grant's last level is tried again: an unlock
    that did arrive, its reply lost, would otherwise release a level an
    outer call still holds."""
    retries = RELEASE_RETRIES if grant.count <= 1 else ()
    tried = False
    for pause in retries + (None,):
        try:
            client.unlock(grant)
            return
        except Unavailable as err:
            if pause is None:
                logger.warning("could not release %s (%s); it expires in %ss", grant.key, err, grant.ttl)
                return
            time.sleep(pause)
            tried = True
        except (NotOwner, NotFound) as err:
            if not tried:  # else the first unlock did arrive
                logger.warning("could not release %s (%s)", grant.key, err)
            return
        except Exception as err:
            logger.warning("could not release %s (%s); it expires in %ss", grant.key, err, grant.ttl)
            return
