# DLB reproduction. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and CI never talk to W&B or the Hugging Face hub; one thread per process (the tests spawn training
# subprocesses, and on 2 cores oversubscribed threads made them ~20x slower). tests/test_cuda.py runs its logic on the
# CPU where there is no GPU (DLB_CUDA_TESTS_ON_CPU), so it keeps working between runs on a GPU machine.
TEST_ENV := WANDB_MODE=disabled HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 DLB_CUDA_TESTS_ON_CPU=1

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo train reproduce-table1 reproduce-table2 reproduce-noise reproduce-cpu reproduce-claims-cpu report bench gpu-wheels gpu-check clean-outputs

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's|\$$(VENV)|$(VENV)|g' \
		| awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-18s %s\n", $$1, $$2}'

# `make test` and `make demo` install first when $(VENV) is missing or older than pyproject.toml (the stamp file
# records the last install), so a fresh clone needs no separate step. With PY=... given on the command line the
# interpreter is the caller's and nothing is installed.
INSTALLED := $(VENV)/.installed
NEEDS_INSTALL := $(if $(filter command line,$(origin PY)),,$(INSTALLED))
define install_venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@$(PY) -c "import torch, torchvision, hydra, timm, wandb; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| hydra', hydra.__version__, '| timm', timm.__version__, '| wandb', wandb.__version__)"
	@touch $(INSTALLED)
	@echo "Enter the environment (once per shell) to run the README's python commands: source $(VENV)/bin/activate"
endef

install: ## Create $(VENV) and install the package with pinned torch/torchvision/hydra/timm/wandb and test tools
	$(install_venv)

$(INSTALLED): pyproject.toml
	$(install_venv)

test: $(NEEDS_INSTALL) ## Run the test suite (CPU, about 15 min on 2 cores; slow tests at reduced size; installs on first use)
	$(TEST_ENV) $(PY) -m pytest -q

test-all: $(NEEDS_INSTALL) ## Run the test suite including full-size slow tests
	$(TEST_ENV) DLB_SLOW_FULL=1 $(PY) -m pytest -q

demo: $(NEEDS_INSTALL) ## CE vs DLB on Fashion-MNIST (10k train images, resnet8), ~3-5 min on 2 CPU cores (ARGS="seed=1 ...")
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py $(ARGS)

train: ## The paper's default run on a GPU: CIFAR-100, ResNet-32, DLB (ARGS="..." adds overrides)
	$(PY) -m dlb.train dataset=cifar100 backbone=resnet32 method=dlb $(ARGS)

# Sweeps write under $(SWEEP_ROOT)/<experiment>/<overrides>/, tables and plots under $(RESULTS)/<table>/.
# ARGS adds Hydra overrides to every job (launcher=slurm hydra.launcher.partition=gpu, seed=0, debug=step, ...).
SWEEP_ROOT ?= multirun
RESULTS ?= results
sweep = $(PY) -m dlb.sweep experiment=$(1) hydra.sweep.dir=$(SWEEP_ROOT)/$(1) --run $(ARGS)
report = $(PY) -m dlb.report $(addprefix $(SWEEP_ROOT)/,$(2)) --name $(1) --out $(RESULTS)/$(1) && \
	$(PY) -m dlb.plot $(addprefix $(SWEEP_ROOT)/,$(2)) --out $(RESULTS)/$(1)

reproduce-table1: ## Paper Table 1 (CIFAR-10/100, TinyImageNet x 6 backbones x 7 methods x 3 seeds), then its tables
	$(call sweep,table1_cifar10)
	$(call sweep,table1_cifar100)
	$(call sweep,table1_tinyimagenet)
	$(call report,table1,table1_cifar10 table1_cifar100 table1_tinyimagenet)

reproduce-table2: ## Augmentation compatibility (CutOut, CutMix, DDGSD with and without DLB) on CIFAR-10/100
	$(call sweep,table2_augment_cifar10)
	$(call sweep,table2_augment_cifar100)
	$(call report,table2,table2_augment_cifar10 table2_augment_cifar100)

reproduce-noise: ## Label-noise robustness (symmetric 0/20/40/60%) on CIFAR-10/100
	$(call sweep,noise_cifar10)
	$(call sweep,noise_cifar100)
	$(call report,noise,noise_cifar10 noise_cifar100)

# Tables and plots of any roots, outside the committed results/ (reports/ is gitignored).
ROOTS ?=
OUT ?= reports/$(notdir $(firstword $(ROOTS)))
report: ## Tables + plots of run folders into reports/: make report ROOTS="multirun/x outputs" [OUT=reports/x]
	@test -n "$(ROOTS)" || { echo 'usage: make report ROOTS="multirun/<experiment> ..." [OUT=reports/<name>]'; exit 2; }
	$(PY) -m dlb.report $(ROOTS) --name report --out $(OUT) && $(PY) -m dlb.plot $(ROOTS) --out $(OUT)

reproduce-cpu: ## The CPU-scale reproduction committed in results/cpu_repro (Fashion-MNIST, ~1-2 h on 2 cores)
	$(call sweep,cpu_repro)
	$(call report,cpu_repro,cpu_repro)

# The paper's five claims at CPU scale: the cpu_claim* experiments (plus DLB's T x alpha sensitivity, one seed) share
# one sweep folder, so a configuration two claims need is trained once. Each run uses one thread; two processes run
# side by side, one per core, each with its share of the seeds (dlb.sweep --part: even seeds, odd seeds); the
# sensitivity grid follows in the second (its one shared run, DLB at T=3, alpha=1, seed 0, is the first's by then).
CLAIMS := $(basename $(notdir $(sort $(wildcard configs/experiment/cpu_claim[0-9]*.yaml))))
claims_sweeps = for e in $(CLAIMS); do $(PY) -m dlb.sweep experiment=$$e hydra.sweep.dir=$(SWEEP_ROOT)/cpu_claims \
	--part $(1) --run --no-estimate $(ARGS) || exit 1; done; for e in $(2); do $(PY) -m dlb.sweep experiment=$$e \
	hydra.sweep.dir=$(SWEEP_ROOT)/cpu_claims --run --no-estimate $(ARGS) || exit 1; done
reproduce-claims-cpu: ## The paper's claims at CPU scale, into results/cpu_claims (Fashion-MNIST, 107 runs, ~2 h on 2 cores)
	( $(call claims_sweeps,0/2) ) & first=$$!; \
	( $(call claims_sweeps,1/2,cpu_dlb_sensitivity) ); rest=$$?; wait $$first && [ $$rest -eq 0 ]
	$(PY) -m dlb.report $(SWEEP_ROOT)/cpu_claims --seeds 0,1,2,3,4 --name cpu_claims --out $(RESULTS)/cpu_claims && \
	$(PY) -m dlb.plot $(SWEEP_ROOT)/cpu_claims --out $(RESULTS)/cpu_claims

bench: ## Training-speed benchmark: resnet32 CE vs DLB, batch 64, CPU, into results/bench/ (ARGS="--device cuda ...")
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) scripts/benchmark.py $(ARGS)

# A bare GPU image may have torch, timm and pytest but not Hydra: its pure-Python wheels (the versions installed here)
# travel in .whl/, and Fashion-MNIST's idx files (where this machine has them) in data/fashion-mnist for stage claims.
GPU_WHEELS = hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher submitit
gpu-wheels: ## Wheels of Hydra and its launchers into .whl/, Fashion-MNIST into data/fashion-mnist, for scripts/gpu_check.sh
	rm -rf .whl && $(PY) -m pip wheel -q --no-deps -w .whl $$($(PY) -m pip freeze | grep -iE "^($$(echo $(GPU_WHEELS) | tr ' ' '|'))==")
	@ls .whl
	@if [ -d /usr/share/datasets/fashion-mnist ]; then mkdir -p data/fashion-mnist && cp -u /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/; fi

gpu-check: ## The GPU check: tests + benchmark on a GPU machine without internet (~9 min), into results/bench/gpu_check/ (GPU_CHECK_SMOKE=1: toy, CPU)
	bash scripts/gpu_check.sh

clean-outputs: ## Remove outputs/debug (smoke runs); real runs are never deleted by make
	rm -rf outputs/debug
