"""The method protocol (`sslntk.methods`): a toy method with an auxiliary state variable, defined
here alone, integrated by the library's solvers and checked against an independent float64
reference; plain callables as gradient-flow methods; the shared validation and outcome rules."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import losses, methods

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
