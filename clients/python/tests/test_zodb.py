"""zlock with real ZODB, ZEO and BTrees (the zodb extra): the benchmark's
modes briefly, with no lost update in any, and zlock's promises on real
conflicts and on a killed ZEO client process."""

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

pytest.importorskip("ZEO", reason="the zodb extra: pip install './clients/python[zodb]'")

import transaction  # noqa: E402
from ZODB.POSException import ConflictError  # noqa: E402

import memcachedlock  # noqa: E402
from memcachedlock import LockClient, decorators, zlock  # noqa: E402
from memcachedlock.decorators import _local  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import zodb_bench  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_thread_client(cluster, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_ADDR", cluster.proxy)
    _local.__dict__.clear()
    yield
    _local.__dict__.clear()


@pytest.mark.parametrize("mode", zodb_bench.MODES)
def test_mode_loses_no_update(cluster, mode):
    s = zodb_bench.run_segment(cluster, mode, "lost-" + mode, clients=3, duration=1.0, work_ms=5)
    assert s["commits"] > 0
    assert s["count"] == s["documents"] == s["commits"], s  # ZODB's promise, kept under our lock
    if mode.startswith("zlock"):
        # The lock spans each transaction from begin to commit: nothing
        # to conflict with, so nothing to retry.
        assert s["conflicts"] == 0 and s["failed"] == 0, s


def key_of(fun, name, *args, **kw):
    return name


def lock_name(fun, name):
    return "%s.%s:%s" % (fun.__module__, fun.__name__, name)


def open_conn(cluster):
    tm = transaction.TransactionManager()
    db = zodb_bench.zeo_db(cluster.zeo)
    return db, db.open(tm), tm


def test_real_conflict_reserves_the_lock_for_the_retry(cluster):
    zodb_bench.make_catalog(cluster.zeo, "reserve")
    db1, c1, tm1 = open_conn(cluster)
    db2, c2, tm2 = open_conn(cluster)
    seen = []

    @zlock(key_of)
    def write(name, first):
        if not first:
            tm1.begin()  # the retry: a fresh transaction
        catalog = c1.root()[name]
        seen.append(LockClient().info(lock_name(write, name)))
        catalog["latest"] = "c1"
        if first:
            # Another ZEO client commits the same object meanwhile.
            tm2.begin()
            c2.root()[name]["latest"] = "c2"
            tm2.commit()
        tm1.commit()

    try:
        tm1.begin()
        c1.root()["reserve"]["latest"]  # read before the other commit: this view is now stale
        with pytest.raises(ConflictError):
            write("reserve", True)
        reserved = LockClient().info(lock_name(write, "reserve"))
        assert reserved["ttl"] <= 1  # shortened to the one-second reservation
        assert reserved["fence"] == seen[0]["fence"]
        with pytest.raises(memcachedlock.NotLocked):  # reserved: another client does not get it
            LockClient().lock(lock_name(write, "reserve"), ttl=5, wait=0, owner="zeo7:1:1")
        tm1.abort()
        write("reserve", False)  # the same thread's retry gets the grant back
        assert seen[1]["fence"] == seen[0]["fence"]
        with pytest.raises(memcachedlock.NotFound):  # released after the commit
            LockClient().info(lock_name(write, "reserve"))
        tm2.begin()
        assert c2.root()["reserve"]["latest"] == "c1"
    finally:
        for db in (db1, db2):
            db.close()


def test_busy_lock_raises_a_conflict_error_the_retry_loop_retries(cluster):
    zodb_bench.make_catalog(cluster.zeo, "busy")
    db, conn, tm = open_conn(cluster)
    holder = LockClient()
    grant = holder.lock(lock_name(write_busy, "busy"), ttl=30, wait=0, owner="zeo9:1:1")
    tries = []
    try:
        for attempt in tm.attempts(3):
            with attempt:
                tries.append(1)
                if len(tries) == 2:
                    # The failed try left the holder's grant alone.
                    assert LockClient().info(lock_name(write_busy, "busy"))["fence"] == grant.fence
                    holder.unlock(grant)  # the other client is done
                write_busy("busy", conn)
        tm.begin()
        assert conn.root()["busy"]["latest"] == "busy"  # the retry committed
    finally:
        db.close()
    # Only a retryable error (ZODB's ConflictError) makes the retry loop try again.
    assert len(tries) == 2


@zlock(key_of, wait=0.2)
def write_busy(name, conn):
    conn.root()[name]["latest"] = "busy"


def zlocked(body, **options):
    """body under zlock, named test_zodb.write:<name> whoever calls it."""
    @zlock(key_of, **options)
    def write(name):
        return body(name)
    return write


def hold_and_die(zeo, addr, name, ready):
    """A ZEO client that takes the lock, writes without committing, and
    waits to be killed. Its lease on the wire is 2 s, kept alive by the
    keeper thread for as long as the process lives."""
    os.environ["MEMCACHEDLOCK_ADDR"] = addr
    decorators.LEASE_TTL = 2
    db = zodb_bench.zeo_db(zeo)
    conn = db.open()

    def body(name):
        transaction.begin()
        conn.root()[name]["latest"] = "killed"
        conn.root()[name]["count"].change(1)
        ready.set()
        signal.pause()

    zlocked(body, timeout=600)(name)


def test_killed_client_releases_nothing_and_blocks_no_longer_than_its_lease(cluster):
    zodb_bench.make_catalog(cluster.zeo, "killed")
    name = "%s.write:killed" % __name__
    other = LockClient()
    unrelated = other.lock("someone-elses-lock", ttl=30, wait=0, owner="zeo8:1:1")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=hold_and_die, args=(cluster.zeo, cluster.proxy, "killed", ready))
    proc.start()
    db, conn, tm = open_conn(cluster)
    try:
        assert ready.wait(60)
        held = LockClient().info(name)
        assert held["ttl"] <= 2  # a short lease, kept alive, not timeout=600 on the wire
        # Another ZEO client already queues for the lock when the holder dies.
        queued = []
        waiter = threading.Thread(target=lambda: queued.append(
            LockClient().lock(name, ttl=5, wait=30, owner="zeo7:1:1")))
        waiter.start()
        while LockClient().info(name)["waiters"] < 1:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        # Its death released nothing, its own lock included (its lease
        # runs out), and touched nobody else's.
        after = LockClient().info(name)
        assert after["fence"] == held["fence"] and after["ttl"] <= 2
        assert other.info("someone-elses-lock")["fence"] == unrelated.fence
        # Nobody extends the dead lease: its ttl only goes down until the
        # queued client gets the lock, in one wait.
        ttls = [after["ttl"]]
        while not queued:
            try:
                info = LockClient().info(name)
            except memcachedlock.NotFound:
                break
            if info["fence"] == held["fence"]:
                ttls.append(info["ttl"])
            time.sleep(0.05)
        waiter.join()
        assert ttls == sorted(ttls, reverse=True), ttls
        assert queued and queued[0].fence > held["fence"]
        LockClient().unlock(queued[0])

        def body(name):
            tm.begin()
            conn.root()[name]["count"].change(1)
            fence = LockClient().info("%s.write:%s" % (__name__, name))["fence"]
            tm.commit()
            return fence

        # The next client waits at most about the lease: 5 s of wait is
        # enough, or zlock would raise ConflictError.
        assert zlocked(body, wait=5)("killed") > held["fence"]
        tm.begin()
        assert conn.root()["killed"]["count"]() == 1  # the killed client's write never landed
        assert conn.root()["killed"]["latest"] is None
    finally:
        if proc.is_alive():
            proc.kill()
        db.close()
        other.unlock(unrelated)


def test_occupancy_counts_overlaps_once():
    # ms busy and idle between the first begin and the last commit (seconds in).
    assert zodb_bench.occupancy([(0, 1), (2, 3)]) == (2000.0, 1000.0)
    assert zodb_bench.occupancy([(1, 3), (0, 2), (5, 6)]) == (4000.0, 2000.0)
    assert zodb_bench.occupancy([(0, 5), (1, 2)]) == (5000.0, 0.0)
