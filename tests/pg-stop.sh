#!/usr/bin/env bash
# Stops the PostgreSQL server that tests/pg-start.sh DIR started and removes DIR.
set -uo pipefail
dir=${1:?usage: tests/pg-stop.sh DIR}
[ -d "$dir" ] || exit 0
bin=${LATHE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -n "$bin" ] || bin=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
if [ -f "$dir/data/postmaster.pid" ]; then
    owner=$(stat -c %U "$dir/data")
    run=()
    [ "$(id -u)" -ne 0 ] || run=(runuser -u "$owner" --)
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
fi
rm -rf "$dir"
