# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv at the repo root when it is missing: torch (pinned CPU-friendly build)
# first, so that nothing pulls a multi-GB CUDA build, then mrisr with its test, demo and bundle extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mrisr-installed
TORCH := torch==2.13.0

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,demo,bundle,natural]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py

# one pytest-xdist worker per core (TEST_JOBS=0 runs the suite in one process)
TEST_JOBS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist worksteal

clean:
	rm -rf $(VENV) demo_output .pytest_cache
