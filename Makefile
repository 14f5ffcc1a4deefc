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

.PHONY: install demo demo-assets demo-train demo-eval slake-cpu test test-slow tiny-assets tiny-train clean

LLM_DIR := assets/smollm2-135m-instruct
DEMO_DATA := data/synthetic_vqa
DEMO_RUN := outputs/smollm2_synthetic
TUNE := $(VENV)/bin/tune

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

# the main job: a real frozen LLM (SmolLM2-135M-Instruct) learns to read synthetic scans on CPU
demo-assets: $(STAMP)
	$(PY) tools/import_gguf.py --smollm2 --output $(LLM_DIR)
	$(PY) tools/make_synthetic_vqa.py --output $(DEMO_DATA) --num-images 400 --splits 0.85 0.05 0.1

demo-train: demo-assets
	rm -rf $(DEMO_RUN)
	$(TUNE) run recipes/full_finetune_single_device.py --config recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml \
		llm_dir=$(LLM_DIR) data_dir=$(DEMO_DATA) output_dir=$(DEMO_RUN)

demo-eval:
	$(TUNE) run recipes/generate.py --config recipes/configs/medcap/generate_smollm2_synthetic_cpu.yaml \
		run_dir=$(DEMO_RUN) data_dir=$(DEMO_DATA)
	$(PY) tools/demo_summary.py --run-dir $(DEMO_RUN) --data-dir $(DEMO_DATA)

demo: demo-train
	$(MAKE) demo-eval

# real data on CPU: SLAKE English (../shared/data/slake or $MEDCAP_DATA/slake), train + evaluate + blank-image ablation
SHARED_DATA ?= $(if $(MEDCAP_DATA),$(MEDCAP_DATA),../shared/data)
SLAKE_DATA := data/slake
SLAKE_RUN := outputs/smollm2_slake
slake-cpu: $(STAMP)
	$(PY) tools/import_gguf.py --smollm2 --output $(LLM_DIR)
	$(PY) tools/convert_to_sharegpt.py --dataset slake --input $(SHARED_DATA)/slake --output '$(SLAKE_DATA)/slake_{split}.json'
	rm -rf $(SLAKE_RUN)
	$(TUNE) run recipes/full_finetune_single_device.py --config recipes/configs/medcap/smollm2_135M_slake_cpu.yaml \
		llm_dir=$(LLM_DIR) data_dir=$(SLAKE_DATA) output_dir=$(SLAKE_RUN)
	$(TUNE) run recipes/generate.py --config recipes/configs/medcap/generate_smollm2_slake_cpu.yaml \
		run_dir=$(SLAKE_RUN) data_dir=$(SLAKE_DATA) checkpoints=last
	$(TUNE) run recipes/generate.py --config recipes/configs/medcap/generate_smollm2_slake_cpu.yaml \
		run_dir=$(SLAKE_RUN) data_dir=$(SLAKE_DATA) checkpoints=last blank_images=True output_dir=$(SLAKE_RUN)/eval_blank
	$(PY) tools/demo_summary.py --run-dir $(SLAKE_RUN) --train-json $(SLAKE_DATA)/slake_train.json \
		--test-json $(SLAKE_DATA)/slake_test.json --extra-eval "blank images=$(SLAKE_RUN)/eval_blank"

# benchmarks against the Hugging Face LLaVA peer (bench/README.md, docs/perf.md): bench-only requirements
.PHONY: bench-install
bench-install: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf outputs assets
