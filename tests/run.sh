#!/usr/bin/env bash
# Runs every test lathe has and ends with one summary line "N passed, N failed" (tests, not files).
#   unit   build/tests/test_*        cmocka binaries
#   asan   build/asan/tests/test_*   the same, under AddressSanitizer + UBSan
#   fuzz   build/fuzz/fuzz_*         libFuzzer, LATHE_FUZZ_SECONDS each (default 8) from tests/fuzz/corpus/NAME
#   py     tests/py/test_*.py        pytest in the test virtualenv: integration (real `lathe serve`) and
#                                    PyTorch/HF references
#   lint   scripts/lint.sh           the house checks (format, cppcheck, layers, weak), one test each
# LATHE_TESTS=unit,py (say) runs a subset; PYTEST_ARGS passes flags to pytest (e.g. "-k catalog").
# PostgreSQL: the store unit tests (PG_UNIT, also under asan) and the store-touching Python files (PG_PY) run
# a second time on a throwaway PostgreSQL server (tests/pg-start.sh; or the one LATHE_TEST_PG names).
# LATHE_TEST_NO_PG=1 skips that pass; so does a machine where PostgreSQL cannot start, saying why.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
B=${BUILD:-build}
log_dir=$B/test-logs
mkdir -p "$log_dir"
only=",${LATHE_TESTS:-lint,unit,asan,fuzz,py},"
passed=0
failed=0
failed_names=()

count_cmocka() { # name logfile rc
    local p f
    p=$(grep -oE '^\[  PASSED  \] [0-9]+' "$2" | grep -oE '[0-9]+$' | tail -1)
    f=$(grep -oE '^\[  FAILED  \] [0-9]+' "$2" | grep -oE '[0-9]+$' | tail -1)
    p=${p:-0}
    f=${f:-0}
    if [ "$3" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed before its summary
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$f" -ne 0 ]; then
        failed_names+=("$1")
        echo "FAIL $1 (log: $2)"
        tail -20 "$2"
    else
        echo "ok   $1 ($p tests)"
    fi
}

PG_UNIT="test_store test_queue test_artifacts_store"
PG_PY="test_identity test_jobs test_artifacts test_worker test_authz_matrix test_dn_sdk test_cli test_admin_cli
       test_http test_crash"
pg_url=${LATHE_TEST_PG:-}
unset LATHE_TEST_PG # the first pass runs on SQLite
if [ -n "${LATHE_TEST_NO_PG:-}" ]; then
    pg_url=""
    echo "skip postgres pass (LATHE_TEST_NO_PG is set)"
elif [ -z "$pg_url" ] && { [[ $only == *,unit,* ]] || [[ $only == *,asan,* ]] || [[ $only == *,py,* ]]; }; then
    pg_dir=$(mktemp -d /tmp/lathe-pg-XXXXXX)
    if pg_url=$(tests/pg-start.sh "$pg_dir" 2>"$log_dir/pg-start.log"); then
        trap 'tests/pg-stop.sh "$pg_dir"' EXIT
    else
        pg_url=""
        echo "skip postgres pass: $(tr '\n' ' ' <"$log_dir/pg-start.log")"
        rm -rf "$pg_dir"
    fi
fi

if [[ $only == *,lint,* ]]; then
    scripts/lint.sh "$B" >"$log_dir/lint.log" 2>&1
    while read -r check verdict; do
        if [ "$verdict" = ok ]; then
            passed=$((passed + 1))
            echo "ok   lint/$check"
        else
            failed=$((failed + 1))
            failed_names+=("lint/$check")
            echo "FAIL lint/$check (log: $log_dir/lint.log)"
            grep -v '^lint: ' "$log_dir/lint.log" | head -20
        fi
    done < <(sed -nE 's/^lint: ([a-z]+): (ok|FAILED)$/\1 \2/p' "$log_dir/lint.log")
    if ! grep -qE '^lint: [a-z]+: (ok|FAILED)$' "$log_dir/lint.log"; then
        failed=$((failed + 1))
        failed_names+=("lint (no result)")
        tail -20 "$log_dir/lint.log"
    fi
fi

if [[ $only == *,unit,* ]]; then
    for t in $B/tests/test_*; do
        [ -x "$t" ] || continue
        n=unit/$(basename "$t")
        "$t" >"$log_dir/$(basename "$t").log" 2>&1
        count_cmocka "$n" "$log_dir/$(basename "$t").log" $?
    done
    for name in $PG_UNIT; do
        t=$B/tests/$name
        [ -n "$pg_url" ] && [ -x "$t" ] || continue
        LATHE_TEST_PG=$pg_url "$t" >"$log_dir/pg-$name.log" 2>&1
        count_cmocka "unit-postgres/$name" "$log_dir/pg-$name.log" $?
    done
fi

if [[ $only == *,asan,* ]]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
    for t in $B/asan/tests/test_*; do
        [ -x "$t" ] || continue
        n=asan/$(basename "$t")
        "$t" >"$log_dir/asan-$(basename "$t").log" 2>&1
        count_cmocka "$n" "$log_dir/asan-$(basename "$t").log" $?
    done
    for name in $PG_UNIT; do
        t=$B/asan/tests/$name
        [ -n "$pg_url" ] && [ -x "$t" ] || continue
        LATHE_TEST_PG=$pg_url "$t" >"$log_dir/asan-pg-$name.log" 2>&1
        count_cmocka "asan-postgres/$name" "$log_dir/asan-pg-$name.log" $?
    done
    unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
fi

if [[ $only == *,fuzz,* ]]; then
    secs=${LATHE_FUZZ_SECONDS:-8}
    for t in $B/fuzz/fuzz_*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        work=$(mktemp -d)
        [ -d "tests/fuzz/corpus/$name" ] && cp -r "tests/fuzz/corpus/$name/." "$work/"
        if "$t" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$log_dir/$name-" "$work" \
            >"$log_dir/$name.log" 2>&1; then
            passed=$((passed + 1))
            echo "ok   fuzz/$name (${secs}s, $(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log_dir/$name.log" | grep -oE '[0-9]+$' || echo '?') runs)"
        else
            failed=$((failed + 1))
            failed_names+=("fuzz/$name")
            echo "FAIL fuzz/$name (log: $log_dir/$name.log)"
            tail -30 "$log_dir/$name.log"
        fi
        rm -rf "$work"
    done
fi

count_pytest() { # name logfile
    local line p f e
    line=$(grep -E '(passed|failed|error)' "$2" | tail -1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
    e=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
    if [ -z "$line" ]; then failed=$((failed + 1)); failed_names+=("$1 (no summary)"); fi
    [ "${f:-0}" -gt 0 ] || [ "${e:-0}" -gt 0 ] && failed_names+=("$1")
}

if [[ $only == *,py,* ]] && ls tests/py/test_*.py >/dev/null 2>&1; then
    venv=$(scripts/venv-path)
    export LATHE_BIN="$root/$B/lathe" LATHE_ROOT="$root"
    "$venv/bin/python" -m pytest tests/py -q -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$log_dir/pytest.log"
    count_pytest pytest "$log_dir/pytest.log"
    if [ -n "$pg_url" ]; then
        files=()
        for name in $PG_PY; do [ -f "tests/py/$name.py" ] && files+=("tests/py/$name.py"); done
        echo "pytest on postgres: ${files[*]}"
        LATHE_TEST_STORE=postgres LATHE_TEST_PG=$pg_url "$venv/bin/python" -m pytest "${files[@]}" -q \
            -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$log_dir/pytest-postgres.log"
        count_pytest pytest-postgres "$log_dir/pytest-postgres.log"
    fi
fi

[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
