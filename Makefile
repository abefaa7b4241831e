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

# make test-oldest: the same suite on the oldest releases pyproject.toml allows, in its own venv.
VENV_OLDEST ?= .venv-oldest
CONSTRAINTS_OLDEST ?= constraints/oldest.txt
TORCH_INDEX_URL ?=
PY_OLDEST := $(VENV_OLDEST)/bin/python

.PHONY: demo test lint bench clean setup-test setup-demo test-oldest setup-oldest clean-oldest

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

## make test-oldest: the suite on the lower bounds of every dependency (constraints/oldest.txt)
# The venv is rebuilt from scratch whenever pyproject.toml or the constraints change, so no newer
# release is left over from an earlier run. torch comes from TORCH_SPEC (plus TORCH_INDEX_URL
# when set) and is then pinned, so that pip cannot swap it for another build.
$(VENV_OLDEST)/.installed: pyproject.toml $(CONSTRAINTS_OLDEST)
	$(PYTHON) constraints/check_oldest.py $(CONSTRAINTS_OLDEST)
	rm -rf $(VENV_OLDEST)
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install --quiet --upgrade pip
	$(PY_OLDEST) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY_OLDEST) -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV_OLDEST)/torch.txt
	$(PY_OLDEST) -m pip install --quiet -c $(CONSTRAINTS_OLDEST) -c $(VENV_OLDEST)/torch.txt \
		-e ".[test,plot,root]"
	$(PY_OLDEST) -m pip check
	@touch $@

setup-oldest: $(VENV_OLDEST)/.installed

test-oldest: $(VENV_OLDEST)/.installed
	@$(PY_OLDEST) -c "from importlib.metadata import version; \
		pins = [s.split('==')[0] for s in open('$(CONSTRAINTS_OLDEST)') if s[0].isalnum()]; \
		print('installed:', *[p + '==' + version(p) for p in ['torch', *pins]])"
	$(PY_OLDEST) -m pytest $(PYTEST_ARGS)

clean-oldest:
	rm -rf $(VENV_OLDEST)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build dist
