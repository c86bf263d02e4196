# Two entry points a fresh machine needs (see README):
#   make reproduce   .venv with the numpy core only (no torch, no Ray), then the main job
#   make test        .venv with the CPU build of torch + gvgap[dev,ray,torch,hf,fast], then lint
#                    and the test suite (what .ci/run calls)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
# CPU build of torch for `make test`, installed only when the environment has no torch yet
# (pinned: an unpinned torch pulls a multi-GB CUDA build).
# GPU users: make TORCH_SPEC='torch' test (or install your own build first).
TORCH_SPEC  ?= torch==2.13.0
TEST_EXTRAS ?= dev,ray,torch,hf,fast

.PHONY: setup setup-test reproduce test lint pytest bench clean

$(PY):
	$(PYTHON) -c "import sys; assert sys.version_info >= (3, 11), 'gvgap needs Python >= 3.11'"
	$(PYTHON) -m venv $(VENV)

# The main job's environment: gvgap and its numpy core (numpy, scipy, pandas, pyarrow,
# matplotlib, seaborn, tqdm, threadpoolctl).
setup: $(VENV)/.core
$(VENV)/.core: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# The test environment: everything, so CI exercises the torch / Ray / LLM paths too.
setup-test: $(VENV)/.test
$(VENV)/.test: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(TEST_EXTRAS)]"
	touch $(VENV)/.core $@

reproduce: setup
	$(VENV)/bin/gvgap reproduce --quick --out runs/quick

# `make test` = lint (ruff check + format check) then the whole test suite.
test: setup-test lint pytest

pytest: setup-test
	MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider

lint: setup-test
	$(VENV)/bin/ruff check gvgap tests benchmarks
	$(VENV)/bin/ruff format --check gvgap tests benchmarks

bench: setup-test
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
