"""A small client for memcachedlock's lock commands, standard library only."""

import hashlib
import logging
import os
import socket
import threading
import time

logger = logging.getLogger("memcachedlock")

#: Where the proxy listens when neither MEMCACHEDLOCK_ADDR nor
#: MEMCACHEDLOCK_SERVERS says: the proxy's own default, as for the CLI.
DEFAULT_ADDR = "127.0.0.1:11311"

#: Longest wait sent in one lock command, in seconds: the proxy's default
#: --lock-wait-max. Longer waits are sent in pieces of this size.
WAIT_CHUNK = 300


class LockError(Exception):
    """The proxy refused a lock command (bad arguments, mode mismatch)."""


class Unavailable(LockError):
    """The proxy, or the memcached that holds the lock, cannot be reached."""


class NotMemcachedlock(Unavailable):
    """The address answered like memcached, which has no lock commands."""


class NotLocked(LockError):
    """The lock was not granted within the wait."""

    def __init__(self, holder_ttl):
        LockError.__init__(self, "not locked; holder has %s s left" % holder_ttl)
        self.holder_ttl = holder_ttl


class NotOwner(LockError):
    """unlock/extend with a fence that is not the current grant's."""


class NotFound(LockError):
    """unlock/extend/lockinfo of a lock nobody holds."""


class Grant(object):
    """A lock held: its name, fence (pass it to what the lock protects),
    ttl in seconds, and reentrancy depth."""

    __slots__ = ("key", "fence", "ttl", "count")

    def __init__(self, key, fence, ttl, count):
        self.key, self.fence, self.ttl, self.count = key, fence, ttl, count

    def __repr__(self):
        return "Grant(%r, fence=%d, ttl=%d, count=%d)" % (self.key, self.fence, self.ttl, self.count)


def addresses_from_env():
    """The proxy addresses: MEMCACHEDLOCK_ADDR as for the CLI, else
    MEMCACHEDLOCK_SERVERS (the old library's variable), comma separated;
    default 127.0.0.1:11311."""
    value = os.environ.get("MEMCACHEDLOCK_ADDR") or os.environ.get("MEMCACHEDLOCK_SERVERS") or DEFAULT_ADDR
    return [s.strip() for s in value.split(",") if s.strip()]


servers_from_env = addresses_from_env  # the name before MEMCACHEDLOCK_ADDR


def owner_id():
    """host:pid:thread: the same thread is the same owner, so rlock nests
    and a retried request in the same thread gets its own grant back."""
    return "%s:%d:%d" % (socket.gethostname(), os.getpid(), threading.get_ident())


def lock_name(key):
    """A lock name the proxy accepts: printable, no spaces, at most 250
    bytes; anything else is replaced by its digest."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    if 0 < len(key) <= 250 and all(0x20 < b < 0x7f or b >= 0x80 for b in key):
        return key.decode("utf-8", "surrogateescape")
    return "md5:" + hashlib.md5(key).hexdigest()


def parse_reply(line):
    """Turn one reply line into a result or the matching exception."""
    words = line.split()
    if not words:
        raise Unavailable("empty reply")
    word = words[0]
    if word == "LOCKED":
        return int(words[1]), int(words[2]), int(words[3])
    if word in ("UNLOCKED", "EXTENDED"):
        return int(words[1])
    if word == "LOCK":
        return {"fence": int(words[1]), "ttl": int(words[2]), "count": int(words[3]),
                "owner": words[4], "waiters": int(words[5])}
    if word == "NOT_LOCKED":
        raise NotLocked(int(words[1]))
    if word == "NOT_OWNER":
        raise NotOwner(line)
    if word == "NOT_FOUND":
        raise NotFound(line)
    if word == "SERVER_ERROR":
        raise Unavailable(line)
    if word == "ERROR":
        raise NotMemcachedlock("ERROR to a lock command: this is memcached, not memcachedlock; "
                               "point MEMCACHEDLOCK_ADDR at the proxy")
    if word == "CLIENT_ERROR":
        raise LockError(line + _setting_hint(line))
    raise LockError(line)


def _setting_hint(line):
    """Which Python setting to change when the proxy refuses a number."""
    if "ttl" in line:
        return (" (the lock's ttl on the wire: LockClient.lock(ttl=...); the decorators send "
                "min(timeout, memcachedlock.decorators.LEASE_TTL) and keep longer calls alive: "
                "lower LEASE_TTL to the proxy's --lock-ttl-max)")
    if "wait" in line:
        return (" (the wait of one lock command: waits are sent in pieces of "
                "memcachedlock.client.WAIT_CHUNK seconds: lower WAIT_CHUNK to the proxy's "
                "--lock-wait-max)")
    return ""


def lock_line(verb, key, ttl, wait, owner):
    """A lock or rlock command line; wait in seconds."""
    parts = [verb, lock_name(key), str(max(int(ttl), 1)), str(max(int(wait * 1000), 0))]
    if owner:
        parts.append(owner)
    return " ".join(parts)


class LockClient(object):
    """One connection to a memcachedlock proxy; not for sharing between
    threads (the decorators keep one per thread)."""

    def __init__(self, servers=None, connect_timeout=2.0):
        self.servers = servers or addresses_from_env()
        self.connect_timeout = connect_timeout
        self.sock = None
        self.addr = None
        self.buf = b""

    def _connect(self):
        last = None
        for server in self.servers:
            host, _, port = server.rpartition(":")
            try:
                sock = socket.create_connection((host, int(port)), self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock, self.addr, self.buf = sock, server, b""
                return
            except (OSError, ValueError) as err:
                last = err
        raise Unavailable("no proxy reachable in %s: %s" % (self.servers, last))

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def command(self, line, timeout):
        """Send one line, return the reply line; timeout bounds a hang."""
        if self.sock is None:
            self._connect()
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise OSError("connection closed")
                self.buf += chunk
        except OSError as err:
            self.close()
            raise Unavailable(str(err))
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "surrogateescape")

    def _reply(self, line, timeout):
        try:
            return parse_reply(self.command(line, timeout))
        except NotMemcachedlock as err:
            raise NotMemcachedlock("%s answered %s" % (self.addr, err))

    def lock(self, key, ttl=30, wait=30, owner=None, reentrant=False):
        """Take the lock, waiting up to wait seconds in the proxy (sent in
        pieces of WAIT_CHUNK seconds)."""
        verb = "rlock" if reentrant else "lock"
        if reentrant and not owner:
            raise ValueError("a reentrant lock needs an owner")
        deadline = time.monotonic() + wait
        while True:
            chunk = min(max(deadline - time.monotonic(), 0), WAIT_CHUNK)
            try:
                fence, ttl, count = self._reply(lock_line(verb, key, ttl, chunk, owner), chunk + 10)
                return Grant(lock_name(key), fence, ttl, count)
            except NotLocked:
                if deadline - time.monotonic() <= 0:
                    raise

    def unlock(self, grant):
        """Release one level; returns the levels left."""
        return self._reply("unlock %s %d" % (grant.key, grant.fence), 10)

    def extend(self, grant, ttl):
        """Set the grant's remaining lifetime, in whole seconds."""
        return self._reply("extend %s %d %d" % (grant.key, grant.fence, max(int(ttl), 1)), 10)

    def info(self, key):
        """The current holder, as a dict; NotFound when nobody holds it."""
        return self._reply("lockinfo " + lock_name(key), 10)


class Keeper(object):
    """Keeps a grant alive, over a connection of its own, while a call runs
    longer than the grant's ttl: extends it to ttl seconds every (ttl-1)/2
    seconds (memcached's clock counts whole seconds, so a grant may end up
    to a second early), until stopped or until the deadline (time.monotonic),
    after which the grant runs out as a lock of that lifetime would."""

    def __init__(self, grant, ttl, deadline, servers):
        self.grant, self.ttl, self.deadline = grant, max(int(ttl), 2), deadline
        self.client = LockClient(servers)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memcachedlock keeper %s" % grant.key)
        self.thread.daemon = True
        self.thread.start()

    def _run(self):
        period = (self.ttl - 1) / 2.0
        try:
            while not self.stopped.wait(period):
                left = self.deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    self.client.extend(self.grant, min(self.ttl, max(int(left), 1)))
                except Unavailable as err:
                    logger.warning("could not extend %s (%s); trying again in %.1fs", self.grant.key, err, period)
                except LockError as err:
                    logger.warning("lease of %s lost: %s", self.grant.key, err)
                    return
        finally:
            self.client.close()

    def stop(self):
        """Stop extending; returns once no extend is in flight."""
        self.stopped.set()
        self.thread.join()
