# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing, installs torch only when it is not importable,
# then installs showerformer with the extras the target needs.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean setup-test setup-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PIP) install --quiet -e ".[test,plot,root]"
	@touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.torch
	$(PIP) install --quiet -e ".[plot]"
	@touch $@

setup-test: $(VENV)/.installed-test
setup-demo: $(VENV)/.installed-demo

## make test: run the test suite (about 10 minutes on 2 CPU cores at most)
test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

## make demo: simulate, train, sample, evaluate and report on the built-in simulator
demo: $(VENV)/.installed-demo
	$(VENV)/bin/showerformer demo --out $(DEMO_DIR)

lint: $(VENV)/.installed-test
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check src tests benchmarks

bench: $(VENV)/.installed-test
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build dist
