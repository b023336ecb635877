# Two entry points: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
SIM_PORT ?= 9100
# The official JS SDKs (and esbuild) that tests/clients drives; npm installs them.
CLIENTS := tests/clients

.PHONY: run test bench lint clean wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# Starts the bundled Iterable simulator and the daemon with config.toml (the sample that
# `forwarder init` writes: forwarder/config.toml links to it).
# Ctrl-C stops both.
run: $(VENV)/.installed
	@$(BIN)/forwarder simulate-iterable --port $(SIM_PORT) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	$(BIN)/forwarder run --config $(CONFIG)

# Without npm the JS client tests skip, each naming what is missing (pytest -ra).
$(CLIENTS)/node_modules/.installed: $(CLIENTS)/package.json $(CLIENTS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(CLIENTS) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the JS client tests will skip"; fi

test: $(VENV)/.installed-test $(CLIENTS)/node_modules/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

# Lint, format and types; .ci/run runs it after the tests.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check forwarder bench tests
	$(BIN)/ruff format --check forwarder bench tests
	$(BIN)/mypy

# What a host installs (README, "Run as a systemd service"): not editable, no .venv, no var.
wheel: | $(BIN)/python
	rm -rf dist
	$(BIN)/python -m pip wheel --no-deps -w dist .

clean:
	rm -rf $(VENV) var .pytest_cache $(CLIENTS)/node_modules build dist
