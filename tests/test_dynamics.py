"""sslntk.dynamics: ode / gd / constrained solvers against independent references (neural-tangents'
`predict.gradient_descent` via `sslntk.kernels.reference_gradient_descent`, the exact aligned
logistic solution, the Esser fixed point), traceability (jit / vmap / grad vs finite differences),
failure statuses and input validation.

Compilation dominates the run time, so the ODE tests share one problem size, one time grid and the
test points (equal shapes and static options reuse the compiled solver)."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics, losses, theory
from sslntk.dynamics import DIVERGED, FAILED, MAX_STEPS, NONFINITE, SUCCESS

N_HALF, K_DIM, M_TEST, T_SAVE = 10, 3, 4, 61


@pytest.fixture(scope="module")
def prob():
    """Random-feature kernel over 2n = 20 augmented views (tanh features, width 64), test points,
    and the contrastive eigenproblem M = K^{1/2} Z K^{1/2}/2n in numpy float64."""
    rng = np.random.default_rng(0)
    d, width, n = 6, 64, N_HALF
    X = rng.normal(size=(n, d)) * np.linspace(2.0, 0.5, d)
    Xa, Xb = X + 0.3 * rng.normal(size=X.shape), X + 0.3 * rng.normal(size=X.shape)
    Xt = rng.normal(size=(M_TEST, d))
    Wf = rng.normal(size=(d, width))
    phi = lambda x: 3.0 * np.tanh(x @ Wf / np.sqrt(d)) / np.sqrt(width)
    Phi = phi(np.concatenate([Xa, Xb]))
    K = Phi @ Phi.T
    K_tx = phi(Xt) @ Phi.T
    Z = np.block([[np.zeros((n, n)), np.eye(n)], [np.eye(n), np.zeros((n, n))]])
    w, E = np.linalg.eigh(K)
    Kh = (E * np.sqrt(w)) @ E.T
    gam, B = np.linalg.eigh(Kh @ Z @ Kh / (2 * n))
    gam, B = gam[::-1], B[:, ::-1]
    return dict(K=jnp.asarray(K), K_np=K, K_tx=jnp.asarray(K_tx), Kh=Kh, gam=gam, B=B,
                g=rng.normal(size=(2 * n, K_DIM)), g_test=rng.normal(size=(M_TEST, K_DIM)),
                rng=rng)


def _ts(T):
    return jnp.linspace(0.0, T, T_SAVE)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _bt_eigs(f):
    """Eigenvalues of C(t) for every saved time, descending, (T, k)."""
    C = jax.vmap(losses.cross_correlation)(f)
    return np.linalg.eigvalsh(np.asarray(C))[:, ::-1]


# ------------------------------------------------------------------------------------- ode

@pytest.mark.parametrize("name,consts,alpha,T", [
    ("barlow_twins", {}, 1e-2, 6.0),
    # VICReg from α = 2: every std stays above γ = 1, away from the variance hinge's kink (a
    # sliding mode there makes any adaptive solver crawl; the hinge itself is tested in test_losses)
    pytest.param("vicreg", {"lam_inv": 1.0, "mu": 1.0, "nu": 1.0}, 2.0, 2.0,
                 marks=pytest.mark.slow),
    pytest.param("simclr", {"temperature": 0.5}, 1.0, 2.0, marks=pytest.mark.slow),
])
def test_ode_matches_neural_tangents_reference(prob, name, consts, alpha, T):
    from sslntk.kernels import reference_gradient_descent

    loss = losses.get(name, **consts)
    f0 = jnp.asarray(alpha * prob["g"])
    f0_test = jnp.asarray(alpha * prob["g_test"])
    ts = _ts(T)
    tr = dynamics.solve(prob["K"], loss, f0, ts, method="ode", K_test_train=prob["K_tx"],
                        f0_test=f0_test).raise_if_failed()
    ref_f, ref_test = reference_gradient_descent(loss, prob["K"], f0, ts, prob["K_tx"], f0_test)
    # neural-tangents integrates at rtol = atol = 1.4e-8, sslntk at 1e-8: both ~1e-7 accurate;
    # 1e-4 (the bound) leaves a wide margin while catching any convention mismatch
    # (a factor 2 in time or a missing symmetrisation is O(1)).
    assert tr.method == "ode" and tr.status == SUCCESS and int(tr.n_steps) > 0
    assert _rel(tr.f, ref_f) < 1e-4
    assert _rel(tr.f_test, ref_test) < 1e-4
    assert np.allclose(tr.loss, jax.vmap(loss)(tr.f), rtol=1e-12)


def test_ode_aligned_init_is_the_exact_logistic(prob):
    """Simon et al. 2023 §3/§6: f0 = K^{1/2} B_k diag(s0) stays aligned; eig C(t) = c_j(t) with
    c_j(t) = 1/(1 + (1/c_j(0) − 1) e^{−8 γ_j t}), c_j(0) = γ_j s_j²."""
    gam, s0 = prob["gam"][:K_DIM], np.array([1e-3, 2e-3, 3e-3])
    f0 = jnp.asarray(prob["Kh"] @ prob["B"][:, :K_DIM] * s0)
    T = 1.5 * np.log(1 / (gam[-1] * s0[-1] ** 2)) / (8 * gam[-1])
    ts = _ts(T)
    tr = dynamics.solve(prob["K"], "barlow_twins", f0, ts, method="ode", rtol=1e-11,
                        K_test_train=prob["K_tx"], f0_test=jnp.zeros((M_TEST, K_DIM)))
    tr.raise_if_failed()
    c0 = gam * s0**2
    c = 1 / (1 + (1 / c0 - 1) * np.exp(-8 * gam * np.asarray(ts)[:, None]))
    # the exact logistic agrees with RK4 to 7e-12; adaptive rtol 1e-11 leaves ~1e-9 over the run.
    assert np.abs(_bt_eigs(tr.f) - np.sort(c, axis=1)[:, ::-1]).max() < 1e-8
    assert abs(float(tr.loss[-1]) - np.sum((1 - c[-1]) ** 2)) < 1e-8


def test_ode_float32(prob):
    """The API accepts float32: default rtol 1e-5, result within 1e-3 of
    the float64 solve (f32 round-off ~1e-7 amplified through the staircase plus the tolerance)."""
    f0, ft0 = 1e-2 * prob["g"], 1e-2 * prob["g_test"]
    ts = _ts(6.0)
    tr64 = dynamics.solve(prob["K"], "barlow_twins", jnp.asarray(f0), ts, method="ode",
                          K_test_train=prob["K_tx"], f0_test=jnp.asarray(ft0))
    a32 = lambda x: jnp.asarray(x, jnp.float32)
    tr32 = dynamics.solve(a32(prob["K"]), "barlow_twins", a32(f0), a32(ts), method="ode",
                          K_test_train=a32(prob["K_tx"]), f0_test=a32(ft0)).raise_if_failed()
    assert tr32.f.dtype == jnp.float32 and tr32.loss.dtype == jnp.float32
    assert _rel(tr32.f, tr64.f) < 1e-3 and _rel(tr32.f_test, tr64.f_test) < 1e-3


# ------------------------------------------------------------------------------------- gd

def _crossing_times(eigs, ts, level=0.5):
    """First time each column crosses `level` (logit-linear interpolation between saved times:
    exact for a logistic curve)."""
    out = []
    for j in range(eigs.shape[1]):
        c = eigs[:, j]
        i = int(np.argmax(c >= level))
        assert i > 0 and c[i] >= level, "no crossing inside the time grid"
        lo, hi = np.log(c[i - 1] / (1 - c[i - 1])), np.log(c[i] / (1 - c[i]))
        out.append(ts[i - 1] + (ts[i] - ts[i - 1]) * (0 - lo) / (hi - lo))
    return np.array(out)


def test_gd_reproduces_flow_step_times(prob):
    """Simon et al. 2023: GD with learning rate η is slower than the flow by ≈ 2ηγ_j
    relative (the exponential phase grows by 1 + 4ηγ per step instead of e^{4ηγ}); within 2ηγ₁."""
    gam1 = prob["gam"][0]
    lr = 0.01 / gam1
    alpha = 1e-4
    f0 = jnp.asarray(alpha * prob["g"])
    T_end = 1.6 * np.log(1 / alpha) / (4 * prob["gam"][K_DIM - 1])
    every = int(np.ceil(T_end / lr / (T_SAVE - 1)))
    ts = lr * every * np.arange(T_SAVE)
    tr_gd = dynamics.solve(prob["K"], "barlow_twins", f0, ts, method="gd", lr=lr,
                           K_test_train=prob["K_tx"], f0_test=jnp.asarray(alpha * prob["g_test"]))
    tr_gd.raise_if_failed()
    assert tr_gd.method == "gd" and int(tr_gd.n_steps) == every * (T_SAVE - 1)
    assert np.allclose(tr_gd.ts, ts, rtol=1e-12)
    tr = dynamics.solve(prob["K"], "barlow_twins", f0, jnp.asarray(ts), method="ode", rtol=1e-10,
                        K_test_train=prob["K_tx"], f0_test=jnp.asarray(alpha * prob["g_test"]))
    t_gd = _crossing_times(_bt_eigs(tr_gd.f), ts)
    t_ode = _crossing_times(_bt_eigs(tr.f), ts)
    rel = (t_gd - t_ode) / t_ode
    assert np.all(np.abs(rel) <= 2 * lr * gam1), (rel, 2 * lr * gam1)
    # and the deviation is the predicted first-order slowdown, not noise (same sign, ≥ half).
    assert rel[0] >= 0.5 * 2 * lr * gam1
    # test predictions: f_test = f0_test − K_tx Σ lr ∇L, consistent with f = f0 − K Σ lr ∇L, so
    # for a K_tx that equals rows of K the test outputs reproduce those training outputs.
    K = prob["K"]
    tr2 = dynamics.solve(K, "barlow_twins", f0, ts, method="gd", lr=lr, K_test_train=K[:M_TEST],
                         f0_test=f0[:M_TEST])
    assert _rel(tr2.f_test, tr2.f[:, :M_TEST]) < 1e-10


def test_gd_rounds_times_and_validates_lr(prob, capfd):
    f0 = jnp.asarray(0.1 * prob["g"])
    with pytest.raises(ValueError, match="lr"):
        dynamics.solve(prob["K"], "barlow_twins", f0, [0.0, 1.0], method="gd")
    with pytest.warns(UserWarning, match="not multiples of lr"):
        tr = dynamics.solve(prob["K"], "barlow_twins", f0, [0.0, 0.104, 0.104, 0.2], method="gd",
                            lr=0.01, progress=True)
    err = capfd.readouterr().err                               # progress: one line (not a TTY)
    assert err.count("gd solve: 20/20 step") == 1, err
    assert np.allclose(tr.ts, [0.0, 0.1, 0.1, 0.2], rtol=1e-12)
    assert np.array_equal(tr.f[1], tr.f[2]) and int(tr.n_steps) == 20
    assert np.array_equal(tr.f[0], f0)


# ------------------------------------------------------------------------------ constrained

def test_constrained_converges_to_top_k_eigenspace_on_manifold(prob):
    """Esser et al. 2024 §3: RKHS-orthonormal flow of L = −tr C stays on fᵀK⁻¹f = I and
    converges to span K^{1/2} B_k (top-k eigenvectors of M); final loss −Σ_{j≤k} γ_j."""
    K_np, gam = prob["K_np"], prob["gam"]
    gap = gam[K_DIM - 1] - gam[K_DIM]
    T = np.log(1e12) / (2 * gap)         # tan θ(T) ≤ tan θ(0)·1e-12
    f0 = jnp.asarray(1e-3 * prob["g"])
    Kinv = np.linalg.inv(K_np)
    f0_test = jnp.asarray(np.asarray(prob["K_tx"]) @ Kinv @ np.asarray(f0))   # RKHS extension
    tr = dynamics.solve(prob["K"], "kernel_pca", f0, _ts(T), method="constrained",
                        K_test_train=prob["K_tx"], f0_test=f0_test).raise_if_failed()
    assert tr.method == "constrained"
    f = np.asarray(tr.f)
    drift = max(np.abs(ft.T @ Kinv @ ft - np.eye(K_DIM)).max() for ft in f)
    assert drift < 1e-6                    # Cholesky-QR retraction: round-off, ~1e-13 here
    # principal angles between K^{-1/2} f(T) and the top-k eigenvectors of M
    h = np.linalg.solve(prob["Kh"], f[-1])
    Q, _ = np.linalg.qr(h)
    cos = np.linalg.svd(prob["B"][:, :K_DIM].T @ Q, compute_uv=False)
    assert np.arccos(np.clip(cos.min(), -1, 1)) < 1e-6 or np.sqrt(1 - cos.min() ** 2) < 1e-6
    assert abs(float(tr.loss[-1]) + gam[:K_DIM].sum()) < 1e-10 * gam[:K_DIM].sum()
    assert np.all(np.diff(np.asarray(tr.loss)) <= 1e-10)   # the loss never increases
    # f_test = K_tx K⁻¹ f(t) for an RKHS-consistent start (carried without K⁻¹ by the solver).
    # RK stages keep f_test − K_tx K⁻¹ f = 0 exactly in exact arithmetic, but near the converged
    # state the explicit steps sit at their stability limit, where round-off grows to the error
    # tolerance (rtol 1e-8) before the controller reacts: measured 3e-8 at rtol 1e-8, 2e-11 at 1e-11.
    pred = np.einsum("mi,tik->tmk", np.asarray(prob["K_tx"]) @ Kinv, f)
    assert _rel(tr.f_test, pred) < 1e-6


def test_constrained_needs_positive_definite_kernel(prob):
    v = prob["rng"].normal(size=(2 * N_HALF, 2))
    K_low = jnp.asarray(v @ v.T)                       # rank 2: PSD but singular
    with pytest.raises(ValueError, match="positive-definite"):
        dynamics.solve(K_low, "kernel_pca", jnp.asarray(prob["g"][:, :2]), [0.0, 1.0],
                       method="constrained")


# ------------------------------------------------------------------- jit / vmap / grad

def test_vmap_over_seeds_alpha_and_constants_equals_loop(prob):
    ts = _ts(4.0)
    K, K_tx = prob["K"], prob["K_tx"]
    rng = np.random.default_rng(5)
    seeds = rng.normal(size=(3, 2 * N_HALF, K_DIM))
    alphas = np.array([1e-3, 1e-2, 3e-2])
    lams = np.array([1.0, 0.5, 2.0])
    f0s = jnp.asarray(alphas[:, None, None] * seeds)
    ft0 = jnp.zeros((M_TEST, K_DIM))

    @jax.jit
    def batched(K, f0s, lams, ts):            # everything traced, including the kernel and times
        def one(f0, lam):
            tr = dynamics.solve(K, losses.get("barlow_twins", lam=lam), f0, ts, method="ode",
                                K_test_train=K_tx, f0_test=ft0)
            return tr.f, tr.loss, tr.status
        return jax.vmap(one)(f0s, lams)

    fb, Lb, sb = batched(K, f0s, jnp.asarray(lams), ts)
    assert np.all(np.asarray(sb) == SUCCESS)
    for i in range(3):
        tr = dynamics.solve(K, losses.get("barlow_twins", lam=lams[i]), f0s[i], ts, method="ode",
                            K_test_train=K_tx, f0_test=ft0)
        # identical step sequences; only batched-matmul round-off differs
        assert _rel(fb[i], tr.f) < 1e-10 and _rel(Lb[i], tr.loss) < 1e-10


def _check_grad_vs_fd(prob, method, T, **options):
    """d/d(α, λ, c) of the final loss, a final-embedding statistic and the first step time (loss
    crossing k − 1/2, linear interpolation between saved times), with K → c·K standing in for an
    augmentation-strength dependence, against central differences (h = 1e-4 relative: truncation
    ~h² = 1e-8; ODE solver noise at rtol 1e-12 is ~1e-12/h = 1e-8): tolerance 1e-4 relative."""
    ts = _ts(T)
    g = jnp.asarray(prob["g"])
    K, K_tx, ft0 = prob["K"], prob["K_tx"], jnp.zeros((M_TEST, K_DIM))

    def outcome(params):
        alpha, lam, c = params[0], params[1], params[2]
        tr = dynamics.solve(c * K, losses.get("barlow_twins", lam=lam), alpha * g, ts,
                            method=method, K_test_train=K_tx, f0_test=ft0, **options)
        L = tr.loss
        target = K_DIM - 0.5
        i = jnp.argmax(L < target)
        t_step = tr.ts[i - 1] + (tr.ts[i] - tr.ts[i - 1]) * (L[i - 1] - target) / (L[i - 1] - L[i])
        return jnp.stack([L[-1], jnp.sum(tr.f[-1] ** 2), t_step])

    p0 = jnp.array([3e-2, 0.7, 1.1])
    J = np.asarray(jax.jacrev(outcome)(p0))
    out0 = np.asarray(outcome(p0))
    assert 0 < out0[2] < T                           # the step happens inside the grid
    for j in range(3):
        h = 1e-4 * float(p0[j])
        e = jnp.zeros(3).at[j].set(h)
        fd = (np.asarray(outcome(p0 + e)) - np.asarray(outcome(p0 - e))) / (2 * h)
        for i in range(3):
            scale = max(abs(fd[i]), 1e-3 * np.abs(J[i]).max())
            assert abs(J[i, j] - fd[i]) <= 1e-4 * scale, (method, i, j, J[i, j], fd[i])


def test_grad_through_gd_matches_finite_differences(prob):
    _check_grad_vs_fd(prob, "gd", 3.0, lr=0.01)


@pytest.mark.slow
def test_grad_through_ode_matches_finite_differences(prob):
    # diffrax RecursiveCheckpointAdjoint (the default): reverse mode through the adaptive solve.
    _check_grad_vs_fd(prob, "ode", 4.0, rtol=1e-12)


# ------------------------------------------------------------------------- failure paths

# Esser's naive loss grows like e^{2γ₁ t} (γ₁ ≈ 2.5 here): float64 overflows near t ≈ 140. Both
# tests use the same compiled solver (same loss, shapes and max_steps; rtol is a traced argument).
_NAIVE_MAX_STEPS = 2000


def test_max_steps_gives_status_and_nan_tail(prob):
    f0 = jnp.asarray(1e-2 * prob["g"])
    with pytest.warns(RuntimeWarning, match="max_steps"):
        tr = dynamics.solve(prob["K"], "naive", f0, jnp.array([0.0, 0.1, 100.0]), method="ode",
                            rtol=1e-10, max_steps=_NAIVE_MAX_STEPS)
    assert int(tr.status) == MAX_STEPS and tr.status_name == "max_steps"
    assert int(tr.n_steps) <= _NAIVE_MAX_STEPS
    assert np.array_equal(tr.f[0], f0) and np.isfinite(np.asarray(tr.f[1])).all()
    assert np.all(np.isnan(tr.f[-1])) and np.isnan(tr.loss[-1])
    with pytest.raises(RuntimeError, match="max_steps"):
        tr.raise_if_failed()


def test_blow_up_gives_nonfinite(prob):
    f0 = jnp.asarray(1e-2 * prob["g"])
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        tr = dynamics.solve(prob["K"], "naive", f0, jnp.array([0.0, 1.0, 1e4]), method="ode",
                            rtol=1e-3, max_steps=_NAIVE_MAX_STEPS)
    assert int(tr.status) == NONFINITE           # stopped by the blow-up, not by max_steps
    assert np.isfinite(np.asarray(tr.f[1])).all() and np.all(np.isnan(np.asarray(tr.f[-1])))
    # gd: a learning rate far beyond stability explodes: DIVERGED (finite but beyond
    # DIVERGE_FACTOR·max(1, |L0|)) at the step it happened, before any inf/NaN appears
    with pytest.warns(RuntimeWarning, match="diverged"):
        tr = dynamics.solve(prob["K"], "barlow_twins", jnp.asarray(prob["g"]), [0.0, 50.0],
                            method="gd", lr=5.0)
    assert int(tr.status) == DIVERGED and 0 < int(tr.n_steps) < 10


def test_status_codes_are_distinct():
    assert len({SUCCESS, MAX_STEPS, NONFINITE, FAILED}) == 4


# ------------------------------------------------------------------------ validation / dispatch

def test_bad_inputs_raise_clear_errors(prob):
    K, f0, ts = prob["K"], jnp.asarray(0.1 * prob["g"]), [0.0, 1.0]
    solve = dynamics.solve
    with pytest.raises(ValueError, match="K: expected a square"):
        solve(K[:, :-2], "barlow_twins", f0, ts, method="ode")
    with pytest.raises(ValueError, match="K: expected a symmetric"):
        solve(K + jnp.triu(jnp.ones_like(K), 1), "barlow_twins", f0, ts, method="ode")
    with pytest.raises(ValueError, match="K: expected a positive semi-definite"):
        solve(K - 2.0 * jnp.eye(2 * N_HALF) * float(jnp.linalg.eigvalsh(K)[-1]), "barlow_twins",
              f0, ts, method="ode")
    with pytest.raises(ValueError, match="f0: expected shape"):
        solve(K, "barlow_twins", f0[:-2], ts, method="ode")
    with pytest.raises(ValueError, match="f0: expected stacked views"):
        solve(K[:-1, :-1], "barlow_twins", f0[:-1], ts, method="ode")
    with pytest.raises(TypeError, match="f0: expected a floating dtype"):
        solve(K, "barlow_twins", jnp.ones((2 * N_HALF, 2), jnp.int32), ts, method="ode")
    with pytest.raises(TypeError, match="mixed dtypes"):
        solve(K, "barlow_twins", f0.astype(jnp.float32), ts, method="ode")
    with pytest.raises(ValueError, match="f0: expected finite"):
        solve(K, "barlow_twins", f0.at[0, 0].set(jnp.nan), ts, method="ode")
    with pytest.raises(ValueError, match="ts: expected times >= 0"):
        solve(K, "barlow_twins", f0, [-1.0, 1.0], method="ode")
    with pytest.raises(ValueError, match="ts: expected non-decreasing"):
        solve(K, "barlow_twins", f0, [0.0, 2.0, 1.0], method="ode")
    with pytest.raises(ValueError, match="ts: expected a non-empty 1-D"):
        solve(K, "barlow_twins", f0, [[0.0, 1.0]], method="ode")
    with pytest.raises(ValueError, match="both"):
        solve(K, "barlow_twins", f0, ts, method="ode", K_test_train=prob["K_tx"])
    with pytest.raises(ValueError, match="K_test_train: expected shape"):
        solve(K, "barlow_twins", f0, ts, method="ode", K_test_train=prob["K_tx"][:, :-1],
              f0_test=jnp.zeros((M_TEST, K_DIM)))
    with pytest.raises(ValueError, match="f0_test: expected shape"):
        solve(K, "barlow_twins", f0, ts, method="ode", K_test_train=prob["K_tx"],
              f0_test=jnp.zeros((M_TEST, K_DIM + 1)))
    with pytest.raises(ValueError, match="method: unknown value 'rk4'.*valid choices"):
        solve(K, "barlow_twins", f0, ts, method="rk4")
    with pytest.raises(ValueError, match="unknown option.*'tol'.*valid options.*rtol"):
        solve(K, "barlow_twins", f0, ts, method="ode", tol=1e-6)
    with pytest.raises(ValueError, match="solver: unknown value"):
        solve(K, "barlow_twins", f0, ts, method="ode", solver="rk45")
    with pytest.raises(ValueError, match="max_steps"):
        solve(K, "barlow_twins", f0, ts, method="ode", max_steps=0)
    with pytest.raises(TypeError, match="loss"):
        solve(K, 42, f0, ts, method="ode")


def test_methods_table_is_the_registry(monkeypatch, prob):
    """`SOLVERS` (name -> solver class; `METHODS` is the same dict) is what `solve` builds from and
    `choose_solver` picks from: a solver added to it is reachable by name, a removed one is neither
    chosen nor accepted."""
    assert dynamics.METHODS is dynamics.SOLVERS
    assert dynamics.available_methods() == list(dynamics.SOLVERS)
    assert all(issubclass(c, dynamics.Solver) for c in dynamics.SOLVERS.values())

    class Called(Exception):
        pass

    @dataclasses.dataclass(frozen=True)
    class Future(dynamics.Solver):
        name = "future"

        def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False):
            raise Called

    monkeypatch.setitem(dynamics.SOLVERS, "future", Future)
    with pytest.raises(Called):
        dynamics.solve(prob["K"], "barlow_twins", jnp.asarray(prob["g"]), [0.0, 1.0],
                       method="future")
    with pytest.raises(Called):
        dynamics.solve(prob["K"], "barlow_twins", jnp.asarray(prob["g"]), [0.0, 1.0], Future())
    big = jax.ShapeDtypeStruct((dynamics.SMALL_N + 2, dynamics.SMALL_N + 2), jnp.float32)
    assert dynamics.choose_method(big, "barlow_twins", None, None) == "eigen"
    monkeypatch.delitem(dynamics.SOLVERS, "eigen")
    assert dynamics.choose_method(big, "barlow_twins", None, None) == "ode"
    with pytest.raises(ValueError, match="method: unknown value 'eigen'"):
        dynamics.solve(prob["K"], "barlow_twins", jnp.asarray(prob["g"]), [0.0, 1.0],
                       method="eigen")


def test_auto_method_rule(prob):
    """`auto` by loss and size, recorded on the Trajectory: closed_form only for an ALIGNED init
    (where it is exact), eigen for cross-moment losses above SMALL_N, ode otherwise."""
    K, f0, ts = prob["K"], 1e-2 * jnp.asarray(prob["g"]), jnp.array([0.0, 1.0])
    bt = losses.get("barlow_twins")
    assert dynamics.choose_method(K, bt, f0, ts) == "ode"               # random init, small N
    _, _, E = theory.contrastive_modes(K, K_DIM + 1)
    aligned = E[:, :K_DIM] @ (1e-3 * jnp.diag(jnp.arange(1.0, K_DIM + 1)))[::-1]
    assert dynamics.choose_method(K, bt, aligned, ts) == "closed_form"
    off = aligned + 1e-4 * E[:, K_DIM:K_DIM + 1]                        # touches mode k+1
    assert dynamics.choose_method(K, bt, off, ts) == "ode"
    assert dynamics.choose_method(K, losses.get("barlow_twins", lam=0.5), aligned, ts) == "ode"
    assert dynamics.choose_method(K, "vicreg", f0, ts) == "ode"
    big = jax.ShapeDtypeStruct((dynamics.SMALL_N + 2, dynamics.SMALL_N + 2), jnp.float32)
    huge = jax.ShapeDtypeStruct((dynamics.LARGE_N + 2, dynamics.LARGE_N + 2), jnp.float32)
    for name in ("barlow_twins", "kernel_pca", "naive"):
        assert dynamics.choose_method(big, name, None, None) == "eigen"
    for name in ("vicreg", "simclr", "spectral", "barlow_twins_standardized"):
        assert dynamics.choose_method(big, name, None, None) == "ode"
        assert dynamics.choose_method(huge, name, None, None) == "eigen"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dynamics.solve(K, bt, aligned, ts).method == "closed_form"
        assert dynamics.solve(K, bt, f0, ts).method == "ode"


def test_reference_peer_under_jit_and_vmap(prob):
    """The peer wrapper validates captured concrete arrays in numpy, so it can be vmapped inside
    jit over initial conditions (the benchmark's sweep) and equals the separate runs."""
    from sslntk import kernels

    K, ts = prob["K"], jnp.linspace(0.0, 2.0, 5)
    f0s = 1e-2 * jnp.stack([jnp.asarray(prob["g"]), -jnp.asarray(prob["g"])[::-1]])
    bt = losses.get("barlow_twins")
    batched = jax.jit(jax.vmap(lambda f0: kernels.reference_gradient_descent(bt, K, f0, ts)[0]))
    out = batched(f0s)
    for i in range(2):
        np.testing.assert_allclose(out[i], kernels.reference_gradient_descent(bt, K, f0s[i], ts)[0],
                                   rtol=1e-10, atol=1e-13)


def test_symmetry_and_finiteness_in_one_tiled_pass():
    """`_validate.square_kernel` reads a dense K once in tiles (`_asymmetry`, the last tile clamped
    to end at N): at 2n = tile + 22 (two overlapping tiles per axis) an asymmetric entry anywhere,
    in the first tile, the clamped one or their overlap, is found with the rule of the
    whole-matrix reference `max|K − Kᵀ| / max|K| > 100·eps` (numpy), and a NaN or inf is reported
    as non-finite with its count."""
    from sslntk import _validate

    t = _validate.SYMMETRY_TILE
    N = t + 22
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, 5))
    K = X @ X.T
    K = 0.5 * (K + K.T)
    assert _validate.square_kernel("K", jnp.asarray(K)) is not None
    eps = np.finfo(np.float64).eps
    for (i, j) in [(0, N - 1), (N - 1, 0), (3, 5), (N - 10, N - 11), (t - 1, t), (N - 1, N - 2),
                   (t - 30, 30), (15, t + 5)]:
        for size in (1e-3, 1e-15):                # far above / below 100·eps = 2.2e-14 relative
            Kp = K.copy()
            Kp[i, j] += size * np.abs(K).max()
            ref = np.abs(Kp - Kp.T).max() / np.abs(Kp).max() > 100 * eps
            assert ref == (size > 1e-6)
            if ref:
                with pytest.raises(ValueError, match="K: expected a symmetric kernel"):
                    _validate.square_kernel("K", jnp.asarray(Kp))
            else:
                _validate.square_kernel("K", jnp.asarray(Kp))
    for bad in (np.nan, np.inf):
        Kp = K.copy()
        Kp[N - 1, t - 2] = bad
        with pytest.raises(ValueError, match="K: expected finite values, got 1 NaN/inf"):
            _validate.square_kernel("K", jnp.asarray(Kp))
