# Two commands for a fresh clone: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: the local CPU wheel (a bare `torch` would pull a CUDA build). Never torchvision.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collects nothing; that is a failure of the suite, not a pass.
test: install
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

# The Gradio Space (spaces/) with the embedded default models, served on http://127.0.0.1:7860.
demo: install
	$(PY) -m pip install -q -e ".[demo]"
	$(PY) spaces/app.py --host 127.0.0.1 --port 7860

# Every family's benchmarks in one process -> BENCHMARKS.md and benchmarks/results/ratios.png.
# `make bench SIZES=tiny,mid THREADS=2` for the mid-size configs (minutes to tens of minutes on a laptop CPU).
bench: install
	$(PY) benchmarks/run.py --sizes $(or $(SIZES),tiny) --threads $(or $(THREADS),0)

clean:
	rm -rf $(VENV) build dist *.egg-info
