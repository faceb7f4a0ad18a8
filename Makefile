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

.PHONY: help venv migrate run up down token test test-unit lint schemas clean bench

help:
	@echo "make run [DISPATCHERS=N]   start gateway, approvals, N dispatchers and a dev webhook sink (Ctrl-C stops)"
	@echo "make up / make down        the same in the background (pid files in .run/)"
	@echo "make token ROLE= SUB= TENANT=   print a JWT for the running configuration"
	@echo "make test                  the whole test suite (needs PostgreSQL and RabbitMQ)"
	@echo "make migrate               create the database if missing and apply migrations"

$(VENV)/.synced: uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

venv: $(VENV)/.synced

migrate: venv
	$(PY) -m pj_approvals migrate

run: venv migrate
	@bash ops/dev/run.sh foreground $(DISPATCHERS)

up: venv migrate
	@bash ops/dev/run.sh background $(DISPATCHERS)

down:
	@bash ops/dev/run.sh stop

token: venv
	@$(PY) -m pj_common.token --role $(ROLE) --sub $(SUB) --tenant $(TENANT)

test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check libs services tests

schemas: venv
	$(PY) -m pj_common.schemas docs/schemas

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .run .pytest_cache
