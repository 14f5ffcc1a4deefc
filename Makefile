# medcap: two commands do all the set-up on a fresh machine:
#   make demo   the main job (creates .venv, installs, trains and evaluates on CPU)
#   make test   the test suite (creates .venv, installs, runs pytest)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export OMP_NUM_THREADS ?= $(shell nproc)

.PHONY: install demo test test-slow tiny-assets tiny-train clean

$(STAMP): requirements.txt requirements-test.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

tiny-assets: $(STAMP)
	$(PY) tools/make_tiny_assets.py --output assets/tiny

tiny-train: tiny-assets
	$(VENV)/bin/tune run recipes/full_finetune_single_device.py --config recipes/configs/medcap/tiny_cpu.yaml

demo: tiny-train

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf outputs assets
