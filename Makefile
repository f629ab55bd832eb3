# VoiceFlow: `make run` serves on http://127.0.0.1:8000, `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

# The Redis/PostgreSQL pass of the suite (a spare Redis DB; pytest makes test_voiceflow).
# The embedded pass uses the same Redis DB only for tests of the shared rate limiter.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/voiceflow
TEST_REDIS_PREFIX ?= vftest

# `make cluster`: HAProxy on CLUSTER_PORT in front of three web processes, PgBouncer,
# a private Redis primary, replica and three Sentinels, and the sweeper
# (docs/scaling.md); `make cluster-down` stops it. `make cluster-roll` replaces its web
# processes one at a time (a rolling deploy).
CLUSTER_PORT ?= 8000
CLUSTER_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/voiceflow_cluster

.PHONY: install run test test-embedded test-redis test-browser lint cluster cluster-down \
	cluster-roll

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# Embedded mode: SQLite, in-memory channel layer; the production server from the Procfile.
run: install
	$(BIN)/python manage.py migrate --noinput
	PATH="$(CURDIR)/$(BIN):$$PATH" HOST=$${HOST:-127.0.0.1} PORT=$${PORT:-8000} \
		bash -c "exec $$(sed -n 's/^web: //p' Procfile)"

test: test-embedded test-redis

test-embedded: install
	env -u REDIS_URL -u DATABASE_URL TEST_REDIS_URL=$(TEST_REDIS_URL) \
		REDIS_KEY_PREFIX=$(TEST_REDIS_PREFIX) $(BIN)/pytest

# Just the chat page in Chromium (embedded mode); screenshots in artifacts/screenshots/.
test-browser: install
	env -u REDIS_URL -u DATABASE_URL $(BIN)/pytest -m browser voiceflow/tests

# Style and types: ruff (lint, format check) and mypy, configured in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-redis: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) \
		REDIS_KEY_PREFIX=$(TEST_REDIS_PREFIX) SECRET_KEY=test-only-secret-key $(BIN)/pytest

cluster: install
	$(BIN)/python deploy/cluster.py start --port $(CLUSTER_PORT) \
		--database-url $(CLUSTER_DATABASE_URL)

cluster-roll: install
	$(BIN)/python deploy/cluster.py roll

cluster-down:
	$(BIN)/python deploy/cluster.py stop
