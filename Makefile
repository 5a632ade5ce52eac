# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PG_TEST_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration test-system test-sqlite test-postgres lint install system-deps bench-reply clean

$(STAMP): pyproject.toml requirements/talon.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	# talon is not a dependency of replygate: only the benchmark compares with it.
	# Without its numpy/scipy/scikit-learn stack, which only its ML signature
	# classifier needs; the bench extra lists what the rest of it imports.
	$(BIN)/pip install -q --no-deps -r requirements/talon.txt
	touch $(STAMP)

install: $(STAMP)

## Seed a demo organisation on SQLite + Maildir, then run everything until Ctrl-C.
run: $(STAMP)
	$(BIN)/replygate demo
	$(BIN)/replygate serve

## Debian packages the tests drive for real (Postfix, Chromium, systemd-analyze); installed when missing.
system-deps:
	.ci/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

## The pure tier alone: no database, no sockets, no system packages.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## The store, core, workers and edges, and the attacks, on SQLite and on PostgreSQL.
test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration tests/security
	REPLYGATE_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/python -m pytest -q tests/integration tests/security

## Postfix, the browser and multi-process tests, on SQLite and on PostgreSQL.
test-system: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests/system
	REPLYGATE_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/python -m pytest -q tests/system

test-sqlite: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test-postgres: $(STAMP) system-deps
	REPLYGATE_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/python -m pytest -q

## Lint, then the whole suite on SQLite and on PostgreSQL.
test: lint test-sqlite test-postgres

bench-reply: $(STAMP)
	$(BIN)/python bench/reply_accuracy.py --corpus ../shared/corpus/reply

clean:
	rm -rf $(VENV) var
