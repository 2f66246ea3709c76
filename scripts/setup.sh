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
test_pkgs=(wrk)

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
