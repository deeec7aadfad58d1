# One command to set up and run the demo, one to set up and run the tests (README).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench browser
setup: $(VENV)/.installed

# Headless Chromium renders the HTML report in its test; installed from Debian when we are root.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; the report rendering test will be skipped"; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/memscore demo

test: setup browser
	$(PY) -m pytest -q -rs

bench: setup
	$(PY) bench/run.py --quick
