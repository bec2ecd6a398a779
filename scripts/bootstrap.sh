#!/usr/bin/env bash
# Sets up everything docproc needs in this checkout, once: a .venv, PyTorch, the
# project with its dev extras, and (with --services) a redis-server binary.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
log="${TMPDIR:-/tmp}/docproc-bootstrap.$$.log"
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "bootstrap: failed: $*" >&2; exit 1; }; }

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "docproc needs Python >= 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
  quiet .venv/bin/python -m pip install -q --upgrade pip
fi

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "bootstrap: installing PyTorch (CUDA build)" >&2
    quiet .venv/bin/python -m pip install -q 'torch>=2.6,<2.15'
  else
    # The CPU build; on this project's machines it is a local wheel, not a download.
    echo "bootstrap: installing PyTorch 2.13.0 (CPU)" >&2
    quiet .venv/bin/python -m pip install -q torch==2.13.0
  fi
fi

stamp=.venv/.docproc-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing docproc and its packages" >&2
  quiet .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--services" ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  quiet $sudo apt-get update -qq
  quiet env DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server
fi
rm -f "$log"
