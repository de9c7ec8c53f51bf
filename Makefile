# The two commands of the quick start: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: dev test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

dev: $(VENV)/.installed  ## the gateway on http://127.0.0.1:7071 with the emulator as its upstream
	$(PY) scripts/dev.py

test: $(VENV)/.installed  ## the whole test suite, then the offline checks of infra/
	$(PY) -m tests.functions_runtime.venv
	$(PY) -m pytest
	bash scripts/check_infra.sh

bench: $(VENV)/.installed  ## the benchmark: bench/results/benchmark.{json,md}, latency.png (about 8 minutes)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk"; exit 1; }
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache
