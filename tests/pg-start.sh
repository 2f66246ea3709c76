#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests and prints its connection URL on stdout.
#   tests/pg-start.sh DIR    DIR: an empty directory (its parent must be world-traversable, e.g. under /tmp)
# The cluster lives in DIR/data, listens only on a Unix socket in DIR (no TCP), trusts local connections and
# has superuser "lathe"; durability is off (fsync, full_page_writes): it is thrown away by tests/pg-stop.sh DIR.
# PostgreSQL refuses to run as root, so as root the server runs as an unprivileged system user: $LATHE_PG_USER,
# else "postgres" (Debian's package creates it), else "nobody". Binaries: $LATHE_PG_BIN, else the newest
# /usr/lib/postgresql/*/bin, else initdb on PATH.
# A DIR whose cluster was stopped (pg_ctl stop) is started again, with its data.
# Exit 2 (with the reason on stderr) when PostgreSQL cannot be started here: callers skip, saying why.
set -euo pipefail
dir=${1:?usage: tests/pg-start.sh DIR}
bin=${LATHE_PG_BIN:-}
if [ -z "$bin" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$bin" ] || bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
fi
if [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "pg-start: PostgreSQL server binaries not found (install Debian's postgresql: scripts/setup.sh --test)" >&2
    exit 2
fi
run=()
if [ "$(id -u)" -eq 0 ]; then
    user=${LATHE_PG_USER:-}
    if [ -z "$user" ]; then
        if id postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
    fi
    if ! id "$user" >/dev/null 2>&1; then
        echo "pg-start: running as root and no unprivileged user '$user' to run PostgreSQL as" >&2
        exit 2
    fi
    if command -v runuser >/dev/null 2>&1; then run=(runuser -u "$user" --); else run=(setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups); fi
fi
mkdir -p "$dir"
[ ${#run[@]} -eq 0 ] || chown "$user" "$dir"
chmod 0700 "$dir"
if [ -f "$dir/data/PG_VERSION" ]; then
    : # started before and stopped: start the same cluster again (tests of a database restart)
elif ! "${run[@]}" "$bin/initdb" -D "$dir/data" -U lathe -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1; then
    echo "pg-start: initdb failed (log: $dir/initdb.log):" >&2
    tail -5 "$dir/initdb.log" >&2
    exit 2
fi
opts="-c listen_addresses='' -k $dir -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
opts+=" -c max_connections=400 -c shared_buffers=32MB -c unix_socket_permissions=0777"
if ! "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null 2>&1; then
    echo "pg-start: the server did not start (log: $dir/server.log):" >&2
    tail -5 "$dir/server.log" >&2
    exit 2
fi
echo "postgresql://lathe@/postgres?host=$dir"
