"""Send lock commands over a memcached client you already have: the proxy
answers them on the same connection as your cache commands.

Lock waits block the connection: give the client a socket timeout above
your waits (pymemcache: timeout=None or larger; python-memcached:
socket_timeout=...).
"""

from .client import Grant, lock_line, lock_name, parse_reply


def _pymemcache_command(client, line):
    # pymemcache has no public raw-command call in Debian's 3.5; _misc_cmd
    # sends lines and reads one reply line for each, raising on errors.
    try:
        return client._misc_cmd([line.encode("utf-8") + b"\r\n"], line.split()[0].encode(), False)[0].decode()
    except Exception as err:
        text = str(err)
        for word in ("NOT_LOCKED", "SERVER_ERROR", "CLIENT_ERROR"):
            if word in text:
                return text[text.index(word):]
        raise


def _python_memcached_command(client, line):
    server, _ = client._get_server(lock_name(line.split()[1]).encode("utf-8", "surrogateescape"))
    if server is None:
        return "SERVER_ERROR no server"
    server.send_cmd(line)
    reply = server.readline()
    return reply.decode("utf-8", "surrogateescape") if isinstance(reply, bytes) else reply


def _command(client, line):
    module = type(client).__module__
    if module.startswith("pymemcache"):
        return _pymemcache_command(client, line)
    if module.startswith("memcache"):
        return _python_memcached_command(client, line)
    raise TypeError("not a pymemcache or python-memcached client: %r" % client)


def lock_with(client, key, ttl=30, wait=30, owner=None, reentrant=False):
    """lock/rlock over an existing pymemcache or python-memcached client."""
    fence, ttl, count = parse_reply(_command(client, lock_line("rlock" if reentrant else "lock", key, ttl, wait, owner)))
    return Grant(lock_name(key), fence, ttl, count)


def unlock_with(client, grant):
    """unlock over an existing client; returns the levels left."""
    return parse_reply(_command(client, "unlock %s %d" % (grant.key, grant.fence)))


def extend_with(client, grant, ttl):
    """extend over an existing client."""
    return parse_reply(_command(client, "extend %s %d %d" % (grant.key, grant.fence, int(ttl))))
