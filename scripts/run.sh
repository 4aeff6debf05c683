#!/usr/bin/env bash
# Runs the proxy on MEMCACHEDLOCK_LISTEN (default 127.0.0.1:11311). Without MEMCACHEDLOCK_SERVERS it
# starts two local cache servers (127.0.0.1:11211 and :11212) and three small
# lock servers (:11221-:11223, -M so that they never evict a lock) unless
# something already listens there, and stops them again on exit. Locks live
# on all three lock servers (--lock-replicas 3): losing one costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

args=()
if [ -z "${MEMCACHEDLOCK_SERVERS:-}" ]; then
  if ! command -v memcached >/dev/null; then
    scripts/deps.sh
  fi
  user=()
  [ "$(id -u)" -eq 0 ] && user=(-u root)
  started_locks=0
  start() { # port, extra memcached args...
    local port=$1; shift
    if listening "$port"; then
      echo "memcached: using the server already on 127.0.0.1:$port" >&2
      return 1
    fi
    memcached -l 127.0.0.1 -p "$port" -U 0 "${user[@]}" "$@" &
    pids+=($!)
    echo "memcached: started on 127.0.0.1:$port (pid $!)" >&2
  }
  for port in 11211 11212; do start "$port" || true; done
  for port in 11221 11222 11223; do start "$port" -M -m 16 && started_locks=$((started_locks + 1)) || true; done
  for _ in $(seq 50); do
    listening 11211 && listening 11212 && listening 11221 && listening 11222 && listening 11223 && break
    sleep 0.1
  done
  export MEMCACHEDLOCK_SERVERS=127.0.0.1:11211,127.0.0.1:11212
  args+=(--lock-servers 127.0.0.1:11221,127.0.0.1:11222,127.0.0.1:11223 --lock-replicas 3)
  # Lock servers this script just started hold no locks: no need to wait
  # out a recovery. Any it did not start are treated as production ones.
  [ "$started_locks" -eq 3 ] && args+=(--lock-fresh-servers)
fi
listen=${MEMCACHEDLOCK_LISTEN:-127.0.0.1:${MEMCACHEDLOCK_LISTEN_PORT:-11311}}
echo "proxy: $listen -> $MEMCACHEDLOCK_SERVERS (Ctrl-C stops everything)" >&2
bin/memcachedlock serve --listen "$listen" "${args[@]}" "$@" &
pids+=($!)
wait "${pids[-1]}"
