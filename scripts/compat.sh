#!/usr/bin/env bash
# Check convlab on the device image's version set (torch 2.11 + triton 3.6 + torchvision 0.26)
# on a CPU machine: builds .venv-compat/ once (pinned by scripts/compat-constraints.txt; torch
# 2.11.0 comes from the registry as its CUDA build, ~1.8 GB, a few minutes), then runs the kernel
# tests through Triton's interpreter and the ahead-of-time compile check (sm_80 + sm_90) in it.
#
#   bash scripts/compat.sh            # kernel tests + AOT check
#   bash scripts/compat.sh --aot-only # only the AOT check (what CI runs)
#   COMPAT_VENV=/path bash scripts/compat.sh   # build / reuse another venv
#
# The project itself is not installed into that venv: PYTHONPATH points at this checkout, and
# hydra/omegaconf/wandb stay absent, as on the device image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${COMPAT_VENV:-$ROOT/.venv-compat}
PY=$VENV/bin/python
aot_only=0
[ "${1:-}" = "--aot-only" ] && aot_only=1

if [ ! -x "$PY" ] || ! "$PY" -c "import torch, triton, torchvision" 2>/dev/null; then
  echo "== building $VENV (torch 2.11 + triton 3.6)"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
# Cheap when already satisfied; re-pins if the constraints file changed.
if [ $aot_only = 1 ]; then
  # The AOT check needs triton (and torch only for the kernels' imports): skip torchvision/pytest.
  "$PY" -m pip install -q -c scripts/compat-constraints.txt torch triton numpy
else
  "$PY" -m pip install -q -c scripts/compat-constraints.txt torch torchvision triton numpy pytest pytest-xdist \
    pytest-timeout
fi
"$PY" - <<'PY'
import torch, triton, numpy
print(f"== compat set: torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}")
PY
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
# A fresh cache: results must not come from kernels compiled by the other triton.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$(mktemp -d)}
status=0
if [ $aot_only = 0 ]; then
  echo "== kernel tests (interpreter)"
  "$PY" -m pytest -q -n "${COMPAT_WORKERS:-2}" -p no:cacheprovider -W ignore::DeprecationWarning \
    tests/ops/test_conv2d.py tests/ops/test_deform.py tests/ops/test_roi.py tests/ops/test_gather.py tests/ops/test_factory.py tests/ops/test_tf32.py \
    tests/ops/test_index64.py tests/ops/test_depthwise.py tests/ops/test_depthwise3d.py tests/ops/test_conv3d.py \
    tests/ops/test_upsample.py tests/ops/test_tma.py || status=1
fi
echo "== ahead-of-time compile check (sm_80, sm_90), triton 3.6"
"$PY" -m kernels.inspect --problems-only || status=1
exit $status
