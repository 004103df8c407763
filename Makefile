# Two entry points that work on a fresh machine:
#   make demo   set up .venv, train the default model on the built-in Shakespeare corpus, plot, sample
#   make test   set up .venv, run the whole test suite
# Re-running them does no needless work: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser notebooks clean

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

# The chat page's end-to-end test drives Debian's Chromium through its own chromedriver (no browser
# download); installed once, as root or through sudo.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# The main job: train the default preset on the built-in corpus (a second `make demo` resumes the
# finished run, which returns at once), then print where the curve is and sample from the model.
demo: $(STAMP)
	if [ -f runs/demo/ckpt.pt ]; then $(VENV)/bin/llmlab train --resume runs/demo; \
	else $(VENV)/bin/llmlab train --preset shakespeare-char --data shakespeare --out runs/demo; fi
	@echo "loss curve: runs/demo/loss.png    metrics: runs/demo/metrics.jsonl"
	$(VENV)/bin/llmlab sample runs/demo --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 200

# Two pytest-xdist workers, one per core, each test file on one worker (its module fixtures load once);
# the 25 slowest tests are listed at the end.
test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile --durations 25 tests

# The guide's notebooks in JupyterLab: each notebooks/NN-topic.py (jupytext percent format, the source
# kept in git) gets its paired .ipynb (generated, ignored by git); edits in either are synced by jupytext.
notebooks: $(STAMP)
	$(PY) -m pip install -q -e ".[notebooks]"
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]-*.py
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs
