"""How training steps are looped: inside one compiled `lax.fori_loop`, or one compiled step per
iteration dispatched from the host.

XLA:CPU runs convolutions inside a while-loop body several times slower than the same convolution
at the top level of a compiled function (jax-ml/jax#12868, open). Measured here (JAX 0.12, 2 CPU
cores, `finite.resnet(2, norm="layer")` width 16, 2n = 64 digits views, VICReg, SGD momentum):
one step 10 ms as a jitted function called in a Python loop, 57-71 ms per step in a `fori_loop`
(79 ms for a single-trip loop; `unroll=4` and `lax.scan` 62-64 ms). For an MLP the loop is the
faster one (width 1024, 2n = 512: 3.5 ms vs 3.8 ms per step). So on CPU a model whose forward pass
contains a convolution is stepped from the host (`jax.jit` dispatch is asynchronous: the host
never waits for a step, it only queues the next one), and everything else keeps the device loop.
Both orders of evaluation give the same arithmetic per step; a run and its resumption always take
the same path, so resumed runs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from sslntk import _validate as V

#: "auto" (host loop on CPU for convolutional models), "device" (always `fori_loop`) or "host"
LOOPS = ("auto", "device", "host")


def has_convolution(fn: Callable, *args) -> bool:
    """True when the jaxpr of `fn(*args)` (traced abstractly, nothing runs) holds a convolution."""
    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            if any(walk(sub) for sub in _subjaxprs(eqn.params)):   # jit, cond, loops, remat
                return True
        return False
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _subjaxprs(params):
    for v in params.values():
        for u in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(u, "jaxpr") and hasattr(u.jaxpr, "eqns"):      # ClosedJaxpr
                yield u.jaxpr
            elif hasattr(u, "eqns"):                                  # Jaxpr
                yield u


def use_host_loop(loop: str, fn: Callable, *args) -> bool:
    """Whether to step from the host: `loop` is one of `LOOPS`; for "auto", on CPU when
    `fn(*args)` (the model's forward pass) contains a convolution."""
    V.choice("loop", loop, LOOPS)
    if loop != "auto":
        return loop == "host"
    return jax.default_backend() == "cpu" and has_convolution(fn, *args)


def make_advance(body: Callable, host: bool) -> Callable:
    """`advance(carry, start, nsteps, *consts) -> carry` running `body(step, carry, *consts)` for
    steps `start .. start + nsteps − 1`: one jitted `fori_loop` (any `nsteps`, compiled once), or,
    with `host`, a Python loop over one jitted step (compiled once; `step` is a traced int)."""
    if host:
        one = jax.jit(body)

        def advance(carry, start, nsteps, *consts):
            for i in range(int(nsteps)):
                carry = one(int(start) + i, carry, *consts)
            return carry
        return advance

    @jax.jit
    def advance(carry, start, nsteps, *consts):
        return jax.lax.fori_loop(0, nsteps, lambda i, c: body(start + i, c, *consts), carry)
    return advance
