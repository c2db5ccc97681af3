# `make test` is the one command that runs the whole suite on a fresh Debian/Ubuntu machine:
# it installs what the tests need (Debian chromium, the Python test extra with the tansu broker
# wheel and moto, the snippet's npm packages, the official Segment Node SDK the end-to-end tests
# send with) and runs pytest. Tests start their own Kafka
# broker (tansu), S3 (moto server), browser and webhook receivers on loopback.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test deps typecheck run bench snippet

# One pytest-xdist worker more than cores: most of the suite's time is real time spent waiting (grace
# periods, outages, rebalances, a browser's flush interval), which a third worker overlaps on 2 cores
# (measured: 8:38 against 11:00 with two).
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

test: deps typecheck
	$(PY) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# mypy --strict over the spine and the rooms (config: [tool.mypy] in pyproject.toml)
typecheck: $(VENV)/.installed
	$(PY) -m mypy

deps: $(VENV)/.installed js-snippet/node_modules/.installed tests/sdk/node_modules/.installed
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

js-snippet/node_modules/.installed: js-snippet/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs npm; }
	cd js-snippet && npm ci --no-audit --no-fund
	touch $@

tests/sdk/node_modules/.installed: tests/sdk/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs npm; }
	cd tests/sdk && npm ci --no-audit --no-fund
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/tripwire run

snippet: js-snippet/node_modules/.installed
	cd js-snippet && npm run build

bench: deps
	$(PY) bench/collector.py
	$(PY) bench/rules.py
	$(PY) bench/backtest.py
	$(PY) bench/sink.py
	$(PY) bench/kafka_log.py
	$(PY) bench/e2e.py
