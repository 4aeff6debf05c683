#!/usr/bin/env python3
"""ZEO clients writing one hot object, with and without a lock: the case
memcachedlock exists for, measured with real ZODB, ZEO and BTrees.

A ZEO server keeps a FileStorage in a temporary directory; N client
processes (default 6) run transactions against a catalog-like object: a
PersistentMapping holding an OOBTree index, a BTrees Length counter and the
id of the latest document. Each transaction reads the counter, does
"expensive work" (default 10 ms of CPU), adds a document to the index,
bumps the counter and sets "latest" (the write that two transactions can
never merge), and commits; transaction.manager.attempts() retries it on
ConflictError. The lock, when there is one, covers the transaction from its
start to its commit: a lock released before the commit would let the next
writer read what is about to change.

Modes, run in the same process tree and alternating round by round:
  single          one client alone, no lock, no think time: the serial
                  bound, as no lock can make six clients commit one hot
                  object faster than one client that runs its
                  transactions back to back and never waits for anybody
  none            no lock: ZODB's optimistic concurrency alone
  polling         the old library's scheme, written here as a reference:
                  memcached add, sleep 50 ms until it succeeds, delete
  zlock           @memcachedlock.zlock through one proxy
  zlock-2proxies  the clients split over two proxies

Run with `make bench-zodb`; the tests run it briefly (tests/test_zodb.py).
"""

import argparse
import datetime
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# Imported here, before any fork: a client process must not inherit a
# module half imported by a thread of its parent.
import transaction
import ZEO
import ZEO.ClientStorage
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError

MODES = ("single", "none", "polling", "zlock", "zlock-2proxies")
ATTEMPTS = 50  # retries before a transaction counts as failed
POLL_INTERVAL = 0.05  # the old library's default interval


# --- processes: memcached, proxies and the ZEO server on free ports ---------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port, proc, what):
    for _ in range(1000):
        if proc.poll() is not None:
            raise RuntimeError("%s exited with status %s" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("%s does not listen on %d" % (what, port))


def serve_flags(binary):
    """What this build of the proxy offers for memcached servers started
    moments ago: --lock-fresh-servers (else it refuses locks on servers
    without its marker for --lock-ttl-max), and whether it has
    --lock-replicas."""
    text = subprocess.run([binary, "serve", "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True).stdout
    fresh = ["--lock-fresh-servers"] if "--lock-fresh-servers" in text else []
    return fresh, "--lock-replicas" in text


class Cluster(object):
    """A memcached and a proxy in front of it alone; two proxies in front of
    three more memcached (one, when the proxy has no --lock-replicas) with
    --lock-replicas 3; and a ZEO server with a FileStorage in a temporary
    directory. The single proxy has memcached of its own: proxies that share
    a lock server must agree on the lock servers. Use as a context manager."""

    def __init__(self, proxy_bin, replicas=True):
        self.proxy_bin = os.path.abspath(proxy_bin)
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="zodb-bench-")
        try:
            fresh, has_replicas = serve_flags(self.proxy_bin)
            self.replicas = 3 if (replicas and has_replicas) else 0
            flags = ["--log-level", "warn"] + fresh
            self.memcached = self._memcached()
            self.proxy = self._proxy(["--servers", self.memcached] + flags)
            servers = ",".join(self._memcached() for _ in range(self.replicas or 1))
            extra = ["--lock-replicas", str(self.replicas)] if self.replicas else []
            self.proxies = [self._proxy(["--servers", servers] + flags + extra) for _ in range(2)]
            self.zeo = self._zeo()
        except BaseException:
            self.close()
            raise

    def _start(self, args, port, what):
        with open(os.path.join(self.dir, "log"), "ab") as log:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        _wait_listening(port, proc, what)
        return "127.0.0.1:%d" % port

    def _memcached(self):
        binary = shutil.which("memcached")
        if binary is None:
            raise RuntimeError("memcached is not installed (apt-get install memcached)")
        port = free_port()
        args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        return self._start(args, port, "memcached")

    def _proxy(self, flags):
        port = free_port()
        return self._start([self.proxy_bin, "serve", "--listen", "127.0.0.1:%d" % port] + flags,
                           port, "memcachedlock serve")

    def _zeo(self):
        port = free_port()
        path = os.path.join(self.dir, "Data.fs")
        return self._start([sys.executable, "-m", "ZEO.runzeo", "-a", "127.0.0.1:%d" % port, "-f", path],
                           port, "ZEO server")

    def close(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def lock_addr(self, mode, worker):
        """The proxy a worker locks through in a mode."""
        if mode == "zlock-2proxies":
            return self.proxies[worker % 2]
        return self.proxy


def zeo_db(addr):
    """A ZEO client. server_sync: a transaction begun after the lock was
    granted must see the holder's commit, and ZEO sends invalidations
    asynchronously; with it, beginning a transaction waits for them (one
    round trip to the server)."""
    host, port = addr.rsplit(":", 1)
    return ZEO.DB((host, int(port)), wait_timeout=30, server_sync=True)


# --- the catalog-like object --------------------------------------------------

def make_catalog(zeo, name):
    """A fresh hot object under root[name]."""
    db = zeo_db(zeo)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        with tm:
            conn.root()[name] = PersistentMapping(index=OOBTree(), count=Length(), latest=None)
        conn.close()
    finally:
        db.close()


def check_catalog(zeo, name):
    """(count, documents in the index): both must equal the commits."""
    db = zeo_db(zeo)
    try:
        conn = db.open(transaction.TransactionManager())
        catalog = conn.root()[name]
        result = catalog["count"](), len(catalog["index"])
        conn.close()
        return result
    finally:
        db.close()


def work(ms, kind):
    """The expensive part of a transaction: CPU time of this process, or a sleep."""
    if kind == "sleep":
        time.sleep(ms / 1000.0)
        return
    end = time.process_time() + ms / 1000.0
    while time.process_time() < end:
        pass


# --- the locks ------------------------------------------------------------------

class PollingLock(object):
    """The old library's scheme, as a reference: memcached add with the
    lock's lifetime, sleep 50 ms until the add succeeds, delete after."""

    def __init__(self, memcached, timeout=30, wait=30):
        import memcache
        self.mc = memcache.Client([memcached])
        self.timeout, self.wait = timeout, wait

    def __call__(self, key, fn):
        name = "polling:" + key
        deadline = time.monotonic() + self.wait
        while not self.mc.add(name, str(os.getpid()), time=self.timeout):
            if time.monotonic() > deadline:
                raise ConflictError()  # as the old zlock did when busy
            time.sleep(POLL_INTERVAL)
        try:
            return fn()
        finally:
            self.mc.delete(name)


def locker(mode, cluster_addrs, worker):
    """locked(key, fn): runs fn under the mode's lock."""
    if mode in ("single", "none"):
        return lambda key, fn: fn()
    if mode == "polling":
        return PollingLock(cluster_addrs["memcached"])
    os.environ["MEMCACHEDLOCK_ADDR"] = cluster_addrs["lock"]
    import memcachedlock

    @memcachedlock.zlock(lambda fun, key, fn: key, timeout=30)
    def transaction_under_zlock(key, fn):
        return fn()
    return transaction_under_zlock


# --- a client process -------------------------------------------------------------

PHASES = ("lock", "begin", "load", "work", "commit", "release")


def client_process(mode, addrs, name, worker, start_at, stop_at, work_ms, work_kind, think_ms, results):
    """One ZEO client: transactions until stop_at, think_ms apart (the rest
    of a request, outside the lock); puts its counts on results, with the
    time spent in each phase of every attempt (ms): waiting for the lock,
    beginning the transaction (a server round trip, server_sync), loading
    what the previous writer changed, the work, the two-phase commit, and
    releasing the lock."""
    locked = locker(mode, addrs, worker)
    db = zeo_db(addrs["zeo"])
    conn = db.open()  # with transaction.manager, as the application server's thread would
    tm = transaction.manager
    stats = dict(commits=0, conflicts=0, retries=0, failed=0, wasted_ms=0.0, latencies=[],
                 phases=dict.fromkeys(PHASES, 0.0), held=[])
    seq = [0]
    marks = {}

    def write_once():
        # Under the lock: a transaction begun now sees the last commit.
        marks["in"] = time.perf_counter()
        tm.begin()
        marks["begun"] = time.perf_counter()
        catalog = conn.root()[name]
        n = catalog["count"]()
        catalog["index"].get("")  # the index's root loaded too, before the work
        t0 = marks["loaded"] = time.perf_counter()
        work(work_ms, work_kind)
        spent = (time.perf_counter() - t0) * 1000.0
        marks["worked"] = time.perf_counter()
        seq[0] += 1
        doc = "w%d-%d" % (worker, seq[0])
        catalog["index"][doc] = n
        catalog["count"].change(1)
        catalog["latest"] = doc
        try:
            tm.commit()
        except ConflictError:
            stats["conflicts"] += 1
            stats["wasted_ms"] += spent
            raise
        finally:
            marks["committed"] = time.perf_counter()

    def attempt_once():
        marks.clear()
        called = time.perf_counter()
        try:
            locked(name, write_once)
        finally:
            returned = time.perf_counter()
            points = [called] + [marks.get(k) for k in ("in", "begun", "loaded", "worked", "committed")] + [returned]
            if None not in points:
                for phase, a, b in zip(PHASES, points, points[1:]):
                    stats["phases"][phase] += (b - a) * 1000.0
                stats["held"].append((marks["in"], marks["committed"]))

    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        began = time.perf_counter()
        tries = 0
        try:
            for attempt in tm.attempts(ATTEMPTS):
                tries += 1
                with attempt:
                    attempt_once()
            stats["commits"] += 1
            stats["latencies"].append((time.perf_counter() - began) * 1000.0)
        except ConflictError:
            stats["failed"] += 1
        stats["retries"] += tries - 1
        if think_ms:
            time.sleep(think_ms / 1000.0)
    conn.close()
    db.close()
    results.put(stats)


def run_segment(cluster, mode, name, clients=6, duration=5.0, work_ms=10.0, work_kind="cpu", think_ms=0.0):
    """Runs one mode for duration seconds with clients processes on a
    fresh hot object; returns the summed counts and the check."""
    if mode == "single":
        clients, think_ms = 1, 0.0  # the bound: one transaction after another
    make_catalog(cluster.zeo, name)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start_at = time.time() + 1.0 + 0.2 * clients  # every process connected first
    stop_at = start_at + duration
    procs = []
    for w in range(clients):
        addrs = dict(zeo=cluster.zeo, memcached=cluster.memcached, lock=cluster.lock_addr(mode, w))
        p = ctx.Process(target=client_process,
                        args=(mode, addrs, name, w, start_at, stop_at, work_ms, work_kind, think_ms, results))
        p.start()
        procs.append(p)
    got = [results.get(timeout=duration + 120) for _ in procs]
    for p in procs:
        p.join()
    total = dict(mode=mode, duration=duration, commits=0, conflicts=0, retries=0, failed=0,
                 wasted_ms=0.0, latencies=[], per_client=sorted(s["commits"] for s in got),
                 phases=dict.fromkeys(PHASES, 0.0))
    for s in got:
        for k in ("commits", "conflicts", "retries", "failed", "wasted_ms"):
            total[k] += s[k]
        total["latencies"] += s["latencies"]
        for k in PHASES:
            total["phases"][k] += s["phases"][k]
    total["busy_ms"], total["idle_ms"] = occupancy([h for s in got for h in s["held"]])
    count, documents = check_catalog(cluster.zeo, name)
    total["count"], total["documents"] = count, documents
    total["consistent"] = count == documents == total["commits"]
    return total


def occupancy(intervals):
    """(busy, idle) in ms: how long at least one transaction was under way
    (from its begin to its commit's end, the time.perf_counter clock, which
    all processes share on Linux) and how long none was, between the first
    begin and the last commit. With a lock, idle is the hand-over: from
    one holder's commit to the next holder's begin."""
    if not intervals:
        return 0.0, 0.0
    intervals = sorted(intervals)
    busy, end = 0.0, intervals[0][0]
    for a, b in intervals:
        if b > end:
            busy += b - max(a, end)
            end = b
    span = end - intervals[0][0]
    return busy * 1000.0, (span - busy) * 1000.0


# --- the table --------------------------------------------------------------------

def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


def summarize(segments):
    """Per mode: median commits/s over the rounds, the rest pooled."""
    rows = []
    for mode in MODES:
        runs = [s for s in segments if s["mode"] == mode]
        if not runs:
            continue
        rates = sorted(s["commits"] / s["duration"] for s in runs)
        commits = sum(s["commits"] for s in runs)
        lat = [x for s in runs for x in s["latencies"]]
        rows.append(dict(
            mode=mode, rate=rates[len(rates) // 2], commits=commits,
            conflicts=sum(s["conflicts"] for s in runs) / max(commits, 1),
            retries=sum(s["retries"] for s in runs),
            wasted=sum(s["wasted_ms"] for s in runs) / max(commits, 1),
            p50=percentile(lat, 50), p99=percentile(lat, 99),
            failed=sum(s["failed"] for s in runs),
            spread=max(max(s["per_client"]) / max(min(s["per_client"]), 1) for s in runs),
            consistent=all(s["consistent"] for s in runs),
            phases=dict((k, sum(s["phases"][k] for s in runs) / max(commits, 1)) for k in PHASES),
            busy=sum(s["busy_ms"] for s in runs) / max(commits, 1),
            idle=sum(s["idle_ms"] for s in runs) / max(commits, 1)))
    return rows


def table(rows):
    lines = ["| mode           | commits/s | ConflictErrors/commit | retries | work redone ms/commit | p50 ms | p99 ms | max/min per client | failed | counter == commits |",
             "|----------------|-----------|-----------------------|---------|-----------------------|--------|--------|--------------------|--------|--------------------|"]
    for r in rows:
        lines.append("| %-14s | %9.1f | %21.3f | %7d | %21.2f | %6.1f | %6.1f | %18.2f | %6d | %-18s |" % (
            r["mode"], r["rate"], r["conflicts"], r["retries"], r["wasted"], r["p50"], r["p99"],
            r["spread"], r["failed"], "yes" if r["consistent"] else "NO"))
    return "\n".join(lines)


def phase_table(rows):
    """Where a commit's time goes: each phase summed over a mode's
    attempts (failed ones too) and divided by its commits, in ms."""
    lines = ["| mode           | " + " | ".join("%7s" % p for p in PHASES) + " |   total | busy | idle |",
             "|----------------|" + "|".join("---------" for _ in PHASES) + "|---------|------|------|"]
    for r in rows:
        ph = r["phases"]
        lines.append("| %-14s | " % r["mode"] + " | ".join("%7.2f" % ph[p] for p in PHASES) +
                     " | %7.2f | %4.1f | %4.1f |" % (sum(ph.values()), r["busy"], r["idle"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy-bin", default="bin/memcachedlock")
    parser.add_argument("--clients", type=int, default=6, help="ZEO client processes (default 6)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per mode and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, modes alternating in each (default 3)")
    parser.add_argument("--work-ms", type=float, default=10.0, help="expensive work per transaction (default 10)")
    parser.add_argument("--work", choices=("cpu", "sleep"), default="cpu", help="CPU time or a sleep (default cpu)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="pause between a client's transactions, outside the lock (default 0)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma separated, of: " + ", ".join(MODES))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error("unknown mode %r" % m)
    segments = []
    with Cluster(args.proxy_bin) as cluster:
        for r in range(args.rounds):
            for mode in modes:
                s = run_segment(cluster, mode, "catalog-%s-%d" % (mode, r), args.clients, args.duration,
                                args.work_ms, args.work, args.think_ms)
                print("round %d %-14s %6.1f commits/s %5d conflicts %s" % (
                    r + 1, mode, s["commits"] / s["duration"], s["conflicts"],
                    "" if s["consistent"] else "INCONSISTENT"), file=sys.stderr)
                segments.append(s)
        replicas = cluster.replicas
    single = " (single: 1 process, 0 ms think)" if "single" in modes else ""
    print("%d ZEO client processes, %g ms of %s work per transaction, %g ms think%s, %d rounds of %gs per mode, %s%s" % (
        args.clients, args.work_ms, args.work, args.think_ms, single, args.rounds, args.duration,
        datetime.date.today().isoformat(),
        ", zlock-2proxies with --lock-replicas %d" % replicas if replicas else ""))
    rows = summarize(segments)
    print(table(rows))
    print()
    print("ms per commit, per client, in each phase of its attempts:")
    print(phase_table(rows))
    return 0 if all(s["consistent"] for s in segments) else 1


if __name__ == "__main__":
    sys.exit(main())
