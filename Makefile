# Two entry points: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
SIM_PORT ?= 9100

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# Starts the bundled Iterable simulator and the daemon with the shipped config.
# Ctrl-C stops both.
run: $(VENV)/.installed
	@$(BIN)/forwarder simulate-iterable --port $(SIM_PORT) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	$(BIN)/forwarder run --config $(CONFIG)

test: $(VENV)/.installed-test
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

clean:
	rm -rf $(VENV) var .pytest_cache
