import threading
import time

import memcache
import pytest
from pymemcache.client.base import Client as PymemcacheClient

import memcachedlock
from memcachedlock import (ConflictError, DontLock, LockClient, NotLocked,
                           Unavailable, lock, rlock, zlock)
from memcachedlock.decorators import _local


def key_of(fun, *args, **kw):
    return args[0]


@pytest.fixture(autouse=True)
def fresh_thread_client(proxy):
    _local.__dict__.clear()  # each test connects to this session's proxy
    yield


def test_threads_under_lock_lose_no_update(proxy, memcached):
    mc = memcache.Client([proxy])
    mc.set("counter", "0")

    @lock(key_of, timeout=10, wait=20)
    def bump(name):
        value = int(mc_thread().get("counter"))
        time.sleep(0.001)  # widen the window a missing lock would show
        mc_thread().set("counter", str(value + 1))

    local = threading.local()

    def mc_thread():
        if not hasattr(local, "mc"):
            local.mc = memcache.Client([proxy])
        return local.mc

    def worker():
        for _ in range(25):
            bump("counter-lock")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(mc.get("counter")) == 200


def test_release_reaches_a_restarted_proxy(restartable_proxy, monkeypatch):
    """The proxy restarts while a call holds the lock: the release tries
    again, reaches the new proxy, and the lock is free at once rather than
    when its ttl runs out."""
    addr, restart = restartable_proxy
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", addr)
    _local.__dict__.clear()

    @lock(key_of, timeout=30, wait=5)
    def work(name):
        restart()

    work("restart-lock")
    try:
        LockClient([addr]).lock(name_of(work, "restart-lock"), ttl=5, wait=0, owner="another")
    except NotLocked:
        pytest.fail("the lock is still held after its holder's call returned: its release did not reach the restarted proxy")


def test_rlock_nests_in_one_thread(proxy):
    depths = []

    @rlock(key_of)
    def nested(name, depth):
        depths.append(LockClient().info(name_of(nested, name))["count"])
        if depth < 3:
            nested(name, depth + 1)
        return "done"

    assert nested("nest", 1) == "done"
    assert depths == [1, 2, 3]
    with pytest.raises(memcachedlock.NotFound):  # every level released
        LockClient().info(name_of(nested, "nest"))


def name_of(fun, key):
    return "%s.%s:%s" % (fun.__module__, fun.__name__, key)


def test_rlock_excludes_other_threads(proxy):
    entered = threading.Event()
    release = threading.Event()
    ran = []

    @rlock(key_of, wait=0)
    def hold(name, block):
        ran.append(block)
        if block:
            entered.set()
            release.wait(5)

    t = threading.Thread(target=hold, args=("shared", True))
    t.start()
    entered.wait(5)
    with pytest.raises(NotLocked):  # another thread is another owner
        hold("shared", False)
    release.set()
    t.join()
    assert ran == [True]


def test_old_keywords_accepted():
    assert lock(key_of, timeout=30, interval=0.05)
    assert rlock(key_of, intervall=0.1)
    assert zlock(key_of, timeout=5, interval=0.5)
    with pytest.raises(TypeError):
        lock(key_of, bogus=1)


def test_dont_lock_runs_unlocked(proxy):
    def never(fun, *args):
        raise DontLock()

    @lock(never)
    def work():
        return 42

    assert work() == 42


def test_unavailable_runs_unlocked_or_raises(monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", "127.0.0.1:1")
    _local.__dict__.clear()

    @lock(key_of)
    def work(name):
        return "ran"

    assert work("x") == "ran"

    @lock(key_of, on_unavailable="raise")
    def strict(name):
        return "ran"

    with pytest.raises(Unavailable):
        strict("x")


class Conflict(Exception):
    pass


def test_zlock_retry_reserves_the_lock(proxy):
    calls = []

    @zlock(key_of, timeout=30, conflict_error=Conflict)
    def write(name):
        calls.append(name)
        if len(calls) == 1:
            raise Conflict()
        return "written"

    with pytest.raises(Conflict):
        write("catalog")
    info = LockClient().info(name_of(write, "catalog"))
    assert info["ttl"] <= 1, info  # reserved for the retry only
    # The retry in the same thread gets the same grant back at once.
    assert write("catalog") == "written"
    with pytest.raises(memcachedlock.NotFound):
        LockClient().info(name_of(write, "catalog"))


def test_zlock_busy_raises_conflict_error(proxy):
    holder = LockClient()
    grant = holder.lock(name_of(busy, "obj"), ttl=30, wait=0, owner="other:1:1")
    try:
        with pytest.raises(Conflict):
            busy("obj")
    finally:
        holder.unlock(grant)


@zlock(key_of, wait=0.2, conflict_error=Conflict)
def busy(name):
    return "should not run"


def test_zlock_default_conflict_error_class():
    assert issubclass(ConflictError, Exception)


def test_lock_commands_over_existing_clients(proxy):
    host, port = proxy.rsplit(":", 1)
    for client in (PymemcacheClient((host, int(port))), memcache.Client([proxy])):
        grant = memcachedlock.lock_with(client, "shared-conn", ttl=10, wait=1, owner="me:1:1")
        assert grant.count == 1
        assert memcachedlock.extend_with(client, grant, 5) == 5
        with pytest.raises(NotLocked):
            memcachedlock.lock_with(client, "shared-conn", ttl=10, wait=0, owner="you:1:1")
        assert memcachedlock.unlock_with(client, grant) == 0
