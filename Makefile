# The README's two commands: `make demo` and `make test`.
# Each creates .venv if missing and installs what is missing; re-running is fast.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.stamp-install
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint clean help

help:
	@echo "make demo       simulate a small dataset, run a micro tuning study, promote the best model"
	@echo "make test       install what is missing and run the whole test suite (slow tests included)"
	@echo "make test-fast  the default suite without slow tests (minutes)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision are pinned through the constraints file so pip never resolves an
# unpinned (multi-GB) torch from the network.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Tests marked `alone` restart Ray (the autoscaler's fake cluster runs `ray stop --force`),
# so they run in their own pytest process after everything else. Exit code 5 = none selected.
test: install
	$(PY) -m pytest -m "not alone" $(PYTEST_ARGS)
	$(PY) -m pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: install
	$(PY) -m pytest -m "not slow and not alone" $(PYTEST_ARGS)

demo: install
	$(PY) -m tuner.cli demo

clean:
	rm -rf runs data/demo
