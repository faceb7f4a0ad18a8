# The two commands: `make run` (the whole system, foreground) and `make test` (the whole suite).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never

# Local development defaults; every one can be overridden from the environment.
export PJ_ENV ?= dev
export PJ_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/pj
export PJ_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export PJ_GATEWAY_PORT ?= 8080
export PJ_WEBHOOK_URL ?= http://127.0.0.1:9099/hook
export PJ_WEBHOOK_SECRET ?= pj-dev-webhook-secret
export PJ_WEBHOOK_ALLOW_PRIVATE ?= 1
DISPATCHERS ?= 1
ROLE ?= admin
SUB ?= dev-admin
TENANT ?= default

.PHONY: help venv migrate run up down token dlq dlq-replay test test-unit test-ops lint schemas bench clean

# Every target's line carries its `## description`: `make help` lists them all (tests/ops check it).
help: ## this list
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.synced: uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

venv: $(VENV)/.synced ## install the workspace into .venv (uv sync, only when the lock changed)

migrate: venv ## create the database if missing and apply migrations
	$(PY) -m pj_approvals migrate

run: venv migrate ## gateway :8080, approvals (/metrics :9101), DISPATCHERS=N dispatchers (:9102…), webhook sink :9099
	@bash ops/dev/run.sh foreground $(DISPATCHERS)

up: venv migrate ## the same in the background (logs and pid files in .run/)
	@bash ops/dev/run.sh background $(DISPATCHERS)

down: ## stop what `make up` started
	@bash ops/dev/run.sh stop

token: venv ## print a JWT for the running configuration (ROLE= SUB= TENANT=)
	@$(VENV)/bin/pj token --role $(ROLE) --sub $(SUB) --tenant $(TENANT)

dlq: venv ## list dead letters: id, original queue, reason, deliveries, age (JSON=1: as JSON)
	@$(PY) -m pj_common.deadletters list $(if $(JSON),--json)

dlq-replay: venv ## put dead letters back on their original queue (ID=<id> or ALL=1)
	@$(if $(ID)$(ALL),,$(error give ID=<dead letter id> or ALL=1))
	@$(PY) -m pj_common.deadletters replay $(if $(ALL),--all,--id $(ID))

test: venv lint ## lint, then the whole suite (needs PostgreSQL and RabbitMQ)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## the unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-ops: venv ## tests of ops/ and the docs: alert rules (promtool), compose, k8s, Grafana, make targets
	$(PY) -m pytest tests/ops $(PYTEST_ARGS)

.PHONY: chaos
CHAOS_LIFECYCLES ?= 1000
chaos: venv ## faults under load on private PostgreSQL/RabbitMQ (tests/chaos); table to .run/chaos-report.json
	PJ_CHAOS_LIFECYCLES=$(CHAOS_LIFECYCLES) PJ_CHAOS_ALL=1 $(PY) -m pytest tests/chaos -m chaos $(PYTEST_ARGS)

lint: venv ## ruff over libs, services, tests and bench; mypy --strict over libs and services
	$(PY) -m ruff check libs services tests bench
	$(PY) -m mypy -p pj_common -p pj_client -p pj_gateway -p pj_approvals -p pj_dispatcher -p pj_notifier

.PHONY: fuzz
fuzz: venv ## schemathesis against the gateway's /openapi.json on a real system, as every role (PJ_FUZZ_EXAMPLES=100)
	PJ_FUZZ_FULL=1 $(PY) -m pytest tests/fuzz $(PYTEST_ARGS)

schemas: venv ## write the message models' JSON Schemas to docs/schemas
	$(PY) -m pj_common.schemas docs/schemas

bench: venv ## throughput and latency figures to bench/results (see bench/README.md)
	$(PY) bench/run.py

.PHONY: bench-floor
bench-floor: venv ## CPU of the parts alone (FastAPI, aio-pika, psycopg) and the lifecycle floor they allow (bench/floor.py)
	$(PY) -m bench.floor

clean: ## remove .venv, .run and caches
	rm -rf $(VENV) .run .pytest_cache
