#!/usr/bin/env bash
# The ONNX engine runs with no torch at all: install mimistack without extras into a fresh virtual environment,
# export graphs of a tiny random checkpoint with the main environment, and encode/decode/stream with them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=.venv/bin/python
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check .
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "torch is installed in the torch-free environment: a dependency pulled it in" >&2
  exit 1
fi
"$python" - "$work" <<'PY'
import sys
from pathlib import Path

from mimistack.engine.export import export_onnx
from mimistack.testing import write_random_checkpoint

work = Path(sys.argv[1])
export_onnx(write_random_checkpoint(work / "tiny.safetensors", "tiny"), work / "onnx")
PY
"$work/venv/bin/python" tests/no_torch_smoke.py "$work/onnx" examples/librivox_sense_and_sensibility_0870.wav
echo "no-torch check passed"
