#!/bin/bash
# lint.sh: the house checks (docs/architecture.md, "Checks"). Usage: scripts/lint.sh [BUILD]
#
#   format   clang-format --dry-run --Werror over the C files of src/ and tests/ (the repo's .clang-format)
#   cppcheck cppcheck's default profile over src/; accepted findings are in scripts/cppcheck/suppressions.txt,
#            each with its reason
#   layers   scripts/check-layers.py: includes (and, given BUILD with objects in BUILD/obj, symbols) against
#            the layer table of docs/architecture.md
#   weak     no `#pragma weak` or weak attribute in src/ (a registration table names its entries directly),
#            and no --whole-archive in the Makefile
#
# Prints one line per finding (file:line: what) and one summary line per check; exits 1 if any check failed.
# LINT_CHECKS=format,layers runs a subset.
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-}
CHECKS=${LINT_CHECKS:-format,cppcheck,layers,weak}
failed=()

want() { [[ ",$CHECKS," == *",$1,"* ]]; }
need() {
    command -v "$1" >/dev/null && return 0
    echo "lint: $1 not found: install it (scripts/setup.sh --test, or apt-get install $1)"
    return 1
}
report() { # name rc
    if [ "$2" -eq 0 ]; then echo "lint: $1: ok"; else echo "lint: $1: FAILED"; failed+=("$1"); fi
}

# The C files: tracked or new (not ignored), or every file when this is not a git checkout.
c_files() {
    if git rev-parse --git-dir >/dev/null 2>&1; then
        git ls-files --cached --others --exclude-standard -- 'src/*.c' 'src/*.h' 'tests/*.c' 'tests/*.h' |
            while read -r f; do [ -f "$f" ] && echo "$f"; done
    else
        find src tests -name '*.[ch]' -not -path 'tests/fixtures/*'
    fi
}

check_format() {
    need clang-format || return 1
    local rc=0 f out
    while read -r f; do
        out=$(clang-format --dry-run --Werror "$f" 2>&1) && continue
        rc=1
        echo "$out" | grep -m1 -oE "^[^:]+:[0-9]+" | sed "s|\$|: not clang-formatted (clang-format -i $f)|"
    done < <(c_files)
    return $rc
}

check_cppcheck() {
    need cppcheck || return 1
    cppcheck --quiet --error-exitcode=1 --std=c11 -D_GNU_SOURCE -Isrc -j2 \
        --library=posix --library=scripts/cppcheck/jansson.cfg \
        --suppressions-list=scripts/cppcheck/suppressions.txt \
        --template='{file}:{line}: {severity}: {message} [{id}]' src 2>&1
}

check_layers() {
    if [ -n "$BUILD" ] && [ -d "$BUILD/obj/src" ]; then
        python3 scripts/check-layers.py "$BUILD"
    else
        python3 scripts/check-layers.py
    fi
}

check_weak() {
    local rc=0
    grep -rnE '#[[:space:]]*pragma[[:space:]]+weak|__attribute__[[:space:]]*\(\([^)]*weak' src \
        --include='*.c' --include='*.h' | sed 's/$/  <- a weak reference: name the symbol directly/' | grep . &&
        rc=1
    # --whole-archive only ever served weak references; the binary links the library as the tests do.
    grep -nE '^[^#]*--whole-archive' Makefile | sed 's/^/Makefile:/; s/$/  <- link the library plainly/' |
        grep . && rc=1
    return $rc
}

want format && { check_format; report format $?; }
want cppcheck && { check_cppcheck; report cppcheck $?; }
want layers && { check_layers; report layers $?; }
want weak && { check_weak; report weak $?; }

if [ ${#failed[@]} -gt 0 ]; then
    echo "lint: failed: ${failed[*]}"
    exit 1
fi
echo "lint: all checks passed"
