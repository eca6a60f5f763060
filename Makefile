# Two commands: `make run` (data, train, evaluate, serve) and `make test` (ruff, mypy, pytest).
# Steps alone: `make data`, `make train`, `make evaluate`, `make serve` (serves RUN_DIR's
# checkpoint on PORT; the server prints the page's address and an example request when it is
# up). A second `make run` trains and evaluates nothing again: it serves at once.
# DATASET picks the data: melu (default), ml-1m, ml-100k, ml-latest-small, ml-25m, ml-32m;
# offline, point DATA_DIR at a folder that holds it (e.g. DATA_DIR=../shared/data/movielens).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
MELU := $(VENV)/bin/melu
# The CPU build of torch 2.13.0; a GPU user sets TORCH_SPEC / TORCH_INDEX (see README).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DATA_DIR ?= data
DATASET ?= melu
# One run folder per dataset (runs/latest stays MeLU's), so that --resume never mixes them.
RUN_DIR ?= runs/$(if $(filter melu,$(DATASET)),latest,$(DATASET))
EPOCHS ?= 30
PORT ?= 8000
# torch CPU threads (melu --threads); empty: one per core. THREADS=1 when other jobs share them.
THREADS ?=
MELU_RUN = $(MELU)$(if $(THREADS), --threads $(THREADS))
# pytest-xdist processes for `make test`, one per core of a 2-core CI machine: the suite's
# single-threaded end-to-end tests then run side by side (26.8 min one at a time on an Intel
# Xeon). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
CHECKPOINT = $(RUN_DIR)/checkpoint.pt
REPORT = $(RUN_DIR)/report.json

# A misspelt variable (`make run DATADIR=...`) was silently ignored: the run went on with the
# defaults, tried to download into data/ and failed there. Variables given on the command
# line must be these.
VARIABLES := VENV PY MELU TORCH_SPEC TORCH_INDEX DATA_DIR DATASET RUN_DIR EPOCHS PORT THREADS TEST_WORKERS
UNKNOWN := $(filter-out $(VARIABLES),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
ifneq ($(UNKNOWN),)
$(error unknown variable $(UNKNOWN); this Makefile reads $(VARIABLES))
endif

.PHONY: install data train evaluate serve check-port run test lint typecheck clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

data: install
	$(MELU_RUN) data download --dataset $(DATASET) --data-dir $(DATA_DIR)

# `melu train --resume` runs every time (it continues an interrupted run and says when a run
# has finished) but writes the checkpoint only when it trains, so the checkpoint's time stamp
# tells whether the report below is out of date. Each dataset has its own RUN_DIR, hence its
# own checkpoint and report.
train: $(CHECKPOINT)
$(CHECKPOINT): data
	$(MELU_RUN) train --dataset $(DATASET) --data-dir $(DATA_DIR) --out $(RUN_DIR) --epochs $(EPOCHS) --resume

# The evaluation (minutes) runs only when the report is missing or older than the checkpoint.
evaluate: $(REPORT)
	@echo "report: $(REPORT) and report.md beside it (newer than the checkpoint; delete report.json to evaluate again)"
$(REPORT): $(CHECKPOINT)
	$(MELU_RUN) evaluate --checkpoint $(CHECKPOINT) --data-dir $(DATA_DIR) \
		--json $(REPORT) --markdown $(RUN_DIR)/report.md

# The server itself prints the page's address and the example request (the one in README.md)
# once it listens.
SERVE = $(MELU_RUN) serve --checkpoint $(CHECKPOINT) --host 127.0.0.1 --port $(PORT)
serve: install
	$(SERVE)

# Before minutes of training: is PORT free for the server at the end of `make run`?
check-port: install
	@$(PY) -c "import socket; s = socket.socket(); \
	s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $(PORT)))" \
	2>/dev/null || { echo "make: port $(PORT) is in use; stop what runs there or pick another: make run PORT=8001" >&2; exit 1; }

# Not $(MAKE) in the recipe: make runs a line naming $(MAKE) even under `make -n`, and this
# line starts the server.
BACKGROUND_MAKE := $(MAKE)
# `make run` serves as soon as the model is trained: a missing or outdated report is computed
# meanwhile by a background `make evaluate` at the lowest CPU priority (minutes on 2 cores;
# the server's requests go first), logged to RUN_DIR/evaluate.log. Stopping the server stops
# it too; report.json is written atomically, so the next `make run` evaluates again. It has
# its own process group (setsid, where there is one), killed on exit: a background job of a
# non-interactive shell ignores Ctrl-C, and make, its shell and `melu evaluate` must all stop.
run: check-port $(CHECKPOINT)
	@if [ -f $(REPORT) ] && [ $(REPORT) -nt $(CHECKPOINT) ]; then \
		echo "report: $(REPORT) (newer than the checkpoint)"; \
	else \
		echo "evaluating in the background at low priority: log $(RUN_DIR)/evaluate.log, report $(REPORT) when it finishes (make evaluate runs it in the foreground)"; \
		$$(command -v setsid || true) nice -n 19 $(BACKGROUND_MAKE) -s evaluate \
			> $(RUN_DIR)/evaluate.log 2>&1 & \
		trap "kill -TERM -- -$$! 2>/dev/null || kill -TERM $$! 2>/dev/null || true" EXIT; \
	fi; \
	$(SERVE)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy melu service benchmarks

test: lint typecheck
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
