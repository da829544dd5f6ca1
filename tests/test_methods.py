"""The method protocol (`sslntk.methods`): a toy method with an auxiliary state variable, defined
here alone, integrated by the library's solvers and checked against an independent float64
reference; plain callables as gradient-flow methods; the shared validation and outcome rules."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sslntk import _status, _validate, dynamics, kernels, losses, methods, theory

N_HALF, K_DIM, M_TEST = 4, 2, 3


class EMATwin(eqx.Module, methods.Method):
    """A toy non-gradient-flow method: the online f is pulled towards a stop-gradient EMA copy of
    itself and pushed by Barlow Twins: `g = ∇_f BT(f) + β (f − sg(target))`,
    `d target/dt = ρ (f − target)`; at test points the target follows `f_test` at the same rate."""

    beta: jax.Array
    rho: jax.Array

    def init_aux(self, f0, key=None):
        return f0

    def init_aux_test(self, f0_test, aux):
        return f0_test

    def force(self, state):
        bt = losses.get("barlow_twins")
        return jax.grad(bt)(state.f) + self.beta * (state.f - jax.lax.stop_gradient(state.aux))

    def aux_field(self, t, state, df):
        return self.rho * (state.f - state.aux)

    def aux_test_field(self, t, state, df_test):
        return self.rho * (state.f_test - state.aux_test)

    def loss(self, state):
        return losses.get("barlow_twins")(methods.as_state(state).f)


@pytest.fixture(scope="module")
def prob():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2 * N_HALF + M_TEST, 3))
    Kall = np.exp(-0.5 * np.sum((X[:, None] - X[None]) ** 2, -1)) + 0.5 * (X @ X.T) / 3
    N = 2 * N_HALF
    return dict(K=Kall[:N, :N], K_tx=Kall[N:, :N], f0=0.3 * rng.normal(size=(N, K_DIM)),
                f0_test=0.3 * rng.normal(size=(M_TEST, K_DIM)))


def _reference_rhs(prob, beta, rho):
    """The toy system written out by hand in numpy float64 (BT gradient in closed form at λ = 1:
    ∇_f L = (2/n)·Z f (C − I) with L = ‖C − I‖² and C = fᵀZf/2n, Simon et al. 2023)."""
    K, Ktx = prob["K"], prob["K_tx"]
    N, k, m = K.shape[0], K_DIM, M_TEST
    n = N // 2

    def rhs(t, y):
        f, tg, ft, tgt = np.split(y, np.cumsum([N * k, N * k, m * k]))
        f, tg, ft, tgt = f.reshape(N, k), tg.reshape(N, k), ft.reshape(m, k), tgt.reshape(m, k)
        Zf = np.concatenate([f[n:], f[:n]])
        C = f.T @ Zf / N
        g = (2.0 / n) * Zf @ (C - np.eye(k)) + beta * (f - tg)
        return np.concatenate([(-K @ g).ravel(), (rho * (f - tg)).ravel(),
                               (-Ktx @ g).ravel(), (rho * (ft - tgt)).ravel()])
    return rhs


def test_toy_method_vector_field_matches_hand_written_reference(prob):
    """The protocol's default `vector_field` (force, aux and test parts) equals the hand-written
    system to round-off (float64)."""
    beta, rho = 0.7, 0.3
    meth = EMATwin(jnp.asarray(beta), jnp.asarray(rho))
    s = meth.init(jnp.asarray(prob["f0"]), f0_test=jnp.asarray(prob["f0_test"]))
    s = eqx.tree_at(lambda s: s.aux, s, s.aux + 0.1)      # target ≠ f, so every term is active
    op = methods.KernelOp(jnp.asarray(prob["K"]), jnp.asarray(prob["K_tx"]))
    d = meth.vector_field(0.0, s, op)
    y = np.concatenate([np.asarray(x).ravel() for x in (s.f, s.aux, s.f_test, s.aux_test)])
    ref = _reference_rhs(prob, beta, rho)(0.0, y)
    got = np.concatenate([np.asarray(x).ravel() for x in (d.f, d.aux, d.f_test, d.aux_test)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_plain_callable_is_a_gradient_flow_method():
    bt = losses.get("barlow_twins")
    m = methods.as_method(lambda f: bt(f))
    assert isinstance(m, methods.GradientFlow) and m.moment_form is None
    f = jnp.asarray(np.random.default_rng(1).normal(size=(8, 2)))
    np.testing.assert_allclose(m.force(m.init(f)), bt.force(bt.init(f)), rtol=1e-14)
    assert methods.as_method("barlow_twins") == bt
    with pytest.raises(TypeError, match="method: expected"):
        methods.as_method(3)


def test_named_losses_carry_their_structure():
    assert losses.get("barlow_twins").stepwise_form is not None
    assert losses.get("vicreg").stepwise_form is None
    assert losses.get("kernel_pca").moment_form is not None
    assert losses.get("naive", negatives="shift").moment_form is None
    with pytest.raises(ValueError, match="needs a method with `moment_form`.*'vicreg'"):
        methods.require(losses.get("vicreg"), "moment_form", "eigen")


def test_loss_constants_and_rows_are_validated():
    with pytest.raises(TypeError, match="lam"):
        losses.get("barlow_twins", lam="1")
    with pytest.raises(ValueError, match="f: expected stacked embeddings"):
        losses.get("barlow_twins")(jnp.ones((5, 2)))


def _pack(tr):
    """(T, ·) float64 rows of (f, target, f_test, target_test) from a Trajectory."""
    T = tr.f.shape[0]
    return np.concatenate([np.asarray(x, np.float64).reshape(T, -1)
                           for x in (tr.f, tr.aux, tr.f_test, tr.aux_test)], axis=1)


def test_toy_method_ode_and_gd_match_independent_references(prob):
    """The toy EMA method, defined in this file alone, through `dynamics.solve` with the ode and gd
    solvers (no solver edited for it), against scipy's DOP853 (float64, rtol 1e-12) and a
    hand-written numpy Euler iteration of the same system. Tolerances: ode at rtol 1e-10 over an
    O(1) state leaves ~1e-9 relative, so 1e-7; gd is the same arithmetic up to round-off, 1e-10."""
    beta, rho = 0.7, 0.3
    meth = EMATwin(jnp.asarray(beta), jnp.asarray(rho))
    K, Ktx = jnp.asarray(prob["K"]), jnp.asarray(prob["K_tx"])
    f0, ft0 = jnp.asarray(prob["f0"]), jnp.asarray(prob["f0_test"])
    ts = np.linspace(0.0, 3.0, 7)
    rhs = _reference_rhs(prob, beta, rho)
    y0 = np.concatenate([prob["f0"].ravel(), prob["f0"].ravel(), prob["f0_test"].ravel(),
                         prob["f0_test"].ravel()])

    tr = dynamics.solve(K, meth, f0, jnp.asarray(ts), "ode", K_test_train=Ktx, f0_test=ft0,
                        rtol=1e-10).raise_if_failed()
    ref = solve_ivp(rhs, (0.0, ts[-1]), y0, method="DOP853", t_eval=ts, rtol=1e-12,
                    atol=1e-14).y.T
    got = _pack(tr)
    assert np.max(np.abs(got - ref)) < 1e-7 * np.max(np.abs(ref))
    np.testing.assert_allclose(tr.loss, jax.vmap(losses.get("barlow_twins"))(tr.f), rtol=1e-12)
    assert tr.method == "ode" and tr.aux.shape == tr.f.shape
    # the start may also be given as the method's own State (same compiled solve)
    tr2 = dynamics.solve(K, meth, meth.init(f0, f0_test=ft0), jnp.asarray(ts), "ode",
                         K_test_train=Ktx, rtol=1e-10)
    np.testing.assert_array_equal(_pack(tr2), _pack(tr))

    lr, every = 0.05, 10
    tr = dynamics.solve(K, meth, f0, jnp.asarray(ts[:3] * 0 + np.arange(3) * every * lr), "gd",
                        lr=lr, K_test_train=Ktx, f0_test=ft0).raise_if_failed()
    y, ref = y0.copy(), [y0.copy()]
    for s in range(1, 2 * every + 1):
        y = y + lr * rhs(0.0, y)
        if s % every == 0:
            ref.append(y.copy())
    np.testing.assert_allclose(_pack(tr), np.stack(ref), rtol=1e-10, atol=1e-12)


def test_methods_without_structure_are_refused_by_name(prob):
    """A solver that needs structure refuses a method without it, naming the method and what it
    lacks, before any work."""
    K, f0 = jnp.asarray(prob["K"]), jnp.asarray(prob["f0"])
    toy = EMATwin(jnp.asarray(0.5), jnp.asarray(0.5))
    for solver in ("eigen", "constrained"):
        with pytest.raises(ValueError, match=f"solver '{solver}' needs a method with `potential`"
                                             f".*'EMATwin'"):
            dynamics.solve(K, toy, f0, [0.0, 1.0], solver)
    with pytest.raises(ValueError, match="`stepwise_form`.*'vicreg'"):
        dynamics.solve(K, "vicreg", f0, [0.0, 1.0], "closed_form")
    with pytest.raises(ValueError, match="lam = 1 only.*lam = 0.5"):
        dynamics.solve(K, losses.get("barlow_twins", lam=0.5), f0, [0.0, 1.0],
                       dynamics.ClosedForm())
    solver, reason = dynamics.choose_solver(K, toy, f0)
    assert isinstance(solver, dynamics.Ode) and "not the gradient flow" in reason
    tr = dynamics.solve(K, toy, f0, [0.0, 0.5])
    assert tr.method == "ode" and tr.reason == reason and tr.ok


def test_plain_callable_through_solve_matches_named_loss(prob):
    """A plain callable `f -> scalar` is the gradient-flow method of that function: the same
    trajectory as the named loss (same arithmetic; 1e-12), with every solver that needs only a
    potential."""
    K, f0, ts = jnp.asarray(prob["K"]), jnp.asarray(prob["f0"]), jnp.linspace(0.0, 2.0, 5)
    bt = losses.get("barlow_twins")

    def my_bt(f):
        return bt(f)

    for solver, opts in (("ode", {}), ("eigen", {"kind": "kernel"})):
        a = dynamics.solve(K, my_bt, f0, ts, solver, **opts)
        b = dynamics.solve(K, bt, f0, ts, solver, **opts)
        assert a.ok and b.ok
        np.testing.assert_allclose(a.f, b.f, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12, atol=1e-14)


def test_non_psd_kernel_is_refused_with_one_message(prob):
    """K − 2I (λ_min(K) < 2 here) is refused by `solve`, `solve_many`, `theory.stepwise` and the
    initial-function sampler with the message of `_validate.psd_kernel` (the one PSD rule; at
    2n = 8 the Lanczos estimate is the exact λ_min, so even the printed value agrees)."""
    K = jnp.asarray(prob["K"]) - 2.0 * jnp.eye(prob["K"].shape[0])
    assert np.linalg.eigvalsh(np.asarray(K))[0] < -0.1
    f0 = jnp.asarray(prob["f0"])
    with pytest.raises(ValueError) as direct:
        _validate.psd_kernel("K", K)
    msg = str(direct.value)
    assert msg.startswith("K: expected a positive semi-definite kernel, got smallest eigenvalue")
    for solver in ("ode", "eigen"):
        with pytest.raises(ValueError) as e:
            dynamics.solve(K, "barlow_twins", f0, [0.0, 1.0], solver)
        assert str(e.value) == msg
        with pytest.raises(ValueError) as e:
            dynamics.solve_many(K, "barlow_twins", f0[None], [0.0, 1.0], solver)
        assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        theory.stepwise(K, f0, K_DIM)
    assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        kernels.initial_function(K, K_DIM, 1e-3, jax.random.PRNGKey(0))
    assert str(e.value) == msg.replace("K:", "K_nngp:", 1)      # the sampler's argument name


def test_plain_callable_through_finite_train():
    """The same plain callable is a loss of `finite.train` too: it trains a network exactly as the
    named loss does (same arithmetic)."""
    from sslntk import data, finite

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    views = data.make_views(x, data.gaussian_noise(0.3), jax.random.PRNGKey(1))
    bt = losses.get("barlow_twins")
    net = finite.network(kernels.mlp(1, "erf"), 16, 2, key=jax.random.PRNGKey(2), alpha=0.5)
    runs = [finite.train(net, views, loss, lr=0.02, steps=5, progress=False)
            for loss in (lambda f: bt(f), bt)]
    assert runs[0].ok and runs[1].ok
    np.testing.assert_allclose(runs[0].loss, runs[1].loss, rtol=1e-12)
    assert float(runs[0].loss[-1]) < float(runs[0].loss[0])


def test_lanczos_psd_estimate_against_eigvalsh():
    """`psd_kernel`'s block-Krylov λ_min estimate is an upper bound on the true λ_min (Ritz values
    interlace) and, for an RBF kernel with the default Krylov dimension, within 1e-3·λ_max of it
    (float64 eigvalsh)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 3))
    K = np.exp(-0.5 * np.sum((X[:, None] - X[None]) ** 2, -1))
    w = np.linalg.eigvalsh(K)
    est = _validate.psd_kernel("K", jnp.asarray(K))
    assert w[0] - 1e-12 <= est <= w[0] + 1e-3 * w[-1]
    shifted = K - (w[0] + 1e-2 * w[-1]) * np.eye(60)       # λ_min = −1e-2·λ_max
    with pytest.raises(ValueError, match="positive semi-definite"):
        _validate.psd_kernel("K", jnp.asarray(shifted))


def test_zero_start_is_stationary_in_solve_and_solve_many(prob):
    """f0 = 0 is the saddle of Barlow Twins: STATIONARY from `solve` and, per run, from
    `solve_many` (the same post-processing), for a gradient flow and for a method with aux state."""
    K, ts = jnp.asarray(prob["K"]), jnp.linspace(0.0, 1.0, 3)
    z = jnp.zeros_like(jnp.asarray(prob["f0"]))
    with pytest.warns(RuntimeWarning, match="stationary"):
        tr = dynamics.solve(K, "barlow_twins", z, ts, "gd", lr=0.5)
    assert tr.status_name == "stationary" and not tr.ok
    with pytest.warns(RuntimeWarning, match="stationary"):
        many = dynamics.solve_many(K, "barlow_twins", jnp.stack([z, jnp.asarray(prob["f0"])]),
                                   ts, "gd", lr=0.5)
    assert many.status_name == "stationary,success"
    with pytest.warns(RuntimeWarning, match="stationary"):   # a non-gradient-flow method too
        tr = dynamics.solve(K, EMATwin(jnp.asarray(0.5), jnp.asarray(0.5)), z, ts, "gd", lr=0.5)
    assert tr.status_name == "stationary"


def test_gd_at_a_large_learning_rate_is_diverged_at_its_step(prob):
    """Barlow Twins with lr = 20: the loss explodes (2.9 → 3e5 → 3e19 in the case of the report);
    status DIVERGED (not success, not nonfinite) at the first step with
    |L| > DIVERGE_FACTOR·max(1, |L0|), found by an independent numpy iteration."""
    K = jnp.asarray(prob["K"])
    f0 = jnp.asarray(prob["f0"])
    lr = 20.0
    with pytest.warns(RuntimeWarning, match="diverged"):
        tr = dynamics.solve(K, "barlow_twins", f0, [0.0, 20 * lr], "gd", lr=lr)
    assert tr.status_name == "diverged"
    Kn, f, n = prob["K"], prob["f0"].copy(), prob["f0"].shape[0] // 2

    def loss_grad(f):
        Zf = np.concatenate([f[n:], f[:n]])
        C = f.T @ Zf / (2 * n)
        return np.sum((C - np.eye(f.shape[1])) ** 2), (2.0 / n) * Zf @ (C - np.eye(f.shape[1]))

    L0, step, L = loss_grad(f)[0], 0, 0.0
    while step < 20 and np.isfinite(L) and abs(L) <= _status.DIVERGE_FACTOR * max(1.0, abs(L0)):
        f = f - lr * Kn @ loss_grad(f)[1]
        L, step = loss_grad(f)[0], step + 1
    assert np.isfinite(L) and int(tr.n_steps) == step < 20
    assert "n_steps=" in tr.failure_detail()
    with pytest.raises(RuntimeError, match="diverged"):
        tr.raise_if_failed()


def test_trajectory_is_an_outcome(prob):
    tr = dynamics.solve(jnp.asarray(prob["K"]), "barlow_twins", jnp.asarray(prob["f0"]),
                        [0.0, 1.0], "ode")
    assert isinstance(tr, _status.Outcome) and tr.ok and tr.status_name == "success"
    assert tr.raise_if_failed() is tr
