"""Tests for sslntk.kernels: infinite-width kernels, contrastive spectra, PSD checks and the
neural-tangents reference wrappers.

References: closed forms in float64 numpy (arc-cosine / arcsine kernels), neural-tangents'
`kernel_fn` / `empirical_ntk_fn` / `predict.gradient_descent`, explicit random features, and an RK4
integrator. Tolerances are justified next to each assertion.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import kernels as K_
from sslntk import losses
from sslntk.kernels import _assembly


def rel(a, b) -> float:
    """max |a − b| / max |b| (a kernel's scale is its largest entry)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def normal(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


# ------------------------------------------------------------------------------------------------
# closed forms (own float64 numpy implementation)
# ------------------------------------------------------------------------------------------------

def _one_hidden_closed_form(act, x1, x2, W_std, b_std):
    """NNGP and NTK of Dense(W_std, b_std) → act → Dense(W_std, b_std), NTK parametrisation.

    Layer 1: Σ = σ_w² x·x'/d + σ_b² = ⟨u, v⟩ with u = (σ_w x/√d, σ_b).
    ReLU (Cho & Saul 2009): E[φφ] = |u||v| (sin θ + (π − θ) cos θ)/2π, E[φ'φ'] = (π − θ)/2π.
    erf (Williams 1997): E[φφ] = (2/π) arcsin(2Σ / √((1+2q)(1+2q'))),
                         E[φ'φ'] = (4/π) / √((1+2q)(1+2q') − 4Σ²).
    Readout: NNGP = σ_w² E[φφ] + σ_b², NTK = NNGP + σ_w² E[φ'φ'] Σ.
    """
    d = x1.shape[1]
    u = np.hstack([W_std * x1 / np.sqrt(d), np.full((len(x1), 1), b_std)])
    v = np.hstack([W_std * x2 / np.sqrt(d), np.full((len(x2), 1), b_std)])
    S = u @ v.T
    nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    if act == "relu":
        uh, vh = u / nu[:, None], v / nv[:, None]
        diff = np.linalg.norm(uh[:, None] - vh[None], axis=-1)
        summ = np.linalg.norm(uh[:, None] + vh[None], axis=-1)
        th = 2 * np.arctan2(diff, summ)          # stable angle (exactly 0 for identical rows)
        E = np.outer(nu, nv) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
        Ed = (np.pi - th) / (2 * np.pi)
    else:
        q1, q2 = nu**2, nv**2
        P = np.outer(1 + 2 * q1, 1 + 2 * q2)
        E = 2 / np.pi * np.arcsin(2 * S / np.sqrt(P))
        Ed = 4 / np.pi / np.sqrt(P - 4 * S**2)
    nngp = W_std**2 * E + b_std**2
    return nngp, nngp + W_std**2 * Ed * S


@pytest.mark.parametrize("act", ["relu", "erf"])
@pytest.mark.parametrize("W_std,b_std", [(1.0, 0.0), (1.7, 0.6)])
@pytest.mark.parametrize("method", ["native", pytest.param("nt", marks=pytest.mark.slow)])
def test_one_hidden_layer_closed_form(act, W_std, b_std, method):
    x1 = np.asarray(normal(0, (7, 5)))
    x2 = np.asarray(normal(1, (4, 5)))
    arch = K_.mlp(depth=1, activation=act, W_std=W_std, b_std=b_std)
    for xa, xb in [(x1, x2), (x1, x1)]:
        nngp_ref, ntk_ref = _one_hidden_closed_form(act, xa, xb, W_std, b_std)
        k_ntk, k_nngp = K_.ntk_and_nngp(arch, xa, None if xb is xa else xb, method=method)
        assert k_ntk.dtype == jnp.float64
        # float64 closed forms: only round-off separates them (1e-10 leaves 1e5 ulps of room).
        assert rel(k_nngp, nngp_ref) < 1e-10
        if method == "nt" and xb is xa and act == "relu":
            # neural-tangents' own diagonal: arccos(1 − eps) = O(sqrt(eps)) ≈ 1e-8 rad enters the
            # ReLU NTK factor (π − θ)/2π; the native path keeps θ = 0 (see kernels._recursion._dual).
            assert rel(k_ntk, ntk_ref) < 1e-7
        else:
            assert rel(k_ntk, ntk_ref) < 1e-10


# ------------------------------------------------------------------------------------------------
# activation objects: one object, its function and its dual rule
# ------------------------------------------------------------------------------------------------

ACTS = [K_.Relu(), K_.Erf(), K_.Gelu(), K_.LeakyRelu(0.2), K_.Abs(), K_.AbsRelu(-0.3, 1.0),
        K_.AbsRelu(0.5, 2.0)]


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_activation_dual_matches_its_function_by_monte_carlo(act):
    """A wide random layer u = W x1/√d, v = W x2/√d (W: (M, d) i.i.d. N(0, 1), M = 2·10⁵ units)
    makes (u_i, v_i) i.i.d. Gaussian with Var u = |x1|²/d, Var v = |x2|²/d, Cov = x1·x2/d exactly.
    The unit averages of φ(u)φ(v), φ'(u)φ'(v) (φ' by jax.grad of the object's own function) and
    φ(u)² must match `act.dual` / `act.variance` within 5 standard errors of the mean (std/√M):
    a false alarm has probability ~6e-7 per check (CLT; 3 quantities × 3 input pairs), while a
    wrong rule is off by far more (the SE is ~0.3 % of the value here). The third pair is nearly
    collinear (θ ≈ 0), where the arc-cosine rule is at its most delicate."""
    d, M = 5, 200_000
    W = np.asarray(normal(0, (M, d)))
    x = np.asarray(normal(1, (4, d)))
    pairs = [(x[0], x[1]), (x[2], -0.5 * x[2] + 0.3 * x[3]), (x[3], 1.02 * x[3])]  # +, −, ≈ same
    dphi = jax.vmap(jax.grad(lambda t: act(t)))
    for x1, x2 in pairs:
        u, v = W @ x1 / np.sqrt(d), W @ x2 / np.sqrt(d)
        q1, q2, c = x1 @ x1 / d, x2 @ x2 / d, x1 @ x2 / d
        new, dot = act.dual(jnp.asarray(c), jnp.asarray(q1), jnp.asarray(q2), True)
        samples = {
            "E[φφ]": (np.asarray(act(u)) * np.asarray(act(v)), new),
            "E[φ'φ']": (np.asarray(dphi(u)) * np.asarray(dphi(v)), dot),
            "E[φ²]": (np.asarray(act(u)) ** 2, act.variance(jnp.asarray(q1))),
        }
        for what, (s, closed) in samples.items():
            se = s.std() / np.sqrt(M)
            # + 1e-12: float64 round-off, for samples that are constant (|x|: φ'φ' = ±1, SE = 0)
            assert abs(s.mean() - float(closed)) < 5 * se + 1e-12, (what, s.mean(), float(closed),
                                                                    se)


def test_activation_names_resolve_to_the_one_object():
    """Strings are shorthand: the Arch, the finite network and the stax layer all read the same
    object; a user-defined Activation works in the native kernels."""
    from sslntk import finite

    arch = K_.mlp(2, "abs_relu", leaky_slope=0.3)
    assert arch.activation == K_.AbsRelu(-0.3, 1.0)
    assert K_.mlp(activation="leaky_relu", leaky_slope=0.2) == K_.mlp(activation=K_.LeakyRelu(0.2))
    assert finite.activation_fn(arch) is arch.activation
    assert set(K_.ACTIVATIONS) == {"relu", "erf", "gelu", "leaky_relu", "abs", "abs_relu"}
    assert all(str(K_.as_activation(n)) == n for n in K_.ACTIVATIONS)
    with pytest.raises(ValueError, match="leaky_slope"):
        K_.mlp(activation=K_.Relu(), leaky_slope=0.2)
    with pytest.raises(ValueError, match="alpha"):
        K_.LeakyRelu(np.inf)

    class Identity(K_.Activation):       # φ(x) = x: E[φφ] = c, E[φ'φ'] = 1, E[φ²] = q
        name = "identity"

        def __call__(self, x):
            return x

        def dual(self, c, q1, q2, need_dot=True):
            return c, (jnp.ones_like(c) if need_dot else None)

        def variance(self, q):
            return q

    # one hidden layer of a linear net (W_std = 1, b_std = 0): Σ = x·x'/d, Θ = Σ·1 + Σ = 2 x·x'/d
    x = normal(3, (5, 4))
    nngp, ntk = K_.ntk_and_nngp(K_.mlp(1, Identity()), x, get=("nngp", "ntk"))
    G = np.asarray(x @ x.T) / 4
    assert rel(nngp, G) < 1e-12 and rel(ntk, 2 * G) < 1e-12      # float64 round-off


# ------------------------------------------------------------------------------------------------
# the initial-function sampler
# ------------------------------------------------------------------------------------------------

def test_initial_function_covariance_by_monte_carlo():
    """f0 ~ N(0, α² K ⊗ I_k): with k = 20000 independent columns the empirical covariance
    `F Fᵀ / k` estimates α² K entrywise with standard error α² sqrt((K_ii K_jj + K_ij²)/k) (the
    variance of a product of two jointly Gaussian entries); every entry must lie within 5 SE of
    the float64 definition (false alarm ~2e-5 over the 28 distinct entries), the column means
    within 5 SE of 0, and two disjoint column halves must be uncorrelated (cross-covariance
    within 5 SE). K: a float64 NNGP over 7 inputs, one of them duplicated (a singular PSD K)."""
    x = normal(7, (6, 3))
    x = jnp.concatenate([x, x[:1]])
    K = K_.nngp(K_.mlp(2, "erf", b_std=0.2), x)
    alpha, k = 0.3, 20_000
    F = np.asarray(K_.initial_function(K, k, alpha, jax.random.PRNGKey(4)))
    assert F.shape == (7, k) and F.dtype == np.float64
    Kn = alpha**2 * np.asarray(K)
    d = np.diag(Kn)
    se = np.sqrt((d[:, None] * d[None, :] + Kn**2) / k)
    assert np.all(np.abs(F @ F.T / k - Kn) < 5 * se)
    assert np.all(np.abs(F.mean(axis=1)) < 5 * np.sqrt(d / k))
    h = k // 2
    se_x = np.sqrt(d[:, None] * d[None, :] / h)           # independent halves: E = 0
    assert np.all(np.abs(F[:, :h] @ F[:, h:].T / h) < 5 * se_x)


def test_initial_function_refuses_what_solve_refuses():
    """K − 2I is refused with the message of `dynamics.solve` (the same `_validate.psd_kernel`
    rule; the same fixed Lanczos start gives the same estimate), naming the argument `K_nngp`;
    bad arguments name themselves; the same key gives the same draw."""
    from sslntk import dynamics

    K = K_.nngp(K_.mlp(1), normal(8, (6, 3)))
    key = jax.random.PRNGKey(0)
    bad = K - 2 * jnp.eye(6)
    with pytest.raises(ValueError) as solve_err:
        dynamics.solve(bad, losses.get("barlow_twins"), jnp.ones((6, 2)), jnp.linspace(0, 1, 3))
    with pytest.raises(ValueError) as err:
        K_.initial_function(bad, 2, 1e-3, key)
    assert str(err.value).startswith("K_nngp: expected a positive semi-definite kernel")
    assert str(err.value).removeprefix("K_nngp") == str(solve_err.value).removeprefix("K")
    for call, exc, match in [(lambda: K_.initial_function(K, 0, 1e-3, key), ValueError, "k"),
                             (lambda: K_.initial_function(K, 2, -1.0, key), ValueError, "alpha"),
                             (lambda: K_.initial_function(K, 2, 1e-3, 3), TypeError, "key"),
                             (lambda: K_.initial_function(K[:5], 2, 1e-3, key), ValueError,
                              "K_nngp")]:
        with pytest.raises(exc, match=match):
            call()
    a = K_.initial_function(K, 3, 1e-3, key)
    assert a.shape == (6, 3) and np.array_equal(a, K_.initial_function(K, 3, 1e-3, key))
    # duplicated inputs in float32: K is singular to float32 precision, the jittered Cholesky
    # gives NaN (measured), the eigh factor a finite draw with the right covariance rank
    x = normal(8, (6, 3), jnp.float32)
    K32 = K_.nngp(K_.mlp(1), jnp.concatenate([x, x[:2]]))
    f = np.asarray(K_.initial_function(K32, 3, 1.0, key))
    assert f.dtype == np.float32 and np.all(np.isfinite(f))
    # duplicate inputs give equal rows up to the null-space round-off, which enters through its
    # square root: sqrt(N·eps·λ_max) ~ 1e-3 relative in float32 (measured 1.4e-3); bound 1e-2
    assert np.abs(f[6:] - f[:2]).max() < 1e-2 * np.abs(f).max()


# ------------------------------------------------------------------------------------------------
# agreement with neural-tangents' kernel_fn
# ------------------------------------------------------------------------------------------------

MLP_ARCHS = [
    K_.mlp(depth=1, activation="gelu", b_std=0.3),
    K_.mlp(depth=2, activation="leaky_relu", W_std=1.4, b_std=0.1),
    K_.mlp(depth=3, activation="abs", W_std=0.9, b_std=0.5),
    K_.mlp(depth=2, activation="erf", W_std=1.2, b_std=0.2),
    pytest.param(K_.mlp(depth=2, activation="abs_relu", leaky_slope=0.3), marks=pytest.mark.slow),
    pytest.param(K_.mlp(depth=3, activation="relu", W_std=1.5, b_std=0.05),
                 marks=pytest.mark.slow),
]
CNN_ARCHS = [
    K_.cnn(depth=2, activation="relu", b_std=0.2),
]
CNN_ARCHS_SLOW = [
    K_.cnn(depth=1, activation="erf", W_std=1.3, b_std=0.3),
    K_.cnn(depth=2, activation="gelu", b_std=0.1, padding="VALID"),
    K_.cnn(depth=2, activation="leaky_relu", padding="CIRCULAR", filter_shape=(2, 3)),
    K_.cnn(depth=3, activation="abs", b_std=0.5),
]


def _check_against_nt(arch, x1, x2, methods=("native",)):
    kernel_fn = K_.stax_network(arch)[2]
    for xb in (x2, None) if x2 is not None else (None,):
        ref = kernel_fn(x1.astype(jnp.float64), None if xb is None else xb.astype(jnp.float64),
                        ("ntk", "nngp"))
        for method in methods:
            got = K_.ntk_and_nngp(arch, x1, xb, method=method)
            for g, r in zip(got, ref, strict=True):
                assert g.dtype == jnp.float32
                # float32 inputs: the recursion's round-off is a few eps (1.2e-7); measured
                # ≤ 3e-7 (native) and ≤ 8e-7 (neural-tangents' own float32 path).
                assert rel(g, r) < 1e-6, (arch, method, xb is None)


@pytest.mark.parametrize("arch", MLP_ARCHS,
                         ids=["gelu-d1", "leaky-d2", "abs-d3", "erf-d2", "abs_relu-d2", "relu-d3"])
def test_mlp_matches_neural_tangents(arch):
    x1 = normal(2, (9, 6), jnp.float32)
    x2 = normal(3, (5, 6), jnp.float32)
    _check_against_nt(arch, x1, x2)


@pytest.mark.slow
def test_nt_method_matches_neural_tangents():
    _check_against_nt(K_.mlp(depth=2, activation="gelu", b_std=0.2), normal(2, (9, 6), jnp.float32),
                      normal(3, (5, 6), jnp.float32), methods=("nt",))


def test_backend_neural_tangents_is_the_nt_reference():
    """`backend="neural_tangents"` computes every block with nt's kernel_fn: the same
    numbers as method="nt", float32 round-off from sslntk's own recursion; it refuses
    method="native" and unknown backends by name."""
    arch = K_.mlp(depth=2, activation="erf", b_std=0.1)
    x = normal(5, (10, 6), jnp.float32)
    K_nt = K_.ntk(arch, x, backend="neural_tangents")
    assert float(jnp.max(jnp.abs(K_nt - K_.ntk(arch, x, method="nt")))) == 0.0
    assert rel(K_nt, K_.ntk(arch, x)) < 1e-6
    Kn, Gn = K_.ntk_and_nngp(arch, x, backend="neural_tangents")
    assert rel(Gn, K_.nngp(arch, x, backend="neural_tangents")) == 0.0
    with pytest.raises(ValueError, match="backend"):
        K_.ntk(arch, x, backend="neural_tangents", method="native")
    with pytest.raises(ValueError, match="backend"):
        K_.ntk(arch, x, backend="torch")


def test_mlp_flattens_images():
    arch = K_.mlp(depth=2, b_std=0.1)
    x = normal(4, (6, 3, 3, 2), jnp.float32)
    assert rel(K_.ntk(arch, x), K_.ntk(arch, x.reshape(6, -1))) < 1e-6


@pytest.mark.parametrize("arch", CNN_ARCHS, ids=lambda a: f"{a.activation}-{a.padding}")
def test_cnn_matches_neural_tangents(arch):
    # x2 = None: covers the diagonal (identical inputs) and distinct pairs in one (slow) nt call
    _check_against_nt(arch, normal(6, (5, 5, 5, 2), jnp.float32), None, methods=("native",))


@pytest.mark.parametrize("readout", K_.READOUTS)
@pytest.mark.parametrize("depth", [1, 3])
def test_cnn_readouts_match_neural_tangents(readout, depth):
    """Both readouts (GAP: the full pixel-pixel recursion; flatten: its pixel diagonal only) on two
    depths equal `stax_network(arch)`'s kernel_fn (GlobalAvgPool / Flatten) to 1e-6 relative in
    float32 (x2 given and x2 = None); non-square 5×6 images and b_std > 0."""
    arch = K_.cnn(depth=depth, activation="relu", b_std=0.2, readout=readout)
    _check_against_nt(arch, normal(13, (4, 5, 6, 3), jnp.float32), normal(14, (3, 5, 6, 3),
                                                                       jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [
    K_.cnn(depth=1, activation="erf", W_std=1.3, b_std=0.3, readout="flatten"),
    K_.cnn(depth=2, activation="gelu", b_std=0.1, padding="VALID", readout="flatten"),
    K_.cnn(depth=2, activation="leaky_relu", padding="CIRCULAR", filter_shape=(2, 3),
           readout="flatten"),
    K_.cnn(depth=3, activation="abs_relu", leaky_slope=0.3, b_std=0.5, readout="flatten"),
], ids=lambda a: f"{a.activation}-{a.padding}-d{a.depth}")
def test_flatten_cnn_matches_neural_tangents_all(arch):
    _check_against_nt(arch, normal(8, (4, 6, 6, 2), jnp.float32), normal(9, (3, 6, 6, 2),
                                                                      jnp.float32),
                      methods=("native", "nt"))


def test_circular_gap_is_the_shift_average_of_flatten():
    """Under CIRCULAR padding the pixel-pixel band p' = p + d of the GAP recursion is the flatten
    recursion of (x, x' rolled by −d), so GAP(x, x') = mean_d Flatten(x, roll(x', −d)) for NTK and
    NNGP: an identity between the two native paths (float64, round-off only)."""
    kw = dict(depth=2, activation="erf", b_std=0.3, padding="CIRCULAR", filter_shape=(3, 2))
    gap, flat = K_.cnn(**kw, readout="gap"), K_.cnn(**kw, readout="flatten")
    x1, x2 = normal(16, (3, 4, 5, 2)), normal(17, (2, 4, 5, 2))
    shifted = [jnp.roll(x2, (-u, -v), axis=(1, 2)) for u in range(4) for v in range(5)]
    avg = [np.mean([np.asarray(K_.ntk_and_nngp(flat, x1, xs)[i]) for xs in shifted], 0)
           for i in range(2)]
    for g, a in zip(K_.ntk_and_nngp(gap, x1, x2), avg, strict=True):
        assert rel(g, a) < 1e-13


def test_flatten_blocked_and_float64():
    """Blocks (x2 = None, 8 rows of 19) change only the variances' rounding; float64 agrees with
    neural-tangents to its own round-off (1e-13)."""
    arch = K_.cnn(depth=2, activation="erf", b_std=0.1, readout="flatten")
    x = normal(15, (19, 4, 4, 2), jnp.float32)
    for f, b in zip(K_.ntk_and_nngp(arch, x), K_.ntk_and_nngp(arch, x, block_size=8), strict=True):
        assert rel(b, f) < 1e-6 and np.array_equal(np.asarray(b), np.asarray(b).T)
    x64 = x[:6].astype(jnp.float64)
    ref = K_.stax_network(arch)[2](x64, None, ("ntk", "nngp"))
    for g, r in zip(K_.ntk_and_nngp(arch, x64), ref, strict=True):
        assert g.dtype == jnp.float64 and rel(g, r) < 1e-13


@pytest.mark.slow
@pytest.mark.parametrize("arch", CNN_ARCHS + CNN_ARCHS_SLOW,
                         ids=lambda a: f"{a.activation}-{a.padding}-d{a.depth}")
def test_cnn_matches_neural_tangents_all(arch):
    x1 = normal(8, (4, 6, 6, 2), jnp.float32)
    x2 = normal(9, (3, 6, 6, 2), jnp.float32)
    _check_against_nt(arch, x1, x2, methods=("native", "nt"))


@pytest.mark.parametrize("arch,dtype", [
    (K_.mlp(depth=2, b_std=0.1), jnp.float64),
    (K_.cnn(depth=2, activation="erf", b_std=0.1), jnp.float32),
    pytest.param(K_.mlp(depth=2, b_std=0.1), jnp.float32, marks=pytest.mark.slow),
    pytest.param(K_.cnn(depth=2, activation="erf", b_std=0.1), jnp.float64,
                 marks=pytest.mark.slow),
], ids=["mlp-f64", "cnn-f32", "mlp-f32", "cnn-f64"])
def test_blocked_equals_unblocked(arch, dtype):
    shape = (19, 4, 4, 1) if arch.kind == "cnn" else (37, 5)
    x1 = normal(10, shape, dtype)
    x2 = normal(11, (13, *shape[1:]), dtype)
    # float32: block boundaries change only the rounding of the variances (eps-level); float64
    # likewise at its own eps.
    tol = 1e-6 if dtype == jnp.float32 else 1e-13
    cases = [("native", None), ("native", x2)] if arch.kind == "mlp" else [("native", None)]
    for method, xb in cases:
        full = K_.ntk_and_nngp(arch, x1, xb, method=method)
        blk = K_.ntk_and_nngp(arch, x1, xb, method=method, block_size=8)
        for f, b in zip(full, blk, strict=True):
            assert b.dtype == dtype and b.shape == f.shape
            assert rel(b, f) < tol
            if xb is None:
                assert np.array_equal(np.asarray(b), np.asarray(b).T)  # exactly symmetric


def test_duplicate_inputs_are_exact():
    """Identical inputs have angle 0: the ReLU NTK derivative factor must not pick up the
    O(sqrt(eps)) error of arccos(1 − eps) (3e-4 in float32)."""
    arch = K_.mlp(depth=1, activation="relu", b_std=0.2)
    x = normal(12, (6, 7), jnp.float32)
    xx = jnp.concatenate([x, x])               # views without augmentation: a_i == b_i
    xx64 = np.asarray(xx, np.float64)
    ref = _one_hidden_closed_form("relu", xx64, xx64, 1.0, 0.2)[1]
    K = K_.ntk(arch, xx, block_size=4)         # a_i and b_i land in different blocks
    assert rel(K, ref) < 1e-6                  # float32 round-off, not sqrt(eps32) = 3e-4


def test_auto_block_size_bounds_memory():
    b_cnn = K_.auto_block_size(K_.cnn(depth=2), (1, 8, 8, 1))
    b_mlp = K_.auto_block_size(K_.mlp(depth=2), (1, 64))
    assert 8 <= b_cnn < 128 and b_cnn % 8 == 0
    assert b_mlp == 2048
    per_pair = _assembly.PAIR_ARRAYS * (10 * 10) ** 2 * 4
    assert b_cnn**2 * per_pair <= K_.BLOCK_MEMORY_BUDGET
    # flatten: only the pixel diagonal per pair, so far larger blocks (32×32 images: 144)
    b_flat = K_.auto_block_size(K_.cnn(depth=2, readout="flatten"), (1, 32, 32, 3))
    assert b_flat**2 * _assembly.PAIR_ARRAYS * 34 * 34 * 4 <= K_.BLOCK_MEMORY_BUDGET
    assert b_flat >= 128


# ------------------------------------------------------------------------------------------------
# empirical NTK of finite networks
# ------------------------------------------------------------------------------------------------

def _jacobian_ntk_per_output(apply_fn, params, x):
    """`(k, N, N)`: J_o J_oᵀ for every output o, from explicit Jacobians."""
    J = jax.jacobian(apply_fn)(params, x)
    leaves = [j.reshape(x.shape[0], j.shape[1], -1) for j in jax.tree_util.tree_leaves(J)]
    return sum(jnp.einsum("iop,jop->oij", j, j) for j in leaves)


def test_reference_empirical_ntk_one_output_convention():
    arch = K_.mlp(depth=1, b_std=0.1)
    init_fn, apply_fn, _ = K_.stax_network(arch, width=32, out_dim=3)
    x = normal(13, (5, 4))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    per_output = _jacobian_ntk_per_output(apply_fn, params, x)
    K2 = K_.reference_empirical_ntk(apply_fn, params, x, None, implementation=2)
    # neural-tangents' trace_axes=(-1,) returns the MEAN over the k outputs (trace / k).
    assert rel(K2, per_output.mean(0)) < 1e-12
    assert rel(K2, per_output.sum(0)) > 0.5                      # not the trace
    K12 = K_.reference_empirical_ntk(apply_fn, params, x, x[:2], implementation=1)
    assert rel(K12, per_output.mean(0)[:, :2]) < 1e-12


@pytest.mark.parametrize("impl", [0, 3, True, "2"])
def test_reference_empirical_ntk_rejects_broken_implementations(impl):
    _, apply_fn, _ = K_.stax_network(K_.mlp(), width=8)
    with pytest.raises(ValueError, match="implementation"):
        K_.reference_empirical_ntk(apply_fn, {}, np.ones((2, 3)), implementation=impl)


def test_empirical_ntk_converges_to_ntk_as_width_grows():
    """‖Θ_width − Θ‖_F / ‖Θ‖_F shrinks like width^{-1/2} (fluctuations of a sum of `width`
    i.i.d. terms; the O(1/width) mean bias is 16× smaller still at these widths). 256 → 4096 is
    16× wider, so the expected ratio of errors is √16 = 4; averaged over 4 seeds and 10 × 10
    entries the estimate of each mean error has ~15–25% spread, so a factor-2 band [2, 8] around 4
    cannot fail by chance yet excludes both no-convergence (1) and 1/width (16)."""
    arch = K_.mlp(depth=1, activation="relu", W_std=1.2, b_std=0.2)
    x = normal(15, (10, 6))
    K_inf = np.asarray(K_.ntk(arch, x))
    err = {}
    for width in (256, 4096):
        init_fn, apply_fn, _ = K_.stax_network(arch, width=width)
        e = []
        for seed in range(4):
            _, params = init_fn(jax.random.PRNGKey(seed), x.shape)
            Ke = K_.reference_empirical_ntk(apply_fn, params, x, implementation=2)
            e.append(np.linalg.norm(Ke - K_inf) / np.linalg.norm(K_inf))
        err[width] = float(np.mean(e))
    ratio = err[256] / err[4096]
    assert err[4096] < err[256]
    assert 2.0 < ratio < 8.0, (err, ratio)


# ------------------------------------------------------------------------------------------------
# reference gradient descent (neural-tangents' ODE) vs explicit RK4
# ------------------------------------------------------------------------------------------------

def _rk4(loss, K, f0, ts, dt):
    """RK4 for df/dt = −K ∇L(f) on a fixed grid, sampled at `ts` (multiples of dt)."""
    rhs = jax.jit(lambda f: -K @ jax.grad(loss)(f))

    @jax.jit
    def advance(f, steps):                 # steps traced: one compilation
        def body(_, f):
            k1 = rhs(f)
            k2 = rhs(f + dt / 2 * k1)
            k3 = rhs(f + dt / 2 * k2)
            k4 = rhs(f + dt * k3)
            return f + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return jax.lax.fori_loop(0, steps, body, f)

    out, f, t = [], f0, 0.0
    for tt in ts:
        steps = int(round((tt - t) / dt))
        f = advance(f, jnp.asarray(steps))
        t = tt
        out.append(f)
    return jnp.stack(out)


def test_reference_gradient_descent_matches_rk4():
    n, k = 5, 2
    x = normal(16, (2 * n, 4))
    arch = K_.mlp(depth=1, b_std=0.1)
    K = K_.ntk(arch, x)
    f0 = 0.3 * normal(17, (2 * n, k))
    loss = losses.get("barlow_twins")
    ts = jnp.array([0.0, 0.25, 0.5, 1.5, 3.0])
    f_t, f_test = K_.reference_gradient_descent(loss, K, f0, ts, K[:3], f0[:3])
    assert f_t.shape == (5, 2 * n, k) and f_test.shape == (5, 3, k)
    ref = _rk4(loss, K, f0, np.asarray(ts), dt=1e-3)
    # neural-tangents' odeint runs at rtol = atol = 1.4e-8 (global error ~1e-7 relative); RK4 at
    # dt = 1e-3 with ‖K‖·‖∇²L‖ = O(1) is accurate to ~1e-12. Time convention: t = lr·steps.
    assert rel(f_t, ref) < 1e-6
    assert rel(f_t[0], f0) < 1e-14
    assert float(loss(f_t[-1])) < float(loss(f0))
    # test points that equal training rows follow them (same ODE right-hand side)
    assert rel(f_test, f_t[:, :3]) < 1e-10


@pytest.mark.slow
def test_reference_gradient_descent_float32_plain_callable():
    n, k = 5, 2
    K = K_.ntk(K_.mlp(depth=1, b_std=0.1), normal(16, (2 * n, 4)))
    f0 = 0.3 * normal(17, (2 * n, k))
    loss = losses.get("barlow_twins")
    ts = jnp.array([0.0, 0.25, 0.5, 1.5, 3.0])
    f_t, _ = K_.reference_gradient_descent(loss, K, f0, ts)
    # a plain function (not a Loss pytree) and float32 arrays: dtype kept; float32 round-off in
    # the right-hand side and odeint's float32 error control stay ~1e-6 relative over t = 3
    f32, _ = K_.reference_gradient_descent(lambda f: loss(f), K.astype(jnp.float32),
                                           f0.astype(jnp.float32), ts.astype(jnp.float32))
    assert f32.dtype == jnp.float32
    assert rel(f32, f_t) < 1e-5


def test_reference_gradient_descent_bad_input():
    loss = losses.get("barlow_twins")
    K = jnp.eye(6)
    f0 = jnp.ones((6, 2))
    ts = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="ts"):
        K_.reference_gradient_descent(loss, K, f0, jnp.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="ts"):
        K_.reference_gradient_descent(loss, K, f0, jnp.array([-1.0, 0.5]))
    with pytest.raises(ValueError, match="K"):
        K_.reference_gradient_descent(loss, jnp.eye(4), f0, ts)
    with pytest.raises(ValueError, match="f0"):
        K_.reference_gradient_descent(loss, jnp.eye(5), jnp.ones((5, 2)), ts)
    with pytest.raises(TypeError, match="mixed dtypes"):
        K_.reference_gradient_descent(loss, K, f0.astype(jnp.float32), ts)
    with pytest.raises(ValueError, match="both or neither"):
        K_.reference_gradient_descent(loss, K, f0, ts, K_test_train=K[:2])
    with pytest.raises(ValueError, match="K_test_train"):
        K_.reference_gradient_descent(loss, K, f0, ts, K[:2, :5], f0[:2])
    with pytest.raises(TypeError, match="loss"):
        K_.reference_gradient_descent("barlow_twins", K, f0, ts)
    with pytest.raises(ValueError, match="finite"):
        K_.reference_gradient_descent(loss, K.at[0, 0].set(jnp.nan), f0, ts)


# ------------------------------------------------------------------------------------------------
# contrastive kernel and its spectrum (Simon et al. 2023, the kernelised stepwise model)
# ------------------------------------------------------------------------------------------------

def _features(seed, n2, p, m):
    """Explicit random ReLU features Φ (2n, p) of views and of m test points."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((n2 // 2, 5))
    views = np.vstack([src + 0.3 * rng.standard_normal(src.shape),
                       src + 0.3 * rng.standard_normal(src.shape)])
    xt = rng.standard_normal((m, 5))
    W = rng.standard_normal((5, p))
    return np.maximum(views @ W, 0) / np.sqrt(p), np.maximum(xt @ W, 0) / np.sqrt(p)


@pytest.mark.parametrize("p", [60, 14], ids=["full-rank", "rank-deficient"])
def test_contrastive_spectrum_three_ways(p):
    n2 = 24
    Phi, Phi_t = _features(0, n2, p, 7)
    K = Phi @ Phi.T
    Z = np.asarray(K_.pair_matrix(n2 // 2, jnp.float64))
    spec = K_.contrastive_spectrum(jnp.asarray(K))
    gam = np.asarray(spec.values)
    assert np.all(np.diff(gam) <= 0)
    # (1) eigenvalues of M, (2) of the non-symmetric Z K / 2n, (3) of Γ_φ = Φᵀ Z Φ / 2n; the
    # nonzero parts agree, the rest are zeros (rank ≤ min(p, 2n)), compared sorted and padded.
    ev_zk = np.linalg.eigvals(Z @ K / n2)
    assert np.abs(ev_zk.imag).max() < 1e-12
    ev_phi = np.linalg.eigvalsh(Phi.T @ Z @ Phi / n2)
    size = max(n2, p)

    def padded(ev):
        return np.sort(np.concatenate([np.real(ev), np.zeros(size - len(ev))]))

    scale = np.abs(gam).max()
    # all three are float64 eigensolvers of O(1)-conditioned problems: agreement to ~1e-14;
    # 1e-10 (the float64 reference tolerance) leaves room for the cut-off null space of K.
    assert np.abs(padded(gam) - padded(ev_zk)).max() / scale < 1e-10
    assert np.abs(padded(gam) - padded(ev_phi)).max() / scale < 1e-10
    # eigenfunctions g_j(x) = b_jᵀ K^{-1/2} k_X(x) reconstruct K^Γ on test points
    kx = Phi_t @ Phi.T
    g = np.asarray(spec.eigenfunctions(jnp.asarray(kx)))
    KG = np.asarray(K_.contrastive_kernel(jnp.asarray(K), jnp.asarray(kx)))
    KG_ref = Phi_t @ (Phi.T @ Z @ Phi / n2) @ Phi_t.T
    assert np.linalg.norm(KG - KG_ref) / np.linalg.norm(KG_ref) < 1e-12
    recon = (g * gam) @ g.T
    assert np.linalg.norm(recon - KG_ref) / np.linalg.norm(KG_ref) < 1e-12
    # g_j orthonormal in the RKHS of K: Aᵀ K A = I on the kept range
    # g_j with γ_j ≠ 0 are orthonormal in the RKHS of K: Aᵀ K A = I on those columns
    A = np.asarray(spec.coef)
    idx = np.abs(gam) > 1e-10 * scale
    G = A[:, idx].T @ K @ A[:, idx]
    assert spec.rank == min(p, n2)
    assert np.abs(G - np.eye(idx.sum())).max() < 1e-10


def test_contrastive_embedding_matches_normalised_zk_eigenvectors():
    """Eigenvectors a of Z K / 2n normalised by aᵀ K a = 1 give the same embedding
    Gram `k_X(x)ᵀ a_j a_jᵀ k_X(x') / γ_j` as the closed form, to 1e-12."""
    n2, d = 20, 3
    Phi, Phi_t = _features(1, n2, 50, 6)
    K = Phi @ Phi.T
    Z = np.asarray(K_.pair_matrix(n2 // 2, jnp.float64))
    kx = Phi_t @ Phi.T
    spec = K_.contrastive_spectrum(jnp.asarray(K))
    f = np.asarray(spec.embedding(jnp.asarray(kx), d))
    w, Avec = np.linalg.eig(Z @ K / n2)
    order = np.argsort(-w.real)[:d]
    Avec = Avec[:, order].real
    Avec = Avec / np.sqrt(np.einsum("ij,ik,kj->j", Avec, K, Avec))
    F = (kx @ Avec) / np.sqrt(w.real[order])
    assert np.linalg.norm(f @ f.T - F @ F.T) / np.linalg.norm(F @ F.T) < 1e-12


def test_contrastive_kernel_and_pair_matrix():
    n = 4
    Z = K_.pair_matrix(n)
    assert Z.dtype == jnp.float32 and Z.shape == (8, 8)
    assert np.array_equal(np.asarray(Z), np.asarray(Z).T)
    assert np.array_equal(np.asarray(Z @ Z), np.eye(8))
    F = np.asarray(normal(20, (8, 5)))
    K = F @ F.T
    Z64 = np.asarray(K_.pair_matrix(n, jnp.float64))
    assert rel(K_.contrastive_kernel(K), K @ Z64 @ K / 8) < 1e-14
    kx = np.asarray(normal(21, (3, 8)))
    assert rel(K_.contrastive_kernel(K, kx), kx @ Z64 @ kx.T / 8) < 1e-14
    assert K_.contrastive_kernel(K, kx, kx[:2]).shape == (3, 2)


def test_contrastive_spectrum_ridge_reconstructs_exactly():
    Phi, Phi_t = _features(2, 16, 6, 5)
    K = Phi @ Phi.T                                  # rank 6 < 2n
    spec = K_.contrastive_spectrum(jnp.asarray(K), ridge=1e-3)
    kx = jnp.asarray(np.random.default_rng(3).standard_normal((5, 16)))   # NOT in range(K)
    g = spec.eigenfunctions(kx)
    KG = K_.contrastive_kernel(jnp.asarray(K), kx)
    assert rel((g * spec.values) @ g.T, KG) < 1e-10
    assert spec.ridge == 1e-3 and spec.rank == 16


# ------------------------------------------------------------------------------------------------
# PSD check
# ------------------------------------------------------------------------------------------------

def test_kernel_spectrum_psd_check():
    rng = np.random.default_rng(4)
    Q = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    lam = np.array([5.0, 3, 2, 1, 0.5, 0.1, 0, 0, 0, 0, 0, 0])
    K = Q @ np.diag(lam) @ Q.T
    K = (K + K.T) / 2
    spec = K_.kernel_spectrum(jnp.asarray(K))
    # round-off negatives (a rank-6 kernel's zero eigenvalues come out ±1e-15) pass and are reported
    assert spec.min_eigenvalue == float(spec.values[-1])
    assert abs(spec.min_eigenvalue) < 1e-13
    assert np.allclose(np.asarray(spec.values), np.sort(lam)[::-1], atol=1e-13)
    assert float(jnp.min(spec.psd_values)) >= 0
    # a deliberately round-off-sized negative eigenvalue passes
    Kr = K - 1e-15 * np.outer(Q[:, -1], Q[:, -1])
    assert K_.kernel_spectrum(jnp.asarray(Kr), vectors=False).min_eigenvalue < 0
    # a clearly negative one raises, naming the eigenvalue
    Kn = K - 1e-6 * np.outer(Q[:, -1], Q[:, -1])
    with pytest.raises(ValueError, match="positive semi-definite.*-1e-06"):
        K_.kernel_spectrum(jnp.asarray(Kn))
    # ... unless the caller states a looser tolerance (e.g. a float32-computed kernel)
    assert K_.kernel_spectrum(jnp.asarray(Kn), tol=1e-5).min_eigenvalue < 0
    with pytest.raises(ValueError, match="symmetric"):
        K_.kernel_spectrum(jnp.asarray(K + 1e-3 * rng.standard_normal(K.shape)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        K_.contrastive_spectrum(jnp.asarray(Kn))
    # float32 tolerance is float32 round-off
    spec32 = K_.kernel_spectrum(jnp.asarray(K, jnp.float32))
    eps32 = float(jnp.finfo(jnp.float32).eps)
    assert spec32.values.dtype == jnp.float32
    assert spec32.tol == pytest.approx(12 * eps32 * spec32.max_eigenvalue, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# augmentation-averaged kernel
# ------------------------------------------------------------------------------------------------

def test_averaged_kernel_views_and_arrays():
    from sslntk import data

    arch = K_.mlp(depth=1, b_std=0.1)
    x = normal(23, (5, 4, 4, 1), jnp.float32)
    views = data.make_views(x, data.gaussian_noise(0.3), jax.random.PRNGKey(0), n_draws=3)
    Kav = K_.averaged_kernel(arch, views)
    ref = np.mean([np.asarray(K_.ntk(arch, v.stacked), np.float64) for v in views.draws()], 0)
    assert Kav.shape == (10, 10) and Kav.dtype == jnp.float32
    assert rel(Kav, ref) < 1e-6
    assert rel(K_.averaged_kernel(arch, views.stacked), ref) < 1e-6       # array (D, 2n, ...)
    one = data.make_views(x, data.gaussian_noise(0.3), jax.random.PRNGKey(0))
    assert rel(K_.averaged_kernel(arch, one), K_.ntk(arch, one)) < 1e-7
    with pytest.raises(ValueError, match="averaged_kernel"):
        K_.ntk(arch, views)
    with pytest.raises(ValueError, match="draw axis"):
        K_.averaged_kernel(K_.cnn(), views.stacked[0])
    with pytest.raises(ValueError, match="even"):
        K_.averaged_kernel(arch, views.stacked[:, :9])
    with pytest.raises(ValueError, match="kind"):
        K_.averaged_kernel(arch, views, kind="ntk2")


# ------------------------------------------------------------------------------------------------
# dtypes and bad input
# ------------------------------------------------------------------------------------------------

def test_dtypes_preserved_and_cast():
    arch = K_.mlp()
    x32 = normal(24, (4, 3), jnp.float32)
    assert K_.ntk(arch, x32).dtype == jnp.float32
    assert K_.nngp(arch, x32.astype(jnp.float64)).dtype == jnp.float64
    assert K_.ntk(arch, x32, dtype=jnp.float64).dtype == jnp.float64
    with pytest.raises(TypeError, match="mixed dtypes"):
        K_.ntk(arch, x32, x32.astype(jnp.float64))
    assert K_.ntk(arch, x32, x32.astype(jnp.float64), dtype="float32").dtype == jnp.float32


X = np.ones((4, 3))
IMG = np.ones((4, 5, 5, 1))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: K_.ntk("mlp", X), TypeError, "arch"),
    (lambda: K_.ntk(K_.mlp(), X[0]), ValueError, "x1.*rank|x1.*batch"),
    (lambda: K_.ntk(K_.cnn(), X), ValueError, "x1.*NHWC"),
    (lambda: K_.ntk(K_.mlp(), np.ones((0, 3))), ValueError, "non-empty"),
    (lambda: K_.ntk(K_.mlp(), X, np.ones((2, 4))), ValueError, "x2.*shape"),
    (lambda: K_.ntk(K_.mlp(), np.where(np.eye(4, 3) > 0, np.nan, X)), ValueError, "finite"),
    (lambda: K_.ntk(K_.mlp(), np.inf * X), ValueError, "finite"),
    (lambda: K_.ntk(K_.mlp(), X.astype(np.int32)), TypeError, "floating"),
    (lambda: K_.ntk(K_.mlp(), X, block_size=0), ValueError, "block_size"),
    (lambda: K_.ntk(K_.mlp(), X, block_size=2.5), TypeError, "block_size"),
    (lambda: K_.ntk(K_.mlp(), X, method="fast"), ValueError, "method"),
    (lambda: K_.ntk(K_.mlp(), X, dtype=np.int32), TypeError, "dtype"),
    (lambda: K_.ntk_and_nngp(K_.mlp(), X, get=("ntk", "foo")), ValueError, "get"),
    (lambda: K_.ntk(K_.cnn(depth=3, padding="VALID"), IMG), ValueError, "too small"),
    (lambda: K_.mlp(depth=0), ValueError, "depth"),
    (lambda: K_.mlp(activation="tanh"), ValueError, "activation"),
    (lambda: K_.mlp(W_std=0.0), ValueError, "W_std"),
    (lambda: K_.mlp(W_std=-1.0), ValueError, "W_std"),
    (lambda: K_.mlp(b_std=-0.1), ValueError, "b_std"),
    (lambda: K_.mlp(leaky_slope=np.nan), ValueError, "leaky_slope"),
    (lambda: K_.cnn(filter_shape=(3, 0)), ValueError, "filter_shape"),
    (lambda: K_.cnn(filter_shape=3), ValueError, "filter_shape"),
    (lambda: K_.cnn(padding="same"), ValueError, "padding"),
    (lambda: K_.cnn(readout="pool"), ValueError, "readout"),
    (lambda: K_.cnn(readout=None), ValueError, "readout"),
    (lambda: K_.mlp(readout="flatten"), ValueError, "readout"),
    (lambda: K_.Arch(kind="rnn"), ValueError, "kind"),
    (lambda: K_.stax_network(K_.mlp(), width=0), ValueError, "width"),
    (lambda: K_.stax_network(K_.mlp(), out_dim=-1), ValueError, "out_dim"),
    (lambda: K_.pair_matrix(0), ValueError, "n"),
    (lambda: K_.pair_matrix(2, dtype=np.int32), TypeError, "dtype"),
    (lambda: K_.contrastive_kernel(np.eye(5)), ValueError, "2n even"),
    (lambda: K_.contrastive_kernel(np.eye(4), np.ones((2, 3))), ValueError, "k_x1"),
    (lambda: K_.contrastive_kernel(np.eye(4), np.ones((2, 4), np.float32)), TypeError, "mixed"),
    (lambda: K_.contrastive_spectrum(np.eye(3)), ValueError, "2n even"),
    (lambda: K_.contrastive_spectrum(np.eye(4), ridge=-1.0), ValueError, "ridge"),
    (lambda: K_.contrastive_spectrum(np.ones((4, 3))), ValueError, "square"),
    (lambda: K_.kernel_spectrum(np.ones((2, 2, 2))), ValueError, "rank 2"),
    (lambda: K_.kernel_spectrum(np.full((3, 3), np.nan)), ValueError, "finite"),
    (lambda: K_.kernel_spectrum(np.eye(3), tol=-1.0), ValueError, "tol"),
    (lambda: K_.contrastive_spectrum(np.eye(4)).eigenfunctions(np.ones((2, 3))), ValueError,
     "k_x"),
    (lambda: K_.contrastive_spectrum(np.diag([1.0, 1, 1, 1])).embedding(np.eye(4), 4),
     ValueError, "positive eigenvalues"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# import hygiene
# ------------------------------------------------------------------------------------------------

def test_import_keeps_tensorflow_out():
    code = ("import sys, sslntk, sslntk.kernels; "
            "bad = [m for m in ('tensorflow', 'tf2jax') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_traced_inputs_are_differentiable():
    """Under jit/grad the blocks are joined with jnp (kernels._assembly._blocked_traced): same
    values, and gradients through duplicate pairs (θ = 0, where sqrt'(0) = ∞ is masked) are finite
    and match central differences (step 1e-6 in float64: error ~1e-9 relative, asserted at 1e-6)."""
    arch = K_.mlp(depth=2, b_std=0.1)
    x = normal(30, (4, 3))
    X = jnp.concatenate([x, x])

    def f(s):
        return jnp.sum(K_.ntk(arch, X * s + 0.1 * s**2, block_size=4) ** 2)

    g = float(jax.grad(f)(1.3))
    fd = (float(f(1.3 + 1e-6)) - float(f(1.3 - 1e-6))) / 2e-6
    assert np.isfinite(g) and abs(g - fd) < 1e-6 * abs(fd)
