# Two entry points a fresh machine needs (see README):
#   make reproduce   set up .venv and run the main job (gvgap reproduce --quick)
#   make test        set up .venv and run the test suite (what .ci/run calls)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch, installed only when the environment has no torch yet.
# GPU users: make TORCH_SPEC='torch' (or install your own build first).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,ray

.PHONY: setup reproduce test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

reproduce: setup
	$(VENV)/bin/gvgap reproduce --quick --out runs/quick

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check gvgap tests benchmarks
	$(VENV)/bin/ruff format --check gvgap tests benchmarks

bench: setup
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
