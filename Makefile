# Two commands do all set-up on a fresh clone: `make reproduce` and `make test`.
# Extra arguments: make reproduce ARGS="--resume --only varad/03*"; make test ARGS="-k metrics".
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke
# Notebooks executed at once; each kernel then gets cores // JOBS threads (the smoke models are small, so two
# single-threaded notebooks on 2 cores finish sooner than one on both). JOBS=1 runs them one by one.
JOBS ?= 2
STAMP := $(VENV)/.adlib-installed

.PHONY: install reproduce test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m adlib reproduce --profile $(PROFILE) --jobs $(JOBS) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) results/smoke figures/smoke
