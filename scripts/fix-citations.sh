#!/bin/bash
# fix-citations.sh: rewrites citations of the contract files that used to live outside the repository
# (../shared/SPEC.md, ENGINE.md, ARCHITECTURE.md, reference/*.md, shared/fixtures) into citations of the
# repository's own docs/ and tests/fixtures/, mechanically:
#
#   SPEC §4.6, SPEC 4.4, SPEC's, SPEC   -> docs/spec.md §4.6, docs/spec.md §4.4, docs/spec.md's, docs/spec.md
#   SPEC.md / ENGINE.md / ARCHITECTURE.md (any ../shared/ prefix) -> docs/spec.md / docs/engine.md /
#                                          docs/architecture.md
#   reference/tinker-semantics.md §N    -> docs/engine-kernels.md (its "Losses" section)
#   reference/engine-anchors.md         -> docs/engine.md
#   reference/tinker-wire.md, reference/dreadnode-training-spec.md -> docs/api.md
#   ../shared/fixtures/..., shared/fixtures/... -> tests/fixtures/...
#
# Usage: scripts/fix-citations.sh [--check] [PATH...]   (default PATHs: src tests docs README.md)
# --check changes nothing, lists the files it would change, and exits 1 if there are any. Only tracked or new
# text files are read (C, headers, Python, shell, Markdown, JSON); tests/fixtures/ (data) is left alone. A C
# file that was clang-formatted before is clang-formatted after (a longer citation may rewrap its comment).
set -eu
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
[ $# -gt 0 ] || set -- src tests docs README.md

# The rewrite, as one perl program over a whole file. Identifiers that merely contain SPEC (LT_SPEC, SPEC_x)
# and paths already under docs/ are left alone.
read -r -d '' PROG <<'PERL' || true
s{(?:\.\./)?(?:shared/)?reference/tinker-semantics\.md(?:\s*§\s*[0-9.]+)?}{docs/engine-kernels.md}g;
s{(?:\.\./)?(?:shared/)?reference/engine-anchors\.md}{docs/engine.md}g;
s{(?:\.\./)?(?:shared/)?reference/(?:tinker-wire|dreadnode-training-spec)\.md}{docs/api.md}g;
s{(?:\.\./)?(?<![\w/])shared/fixtures/}{tests/fixtures/}g;
s{(?:\.\./)?(?:shared/)?(?<![\w/.-])SPEC\.md}{docs/spec.md}g;
s{(?:\.\./)?(?:shared/)?(?<![\w/.-])ENGINE\.md}{docs/engine.md}g;
s{(?:\.\./)?(?:shared/)?(?<![\w/.-])ARCHITECTURE\.md}{docs/architecture.md}g;
s{(?<![\w/.-])SPEC (?=[0-9])}{"docs/spec.md " . ($ENV{FIX_JSON} ? "\\u00a7" : "§")}ge;
s{(?<![\w/.-])[Tt]he SPEC's}{docs/spec.md's}g;
s{(?<![\w/.-])SPEC(?![\w.])}{docs/spec.md}g;
PERL

changed=()
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in tests/fixtures/*) continue ;; esac
    json=0
    case "$f" in *.json) json=1 ;; esac # a JSON file spells § as \u00a7, as json.dumps writes it
    FIX_JSON=$json perl -0777 -pe "$PROG" "$f" >"$tmp"
    cmp -s "$f" "$tmp" && continue
    changed+=("$f")
    [ $check = 1 ] && continue
    case "$f" in
    *.c | *.h) # a citation is longer than before: let clang-format rewrap the comment, if the file was clean
        if command -v clang-format >/dev/null && clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
            cat "$tmp" >"$f"
            clang-format -i "$f"
        else
            cat "$tmp" >"$f"
            awk -v f="$f" 'length($0) > 110 && /docs\/|tests\/fixtures/ { print f ":" NR ": over 110 columns (the file was not clang-formatted before; rewrap by hand)" > "/dev/stderr" }' "$f"
        fi ;;
    *) cat "$tmp" >"$f" ;;
    esac
done < <(git ls-files --cached --others --exclude-standard -- "$@" |
    grep -E '\.(c|h|py|sh|md|json)$|(^|/)README(\.md)?$' || true)

for f in "${changed[@]+"${changed[@]}"}"; do echo "$f"; done
if [ $check = 1 ] && [ ${#changed[@]} -gt 0 ]; then exit 1; fi
exit 0
