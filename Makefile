# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv from the committed lock (constraints.txt) when it is missing or stale.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format bench clean browser redis postgres

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: an emulated AWS organisation (moto on 127.0.0.1).
demo: $(STAMP)
	$(PY) -m devtools.demo

## Benchmarks (an hour or more): the 2015 algorithm, c7n-org, the engine and `airflow dags test` side by side,
## a real scheduler against its no-op floor, merge, parse, tuning -> BENCHMARKS.md.
## BENCH_ARGS='--profile quick' for smaller worlds; '--only merge,parse' for some of it.
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

## Lint, format check, IAM template lint, the import contracts, types, then every test layer.
test: $(STAMP) lint browser redis postgres
	$(PY) -m pytest -n 2 --dist loadgroup -p no:cacheprovider $(PYTEST_ARGS)

## Debian packages some tests need, installed when missing (as root, or with sudo -n); without them those
## tests are skipped or fail with the package named. Each test starts its own server (127.0.0.1, a free
## port, a temporary directory); none uses a system service.
define apt_install
	@test -x $(1) || ! command -v apt-get >/dev/null || { \
	  echo "installing Debian's $(2) for $(3)"; S=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$S env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null \
	  || echo "warning: $(2) not installed: $(3) will not run"; }
endef

## Headless Chromium for the UI test.
browser:
	$(call apt_install,/usr/bin/chromium,chromium,the browser test)

## Redis for the Celery cluster test.
redis:
	$(call apt_install,/usr/bin/redis-server,redis-server,the Celery cluster test)

## PostgreSQL 15 for the real-scheduler and Celery tests (their metadata database).
postgres:
	$(call apt_install,/usr/lib/postgresql/15/bin/initdb,postgresql-15,the real-scheduler tests)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/cfn-lint -- include/iam/*.yaml
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .bench-venv-c7n demo-output test-artifacts .pytest_cache .ruff_cache
