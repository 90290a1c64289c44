# gitdeploy: `make run` and `make test` are the whole set-up on a fresh machine (Python 3.11+).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8880
WEB_CONCURRENCY ?= 2
# `make run` generates a key in $(DATA_DIR)/secret_key, which the settings read (for every manage.py
# command, not only these targets) unless SECRET_KEY or SECRET_KEY_FILE is given.
DATA_DIR := $(or $(DATA_DIR),data)

.PHONY: help install install-test run web worker migrate test lint check-migrations check-deploy ci bench \
	compose-test clean

help:
	@echo "make run      install, migrate and serve on http://$(HOST):$(PORT) with a worker (SQLite by default)"
	@echo "make test     run the test suite (DATABASE_URL=postgres://... for PostgreSQL)"
	@echo "make lint     ruff (check, format), mypy; make check-migrations; make check-deploy; make ci (what .ci/run does)"
	@echo "make compose-test  the compose stack on a real Docker engine (root; installs docker.io)"

PICK_PYTHON := pick one with PYTHON=, e.g. make run PYTHON=python3.11 (or PYTHON=/path/to/python3)

$(BIN)/python:
	@found="$$(command -v $(PYTHON))" || \
		{ echo "$(PYTHON) was not found; gitdeploy needs Python 3.11 or newer: $(PICK_PYTHON)" >&2; \
		  exit 1; }; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "gitdeploy needs Python 3.11 or newer, and $(PYTHON) ($$found) is" \
			"$$($(PYTHON) --version 2>&1): $(PICK_PYTHON)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.installed-base: requirements/base.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/base.txt
	@touch $@

$(VENV)/.installed-test: requirements/base.txt requirements/test.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/test.txt
	@touch $@ $(VENV)/.installed-base

install: $(VENV)/.installed-base
install-test: $(VENV)/.installed-test

$(DATA_DIR)/secret_key:
	@mkdir -p $(DATA_DIR)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > $@
	@echo "Created $@ (keep it; sessions are signed with it)"

migrate: install $(DATA_DIR)/secret_key
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_superuser

# Web (gunicorn, as in production) and worker side by side; Ctrl-C stops both. The worker finishes
# the sync it is running before it exits: Ctrl-C already reached both processes, so on INT we only
# wait (a second signal would make the worker abandon its sync); a TERM is passed on once.
run: migrate
	@echo "gitdeploy on http://$(HOST):$(PORT)/  (admin: /admin/, webhook: /hooks/<slug>/ or $${API_ENDPOINT:-/api/webhook})"
	@trap 'stopping=1' INT; trap 'stopping=1; kill -TERM $$web $$worker 2>/dev/null' TERM; \
	$(BIN)/python manage.py db_worker & worker=$$!; \
	WEB_BIND=$(HOST):$(PORT) WEB_CONCURRENCY=$(WEB_CONCURRENCY) $(BIN)/gunicorn & web=$$!; \
	wait -n $$web $$worker; status=$$?; \
	[ -n "$${stopping:-}" ] || kill -TERM $$web $$worker 2>/dev/null; \
	wait; exit $$status

web: migrate
	WEB_BIND=$(HOST):$(PORT) WEB_CONCURRENCY=$(WEB_CONCURRENCY) $(BIN)/gunicorn

worker: migrate
	$(BIN)/python manage.py db_worker

test: install-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check-migrations: install-test
	$(BIN)/python manage.py makemigrations --check --dry-run

# Production-like settings: DEBUG off, HTTPS behind the proxy, a real secret key.
check-deploy: install-test
	DEBUG=false HTTPS=true ALLOWED_HOSTS=deploy.example.com WEBHOOK_SECRET=check-deploy \
	SECRET_KEY_FILE= SECRET_KEY="$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		$(BIN)/python manage.py check --deploy --fail-level WARNING

# The compose stack run for real (tests/compose/run.sh): installs docker.io, debootstrap and
# docker-compose if missing, starts its own dockerd when none answers, and stops what it started.
# COMPOSE_TEST_ARGS="public private https" chooses the stacks (default: all).
compose-test: install-test
	bash tests/compose/run.sh $(COMPOSE_TEST_ARGS)

# PostgreSQL on 127.0.0.1 (BENCH_POSTGRES to change; the bench makes and drops its own database)
# and wrk (Debian's package, installed here when missing). BENCH_QUICK=1: every benchmark, small.
bench: install-test
	@command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }; }
	$(BIN)/python bench/run.py

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) staticfiles test-output .pytest_cache .ruff_cache
