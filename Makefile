# Two commands: `make run` (data, train, evaluate, serve) and `make test` (ruff, mypy, pytest).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
MELU := $(VENV)/bin/melu
# The CPU build of torch 2.13.0; a GPU user sets TORCH_SPEC / TORCH_INDEX (see README).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DATA_DIR ?= data
RUN_DIR ?= runs/latest
EPOCHS ?= 30
PORT ?= 8000

.PHONY: install data train evaluate serve run test lint typecheck clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

data: install
	$(MELU) data download --dataset melu --data-dir $(DATA_DIR)

train: data
	$(MELU) train --dataset melu --data-dir $(DATA_DIR) --out $(RUN_DIR) --epochs $(EPOCHS) --resume

evaluate: train
	$(MELU) evaluate --checkpoint $(RUN_DIR)/checkpoint.pt --data-dir $(DATA_DIR) \
		--json $(RUN_DIR)/report.json --markdown $(RUN_DIR)/report.md

serve: install
	@echo "try: curl -s localhost:$(PORT)/recommend -H 'content-type: application/json' \
	-d '{\"ratings\": [{\"item_id\": 1193, \"rating\": 5}, {\"item_id\": 2355, \"rating\": 4}, {\"item_id\": 1, \"rating\": 3}], \"k\": 5}'"
	$(MELU) serve --checkpoint $(RUN_DIR)/checkpoint.pt --host 127.0.0.1 --port $(PORT)

run: evaluate serve

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy melu service

test: lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
