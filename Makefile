# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv from the committed lock (constraints.txt) when it is missing or stale.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: an emulated AWS organisation (moto on 127.0.0.1).
demo: $(STAMP)
	$(PY) -m include.cmdb_inventory.demo

## Lint, format check, IAM template lint, then every test layer.
test: $(STAMP) lint
	$(PY) -m pytest -n 2 --dist loadgroup -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/cfn-lint -- include/iam/*.yaml

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) demo-output test-artifacts .pytest_cache .ruff_cache
