"""Which diffrax solver for the kernel-regime ODE (`sslntk.dynamics.Ode`)? Barlow Twins (λ = 1)
from small initialisation, float64, random PSD kernel with a prescribed contrastive spectrum.

Prints, per spectrum and solver: accepted steps, right-hand-side evaluations (stages × steps, the
cost unit of an explicit method), wall time after compilation, and the relative error of the final
embedding Gram matrix against a tight-tolerance Dopri8 solve. Ratios are against Tsit5 in the same
run. Kvaerno5 is capped at 5000 steps (status max_steps means it did not finish).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sslntk import dynamics, losses  # noqa: E402


def kernel_with_spectrum(n, gammas, rng):
    """K = X Xᵀ with the contrastive spectrum (eigenvalues of Z K / 2n) ≈ `gammas` (top ones)."""
    N = 2 * n
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    # K = [[A, B],[B, A]]: Z K / 2n has eigenvalues (a_i + b_i)/2n (symmetric) and -(a_i - b_i)/2n.
    sym = np.concatenate([gammas, np.full(n - len(gammas), gammas[-1] * 0.2)]) * N
    anti = np.full(n, 0.1 * N * gammas[-1])
    A = Q @ np.diag((sym + anti) / 2) @ Q.T
    B = Q @ np.diag((sym - anti) / 2) @ Q.T
    return jnp.asarray(np.block([[A, B], [B, A]]))


def main():
    rng = np.random.default_rng(0)
    n, k, alpha = 24, 4, 1e-6
    loss = losses.get("barlow_twins")
    for label, gam in [("gamma_1/gamma_k = 4", np.array([1.0, 0.7, 0.45, 0.25])),
                       ("gamma_1/gamma_k = 60", np.array([1.0, 0.3, 0.08, 1 / 60]))]:
        K = kernel_with_spectrum(n, gam, rng)
        f0 = alpha * jnp.asarray(rng.normal(size=(2 * n, k)))
        T = 1.3 * np.log(1 / alpha) / (4 * gam[-1])
        ts = jnp.linspace(0.0, T, 50)
        ref = dynamics.solve(K, loss, f0, ts, dynamics.Ode(integrator="dopri8", rtol=1e-11))
        g_ref = ref.f[-1] @ ref.f[-1].T
        print(f"== {label}, 2n = {2 * n}, k = {k}, alpha = {alpha:g}, T = {T:.1f}", flush=True)
        base = None
        for name, stages, kw in [("tsit5", 6, {}), ("dopri5", 6, {}), ("dopri8", 12, {}),
                                 ("tsit5 PI(0.3,0.4)", 6, dict(pcoeff=0.3, icoeff=0.4)),
                                 # implicit: capped, it can crawl (dense Jacobian + LU per step)
                                 ("kvaerno5", 7, dict(max_steps=5000))]:
            solver = name.split()[0]
            c0 = time.process_time()
            tr = dynamics.solve(K, loss, f0, ts, dynamics.Ode(integrator=solver, rtol=1e-8, **kw))
            compile_cpu = time.process_time() - c0
            t0 = time.perf_counter()
            tr = dynamics.solve(K, loss, f0, ts, dynamics.Ode(integrator=solver, rtol=1e-8, **kw))
            jax.block_until_ready(tr.f)
            wall = time.perf_counter() - t0
            err = float(jnp.linalg.norm(tr.f[-1] @ tr.f[-1].T - g_ref) / jnp.linalg.norm(g_ref))
            evals = int(tr.n_steps) * stages
            base = base or (evals, wall)
            print(f"{name:>18}: steps {int(tr.n_steps):6d}  rhs evals {evals:7d} "
                  f"({evals / base[0]:.2f}x)  wall {wall:.3f}s ({wall / base[1]:.2f}x)  "
                  f"final Gram rel err {err:.1e}  status {tr.status_name}  "
                  f"(first call incl. compile: {compile_cpu:.1f}s cpu)", flush=True)


if __name__ == "__main__":
    main()
