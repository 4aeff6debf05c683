"""Fixtures: a real memcached and a real proxy on free loopback ports."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc):
    for _ in range(500):
        if proc.poll() is not None:
            raise RuntimeError("process exited: %s" % proc.args)
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("nothing listens on %d" % port)


def start(args, port):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


@pytest.fixture(scope="session")
def memcached():
    binary = shutil.which("memcached")
    if binary is None:
        pytest.fail("memcached is not installed (apt-get install memcached)")
    port = free_port()
    args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = start(args, port)
    yield "127.0.0.1:%d" % port
    proc.kill()
    proc.wait()


def proxy_binary():
    binary = os.environ.get("MEMCACHEDLOCK_BIN", os.path.join(ROOT, "bin", "memcachedlock"))
    if not os.path.exists(binary):
        pytest.fail("proxy binary %s missing: run make build" % binary)
    return binary


def fresh_servers_flag():
    """The memcached servers here were just started for the test: say so
    to a proxy that would otherwise refuse locks on them for a while."""
    help_text = subprocess.run([proxy_binary(), "serve", "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True).stdout
    return ["--lock-fresh-servers"] if "--lock-fresh-servers" in help_text else []


def start_proxy(servers, *flags, port=None):
    """A proxy in front of servers, on port or a free one: (process, address)."""
    port = port or free_port()
    proc = start([proxy_binary(), "serve", "--listen", "127.0.0.1:%d" % port, "--servers", servers,
                  "--log-level", "warn"] + fresh_servers_flag() + list(flags), port)
    return proc, "127.0.0.1:%d" % port


@pytest.fixture
def restartable_proxy(memcached):
    """A proxy of its own: (address, restart), where restart kills it (-9)
    and starts a new one on the same address."""
    proc, addr = start_proxy(memcached)
    procs = [proc]

    def restart():
        procs[0].kill()
        procs[0].wait()
        procs[0], _ = start_proxy(memcached, port=int(addr.rpartition(":")[2]))
    yield addr, restart
    procs[0].terminate()
    procs[0].wait()


@pytest.fixture
def proxy_with():
    """Starts proxies with extra flags; stops them after the test."""
    procs = []

    def starter(servers, *flags):
        proc, addr = start_proxy(servers, *flags)
        procs.append(proc)
        return addr
    yield starter
    for proc in procs:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="session")
def proxy(memcached):
    proc, addr = start_proxy(memcached)
    old = os.environ.get("MEMCACHEDLOCK_ADDR")
    os.environ["MEMCACHEDLOCK_ADDR"] = addr
    yield addr
    if old is None:
        del os.environ["MEMCACHEDLOCK_ADDR"]
    else:
        os.environ["MEMCACHEDLOCK_ADDR"] = old
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def cluster():
    """memcached, proxies and a ZEO server, as the ZODB benchmark runs them."""
    pytest.importorskip("ZEO", reason="the zodb extra: pip install './clients/python[zodb]'")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import zodb_bench
    with zodb_bench.Cluster(proxy_binary()) as c:
        yield c
