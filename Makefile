# Set-up is idempotent: a second `make` finds the venv stamp and the data and does no work.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cnnlab-installed

.PHONY: setup data demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

data: $(STAMP)
	@bash scripts/ensure-data.sh

demo: setup data
	$(VENV)/bin/cnnlab train recipes/fashion_mnist.yaml

test: setup data
	$(PY) -m pytest

bench: setup data
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/augment_throughput.py

clean:
	rm -rf runs .pytest_cache
