"""sslntk.losses against independent float64 numpy implementations (loops over samples/pairs, not
the library's matrix forms), the closed-form BT gradient, invariances, and the `Loss` pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import losses

N_HALF, K_DIM = 6, 3


@pytest.fixture(scope="module")
def f():
    return np.random.default_rng(0).normal(size=(2 * N_HALF, K_DIM))


def _rel(a, b):
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-300)


# ---------------------------------------------------------------- numpy references (float64)

def np_cross(f):
    n = f.shape[0] // 2
    C = np.zeros((f.shape[1], f.shape[1]))
    for i in range(n):
        C += np.outer(f[i], f[n + i]) + np.outer(f[n + i], f[i])
    return C / (2 * n)


def np_bt_from_c(C, lam):
    k = C.shape[0]
    return sum((C[i, i] - 1) ** 2 for i in range(k)) + lam * sum(
        C[i, j] ** 2 for i in range(k) for j in range(k) if i != j)


def np_bt_std(f, lam, eps):
    n = f.shape[0] // 2
    za, zb = f[:n].copy(), f[n:].copy()
    for z in (za, zb):
        for j in range(z.shape[1]):
            mu = z[:, j].mean()
            var = ((z[:, j] - mu) ** 2).sum() / n
            z[:, j] = (z[:, j] - mu) / np.sqrt(var + eps)
    C = sum(np.outer(za[i], zb[i]) for i in range(n)) / n
    return np_bt_from_c(C, lam)


def np_vicreg(f, lam_inv, mu, nu, eps, gamma):
    n, k = f.shape[0] // 2, f.shape[1]
    za, zb = f[:n], f[n:]
    inv = sum(np.sum((za[i] - zb[i]) ** 2) for i in range(n)) / n

    def vc(z):
        zc = z - z.mean(0)
        cov = sum(np.outer(zc[i], zc[i]) for i in range(n)) / (n - 1)
        v = sum(max(0.0, gamma - np.sqrt(cov[j, j] + eps)) for j in range(k)) / k
        c = sum(cov[i, j] ** 2 for i in range(k) for j in range(k) if i != j) / k
        return v, c

    (va, ca), (vb, cb) = vc(za), vc(zb)
    return lam_inv * inv + mu * (va + vb) + nu * (ca + cb)


def np_simclr(f, tau, similarity):
    N = f.shape[0]
    n = N // 2
    z = f / np.linalg.norm(f, axis=1, keepdims=True) if similarity == "cosine" else f
    total = 0.0
    for u in range(N):
        p = (u + n) % N
        denom = sum(np.exp(z[u] @ z[v] / tau) for v in range(N) if v != u)
        total += -np.log(np.exp(z[u] @ z[p] / tau) / denom)
    return total / N


def np_spectral(f):
    N = f.shape[0]
    n = N // 2
    pos = sum(f[i] @ f[n + i] for i in range(n)) / n
    neg = sum((f[u] @ f[v]) ** 2 for u in range(N) for v in range(N)) / N**2
    return -2 * pos + neg


def np_naive(f, shift):
    n = f.shape[0] // 2
    L = -sum(f[i] @ f[n + i] for i in range(n)) / n
    if shift:
        L += sum(f[i] @ f[n + (i + 1) % n] for i in range(n)) / n
    return L


# Exact algebra in float64: agreement to ~1e3·eps, so 1e-12 relative.
CASES = [
    ("barlow_twins", {}, lambda f: np_bt_from_c(np_cross(f), 1.0)),
    ("barlow_twins", {"lam": 0.3}, lambda f: np_bt_from_c(np_cross(f), 0.3)),
    ("barlow_twins_standardized", {}, lambda f: np_bt_std(f, 5e-3, 1e-5)),
    ("barlow_twins_standardized", {"lam": 0.1, "eps": 1e-3}, lambda f: np_bt_std(f, 0.1, 1e-3)),
    ("vicreg", {}, lambda f: np_vicreg(f, 25, 25, 1, 1e-4, 1.0)),
    ("vicreg", {"lam_inv": 2.0, "mu": 3.0, "nu": 0.5, "eps": 1e-2, "gamma": 2.5},
     lambda f: np_vicreg(f, 2.0, 3.0, 0.5, 1e-2, 2.5)),
    ("simclr", {}, lambda f: np_simclr(f, 0.5, "cosine")),
    ("simclr", {"temperature": 0.2, "similarity": "dot"}, lambda f: np_simclr(f, 0.2, "dot")),
    ("spectral", {}, np_spectral),
    ("kernel_pca", {}, lambda f: np_naive(f, False)),
    ("naive", {}, lambda f: np_naive(f, False)),
    ("naive", {"negatives": "shift"}, lambda f: np_naive(f, True)),
]


@pytest.mark.parametrize("name,consts,ref", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_loss_matches_numpy(f, name, consts, ref):
    loss = losses.get(name, **consts)
    assert _rel(loss(jnp.asarray(f)), ref(f)) < 1e-12


def test_every_registered_loss_has_a_reference():
    assert {c[0] for c in CASES} == set(losses.names())


def test_vicreg_variance_hinge_active(f):
    # With the default gamma = 1 and unit-variance f the hinge is nearly inactive; scale f down so
    # every dimension is below the target std and the hinge (and its gradient) matter.
    small = 0.1 * f
    assert _rel(losses.get("vicreg")(jnp.asarray(small)), np_vicreg(small, 25, 25, 1, 1e-4, 1)) \
        < 1e-12


def test_bt_gradient_closed_form_function_space(f):
    # L = ‖C − I‖² with C = fᵀZf/2n  ⇒  ∇_f L = (2/n) Z f (C − I); general λ: D = diag(C−1) + λ·off(C).
    n = N_HALF
    Zf = np.concatenate([f[n:], f[:n]])
    C = np_cross(f)
    for lam in (1.0, 0.4):
        D = np.diag(np.diag(C) - 1) + lam * (C - np.diag(np.diag(C)))
        expected = (2 / n) * Zf @ D
        got = np.asarray(losses.get("barlow_twins", lam=lam).grad(jnp.asarray(f)))
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-10


def test_bt_gradient_linear_model():
    # Simon et al. 2023 §2: C = W Γ Wᵀ and ∇_W ‖C − I‖² = 4 (C − I) W Γ (linear model f = W x).
    rng = np.random.default_rng(1)
    n, m, d = 8, 5, 3
    X = rng.normal(size=(2 * n, m))
    W = rng.normal(size=(d, m)) * 0.5
    Gam = (X[:n].T @ X[n:] + X[n:].T @ X[:n]) / (2 * n)
    C = W @ Gam @ W.T
    assert np.abs(np.asarray(losses.cross_correlation(jnp.asarray(X @ W.T))) - C).max() < 1e-12
    g = jax.grad(lambda W: losses.barlow_twins(jnp.asarray(X) @ W.T))(jnp.asarray(W))
    expected = 4 * (C - np.eye(d)) @ W @ Gam
    assert np.linalg.norm(np.asarray(g) - expected) / np.linalg.norm(expected) < 1e-10


def test_rotation_invariance(f):
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(K_DIM, K_DIM)))
    fj, fq = jnp.asarray(f), jnp.asarray(f @ Q)
    for name in ("barlow_twins", "spectral", "kernel_pca", "simclr"):
        L = losses.get(name)
        assert _rel(L(fq), L(fj)) < 1e-12, name
    # negative control: λ ≠ 1 is not rotation invariant (Simon et al. 2023, §3).
    L = losses.get("barlow_twins", lam=0.1)
    assert _rel(L(fq), L(fj)) > 1e-3


def test_simclr_cosine_scale_invariance(f):
    c = np.random.default_rng(3).uniform(0.1, 10.0, size=(2 * N_HALF, 1))
    L = losses.get("simclr")
    assert _rel(L(jnp.asarray(c * f)), L(jnp.asarray(f))) < 1e-12
    Ld = losses.get("simclr", similarity="dot")
    assert _rel(Ld(jnp.asarray(c * f)), Ld(jnp.asarray(f))) > 1e-3


def test_cross_moment_only_flags_and_meaning(f):
    expected = {"barlow_twins": True, "kernel_pca": True, "naive": True, "spectral": False,
                "vicreg": False, "simclr": False, "barlow_twins_standardized": False}
    for name, flag in expected.items():
        assert losses.get(name).cross_moment_only is flag, name
    assert losses.get("naive", negatives="shift").cross_moment_only is False
    # Meaning: f → [[A f_a],[A⁻ᵀ f_b]] keeps f_aᵀ f_b (so C) but changes f_aᵀf_a; a flagged loss
    # must not change, every unflagged one here does.
    rng = np.random.default_rng(4)
    A = rng.normal(size=(N_HALF, N_HALF)) + 3 * np.eye(N_HALF)
    g = np.concatenate([A @ f[:N_HALF], np.linalg.solve(A.T, f[N_HALF:])])
    assert np.abs(np_cross(g) - np_cross(f)).max() < 1e-12
    for name, flag in expected.items():
        L = losses.get(name)
        same = _rel(L(jnp.asarray(g)), L(jnp.asarray(f))) < 1e-10
        assert same is flag, name


# ---------------------------------------------------------------- the Loss object / registry

def test_get_errors_list_valid_choices():
    with pytest.raises(ValueError, match="valid choices.*barlow_twins.*vicreg"):
        losses.get("barlowtwins")
    with pytest.raises(ValueError, match="unknown constant.*'lamda'.*valid constants are.*lam"):
        losses.get("barlow_twins", lamda=1.0)
    with pytest.raises(ValueError, match="vicreg.mu"):
        losses.get("vicreg", mu=-1.0)
    with pytest.raises(ValueError, match="simclr.temperature"):
        losses.get("simclr", temperature=0.0)
    with pytest.raises(TypeError, match="barlow_twins.lam"):
        losses.get("barlow_twins", lam="one")
    with pytest.raises(ValueError, match="simclr.similarity.*valid choices.*cosine.*dot"):
        losses.get("simclr", similarity="l2")
    with pytest.raises(TypeError, match="simclr.similarity"):
        losses.get("simclr", similarity=1.0)
    with pytest.raises(ValueError, match="options.*negatives"):
        losses.get("naive", negative="shift")
    with pytest.raises(TypeError, match="loss"):
        losses.as_loss(3)


def test_loss_pytree_constants_are_leaves_options_static():
    L = losses.get("simclr", temperature=0.3, similarity="dot")
    leaves, treedef = jax.tree_util.tree_flatten(L)
    assert leaves == [0.3]                      # the string option is not a leaf
    assert "dot" in str(treedef)                # ... it is static metadata
    assert losses.as_loss("vicreg").constants["lam_inv"] == 25.0


def test_jit_vmap_grad_over_constants(f):
    fj = jnp.asarray(f)

    @jax.jit
    def value(L):
        return L(fj)

    temps = jnp.array([0.1, 0.3, 0.7])
    batched = jax.vmap(lambda t: value(losses.get("simclr", temperature=t, similarity="dot")))(temps)
    loop = [np_simclr(f, float(t), "dot") for t in temps]
    assert np.allclose(np.asarray(batched), loop, rtol=1e-12, atol=0)
    # d/dτ by autodiff vs central differences (h = 1e-5: truncation ~h² ≈ 1e-10, round-off ~1e-11).
    g = jax.grad(lambda t: value(losses.get("simclr", temperature=t)))(0.4)
    h = 1e-5
    fd = (np_simclr(f, 0.4 + h, "cosine") - np_simclr(f, 0.4 - h, "cosine")) / (2 * h)
    assert _rel(g, fd) < 1e-7
    # static option under jit: changing it retraces (different code path), constants do not.
    a = value(losses.get("simclr", similarity="cosine"))
    b = value(losses.get("simclr", similarity="dot"))
    assert not np.isclose(float(a), float(b))


def test_float32_inputs_stay_float32(f):
    f32 = jnp.asarray(f, jnp.float32)
    for name in losses.names():
        out = losses.get(name)(f32)
        assert out.dtype == jnp.float32, name
        assert np.isfinite(float(out)), name


def test_of_moment_equals_the_loss_of_f():
    """`Loss.of_moment(C)` (the eigen solver's moment path) equals `loss(f)` at `C = C(f)` for the
    cross-moment-only losses, and is refused for the others."""
    f = jax.random.normal(jax.random.PRNGKey(4), (12, 3), jnp.float64)
    C = losses.cross_correlation(f)
    for loss in (losses.get("barlow_twins", lam=0.7), losses.get("kernel_pca"),
                 losses.get("naive")):
        assert loss.has_moment_form
        np.testing.assert_allclose(loss.of_moment(C), loss(f), rtol=1e-12, atol=1e-14)
    for name in ("vicreg", "simclr", "spectral", "barlow_twins_standardized"):
        assert not losses.get(name).has_moment_form
        with pytest.raises(ValueError, match="cross-moment"):
            losses.get(name).of_moment(C)
    assert not losses.get("naive", negatives="shift").has_moment_form
