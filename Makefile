# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -g0: no debug symbols in PyTensor's compiled C modules (about 10% less compile time with a cold cache)
export PYTENSOR_FLAGS ?= base_compiledir=$(CURDIR)/.pytensor_cache,gcc__cxxflags=-g0
export MPLBACKEND ?= Agg
# make test: PyTensor's modules compile with a precompiled header of Python's and NumPy's headers (about half
# of each module's compile time; the same shared libraries), written by tests/pytensor_pch.py before pytest.
# Only with the PYTENSOR_FLAGS above: flags set in the environment are used as they are.
PYTENSOR_PCH := $(CURDIR)/.pytensor_cache/pch/pytensor_pch.h
TEST_PYTENSOR_FLAGS = $(PYTENSOR_FLAGS)$(if $(filter file,$(origin PYTENSOR_FLAGS)), -include $(PYTENSOR_PCH))

.PHONY: venv demo test test-fast bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/bayes-annot demo --out demo-output

PYTEST_RUN = $(PY) tests/pytensor_pch.py $(PYTENSOR_PCH) && \
	PYTENSOR_FLAGS='$(TEST_PYTENSOR_FLAGS)' $(PY) -m pytest -n 2 --dist worksteal --durations=25

test: $(VENV)/.installed
	$(PYTEST_RUN)

test-fast: $(VENV)/.installed
	$(PYTEST_RUN) -m "not slow"

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# crowd-kit (the peer we compare against) pins pandas < 3 and a heavy stack: it gets its own venv.
CROWDKIT_VENV ?= .venv-crowdkit
$(CROWDKIT_VENV)/.installed:
	$(PYTHON) -m venv $(CROWDKIT_VENV)
	$(CROWDKIT_VENV)/bin/pip install --quiet "crowd-kit==1.4.*" "pandas<3"
	touch $@

bench: $(VENV)/.installed $(CROWDKIT_VENV)/.installed
	CROWDKIT_PYTHON=$(CURDIR)/$(CROWDKIT_VENV)/bin/python $(PY) benchmarks/run_all.py --out docs/benchmarks.md

clean:
	rm -rf $(VENV) $(CROWDKIT_VENV) demo-output site .pytensor_cache .pytest_cache build *.egg-info
