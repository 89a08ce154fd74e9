# Two entry points: `make test` and `make demo`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# How torch is installed when the environment has none. On this project's machines pip finds
# the CPU build of torch 2.13.0 on local disk; elsewhere, ask PyTorch's CPU index, e.g.
#   make test TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu"
# (a plain `torch` from PyPI is a multi-GB CUDA build on Linux).
TORCH_INSTALL ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint docs demo clean gpu-wheels

# Trains Register + Cache + RAM on copy (lengths 1..10) for a few minutes on CPU, then prints
# validation (lengths 1..10) and test (lengths 21..40, generalisation) tables. Logs, the
# resolved config and checkpoints go to runs/lightning_logs/version_*/.
DEMO_STEPS ?= 800

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_INSTALL)
	$(BIN)/python -m pip install --quiet -e ".[dev,faiss,ray,docs]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest -q

# The documentation site with its API reference (mkdocs.yml) into site/. --strict: a broken
# link or a docstring griffe cannot parse fails the build (and so `make test` and CI).
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict -d site

demo: $(STAMP)
	$(BIN)/tiered fit --config experiments/tasks/copy.yaml --config experiments/stacks/cache_ram.yaml \
		--trainer.max_steps $(DEMO_STEPS) --trainer.val_check_interval 200 --evaluate_after_fit true

# Wheels for a lent GPU machine (no network there; Python 3.12 with torch and Lightning, no
# zarr): what `tiered` imports beyond them. Carry .whl/ with experiments/benchmarks/gpu_check.sh.
GPU_WHEELS ?= zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dnc==1.1.0
gpu-wheels: $(BIN)/python
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

clean:
	rm -rf $(VENV) build dist *.egg-info
