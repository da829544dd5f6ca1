"""Tests run in float64 (closed forms and references are float64); float32 paths are exercised by
passing float32 arrays explicitly."""

import gc
import os

# The suite is hermetic: no program is read from or written to the per-user compilation cache that
# `import sslntk` turns on (subprocesses inherit this too). The cache itself is tested in
# tests/test_startup.py with folders of its own.
os.environ["SSLNTK_CACHE_DIR"] = "off"
# The suite's programs are small: compiling them dominates its time, running them does not. LLVM's
# optimisation level changes neither the program XLA builds nor IEEE arithmetic (no fast-math), and
# level 0 cuts the suite's CPU time by about a fifth.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


MAX_MAPPINGS = 30_000     # half of Linux's default vm.max_map_count (65530)


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:         # not Linux: nothing to count
        return 0


def _release():
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every test module's compiled programs when it ends. XLA:CPU maps memory for each
    executable it keeps; over the whole suite one process would pass the kernel's limit on memory
    mappings (`vm.max_map_count`, 65530 by default) and crash inside the compiler (measured: about
    8000 mappings after tests/test_kernels.py alone)."""
    yield
    _release()


@pytest.fixture(autouse=True)
def _release_when_near_the_mapping_limit():
    """The same within a long module, when the process holds more than `MAX_MAPPINGS` mappings."""
    yield
    if _mappings() > MAX_MAPPINGS:
        _release()
