"""Tests run in float64 (closed forms and references are float64); float32 paths are exercised by
passing float32 arrays explicitly."""

import os

# The suite is hermetic: no program is read from or written to the per-user compilation cache that
# `import sslntk` turns on (subprocesses inherit this too). The cache itself is tested in
# tests/test_startup.py with folders of its own.
os.environ["SSLNTK_CACHE_DIR"] = "off"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
