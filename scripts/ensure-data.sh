#!/usr/bin/env bash
# Make sure Fashion-MNIST's idx files are on this machine: Debian's package when apt is usable,
# else torchvision's download into data/ where the network allows, else say how to get them.
set -euo pipefail
have() { [ -f "$1/train-images-idx3-ubyte.gz" ] && [ -f "$1/t10k-labels-idx1-ubyte.gz" ]; }
for d in "${CNNLAB_FASHION_MNIST:-/nonexistent}" /usr/share/datasets/fashion-mnist data/fashion-mnist; do
  have "$d" && exit 0
done
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Fashion-MNIST from Debian's package dataset-fashion-mnist"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    have /usr/share/datasets/fashion-mnist && exit 0
  fi
fi
echo "downloading Fashion-MNIST with torchvision into data/fashion-mnist"
if .venv/bin/python - <<'PY'
from torchvision.datasets import FashionMNIST
FashionMNIST("data/fashion-mnist", download=True)
PY
then
  mkdir -p data/fashion-mnist && cp data/fashion-mnist/FashionMNIST/raw/*.gz data/fashion-mnist/ && exit 0
fi
echo "error: Fashion-MNIST not found. Install Debian's dataset-fashion-mnist (as root: apt-get install" \
     "dataset-fashion-mnist), or put the four idx .gz files in data/fashion-mnist/" >&2
exit 1
