# Every target sets the environment up itself (uv bootstrap included), so a fresh clone needs only
# `make demo` or `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export XLA_FLAGS ?= --xla_force_host_platform_device_count=1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-all bench lint clean

setup: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet uv \
	  || python3 -m pip install --quiet --user uv
	@UV=$$(command -v uv || echo "$(UV)"); $$UV sync --frozen --quiet && touch $@

demo: setup
	$$(command -v uv || echo "$(UV)") run --frozen sslntk demo --out demo_out

test: setup
	$$(command -v uv || echo "$(UV)") run --frozen pytest -q

test-all: setup
	$$(command -v uv || echo "$(UV)") run --frozen pytest -q -m ""

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  $$(command -v uv || echo "$(UV)") run --frozen python $$b || exit 1; done

lint: setup
	$$(command -v uv || echo "$(UV)") run --frozen ruff check sslntk tests benchmarks

clean:
	rm -rf .venv demo_out .pytest_cache
