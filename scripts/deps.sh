#!/usr/bin/env bash
# Installs what the tests and benchmarks run against, when it is missing:
# memcached, twemproxy (nutcracker), libmemcached's tools, the Python
# memcached clients (the Go tests run them with Debian's python3) and
# python3-venv (make venv: pytest, ZODB and ZEO come from PyPI into .venv),
# all from Debian's packages. Needs root (or sudo).
set -euo pipefail

need=()
command -v memcached >/dev/null || need+=(memcached)
command -v nutcracker >/dev/null || [ -x /usr/sbin/nutcracker ] || need+=(nutcracker)
command -v memcaslap >/dev/null || need+=(libmemcached-tools)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import memcache' 2>/dev/null || need+=(python3-memcache)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import pymemcache' 2>/dev/null || need+=(python3-pymemcache)
# Debian's python3 has no ensurepip (so no "python3 -m venv") without python3-venv.
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo=sudo; else
    echo "missing: ${need[*]}; install them with: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
echo "installing: ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
