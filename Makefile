# The two commands of the README:
#   make demo   — set everything up, then run the main job (a real pipeline through a real server)
#   make test   — set everything up, then run the whole test suite (what CI runs)
#
# Setup installs exactly what uv.lock says (uv sync --locked), so every machine runs the
# versions CI ran. uv itself is pinned and installed with pip into .tools/ (only Python,
# pip and venv are assumed). `make test-latest` runs the suite on the newest versions that
# pyproject.toml allows (what `pip install nursery-pipes` gives a user today).
PYTHON     ?= python3
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
LATEST     := .venv-latest
EXTRAS     := --extra dev --extra speech --extra otel
# Never let uv download an interpreter: use the one PYTHON names.
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test test-latest lint typecheck bench bench-report protos lock clean setup nginx espeak-ng

setup: $(STAMP) nginx

# nginx, for tests/test_nginx_drain.py and benchmarks/bench_nginx.py (the real balancer of
# deploy/nginx/): from the OS package manager, once. Debian puts it in /usr/sbin.
NGINX := $(shell command -v nginx 2>/dev/null || ls /usr/sbin/nginx 2>/dev/null)
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
nginx:
ifeq ($(NGINX),)
	@command -v apt-get >/dev/null || { echo "nginx is missing: install it with your OS package manager (tests/test_nginx_drain.py needs it)"; exit 1; }
	$(SUDO) apt-get install -y --no-install-recommends nginx || $(SUDO) sh -c 'apt-get update && apt-get install -y --no-install-recommends nginx'
endif

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nursery_pipes needs Python >= 3.11; run with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --python $(PYTHON) $(EXTRAS)
	@touch $(STAMP)

# espeak-ng: a voice we did not make, for the speech tests and benchmarks (they fail without it).
espeak-ng:
	@command -v espeak-ng >/dev/null 2>&1 || { echo "installing espeak-ng (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng; }

demo: $(STAMP)
	$(BIN)/nursery-pipes demo

test: $(STAMP) nginx espeak-ng
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks scripts examples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

# The newest versions pyproject.toml allows, resolved now (uv.lock is not touched).
test-latest: $(UV) espeak-ng
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade --refresh -e '.[dev,speech,otel]'
	$(UV) pip list --python $(LATEST)/bin/python --format freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/mypy
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# Change the lock on purpose: after editing pyproject.toml, or to take newer versions.
lock: $(UV)
	$(UV) lock --python $(PYTHON)

# lint-imports: the layer contracts in pyproject.toml [tool.importlinter] (docs/design.md §1).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks scripts examples
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) espeak-ng
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

# docs/benchmarks.md and its plots (docs/benchmarks/*.png): runs the benchmarks in quick mode
# (BENCH_REPORT_ARGS=--full for full mode, --only chain,scale to select, --from-results to render
# the last benchmarks/results/*.json without running). matplotlib (the `bench` extra) is
# installed here only: `make test` and `make demo` never need it.
bench-report: $(STAMP) espeak-ng
	$(UV) sync --locked --python $(PYTHON) $(EXTRAS) --extra bench
	$(BIN)/python scripts/bench_report.py $(BENCH_REPORT_ARGS)

protos: $(STAMP)
	$(BIN)/python scripts/generate_protos.py

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
