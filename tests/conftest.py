"""Tests run in float64 (closed forms and references, DESIGN.md "Precision"); float32 paths are
exercised by passing float32 arrays explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
