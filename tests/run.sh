#!/usr/bin/env bash
# Runs every test lathe has and ends with one summary line "N passed, N failed" (tests, not files).
#   unit   build/tests/test_*        cmocka binaries
#   asan   build/asan/tests/test_*   the same, under AddressSanitizer + UBSan
#   fuzz   build/fuzz/fuzz_*         libFuzzer, LATHE_FUZZ_SECONDS each (default 8) from tests/fuzz/corpus/NAME
#   py     tests/py/test_*.py        pytest in the test virtualenv: integration (real `lathe serve`) and
#                                    PyTorch/HF references
# LATHE_TESTS=unit,py (say) runs a subset; PYTEST_ARGS passes flags to pytest (e.g. "-k catalog").
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
B=${BUILD:-build}
log_dir=$B/test-logs
mkdir -p "$log_dir"
only=",${LATHE_TESTS:-unit,asan,fuzz,py},"
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

if [[ $only == *,unit,* ]]; then
    for t in $B/tests/test_*; do
        [ -x "$t" ] || continue
        n=unit/$(basename "$t")
        "$t" >"$log_dir/$(basename "$t").log" 2>&1
        count_cmocka "$n" "$log_dir/$(basename "$t").log" $?
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

if [[ $only == *,py,* ]] && ls tests/py/test_*.py >/dev/null 2>&1; then
    venv=$(scripts/venv-path)
    export LATHE_BIN="$root/$B/lathe" LATHE_ROOT="$root"
    "$venv/bin/python" -m pytest tests/py -q -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$log_dir/pytest.log"
    line=$(grep -E '(passed|failed|error)' "$log_dir/pytest.log" | tail -1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
    e=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
    if [ -z "$line" ]; then failed=$((failed + 1)); failed_names+=("pytest (no summary)"); fi
    [ "${f:-0}" -gt 0 ] || [ "${e:-0}" -gt 0 ] && failed_names+=("pytest")
fi

[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
