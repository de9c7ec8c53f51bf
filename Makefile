# The two commands of the quick start: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `make dev GATEWAY_PORT=8081 EMULATOR_PORT=8082` when 7071 or 7072 is taken.
GATEWAY_PORT ?= 7071
EMULATOR_PORT ?= 7072

.PHONY: dev test bench clean

# Two stamps, so `make dev` installs only what the gateway and the emulator run on
# (requirements.txt) and `make test` adds the test stack (requirements-dev.txt) on top;
# either order works and neither installs twice.
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-runtime: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed-runtime

dev: $(VENV)/.installed-runtime  ## the gateway on http://127.0.0.1:$(GATEWAY_PORT) with the emulator as its upstream
	GATEWAY_PORT=$(GATEWAY_PORT) EMULATOR_PORT=$(EMULATOR_PORT) $(PY) scripts/dev.py

test: $(VENV)/.installed  ## types and lint, the whole test suite, then the offline checks of infra/
	$(PY) -m mypy
	$(PY) -m ruff check --quiet .
	$(PY) -m tests.functions_runtime.venv
	$(PY) -m pytest
	bash scripts/check_infra.sh

# The results go to bench/results/latest/ (ignored); `make bench UPDATE=1` rewrites the committed ones.
bench: $(VENV)/.installed  ## the benchmark: bench/results/latest/benchmark.{json,md}, latency.png (about 16 minutes)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk"; exit 1; }
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) bench/run.py $(if $(UPDATE),--update)

clean:
	rm -rf $(VENV) .venv-checkov .venv313 .venv313-dev .pytest_cache
