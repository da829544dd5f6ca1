"""sslntk.lowrank against the dense route (float64, 2n = 256 digits views, depth-2 ReLU MLP NTK).

References: the dense kernel `kernels.ntk(arch, X)` and its exact contrastive eigenpairs
`linalg.eigen_decomposition(K, m, "contrastive", method="eigh")` (one dense eigh, independent of
the landmark code), and `dynamics.solve(K, ..., "eigen")` for the reduced flow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import data, dynamics, kernels, linalg, losses, lowrank

N = 256
M = 8
ARCH = kernels.mlp(depth=2)


@pytest.fixture(scope="module")
def problem():
    ds = data.digits()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    idx = jax.random.choice(k1, ds.n, (N // 2,), replace=False)
    X = data.make_views(ds.x[idx], data.gaussian_noise(0.5), k2).stacked.astype(jnp.float64)
    K = np.asarray(kernels.ntk(ARCH, X))
    ref = linalg.eigen_decomposition(jnp.asarray(K), M, "contrastive", method="eigh")
    return X, K, ref


@pytest.fixture(scope="module")
def lr(problem):
    X, _, _ = problem
    return lowrank.nystrom_decomposition(ARCH, X, M, landmarks=64, block=32,
                                         key=jax.random.PRNGKey(3))


# float64 round-off on O(1)..O(N) kernel entries: identities hold to ~N·eps·max|K| ≈ 1e-12
# relative; 1e-9 absolute leaves a 100x margin and still fails on any algebra error (O(1e-3+)).
TOL = 1e-9


def test_identities_and_psd_remainder(problem, lr):
    _, K, _ = problem
    d = lr.decomposition
    A, E = np.asarray(d.vectors), np.asarray(d.lift)
    scale = np.max(np.abs(K))
    assert d.kind == "contrastive" and d.method == "nystrom" and d.m == M
    np.testing.assert_allclose(E, K @ A, atol=TOL * scale)            # E = K A (exact kernel)
    np.testing.assert_allclose(A.T @ E, np.eye(M), atol=TOL)           # Aᵀ K A = Aᵀ E = I
    np.testing.assert_allclose(E.T @ np.concatenate([E[N // 2:], E[:N // 2]]) / N,
                               np.diag(np.asarray(d.values)), atol=TOL)   # EᵀZE/N = Θ
    lam = np.linalg.eigvalsh(K - E @ E.T)
    assert lam.min() >= -TOL * scale                                   # K − E Eᵀ ⪰ 0
    # tail_norm is a rigorous upper bound of ‖K − E Eᵀ‖₂ (measured here, dense)
    assert lr.bound.tail_norm >= lam.max() * (1 - 1e-12)
    assert float(d.trace) == pytest.approx(np.trace(K), rel=1e-12)
    assert float(d.discarded_mass) >= lam.max()


def test_eigenvalues_within_certified_radius(problem, lr):
    _, K, ref = problem
    th, gam = lr.bound.values, np.asarray(ref.values)
    err = np.abs(th - gam)
    # Ritz values of M from a subspace are lower bounds (Cauchy interlacing), to round-off
    assert np.all(th <= gam + 1e-12 * gam[0])
    # some eigenvalue of M lies within ρ_j of θ_j; here it is γ_j itself (distinct top values)
    assert np.all(err <= lr.bound.radius)
    # the approximation is real, not vacuous: 64 of 256 landmarks give the top 8 to < 5e-2
    # relative (measured 2.3e-2: the noise views make this kernel's spectrum decay slowly)
    assert np.max(err / gam) < 5e-2
    # ρ_j is the residual bound it claims: ‖K^{1/2} r_j‖ computed densely is <= ρ_j
    A, E = np.asarray(lr.decomposition.vectors), np.asarray(lr.decomposition.lift)
    R = np.concatenate([E[N // 2:], E[:N // 2]]) / N - A * th
    exact = np.sqrt(np.maximum(np.sum(R * (K @ R), axis=0), 0.0))
    assert np.all(exact <= lr.bound.radius * (1 + 1e-9))
    assert np.all(exact + 1e-12 >= err)                       # Weinstein: the true residual too


def test_exact_radius_pass(problem, lr):
    X, K, ref = problem
    ex = lowrank.nystrom_decomposition(ARCH, X, M, landmarks=64, block=32,
                                       key=jax.random.PRNGKey(3), exact_radius=True)
    np.testing.assert_allclose(ex.bound.values, lr.bound.values, rtol=1e-12)
    A, E = np.asarray(ex.decomposition.vectors), np.asarray(ex.decomposition.lift)
    R = np.concatenate([E[N // 2:], E[:N // 2]]) / N - A * ex.bound.values
    dense = np.sqrt(np.maximum(np.sum(R * (K @ R), axis=0), 0.0))
    # the second pass computes r_jᵀ K r_j from exact kernel rows: equal to the dense value up to
    # the cancellation in a difference of O(θ²) terms (float64: ~1e-7 relative of ρ)
    np.testing.assert_allclose(ex.bound.radius, dense, rtol=1e-6, atol=1e-12)
    assert np.all(ex.bound.radius <= lr.bound.radius)
    assert np.all(np.abs(ex.bound.values - np.asarray(ref.values)) <= ex.bound.radius)


def test_all_landmarks_is_exact(problem):
    """l = N landmarks: K̂ = K, the Nyström modes are the exact ones (independent of the bound)."""
    X, K, ref = problem
    full = lowrank.nystrom_decomposition(ARCH, X, M, landmarks=N, block=64, method="uniform")
    # float64 eigenvalues of O(1) operators through two eigh's: 1e-9 relative is 1000x round-off
    np.testing.assert_allclose(full.bound.values, np.asarray(ref.values), rtol=1e-9)
    assert full.bound.nystrom_trace_error <= 1e-9 * np.trace(K)
    assert set(full.bound.landmarks.tolist()) == set(range(N))


def test_rpcholesky_beats_uniform_trace_error(problem):
    """Landmarks ∝ the residual diagonal capture at least as much kernel mass (measured, same key)."""
    X, _, _ = problem
    kw = dict(landmarks=64, block=16, key=jax.random.PRNGKey(5))
    rp = lowrank.nystrom_decomposition(ARCH, X, M, method="rpcholesky", **kw)
    un = lowrank.nystrom_decomposition(ARCH, X, M, method="uniform", **kw)
    assert rp.bound.nystrom_trace_error <= un.bound.nystrom_trace_error * 1.05


def test_kernel_products(problem):
    X, K, _ = problem
    Y = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (N, 3), jnp.float64))
    # exact kernel rows times Y in row blocks vs the dense product: summation order only
    np.testing.assert_allclose(lowrank.apply_kernel(ARCH, X, Y, row_block=40), K @ Y,
                               rtol=1e-10, atol=1e-10 * np.abs(K).max())
    np.testing.assert_allclose(lowrank.kernel_diagonal(ARCH, X, block=48), np.diag(K),
                               rtol=1e-12)


def test_solve_matches_dense_eigen_solver(problem, lr):
    """The reduced flow without K equals dynamics.solve(K, ..., "eigen") on the same
    decomposition (same equations; both float64, rtol 1e-8: loss agrees to ~1e-7 of its size)."""
    _, K, _ = problem
    bt = losses.get("barlow_twins")
    f0 = 1e-2 * jax.random.normal(jax.random.PRNGKey(1), (N, 4), jnp.float64)
    ts = jnp.linspace(0.0, 40.0, 12)
    ref = dynamics.solve(jnp.asarray(K), bt, f0, ts, "eigen", decomposition=lr.decomposition)
    out = lowrank.solve(lr, bt, f0, ts)
    assert out.ok and ref.ok and out.method == "eigen-lowrank"
    np.testing.assert_allclose(np.asarray(out.loss), np.asarray(ref.loss), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(out.f), np.asarray(ref.f), rtol=1e-5, atol=1e-8)
    assert float(ref.loss[-1]) < float(ref.loss[0]) - 1.0          # it did learn steps
    # the bound is rigorous (κ ≥ ‖K − K_m‖₂ and ‖ΔK Z r₀ G‖ ≤ κ‖r₀ G‖) hence ≥ the dense one
    assert np.all(np.asarray(out.bound) >= np.asarray(ref.bound) * (1 - 1e-6))


def test_memory_plan_and_limit(problem):
    X, _, _ = problem
    plan = lowrank.memory_plan(131072, 64, landmarks=2048, dims=64)
    assert plan["peak"] == sum(v for k, v in plan.items() if k not in ("peak", "limit"))
    assert plan["peak"] < 20 * 2**30          # the 2n = 131072 benchmark's budget
    with pytest.raises(MemoryError, match="planned peak"):
        lowrank.nystrom_decomposition(ARCH, X, M, landmarks=64, memory_limit=1000)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(m=0), ValueError, "m"),
    (dict(m=70), ValueError, "m: expected m <= landmarks"),
    (dict(landmarks=300), ValueError, "landmarks: expected at most N = 256"),
    (dict(method="kmeans"), ValueError, "method"),
    (dict(block=0), ValueError, "block"),
    (dict(m=2.5), TypeError, "m"),
])
def test_bad_decomposition_input(problem, kw, exc, match):
    X, _, _ = problem
    args = dict(m=M, landmarks=64)
    args.update(kw)
    m = args.pop("m")
    with pytest.raises(exc, match=match):
        lowrank.nystrom_decomposition(ARCH, X, m, **args)


def test_bad_views_and_arch(problem):
    X, _, _ = problem
    with pytest.raises(ValueError, match="views: expected stacked views"):
        lowrank.nystrom_decomposition(ARCH, X[:255], M)
    with pytest.raises(TypeError, match="arch: expected a sslntk.kernels.Arch"):
        lowrank.nystrom_decomposition("mlp", X, M)
    with pytest.raises(ValueError, match="Y: expected shape"):
        lowrank.apply_kernel(ARCH, X, np.ones((10, 2)))


def test_bad_solve_input(problem, lr):
    bt = losses.get("barlow_twins")
    f0 = jnp.zeros((N, 4))
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(TypeError, match="decomposition: expected"):
        lowrank.solve(np.ones((N, 4)), bt, f0, ts)
    with pytest.raises(ValueError, match="loss: expected a method of C"):
        lowrank.solve(lr, losses.get("vicreg"), f0, ts)
    with pytest.raises(ValueError, match=r"f0: expected shape \(256, k\)"):
        lowrank.solve(lr, bt, jnp.zeros((128, 4)), ts)
    with pytest.raises(TypeError, match="f0: expected dtype"):
        lowrank.solve(lr, bt, jnp.zeros((N, 4), jnp.float32), ts)
    with pytest.raises(ValueError, match="f0: expected k <= m"):
        lowrank.solve(lr, bt, jnp.zeros((N, M + 1)), ts)
    with pytest.raises(ValueError, match="ts: expected"):
        lowrank.solve(lr, bt, f0, jnp.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="alpha"):
        lr.bound.step_time_rtol(-1.0)


def test_dynamics_solve_on_lowrank_kernel(problem, lr):
    """`dynamics.solve` with a LowRankKernel runs the eigen reduction without the dense K: the
    same trajectory as the dense eigen solver on the same decomposition (tolerances as above)."""
    _, K, _ = problem
    bt = losses.get("barlow_twins")
    f0 = 1e-2 * jax.random.normal(jax.random.PRNGKey(1), (N, 4), jnp.float64)
    ts = jnp.linspace(0.0, 40.0, 12)
    op = lowrank.LowRankKernel(lr)
    assert op.shape == (N, N) and op.dtype == jnp.float64
    E = np.asarray(lr.decomposition.lift)
    np.testing.assert_allclose(np.asarray(op(f0)), E @ (E.T @ np.asarray(f0)), rtol=1e-12)
    out = dynamics.solve(op, bt, f0, ts)
    assert out.ok and out.method == "eigen" and "low-rank" in out.reason
    ref = dynamics.solve(jnp.asarray(K), bt, f0, ts, "eigen", decomposition=lr.decomposition)
    np.testing.assert_allclose(np.asarray(out.loss), np.asarray(ref.loss), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="solver: a low-rank kernel"):
        dynamics.solve(op, bt, f0, ts, "ode")
    with pytest.raises(ValueError, match="unknown option"):
        dynamics.solve(op, bt, f0, ts, "eigen", m=4)
    with pytest.raises(ValueError, match="record_terms: not supported"):
        dynamics.solve(op, bt, f0, ts, record_terms=True)


def test_kernel_picks_the_route_by_memory(problem):
    X, K, _ = problem
    dense = lowrank.kernel(ARCH, X, M)
    np.testing.assert_allclose(np.asarray(dense), K, rtol=1e-12)
    need = lowrank.dense_kernel_bytes(N, jnp.float64)
    small = lowrank.kernel(ARCH, X, M, memory_limit=need - 1, landmarks=64, block=32,
                           key=jax.random.PRNGKey(3))
    assert isinstance(small, lowrank.LowRankKernel)
    assert small.decomposition.m == M


def test_float32_keeps_m_modes(problem):
    """float32 views (the benchmark's dtype): all m modes survive the round-off cuts, the
    identities hold to float32 accuracy and the top values match the float64 dense ones (the
    exact Rayleigh–Ritz step works with float32 kernel rows: ~1e-5 relative)."""
    X, K, ref = problem
    lr32 = lowrank.nystrom_decomposition(ARCH, X.astype(jnp.float32), 16, landmarks=128,
                                         block=64)
    d = lr32.decomposition
    assert d.m == 16 and d.vectors.dtype == jnp.float32
    A, E = np.asarray(d.vectors, np.float64), np.asarray(d.lift, np.float64)
    # float32 kernel rows: E = K A to ~1e-6 of the kernel's scale; Aᵀ E = I to ~1e-5
    np.testing.assert_allclose(E, K @ A, atol=1e-5 * np.abs(K).max())
    np.testing.assert_allclose(A.T @ E, np.eye(16), atol=1e-4)
    gam = np.asarray(ref.values)
    assert np.all(np.abs(lr32.bound.values[:M] - gam) / gam < 5e-2)   # as the float64 test
