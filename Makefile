# make demo: set up .venv, build the spoken demo corpus, train gin/runs/demo_cpu.gin, report, evaluate (sSC/sTC table).
# make test: set up .venv (with the test and beam extras) and run the test suite (CPU, 8 fake devices): every tier that can run here.
# make test-fast: the inner loop: deselects the slow, multiprocess, tpu_aot, espeak and gpu tiers.
# make experiment: the CPU miniature of the cross-lingual interleaving comparison (gin/experiments/crosslingual):
#   both arms under one token budget, every checkpoint evaluated, then `slm-jax compare` (under 40 min on 2 cores).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
EXP_DIR ?= runs/xl_mini
EXP_GIN := gin/experiments/crosslingual

.PHONY: demo test test-fast install clean bench espeak experiment

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -e ".[test,beam]"
	touch $(STAMP)

install: $(STAMP)

# The spoken demo corpus is synthesized with espeak-ng (a Debian package).
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng; fi; }

demo: $(STAMP) espeak
	JAX_PLATFORMS=cpu $(BIN)/slm-jax prepare demo-corpus
	JAX_PLATFORMS=cpu $(BIN)/slm-jax data stats spoken_demo_xl_mix --module_import=slm_jax_demo.tasks
	JAX_PLATFORMS=cpu $(BIN)/slm-jax train --gin_file=gin/runs/demo_cpu.gin --gin.MODEL_DIR="'$(DEMO_DIR)'"
	JAX_PLATFORMS=cpu $(BIN)/slm-jax inspect $(DEMO_DIR)
	JAX_PLATFORMS=cpu $(BIN)/slm-jax eval --gin_file=gin/runs/demo_cpu.gin --gin.MODEL_DIR="'$(DEMO_DIR)'" --benchmarks=demo --batch_size=64

experiment: $(STAMP) espeak
	JAX_PLATFORMS=cpu $(BIN)/slm-jax prepare demo-corpus
	for arm in baseline interleaved; do \
	  JAX_PLATFORMS=cpu $(BIN)/slm-jax train --gin_file=$(EXP_GIN)/mini_$$arm.gin --gin.MODEL_DIR="'$(EXP_DIR)/$$arm'" || exit 1; \
	  JAX_PLATFORMS=cpu $(BIN)/slm-jax eval --gin_file=$(EXP_GIN)/mini_$$arm.gin --gin.MODEL_DIR="'$(EXP_DIR)/$$arm'" \
	    --benchmarks=demo --all_checkpoints --batch_size=64 --no_plot || exit 1; \
	done
	JAX_PLATFORMS=cpu $(BIN)/slm-jax compare $(EXP_DIR)/baseline $(EXP_DIR)/interleaved --out=$(EXP_DIR)/compare

# Tests synthesize a small spoken corpus too, so espeak-ng must be present.
test: $(STAMP) espeak
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 tests

test-fast: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 -m "not slow and not multiprocess and not tpu_aot and not espeak and not gpu" tests

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --gin_file=gin/models/tiny.gin --steps=5

clean:
	rm -rf $(VENV) runs .pytest_cache
