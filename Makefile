# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test bench clean

$(VENV)/.runtime: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime
	rm -rf demo-in demo-out
	$(PY) -m tests.synthetic demo-in --seed 0
	$(PY) -W ignore -m pipelines.convert --input demo-in --output demo-out

test: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.test
	$(PY) -m benchmarks.convert_bench --workdir bench-data

clean:
	rm -rf demo-in demo-out bench-data .pytest_cache
