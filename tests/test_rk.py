"""`sslntk.dynamics._rk`: the explicit Runge–Kutta loop against `diffrax.diffeqsolve` (the
independent reference: same tableau, controller and interpolant, written out by diffrax), in
float64. Same algorithm, different order of floating-point sums: the step counts must be equal
and the saved values agree to round-off accumulated over the steps (≤ 1e-11 relative; one ulp is
2.2e-16, a solve here takes 18–540 steps; measured: 0 to 2e-15)."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics
from sslntk.dynamics import _rk

jax.config.update("jax_enable_x64", True)

NAMES = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
         "bosh3": diffrax.Bosh3, "heun": diffrax.Heun}


def field(t, y):
    """A nonlinear, non-autonomous system on a pytree state: a damped pendulum-like pair and a
    cubic decay driven by sin t."""
    (p, q), r = y
    return (q, -jnp.sin(p) - 0.3 * q), -r**3 + jnp.sin(t) * r


def y0():
    return (jnp.array([1.2, -0.4]), jnp.array([0.5, 0.9])), jnp.array([[1.5, -0.7], [0.2, 2.0]])


def both(vf, y, ts, solver, *, rtol=1e-7, atol=1e-9, pcoeff=0.0, icoeff=1.0, dt0=None,
         max_steps=4096, adjoint=None):
    adjoint = diffrax.ForwardMode() if adjoint is None else adjoint
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff)
    ours = _rk.run(vf, y, ts, solver=solver, controller=ctrl, dt0=dt0, max_steps=max_steps,
                   adjoint=adjoint)
    ref = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: vf(t, y)), solver, t0=0.0,
                              t1=ts[-1], dt0=dt0, y0=y, saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=ctrl, max_steps=max_steps, adjoint=adjoint,
                              throw=False)
    return ours, ref


def max_rel_gap(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    for x, y in zip(la, lb, strict=True):    # NaN (not reached) at the same places
        assert bool(jnp.all(jnp.isnan(x) == jnp.isnan(y)))
    scale = max(float(jnp.nanmax(jnp.abs(x))) for x in lb)
    return max(float(jnp.nanmax(jnp.abs(x - y))) for x, y in zip(la, lb, strict=True)) / scale


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_explicit_tableau_takes_diffrax_steps_and_saves_its_values(name):
    ts = jnp.linspace(0.0, 6.0, 37)
    ours, ref = both(field, y0(), ts, NAMES[name](), rtol=1e-5 if name == "heun" else 1e-7)
    assert bool(ours.finished) and ref.result == diffrax.RESULTS.successful
    assert int(ours.n_steps) == int(ref.stats["num_accepted_steps"]) > 5
    assert int(ours.n_rejected) == int(ref.stats["num_rejected_steps"])
    assert bool(jnp.all(ours.reached))
    assert max_rel_gap(ours.ys, ref.ys) < 1e-11


def test_pid_coefficients_and_a_given_first_step_are_honoured():
    ts = jnp.linspace(0.0, 4.0, 9)
    for kw in ({"pcoeff": 0.3, "icoeff": 0.4}, {"dt0": 0.05}):
        ours, ref = both(field, y0(), ts, diffrax.Tsit5(), **kw)
        assert int(ours.n_steps) == int(ref.stats["num_accepted_steps"])
        assert max_rel_gap(ours.ys, ref.ys) < 1e-11


def test_the_solution_is_right_not_only_diffrax_like():
    """y' = −y·(1 + cos t) has y = y₀·exp(−t − sin t)."""
    ts = jnp.linspace(0.0, 5.0, 11)
    exact = 2.0 * jnp.exp(-ts - jnp.sin(ts))
    ours, _ = both(lambda t, y: -y * (1 + jnp.cos(t)), jnp.array(2.0), ts, diffrax.Dopri8(),
                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.ys, exact, rtol=1e-8, atol=0)


def test_running_out_of_steps_saves_what_was_reached_and_says_so():
    ts = jnp.linspace(0.0, 6.0, 25)
    ours, ref = both(field, y0(), ts, diffrax.Tsit5(), max_steps=12)
    assert ref.result == diffrax.RESULTS.max_steps_reached and not bool(ours.finished)
    n = int(jnp.sum(jnp.isfinite(ref.ts)))
    assert 0 < n < 25 and int(jnp.sum(ours.reached)) == n
    leaf = jax.tree_util.tree_leaves(ours.ys)[0]
    assert bool(jnp.all(jnp.isnan(leaf[n:]))) and bool(jnp.all(jnp.isfinite(leaf[:n])))
    first = jax.tree_util.tree_map(lambda x: x[:n], ours.ys)
    assert max_rel_gap(first, jax.tree_util.tree_map(lambda x: x[:n], ref.ys)) < 1e-11


def test_a_nan_in_the_error_estimate_rejects_the_step():
    """A vector field that is NaN beyond y = 3 (√(3 − y)): the step that crosses is rejected and
    the loop shrinks the step instead of carrying NaN forward (as diffrax)."""
    vf = lambda t, y: jnp.sqrt(3.0 - y) + 0.0 * t
    ts = jnp.linspace(0.0, 1.5, 4)
    ours, ref = both(vf, jnp.array(0.0), ts, diffrax.Tsit5(), dt0=1.0)
    assert int(ours.n_rejected) == int(ref.stats["num_rejected_steps"]) >= 1
    assert max_rel_gap(ours.ys, ref.ys) < 1e-11


def test_gradients_through_the_checkpointed_loop_match_diffrax_and_finite_differences():
    ts = jnp.linspace(0.0, 3.0, 7)

    def loss(theta, run_ours):
        vf = lambda t, y: jax.tree_util.tree_map(lambda v: theta * v, field(t, y))
        ours, ref = both(vf, y0(), ts, diffrax.Tsit5(), rtol=1e-9, atol=1e-11,
                         adjoint=diffrax.RecursiveCheckpointAdjoint())
        ys = ours.ys if run_ours else ref.ys
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(ys))

    g = jax.grad(loss)(0.8, True)
    g_ref = jax.grad(loss)(0.8, False)
    assert abs(float(g) - float(g_ref)) <= 1e-9 * abs(float(g_ref))
    h = 1e-5   # central difference: O(h²) ≈ 1e-10 truncation, plus the solve's own tolerance
    fd = (loss(0.8 + h, True) - loss(0.8 - h, True)) / (2 * h)
    assert abs(float(g) - float(fd)) <= 1e-5 * abs(float(fd))


def test_which_integrators_and_adjoints_it_runs():
    assert _rk.runs(diffrax.Tsit5(), diffrax.ForwardMode())
    assert _rk.runs(diffrax.Dopri8(), diffrax.RecursiveCheckpointAdjoint(checkpoints=8))
    assert not _rk.runs(diffrax.Kvaerno5(), diffrax.ForwardMode())        # implicit
    assert not _rk.runs(diffrax.Tsit5(), diffrax.BacksolveAdjoint())      # another adjoint


def test_the_eigen_and_ode_solvers_give_diffeqsolves_answer():
    """The kernel-regime solvers through `_rk` (their default adjoints) against the same solve
    forced through `diffeqsolve` (`DirectAdjoint`, which `_rk` does not run)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 5))
    K = jnp.asarray(X @ X.T / 5 + 0.1 * np.eye(24))
    f0 = jnp.asarray(1e-2 * rng.standard_normal((24, 3)))
    ts = jnp.linspace(0.0, 40.0, 21)
    for solver in ("eigen", "ode"):
        a = dynamics.solve(K, "barlow_twins", f0, ts, solver=solver)
        b = dynamics.solve(K, "barlow_twins", f0, ts,
                           solver=dynamics.Eigen(adjoint=diffrax.DirectAdjoint())
                           if solver == "eigen" else dynamics.Ode(adjoint=diffrax.DirectAdjoint()))
        assert a.status_name == b.status_name == "success"
        assert int(a.n_steps) == int(b.n_steps)
        np.testing.assert_allclose(a.f, b.f, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(b.f))))
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10, atol=1e-14)


def test_a_retraction_after_every_step_is_what_diffeqsolve_does_with_the_wrapper():
    """Flow on the unit sphere (a rotation plus a pull towards e₁, leaving the sphere at O(h^p) per
    step), projected back after every step: `_rk.run(retract=...)` against `diffeqsolve` with the
    solvers' retracting wrapper (`_common._Retracted`): same steps, same values, on the sphere."""
    from sslntk.dynamics._common import _Retracted

    W = jnp.array([[0.0, 1.0, 0.3], [-1.0, 0.0, 0.5], [-0.3, -0.5, 0.0]])
    e1 = jnp.array([1.0, 0.0, 0.0])
    vf = lambda t, y: W @ y + 0.4 * (e1 - jnp.dot(e1, y) * y)
    retract = lambda y: y / jnp.linalg.norm(y)
    y = jnp.array([0.0, 0.6, 0.8])
    ts = jnp.linspace(0.0, 8.0, 17)
    ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    for adjoint in (diffrax.ForwardMode(), diffrax.RecursiveCheckpointAdjoint()):
        ours = _rk.run(vf, y, ts, solver=diffrax.Tsit5(), controller=ctrl, dt0=None,
                       max_steps=4096, adjoint=adjoint, retract=retract)
        ref = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: vf(t, y)),
                                  _Retracted(diffrax.Tsit5(), retract), t0=0.0, t1=ts[-1],
                                  dt0=None, y0=y, saveat=diffrax.SaveAt(ts=ts),
                                  stepsize_controller=ctrl, max_steps=4096,
                                  adjoint=diffrax.RecursiveCheckpointAdjoint(), throw=False)
        assert int(ours.n_steps) == int(ref.stats["num_accepted_steps"]) > 5
        assert int(ours.n_rejected) == int(ref.stats["num_rejected_steps"])
        assert max_rel_gap(ours.ys, ref.ys) < 1e-11
    # saved points are the unprojected interpolant's (the constrained solver retracts them again)
    np.testing.assert_allclose(jnp.linalg.norm(ours.ys, axis=1), 1.0, atol=1e-5)


def test_the_constrained_solver_keeps_its_constraint_and_refuses_other_adjoints():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 6))
    K = jnp.asarray(X @ X.T / 6 + 0.2 * np.eye(20))
    f0 = jnp.asarray(rng.standard_normal((20, 3)))
    ts = jnp.linspace(0.0, 5.0, 11)
    a = dynamics.solve(K, "kernel_pca", f0, ts, solver="constrained")
    b = dynamics.solve(K, "kernel_pca", f0, ts,
                       solver=dynamics.Constrained(adjoint=diffrax.RecursiveCheckpointAdjoint()))
    assert a.status_name == b.status_name == "success"
    assert int(a.n_steps) == int(b.n_steps) > 3
    np.testing.assert_allclose(a.f, b.f, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(b.f))))
    G = jnp.einsum("tik,ij,tjl->tkl", a.f, jnp.linalg.inv(K), a.f)
    np.testing.assert_allclose(G, jnp.broadcast_to(jnp.eye(3), G.shape), atol=1e-12)
    with pytest.raises(TypeError, match="adjoint: solver 'constrained'"):
        dynamics.Constrained(adjoint=diffrax.DirectAdjoint())
