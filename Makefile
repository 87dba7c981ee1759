# Quick start: `make demo` (set up + main job), `make test` (set up + tests), `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.symaudit-installed
DEMO_OUT ?= demo

.PHONY: demo test bench lint clean venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 resolves to the local CPU wheel, never a CUDA download.
	$(PIP) install -q -c constraints.txt "torch==2.13.0"
	$(PIP) install -q -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

venv: $(STAMP)

# one thread unless told otherwise: on 2 cores with another job running, two OpenMP threads
# made the demo's data generation 4x slower (docs/reproduce.md)
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/symaudit reproduce --preset demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP) $(VENV)/.clawpack-installed
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Clawpack: reference for benchmarks/bench_euler.py only (never needed by `make test`). Source
# build (~100 s) needs gfortran; if either step fails the benchmark skips the reference.
$(VENV)/.clawpack-installed: $(STAMP)
	command -v gfortran >/dev/null || (apt-get update -qq && apt-get install -y -qq gfortran) \
		|| echo "gfortran unavailable: bench_euler.py will skip the Clawpack reference"
	$(PIP) install -q -c constraints.txt "torch==2.13.0" numpy clawpack && touch $@ \
		|| echo "clawpack did not install: bench_euler.py will skip the Clawpack reference"

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
