# One command to set up and run the demo, one to set up and run the tests (README).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/memscore demo

test: setup
	$(PY) -m pytest -q -rs

bench: setup
	$(PY) bench/kernel.py
