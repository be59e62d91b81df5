# `make test` and `make demo` work on a fresh clone: they create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test demo lint golden bench docs lm clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned here: the 2.13.0 CPU build installs offline, an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(PY) -m jaxce demo

lint: $(STAMP)
	$(PY) -m ruff check .

golden: $(STAMP)
	$(PY) tests/golden/generate.py

# `make bench`: the cross-entropy benchmark, see benchmarks/README.md (BENCH_ARGS=--quick: a short run).
$(VENV)/.installed-bench: pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_ce.py $(BENCH_ARGS)

# `make docs`: the documentation site in docs/_build/html (Sphinx, warnings are errors),
# then the doctests of its guides. The `nn` extra is there for the workflow API pages.
$(VENV)/.installed-docs: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[nn,docs]"
	touch $@

docs: $(VENV)/.installed-docs
	$(PY) -m sphinx -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	$(PY) -m sphinx -W --keep-going -q -b doctest -d docs/_build/doctrees docs docs/_build/doctest

# `make lm`: the language-model example, see examples/lm/README.md (LM_ARGS="--runs all" adds the (D, V) tied-table runs).
$(VENV)/.installed-examples: pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e ".[examples]"
	touch $@

lm: $(VENV)/.installed-examples
	$(PY) examples/lm/train.py $(LM_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/_generated
