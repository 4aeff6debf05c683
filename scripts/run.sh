#!/usr/bin/env bash
# Runs the proxy on 127.0.0.1:11311. Without MEMCACHEDLOCK_SERVERS it
# starts two local memcached servers (127.0.0.1:11211 and :11212) unless
# something already listens there, and stops them again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ -z "${MEMCACHEDLOCK_SERVERS:-}" ]; then
  if ! command -v memcached >/dev/null; then
    scripts/deps.sh
  fi
  user=()
  [ "$(id -u)" -eq 0 ] && user=(-u root)
  for port in 11211 11212; do
    if listening "$port"; then
      echo "memcached: using the server already on 127.0.0.1:$port" >&2
    else
      memcached -l 127.0.0.1 -p "$port" -U 0 "${user[@]}" &
      pids+=($!)
      echo "memcached: started on 127.0.0.1:$port (pid $!)" >&2
    fi
  done
  for _ in $(seq 50); do listening 11211 && listening 11212 && break; sleep 0.1; done
  export MEMCACHEDLOCK_SERVERS=127.0.0.1:11211,127.0.0.1:11212
fi
echo "proxy: 127.0.0.1:${MEMCACHEDLOCK_LISTEN_PORT:-11311} -> $MEMCACHEDLOCK_SERVERS (Ctrl-C stops everything)" >&2
bin/memcachedlock serve --listen "127.0.0.1:${MEMCACHEDLOCK_LISTEN_PORT:-11311}" "$@" &
pids+=($!)
wait "${pids[-1]}"
