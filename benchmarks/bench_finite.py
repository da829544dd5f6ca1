"""Finite-width networks: training throughput, batched seeds, empirical NTK against neural-tangents.

Prints (float32, digits views, BT λ = 1, MLP depth 1 ReLU, k = 4):
  1. full-batch GD steps/s at widths 1024 and 4096 on 2n = 512 views (compile excluded: the time
     of `train(steps=s0 + N)` minus `train(steps=s0)`, divided by N, both after an untimed run);
  2. 8 seeds trained together (`train_batched`: vmap on GPU/TPU, a `lax.map` inside one compiled
     call on CPU) vs one after another (`train`), same measure, ratio;
  3. empirical NTK on 2n = 512 views, width 1024: `sslntk.finite.empirical_ntk` vs neural-tangents'
     implementations 1 (Jacobian contraction) and 2 (NTK-vector products) via
     `kernels.reference_empirical_ntk`, second call of each (compiled), ratios and max rel. diff.
Run: `python benchmarks/bench_finite.py` (part of `make bench`). Sizes shrink with `--quick`;
`--no-peer` skips neural-tangents (sslntk timings only).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp

from sslntk import data, finite, kernels, losses

QUICK = "--quick" in sys.argv
NO_PEER = "--no-peer" in sys.argv      # sslntk only (a GPU whose JAX neural-tangents rejects)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - t, out


def main():
    n = 64 if QUICK else 256
    ds = data.load("digits", n=n, dtype=jnp.float32)
    views = data.make_views(ds.flat, data.gaussian_noise(0.5), jax.random.key(0))
    x = views.stacked
    arch, k = kernels.mlp(1, "relu"), 4
    loss = losses.get("barlow_twins")
    print(f"device: {jax.devices()[0].device_kind}, 2n = {x.shape[0]}, d = {x.shape[1]}, k = {k}")

    def steps_per_s(train_fn, s0, extra):
        # each step count once untimed first (compilation, caches), then the difference of the two
        # timed runs: the per-step cost without compile or setup
        _timed(lambda: train_fn(s0))
        _timed(lambda: train_fn(s0 + extra))
        t0, _ = _timed(lambda: train_fn(s0))
        t1, _ = _timed(lambda: train_fn(s0 + extra))
        if t1 <= t0:
            raise RuntimeError(f"timing: {s0 + extra} steps took no longer than {s0} ({t1:.4f}s "
                               f"vs {t0:.4f}s); raise `extra`")
        return extra / (t1 - t0)

    extra = 300 if QUICK else 60
    for w in ((256, 1024) if QUICK else (1024, 4096)):
        m = finite.network(arch, w, k, key=jax.random.key(1), in_shape=x.shape[1:], alpha=1e-2)
        sps = steps_per_s(lambda s, m=m: finite.train(m, views, loss, lr=0.01, steps=s,
                                                     key=jax.random.key(0), progress=False,
                                                     check_lr=False).f, 2, extra)
        print(f"train GD width {w:5d}: {sps:8.2f} steps/s")

    S, w = 8, (256 if QUICK else 1024)
    models = [finite.network(arch, w, k, key=jax.random.key(s), in_shape=x.shape[1:], alpha=1e-2)
              for s in range(S)]
    keys = jnp.stack([jax.random.key(s) for s in range(S)])
    state = finite.stack_models(models)
    vm = steps_per_s(lambda s: finite.train_batched(state, views, loss, lr=0.01, steps=s, keys=keys,
                                                    progress=False, check_lr=False).f, 2, extra)
    seq = steps_per_s(lambda s: [finite.train(m, views, loss, lr=0.01, steps=s, key=kk,
                                              progress=False, check_lr=False).f
                                 for m, kk in zip(models, keys, strict=True)], 2, extra)
    how = "vmap" if jax.default_backend() != "cpu" else "lax.map"
    print(f"{S} seeds width {w}: batched ({how}) {vm:.2f} steps/s (all seeds), sequential "
          f"{seq:.2f} steps/s (all seeds) -> batched/sequential speed ratio {vm / seq:.2f}")

    w = 256 if QUICK else 1024
    if NO_PEER:
        m = finite.network(arch, w, k, key=jax.random.key(2))
        _timed(lambda: finite.empirical_ntk(m, x))
        t, _ = _timed(lambda: finite.empirical_ntk(m, x))
        print(f"empirical NTK 2n={x.shape[0]} width {w}: sslntk {t:8.3f} s (peer skipped)")
        return
    init_fn, apply_fn, _ = kernels.stax_network(arch, w, k)
    _, p = init_fn(jax.random.key(2), (-1, *x.shape[1:]))
    m = finite.from_nt_params(finite.network(arch, w, k, key=jax.random.key(2),
                                             in_shape=x.shape[1:]), p)
    times, Ks = {}, {}
    runs = {"sslntk": lambda: finite.empirical_ntk(m, x)}
    for impl in (1, 2):
        runs[f"nt impl {impl}"] = (lambda impl=impl: kernels.reference_empirical_ntk(
            apply_fn, p, x, None, implementation=impl))
    for name, fn in runs.items():
        _timed(fn)                          # compile
        times[name], Ks[name] = _timed(fn)
    ref = Ks["nt impl 1"]
    for name in runs:
        diff = float(jnp.max(jnp.abs(Ks[name] - ref)) / jnp.max(jnp.abs(ref)))
        print(f"empirical NTK 2n={x.shape[0]} width {w}: {name:9s} {times[name]:8.3f} s  "
              f"(sslntk speed-up x{times[name] / times['sslntk']:.2f}, max rel diff vs impl 1 "
              f"{diff:.1e})")


if __name__ == "__main__":
    main()
