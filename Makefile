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

.PHONY: install test lint demo clean

# Trains Register + Cache + RAM on copy (lengths 1..10) for a few minutes on CPU, then prints
# validation (lengths 1..10) and test (lengths 21..40, generalisation) tables. Logs, the
# resolved config and checkpoints go to runs/lightning_logs/version_*/.
DEMO_STEPS ?= 800

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_INSTALL)
	$(BIN)/python -m pip install --quiet -e ".[dev,faiss,ray]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/tiered fit --config experiments/tasks/copy.yaml --config experiments/stacks/cache_ram.yaml \
		--trainer.max_steps $(DEMO_STEPS) --trainer.val_check_interval 200 --evaluate_after_fit true

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

clean:
	rm -rf $(VENV) build dist *.egg-info
