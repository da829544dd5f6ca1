"""Property-based tests (hypothesis) over the public entries: kernels, losses, dynamics, theory,
metrics, finite, data and config. Random shapes, dtypes, NaN/inf, empty and odd sizes must give a
result or a ValueError/TypeError whose message names the argument: never a raw JAX/numpy error, a
hang or a silent NaN.

Profiles: `make test` runs a fixed seed (`derandomize=True`) and a few examples per property
(the file stays under about a minute on 2 cores); `make test-all` sets `SSLNTK_HYPOTHESIS=long`
for many more. Shapes are drawn from small sets, so compiled programs are reused across examples.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslntk import config, data, dynamics, finite, kernels, losses, metrics, theory

settings.register_profile("default", derandomize=True, max_examples=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.register_profile("long", derandomize=True, max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.load_profile(os.environ.get("SSLNTK_HYPOTHESIS", "default"))

DTYPES = (np.float32, np.float64)
# what a bad value is replaced with: NaN, ±inf
BAD = (np.nan, np.inf, -np.inf)


def _check_error(err: Exception, names: tuple[str, ...]):
    """A ValueError/TypeError whose message starts with (or names) one of the arguments."""
    assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert any(re.match(rf"\W*{re.escape(n)}\b", msg) or f"{n}:" in msg for n in names), msg


def _call(fn, names, *args, **kw):
    """`fn(*args, **kw)`, or None after checking that its error is an expected, named one."""
    try:
        return fn(*args, **kw)
    except (ValueError, TypeError) as e:
        _check_error(e, names)
        return None


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


@st.composite
def arrays(draw, shapes, *, dtypes=DTYPES, bad=True, scale=(0.5, 2.0)):
    """A random float array of one of `shapes`, sometimes with one NaN/inf entry (`bad`)."""
    shape = draw(st.sampled_from(shapes))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**16))
    s = draw(st.floats(*scale))
    x = (s * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    poisoned = bad and x.size > 0 and draw(st.booleans())
    if poisoned:
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(BAD))
    return x, poisoned


def _bad_array(shape_like):
    """Wrong kinds of input: integers, an empty array, a 1-D vector, a string, None."""
    return st.sampled_from([np.ones(shape_like, np.int32), np.zeros((0,) + shape_like[1:]),
                            np.ones(shape_like[-1]), "abc", None])


# ------------------------------------------------------------------------------ metrics

EMB_SHAPES = [(4, 2), (6, 3), (2, 8, 2), (5, 3), (3, 1), (1, 2), (0, 2), (4, 0)]
METRICS_2D = {
    "embedding_spectrum": metrics.embedding_spectrum,
    "effective_rank": metrics.effective_rank,
    "rankme": metrics.rankme,
    "alpha_req": metrics.alpha_req,
    "cross_correlation": metrics.cross_correlation,
    "cross_correlation_spectrum": metrics.cross_correlation_spectrum,
    "alignment": metrics.alignment,
    "uniformity": metrics.uniformity,
    "group_views": metrics.group_views,
}
# documented NaN: fewer than two fitted eigenvalues (alpha_req, k = 1)
MAY_BE_NAN = {"alpha_req"}


@pytest.mark.parametrize("name", sorted(METRICS_2D))
@given(arg=arrays(EMB_SHAPES))
def test_metrics_result_or_named_error(name, arg):
    f, poisoned = arg
    out = _call(METRICS_2D[name], ("f",), f)
    if out is None:
        return
    assert not poisoned, "a NaN/inf input gave a result"
    assert name in MAY_BE_NAN or _finite(out), (name, f.shape, out)


GROUP_SHAPES = [(3, 2, 2), (2, 3, 1), (4, 2, 3), (1, 2, 2), (3, 1, 2), (2, 2, 0), (2, 2)]


@pytest.mark.parametrize("fn", [metrics.stability, metrics.lidar, metrics.sample_means,
                                metrics.center_vector], ids=lambda f: f.__name__)
@given(arg=arrays(GROUP_SHAPES))
def test_grouped_metrics_result_or_named_error(fn, arg):
    z, poisoned = arg
    out = _call(fn, ("z", "e"), z)
    if out is not None:
        assert not poisoned and _finite(out), (fn.__name__, z.shape)


@given(arg=arrays([(5, 2), (2, 3), (1, 2), (4, 1, 2)]), threshold=st.sampled_from([0.0, 0.5, 2.0]))
def test_step_times_result_or_named_error(arg, threshold):
    s, poisoned = arg
    s = np.cumsum(np.abs(s), axis=-2).astype(s.dtype) if not poisoned else s   # rising spectra
    ts = np.linspace(0.0, 1.0, s.shape[-2]) if s.ndim >= 2 else np.zeros(1)
    out = _call(metrics.detect_steps, ("spectra", "ts", "threshold"), s, ts, threshold=threshold)
    if out is not None:
        assert not poisoned
        times, learned = np.asarray(out.times), np.asarray(out.learned)
        assert np.all(np.isfinite(times[learned])) and np.all(np.isnan(times[~learned]))


@given(bad=_bad_array((4, 2)))
def test_metrics_reject_wrong_kinds(bad):
    for fn in METRICS_2D.values():
        with pytest.raises((ValueError, TypeError)) as e:
            fn(bad)
        _check_error(e.value, ("f",))


# ------------------------------------------------------------------------------ losses

LOSS_NAMES = losses.names()


@pytest.mark.parametrize("name", LOSS_NAMES)
@given(arg=arrays([(4, 2), (6, 3), (8, 1)], bad=False))
def test_losses_finite_on_finite_embeddings(name, arg):
    f, _ = arg
    out = losses.get(name)(jnp.asarray(f))
    assert out.shape == () and np.isfinite(float(out)), (name, f.shape)


@given(name=st.sampled_from(LOSS_NAMES), const=st.sampled_from(["lam", "bogus", "tau"]),
       value=st.sampled_from([1.0, -1.0, np.nan, "x"]))
def test_loss_constants_named(name, const, value):
    _call(losses.get, (const, name, "name"), name, **{const: value})


# ------------------------------------------------------------------------------ kernels

@given(arg=arrays([(4, 3), (3, 2), (2, 5), (0, 3), (4,)]), depth=st.sampled_from([1, 2]))
def test_ntk_result_or_named_error(arg, depth):
    x, poisoned = arg
    out = _call(kernels.ntk, ("x", "x1", "x2", "X"), kernels.mlp(depth), x)
    if out is not None:
        assert not poisoned and _finite(out) and out.shape == (x.shape[0], x.shape[0])
        np.testing.assert_allclose(out, np.asarray(out).T, rtol=1e-5, atol=1e-6)


@given(depth=st.sampled_from([0, 1, -1, 2.5, "2"]), act=st.sampled_from(["relu", "tanh", 3]))
def test_arch_arguments_named(depth, act):
    _call(kernels.mlp, ("depth", "activation"), depth, activation=act)


# ------------------------------------------------------------------------------ dynamics / theory

def _problem(n, k, seed, dtype):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n, 2 * n + 2))
    K = (X @ X.T / X.shape[1]).astype(dtype)
    f0 = (1e-2 * rng.standard_normal((2 * n, k))).astype(dtype)
    return K, f0


@given(n=st.sampled_from([2, 3]), k=st.sampled_from([1, 2]), seed=st.integers(0, 99),
       dtype=st.sampled_from(DTYPES), poison=st.sampled_from([None, "K", "f0", "ts"]),
       method=st.sampled_from(["ode", "eigen", "closed_form"]))
def test_solve_result_or_named_error(n, k, seed, dtype, poison, method):
    K, f0 = _problem(n, k, seed, dtype)
    ts = np.linspace(0.0, 2.0, 4)
    if poison == "K":
        K[0, 1] = K[1, 0] = np.nan
    elif poison == "f0":
        f0[0, 0] = np.inf
    elif poison == "ts":
        ts[2] = np.nan
    tr = _call(dynamics.solve, ("K", "f0", "ts", "method", "loss"), K, "barlow_twins", f0, ts,
               method=method)
    if tr is not None:
        assert poison is None and tr.ok and _finite(tr.f) and _finite(tr.loss)


@given(n=st.sampled_from([2, 3]), k=st.sampled_from([1, 2, 7]), seed=st.integers(0, 99),
       shape=st.sampled_from(["ok", "odd", "mismatch", "1d"]))
def test_solve_and_stepwise_shapes_named(n, k, seed, shape):
    K, f0 = _problem(n, min(k, 2), seed, np.float64)
    if shape == "odd":
        K, f0 = K[:-1, :-1], f0[:-1]
    elif shape == "mismatch":
        f0 = f0[:-2]
    elif shape == "1d":
        f0 = f0[:, 0]
    ts = np.linspace(0.0, 1.0, 3)
    tr = _call(dynamics.solve, ("K", "f0", "ts", "loss"), K, "barlow_twins", f0, ts)
    th = _call(theory.stepwise, ("K", "f0", "k"), K, f0, k)
    if shape != "ok":
        assert tr is None and th is None, shape
    else:
        assert tr is not None and _finite(tr.f)
        if th is not None:
            assert np.all(np.isfinite(np.asarray(th.gammas)))


# ------------------------------------------------------------------------------ finite

@given(width=st.sampled_from([1, 4, 0, -2]), k=st.sampled_from([1, 3, 0]),
       arg=arrays([(4, 3), (4, 2), (0, 3)], dtypes=(np.float32,)))
def test_finite_network_and_ntk(width, k, arg):
    x, poisoned = arg
    net = _call(finite.network, ("width", "out_dim", "k"), kernels.mlp(1), width, k,
                key=jax.random.key(0), in_shape=(3,))
    if net is None:
        assert width < 1 or k < 1
        return
    Th = _call(finite.empirical_ntk, ("x", "x1", "x2", "inputs"), net, x)
    if Th is not None:
        assert not poisoned and x.shape[1] == 3 and x.shape[0] > 0 and _finite(Th)


# ------------------------------------------------------------------------------ data

@given(name=st.sampled_from(["gaussian_mixture", "spiked", "digits"]),
       n=st.sampled_from([2, 5, 1, 0, -3, 2.5, 5000]), seed=st.integers(0, 9))
def test_data_load_result_or_named_error(name, n, seed):
    ds = _call(data.load, ("n", "name"), name, n=n, key=jax.random.PRNGKey(seed))
    if ds is not None:
        assert ds.x.shape[0] == n and _finite(ds.x)


@given(arg=arrays([(4, 3), (2, 8, 8, 1), (0, 3), (3,)]), noise=st.sampled_from([0.0, 0.3, -1.0,
                                                                              np.nan]))
def test_make_views_result_or_named_error(arg, noise):
    x, poisoned = arg
    aug = _call(data.gaussian_noise, ("std", "sigma", "strength", "noise"), noise)
    if aug is None:
        return
    v = _call(data.make_views, ("x", "augment"), x, aug, jax.random.PRNGKey(0))
    if v is not None:
        assert not poisoned and _finite(v.stacked) and v.stacked.shape[0] == 2 * x.shape[0]


# ------------------------------------------------------------------------------ config

SCALARS = st.one_of(st.integers(-3, 2**65), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=4), st.lists(st.integers(-2, 300), max_size=3))


@given(kind=st.sampled_from(list(config.KINDS) + ["nope"]),
       section=st.sampled_from(["data", "dynamics", "finite", "phase", "loss", "arch", "seed"]),
       key=st.sampled_from(["n", "n_test", "k", "alpha", "steps", "grid", "name", "classes",
                            "depth", "lr", "x_range", "bogus"]),
       value=SCALARS)
def test_config_validate_names_the_key(kind, section, key, value):
    raw = {"kind": kind, section: value} if section == "seed" else {"kind": kind,
                                                                     section: {key: value}}
    try:
        cfg = config.validate(raw)
    except config.ConfigError as e:
        assert re.match(r"config key '[\w.\[\]]+'|config keys ", str(e)), str(e)
        assert "\n" not in str(e)
        return
    assert cfg["kind"] == kind and config.validate(cfg) == cfg


@given(text=st.sampled_from(["data.n=64", "data.n", "=3", "a..b=1", "data.name=digits",
                             "data.name=[", "seed=1=2", "loss.constants.lam=0.5"]))
def test_overrides_parse_or_name_the_flag(text):
    try:
        out = config.apply_overrides({"kind": "staircase"}, [text])
    except config.ConfigError as e:
        assert str(e).startswith("--set "), str(e)
        return
    assert isinstance(out, dict) and out["kind"] == "staircase"
