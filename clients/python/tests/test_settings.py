"""Where the client finds the proxy, what it says when it finds memcached
instead, leases kept alive for long calls, and errors that name the Python
setting to change."""

import threading
import time

import pytest

import memcachedlock
from memcachedlock import LockClient, LockError, NotMemcachedlock, lock, zlock
from memcachedlock import decorators
from memcachedlock.client import addresses_from_env
from memcachedlock.decorators import _local


@pytest.fixture(autouse=True)
def fresh_thread_client(proxy):
    _local.__dict__.clear()
    yield
    _local.__dict__.clear()


def key_of(fun, *args, **kw):
    return args[0]


def name_of(fun, key):
    return "%s.%s:%s" % (fun.__module__, fun.__name__, key)


def test_addr_preferred_to_the_old_variable(monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", "10.0.0.1:11311")
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "10.0.0.2:11211")
    assert addresses_from_env() == ["10.0.0.1:11311"]
    monkeypatch.delenv("MEMCACHEDLOCK_ADDR")
    assert addresses_from_env() == ["10.0.0.2:11211"]  # the old library's variable
    monkeypatch.delenv("MEMCACHEDLOCK_SERVERS")
    assert addresses_from_env() == ["127.0.0.1:11311"]  # where the proxy listens by default


def test_memcached_is_named_as_such(memcached, monkeypatch):
    with pytest.raises(NotMemcachedlock) as err:
        LockClient([memcached]).info("anything")
    assert "this is memcached, not memcachedlock" in str(err.value)
    assert memcached in str(err.value)

    # The decorators treat it as an unreachable lock service: warn and run,
    # or raise with the same words.
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", memcached)
    _local.__dict__.clear()

    @lock(key_of, on_unavailable="raise")
    def strict(name):
        return "ran"

    with pytest.raises(NotMemcachedlock, match="this is memcached, not memcachedlock"):
        strict("x")


def test_long_call_keeps_a_short_lease_alive(proxy, monkeypatch):
    monkeypatch.setattr(decorators, "LEASE_TTL", 2)
    seen = []

    @lock(key_of, timeout=600)  # used to fail: wait_ms must be 0 to 300000
    def slow(name):
        client = LockClient()
        first = client.info(name_of(slow, name))
        time.sleep(3.5)  # longer than the 2 s on the wire
        seen.append((first, client.info(name_of(slow, name))))
        client.close()
        return "done"

    assert slow("long") == "done"
    first, later = seen[0]
    assert first["ttl"] <= 2  # a modest ttl on the wire, not 600
    assert later["fence"] == first["fence"]  # still the same grant: kept alive
    with pytest.raises(memcachedlock.NotFound):  # and released at the end
        LockClient().info(name_of(slow, "long"))


def test_huge_timeouts_are_accepted(proxy):
    @zlock(key_of, timeout=7200)
    def write(name):
        return LockClient().info(name_of(write, name))["ttl"]

    assert write("huge") <= decorators.LEASE_TTL


def test_refused_ttl_names_the_setting(memcached, proxy_with, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", proxy_with(memcached, "--lock-ttl-max", "10", "--lock-ttl", "10"))

    @lock(key_of, timeout=60, on_unavailable="raise")
    def work(name):
        return "ran"

    with pytest.raises(LockError) as err:
        work("x")
    assert "ttl must be" in str(err.value)
    assert "LEASE_TTL" in str(err.value)
    monkeypatch.setattr(decorators, "LEASE_TTL", 10)  # the fix the message names
    assert work("x") == "ran"


def test_refused_wait_names_the_setting(memcached, proxy_with, monkeypatch):
    addr = proxy_with(memcached, "--lock-wait-max", "2s", "--lock-wait", "2s")
    with pytest.raises(LockError) as err:
        LockClient([addr]).lock("w", ttl=5, wait=10)
    assert "wait_ms must be" in str(err.value)
    assert "WAIT_CHUNK" in str(err.value)
    monkeypatch.setattr(memcachedlock.client, "WAIT_CHUNK", 2)
    holder = LockClient([addr])
    grant = holder.lock("w", ttl=5, wait=0, owner="other:1:1")
    waiter = LockClient([addr])
    got = []
    t = threading.Thread(target=lambda: got.append(waiter.lock("w", ttl=5, wait=10, owner="me:1:1")))
    t.start()
    time.sleep(2.5)  # past one piece of the wait
    holder.unlock(grant)
    t.join()
    assert got and got[0].count == 1  # the wait went on over several commands
