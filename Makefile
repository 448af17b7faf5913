# make demo: set up .venv, build the tiny demo corpus, train gin/runs/demo_cpu.gin, report.
# make test: set up .venv and run the test suite (CPU, 8 fake devices).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/slm-jax train --gin_file=gin/runs/demo_cpu.gin --gin.MODEL_DIR="'$(DEMO_DIR)'"
	JAX_PLATFORMS=cpu $(BIN)/slm-jax inspect $(DEMO_DIR)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --gin_file=gin/models/tiny.gin --steps=5

clean:
	rm -rf $(VENV) runs .pytest_cache
