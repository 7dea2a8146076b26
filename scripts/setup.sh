#!/usr/bin/env bash
# Set up mimistack for development and tests: a virtual environment in .venv with every Python package the tests
# use, the front-end build, the Node packages of the JS tests, and Debian's Chromium for the browser tests.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "mimistack needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

log "Python environment (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check "${FIND_LINKS[@]}")
"${PIP[@]}" --upgrade pip
# The CPU build of torch, pinned, before anything that could ask a resolver for a (CUDA) build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev,eval,server,corpus,export,serve-ray]"
# Packages that pin other torch/hub versions: installed without their dependencies, which are listed here.
"${PIP[@]}" --no-deps "moshi==0.2.13" "resemblyzer==0.1.4"
"${PIP[@]}" sphn einops sentencepiece rustymimi librosa webrtcvad-wheels
# transformers' MimiModel for `mimistack parity` (tests/test_parity_report.py): without its dependencies (they would
# pull another hub client and tokenizers), plus the one it imports that nothing else here installs.
"${PIP[@]}" --no-deps "transformers==5.24.0"
"${PIP[@]}" regex
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# The corpus format tests (dev extra): Hugging Face datasets, polars and DuckDB, none of which may bring a torch.
.venv/bin/python -c "import datasets, duckdb, polars, torch; assert torch.__version__.startswith('2.13.0')"

if command -v npm >/dev/null; then
  for dir in web tests/js tests/js_protocol; do
    if [ -f "$dir/package-lock.json" ]; then
      log "npm ci --prefix $dir"
      npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    fi
  done
  if [ -f web/package.json ]; then
    log "building the web app"
    npm run build --prefix web --silent
  fi
else
  echo "npm not found: the web app build and the JS tests need Node.js 20 and npm" >&2
fi

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install chromium (browser tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium for the browser tests (sudo apt-get install chromium)" >&2
  fi
fi

log "ready: . .venv/bin/activate && mimistack --help"
