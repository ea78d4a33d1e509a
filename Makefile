# DLB reproduction. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and CI never talk to W&B or the Hugging Face hub.
TEST_ENV := WANDB_MODE=disabled HF_HUB_OFFLINE=1

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo train clean-outputs

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

install: ## Create $(VENV) and install the package with pinned torch/torchvision/hydra/timm/wandb and test tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@$(PY) -c "import torch, torchvision, hydra, timm, wandb; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| hydra', hydra.__version__, '| timm', timm.__version__, '| wandb', wandb.__version__)"

test: ## Run the test suite (CPU, a few minutes; slow tests at reduced size)
	$(TEST_ENV) $(PY) -m pytest -q

test-all: ## Run the test suite including full-size slow tests
	$(TEST_ENV) DLB_SLOW_FULL=1 $(PY) -m pytest -q

demo: ## CE vs DLB on Fashion-MNIST (10k train images, resnet8), ~10 min on 2 CPU cores, prints a table
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

train: ## The paper's default run on a GPU: CIFAR-100, ResNet-32, DLB (ARGS="..." adds overrides)
	$(PY) -m dlb.train dataset=cifar100 backbone=resnet32 method=dlb $(ARGS)

clean-outputs: ## Remove outputs/debug (smoke runs); real runs are never deleted by make
	rm -rf outputs/debug
