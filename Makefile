# Crier: `make run` starts everything on this machine; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run worker migrate test lint format bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

install: $(INSTALLED) node_modules/.package-lock.json

run: install
	$(BIN)/flask --app wsgi crier dev

worker: install
	$(BIN)/dramatiq worker:broker --processes 1 --threads 8

migrate: install
	$(BIN)/flask --app wsgi db upgrade

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/sandbox_throughput.py --expect-rps 3000
	$(BIN)/python bench/transport.py
	$(BIN)/python bench/campaign_start.py
	$(BIN)/python bench/campaign_engine.py
	$(BIN)/python bench/operator_pages.py
	$(BIN)/python bench/api_upsert.py --expect-ratio 2

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
