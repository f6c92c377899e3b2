# The two commands of README: `make run` (install + the default cascade) and `make test`.
# `python -P`: the repo root is not put on sys.path (its folders `kernels/`, `conf/`... are not top-level modules).
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-slow

install:
	# torch first and pinned: this resolves to the CPU build; an unpinned torch would pull CUDA wheels
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,wandb,joblib,optuna]" $(foreach p,$(PLUGINS),-e $(p))

run: install
	cascade train

test: install
	$(PYTHON) -P -m pytest -m "not slow" -q

test-slow: install
	$(PYTHON) -P -m pytest -m slow -q || [ $$? -eq 5 ]
