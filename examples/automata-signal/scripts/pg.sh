#!/bin/sh
# PostgreSQL from the machine's own binaries, without Docker: the seed's `postgres:17` service.
# Usage: pg.sh setup DIR | start DIR PORT
# PostgreSQL refuses to run as root; as root, its files belong to and it runs as `postgres`.
set -e
cmd=$1 dir=$2
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  setup)
    mkdir -p "$dir/data"
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
    as_pg initdb -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
    ;;
  start)
    port=$3
    if [ "$(id -u)" = 0 ]; then
      exec runuser -u postgres -- postgres -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off
    fi
    exec postgres -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off
    ;;
  *) echo "usage: pg.sh setup DIR | start DIR PORT" >&2; exit 2 ;;
esac
