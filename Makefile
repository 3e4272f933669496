# Two commands on a fresh clone: `make repro` (the benchmark) and `make test` (the tests).
# Each creates .venv and installs the pinned project into it first, if needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test test-fast ui ui-screenshots clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# The pipeline's independent stages run concurrently on a Dask LocalCluster (pipeline/parallel.py):
# one worker per core (per GPU on a GPU node), each stage with cores // workers threads; DVC stays
# the record (dvc.lock as `dvc repro` writes it). WORKERS=1 runs one stage at a time.
WORKERS ?=

repro: $(STAMP)
	$(BIN)/python -m pipeline.parallel $(if $(WORKERS),--workers $(WORKERS))

# pytest-xdist: one test file per worker at a time (module fixtures set up once), the files in
# collection order (tests/conftest.py puts the paper smoke run first); TEST_WORKERS=1 runs serially.
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/pytest $(XDIST)

# Everything but the tests marked slow (real DVC runs, subprocess faults, the paper smoke run).
test-fast: $(STAMP)
	$(BIN)/pytest $(XDIST) -m "not slow"

# The MLflow UI, light (one web worker, no background job runner), on 127.0.0.1 only; prints a link
# per experiment that opens its runs table with the headline metric shown (pipeline/ui.py).
# UI_PORT=5001 for another port; `make ui-screenshots` saves the runs table and compare view as PNGs.
UI_PORT ?= 5000

ui: $(STAMP)
	$(BIN)/python -m pipeline.ui serve --store sqlite:///$(abspath mlflow.db) --port $(UI_PORT)

ui-screenshots: $(STAMP)
	$(BIN)/python -m pipeline.ui screenshots --store sqlite:///$(abspath mlflow.db) --out reports/ui

# The paper suite (docs/paper_suite.md) as one DVC experiment: `make paper` on a CUDA machine;
# `make paper SMOKE=1` runs its whole wiring on tiny fabricated data on a CPU in minutes.
# SET='key=value ...' adds `dvc exp run -S` overrides, e.g. SET=datasets.cifar10.recipe.epochs=600.
.PHONY: paper
paper: $(STAMP)
	$(BIN)/python -m stages.suite paper $(if $(filter 1 true yes,$(SMOKE)),--smoke,--parallel $(if $(WORKERS),--workers $(WORKERS))) $(foreach s,$(SET),-S '$(s)')
