"""Finite-width networks: training throughput, batched seeds, empirical NTK against neural-tangents.

Prints (float32, digits views, BT λ = 1, MLP depth 1 ReLU, k = 4):
  1. full-batch GD steps/s at widths 1024 and 4096 on 2n = 512 views (compile excluded: the time
     of `train(steps=s0 + N)` minus `train(steps=s0)`, divided by N, both after an untimed run);
  2. 8 seeds trained together (`train_batched`: vmap on GPU/TPU, a `lax.map` inside one compiled
     call on CPU) vs one after another (`train`), same measure, ratio;
  3. empirical NTK on 2n = 512 views, width 1024: `sslntk.finite.empirical_ntk` vs neural-tangents'
     implementations 1 (Jacobian contraction) and 2 (NTK-vector products) via
     `kernels.reference_empirical_ntk`, second call of each (compiled), ratios and max rel. diff.
  4. one training step of a pre-activation ResNet (`finite.resnet(2, norm="layer")`, standard
     parametrisation, projector 1, SGD + momentum, full batch) by `finite.train` vs a plain Flax
     NNX + optax loop written here for the same ResNet (nnx.Conv / nnx.LayerNorm / nnx.Linear,
     `nnx.Optimizer`, one `nnx.jit` step per iteration, the usual practitioner's loop): time per
     step, ratio sslntk / plain (target <= 1.1), median of interleaved rounds. On CPU sslntk steps
     a convolutional model from the host (`sslntk/finite/_loop.py`; a `fori_loop` of it was
     ~6x slower there, jax-ml/jax#12868).
Run: `python benchmarks/bench_finite.py` (part of `make bench`). Sizes shrink with `--quick`;
`--no-peer` skips neural-tangents (sslntk timings only); `--resnet` runs only section 4.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sslntk import data, finite, kernels, losses

QUICK = "--quick" in sys.argv
NO_PEER = "--no-peer" in sys.argv      # sslntk only (a GPU whose JAX neural-tangents rejects)
RESNET_ONLY = "--resnet" in sys.argv


class _PlainBlock(nnx.Module):
    def __init__(self, width, rngs):
        self.n1 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.c1 = nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs)
        self.n2 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.c2 = nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, h):
        u = self.c1(jax.nn.relu(self.n1(h)))
        return h + self.c2(jax.nn.relu(self.n2(u)))


class _PlainResNet(nnx.Module):
    """The same pre-activation ResNet as finite.resnet(2, norm="layer") with projector=1."""

    def __init__(self, c_in, width, blocks, k, rngs):
        self.stem = nnx.Conv(c_in, width, (3, 3), padding="SAME", rngs=rngs)
        self.blocks = nnx.List([_PlainBlock(width, rngs) for _ in range(blocks)])
        self.n_out = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.proj = nnx.Linear(width, width, rngs=rngs)
        self.n_proj = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.out = nnx.Linear(width, k, rngs=rngs)

    def __call__(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        h = jnp.mean(jax.nn.relu(self.n_out(h)), axis=(1, 2))
        h = jax.nn.relu(self.n_proj(self.proj(h)))
        return self.out(h)


def resnet_step_times(n=128, width=64, k=16, extra=40, rounds=5):
    """Per-step seconds of `finite.train` and of the plain NNX + optax loop on the same ResNet,
    `rounds` interleaved rounds (arrays), and the stacked views' shape."""
    ds = data.load("digits", n=n, dtype=jnp.float32)
    views = data.make_views(ds.x, data.gaussian_noise(0.3), jax.random.key(0))
    x = views.stacked
    loss = losses.get("vicreg")
    lr = 1e-3
    m = finite.network(finite.resnet(2, norm="layer"), width, k, key=jax.random.key(1),
                       in_shape=x.shape[1:], param="standard", projector=1)

    def ours(s):
        return finite.train(m, views, loss, lr=lr, steps=s, optimizer="momentum",
                            ts=[0.0, lr * s], progress=False, check_lr=False).f

    plain_model = _PlainResNet(x.shape[-1], width, 2, k, nnx.Rngs(1))

    @nnx.jit
    def step(model, opt, xb):
        g = nnx.grad(lambda mm: loss(mm(xb)))(model)
        opt.update(model, g)

    def plain(s):
        model = nnx.clone(plain_model)
        opt = nnx.Optimizer(model, optax.sgd(lr, momentum=0.9), wrt=nnx.Param)
        for _ in range(s):
            step(model, opt, x)
        return nnx.state(model, nnx.Param)

    def per_step(fn):
        # steps between two run lengths: per-call setup and compilation (a new jit per `train`
        # call) cancel in the difference
        t0, _ = _timed(lambda: fn(2))
        t1, _ = _timed(lambda: fn(2 + extra))
        return (t1 - t0) / extra

    for fn in (ours, plain):                 # compile / warm both lengths
        fn(2)
        fn(2 + extra)
    a, b = [], []
    for _ in range(rounds):                  # interleaved, so drifts of machine load hit both
        a.append(per_step(ours))
        b.append(per_step(plain))
    return np.array(a), np.array(b), tuple(x.shape)


def bench_resnet():
    n, width, k = (32, 16, 8) if QUICK else (128, 64, 16)
    extra, rounds = (100 if QUICK else 40), 5
    a, b, shape = resnet_step_times(n, width, k, extra, rounds)
    print(f"ResNet (2 blocks, LayerNorm, width {width}, projector, 2n = {shape[0]}, 8x8x1, "
          f"k = {k}, SGD momentum, {rounds} interleaved rounds of {extra} steps): sslntk train "
          f"{np.median(a) * 1e3:.2f} ms/step, plain NNX+optax loop {np.median(b) * 1e3:.2f} "
          f"ms/step -> ratio {np.median(a / b):.3f} median over rounds (range "
          f"{np.min(a / b):.3f}-{np.max(a / b):.3f}; min/min {a.min() / b.min():.3f}) "
          f"(target <= 1.1)")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - t, out


def main():
    if RESNET_ONLY:
        bench_resnet()
        return
    n = 64 if QUICK else 256
    ds = data.load("digits", n=n, dtype=jnp.float32)
    views = data.make_views(ds.flat, data.gaussian_noise(0.5), jax.random.key(0))
    x = views.stacked
    arch, k = kernels.mlp(1, "relu"), 4
    loss = losses.get("barlow_twins")
    print(f"device: {jax.devices()[0].device_kind}, 2n = {x.shape[0]}, d = {x.shape[1]}, k = {k}")

    def steps_per_s(train_fn, s0, extra, rounds=3):
        # each step count once untimed first (compilation, caches), then the difference of the
        # fastest of `rounds` timed runs of each: the per-step cost without compile or setup (the
        # minimum, because on a shared machine the noise only ever adds time)
        _timed(lambda: train_fn(s0))
        _timed(lambda: train_fn(s0 + extra))
        t0 = min(_timed(lambda: train_fn(s0))[0] for _ in range(rounds))
        t1 = min(_timed(lambda: train_fn(s0 + extra))[0] for _ in range(rounds))
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
        bench_resnet()
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


    bench_resnet()


if __name__ == "__main__":
    main()
