# Every target sets the environment up itself (uv bootstrap included), so a fresh clone needs only
# `make demo` or `make test`.
#   PYTHON=3.11 make test   the same in a second environment (.venv-3.11) on another Python
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export XLA_FLAGS ?= --xla_force_host_platform_device_count=1
export PYTHONUNBUFFERED := 1
# Python: a version or a path; empty takes the newest supported one found (tools/find_python).
PYTHON ?=
PYTEST_ARGS ?=
# The suite runs on every core (pytest-xdist, one file per worker at a time: module fixtures are
# built once); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
VENV := $(if $(PYTHON),.venv-$(notdir $(PYTHON)),.venv)
export UV_PROJECT_ENVIRONMENT := $(VENV)
RUN = $$(command -v uv || echo "$(UV)") run --frozen

.PHONY: setup demo test test-all bench bench-full bench-gpu lint docs clean

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock tools/find_python
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet uv \
	  || python3 -m pip install --quiet --user uv
	@UV=$$(command -v uv || echo "$(UV)"); PY=$$(tools/find_python "$(PYTHON)") || exit 1; \
	  echo "sslntk environment $(VENV): $$PY"; \
	  $$UV sync --frozen --quiet --python "$$PY" && $(VENV)/bin/python -m compileall -q sslntk \
	  && touch $@

demo: setup
	$(RUN) sslntk demo --out demo_out

test: setup
	$(RUN) pytest -q $(XDIST) $(PYTEST_ARGS)

test-all: setup
	SSLNTK_HYPOTHESIS=long $(RUN) pytest -q -m "" $(XDIST) $(PYTEST_ARGS)

# The headline table (minutes): every row a ratio against the peer, measured side by side;
# JSON + PNG under benchmarks/results/.
bench: setup
	$(RUN) python benchmarks/headline.py

# Every benchmark at full size (hours on 2 CPU cores).
bench-full: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(RUN) python $$b || exit 1; done

# The documentation site into site/ (mkdocs.yml): strict (a warning fails the build), the notebooks
# executed at their small size so that their pages show their figures.
docs: setup
	SSLNTK_NOTEBOOK_SMALL=1 SSLNTK_DOCS_EXECUTE=true NO_MKDOCS_2_WARNING=1 $(RUN) mkdocs build --strict
# On a machine with an NVIDIA GPU: the CUDA 12 build of the same JAX, then the headline rows at
# 2n = 8192 and 32768 and the low-rank 2n = 131072 row (a few minutes).
bench-gpu:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet uv
	UV_PROJECT_ENVIRONMENT=.venv-gpu $$(command -v uv || echo "$(UV)") sync --frozen --quiet --extra cuda12
	UV_PROJECT_ENVIRONMENT=.venv-gpu $$(command -v uv || echo "$(UV)") run --frozen --extra cuda12 python benchmarks/headline.py --gpu

lint: setup
	$(RUN) ruff check sslntk tests benchmarks

clean:
	rm -rf .venv .venv-* demo_out .pytest_cache site .cache
