# Herald — the targets a newcomer needs. Every target sets up what it needs by itself:
# the virtualenv (.venv), Python packages, Kafka jars, the PostgreSQL cluster, topics, migrations.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help venv run demo test unit lint format bench chaos deploy-check dev-up dev-down dev-status clean

help:
	@echo "make run        bring everything up, play the demo scenarios, serve until Ctrl-C"
	@echo "make demo       play the scenarios (starting what is not running); fails if one fails"
	@echo "make test       every test (starts and stops the local stack itself)"
	@echo "make unit       only the unit tests (no broker, no database)"
	@echo "make lint       ruff (lint + format check) and mypy"
	@echo "make bench      throughput and latency of the pipeline; writes bench/results/latest.json"
	@echo "make chaos      fault run on a private stack (kills, broker/PostgreSQL restarts, poison);"
	@echo "                fails on any lost or duplicated delivery (CHAOS_ARGS=\"--events 600\")"
	@echo "make deploy-check  check deploy/ (compose, Helm chart, Prometheus rules, dashboard) with real tools"
	@echo "make dev-up     start the local stack (Kafka, PostgreSQL, SMTP sink, SMS stand-in)"
	@echo "make dev-down   stop it"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/herald run

demo: venv
	$(BIN)/herald demo --up

test: venv
	bash deploy/tools/install-prometheus.sh
	bash deploy/tools/install-chromium.sh
	bash tests/browser/install.sh
	@if [ "$${HERALD_TESTCONTAINERS:-0}" = 1 ]; then $(BIN)/python -m pip install -q -e ".[dev,testcontainers]"; fi
	$(BIN)/python -m pytest

unit: venv
	$(BIN)/python -m pytest tests/unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy herald services schemas tests bench

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Its own Kafka, PostgreSQL, SMTP sink and SMS stand-in (under .local/chaos/), never the shared
# stack; one copy of each service, then two. See tests/chaos/harness.py --help.
chaos: venv
	$(BIN)/python -m tests.chaos.harness $(CHAOS_ARGS)

# compose, the Helm chart, Prometheus rules and the dashboard, each checked by its real tool
# (installed under .local/tools the first time). See deploy/README.md.
deploy-check: venv
	bash deploy/check.sh

dev-up: venv
	$(BIN)/herald dev up

dev-down: venv
	$(BIN)/herald dev down

dev-status: venv
	$(BIN)/herald dev status

clean: dev-down
	rm -rf .local
