"""The official losses of BYOL, SimSiam, DINO and SwAV as pure functions of stacked views, with
their schedules and SwAV's Sinkhorn-Knopp in the official iteration order (log domain).

Rows are views in sslntk's stacked order `[a_1..a_n, b_1..b_n]` (`N = 2n`); `Z` swaps the two
views, so row `r` is paired with row `Zr` (its other view). Every loss is the official code's value
for two views (no multi-crop), with the gradient stopped at the target side (`jax.lax.stop_gradient`),
so `jax.grad` gives the online force a kernel-regime method uses.

Official code (repository @ commit, path):

- `byol_loss`: google-deepmind/deepmind-research @ f5de0ed, byol/utils/helpers.py
  (`regression_loss`, `l2_normalize`) and byol/byol_experiment.py (two directions summed, mean
  over the batch); `byol_momentum`: byol/utils/schedules.py (`target_ema`).
- `simsiam_loss`: facebookresearch/simsiam @ a7bc177, main_simsiam.py (`nn.CosineSimilarity`,
  `-(mean cos(p1, z2) + mean cos(p2, z1))/2`).
- `dino_loss`, `dino_center`, `dino_teacher_temperature`: facebookresearch/dino @ 7c446df,
  main_dino.py (`DINOLoss`); `cosine_schedule`: utils.py (`cosine_scheduler`).
- `sinkhorn`, `swav_loss`: facebookresearch/swav @ 06b1b7c, main_swav.py
  (`distributed_sinkhorn` and the loss loop of `train`).

References: Grill et al. 2020 (BYOL); Chen & He 2021 (SimSiam); Caron et al. 2021 (DINO);
Caron et al. 2020 (SwAV); docs/theory/asymmetric.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sslntk import _validate as V

__all__ = ["byol_loss", "byol_momentum", "simsiam_loss", "dino_loss", "dino_center",
           "dino_teacher_temperature", "cosine_schedule", "sinkhorn", "swav_loss", "swap_views"]


def swap_views(x: jax.Array) -> jax.Array:
    """`Z x`: rows `[b_1..b_n, a_1..a_n]` of stacked `x (2n, ...)` (each view's partner)."""
    n = x.shape[0] // 2
    return jnp.concatenate([x[n:], x[:n]])


def _pair(name_p, p, name_z, z):
    p = V.stacked_views(name_p, p)
    z = V.as_float_array(name_z, z, ndim=2)
    if z.shape != p.shape:
        raise ValueError(f"{name_z}: expected shape {tuple(p.shape)} (as {name_p}), got "
                         f"{tuple(z.shape)}")
    V.same_dtype(**{name_p: p, name_z: z})
    return p, z


# ----------------------------------------------------------------------------------------------
# BYOL, SimSiam


def _l2_normalize(x, eps=1e-12):
    # byol/utils/helpers.py l2_normalize: x * rsqrt(max(sum x², 1e-12))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _byol(p, z):
    y = jax.lax.stop_gradient(swap_views(z))
    per_row = jnp.sum((_l2_normalize(p) - _l2_normalize(y)) ** 2, axis=-1)   # 2 − 2cos
    return jnp.sum(per_row) / (p.shape[0] // 2)   # two directions summed, mean over n samples


def byol_loss(p, z) -> jax.Array:
    """BYOL's normalised regression loss for two views (Grill et al. 2020, Eq. 2, symmetrised):

        L = (1/n) Σ_r ‖p̂_r − ẑ_{Zr}‖²,   x̂ = x·rsqrt(max(‖x‖², 1e-12)),

    i.e. `mean_b [l(q(v1), sg z(v2)) + l(q(v2), sg z(v1))]` with `l = 2 − 2cos` (the official
    code sums the two directions; range [0, 8]).

    Args:
      p: `(2n, k)` online predictions `q_θ(z_θ)` in stacked order.
      z: `(2n, k)` target projections `z_ξ` (gradient stopped).

    Example:
      >>> import jax.numpy as jnp
      >>> float(byol_loss(jnp.ones((4, 3)), jnp.ones((4, 3))))
      0.0
    """
    p, z = _pair("p", p, "z", z)
    return _byol(p, z)


def _cos_rows(x, y, eps=1e-8):
    # torch.nn.CosineSimilarity(dim=1, eps=1e-8): x·y / (max(‖x‖, eps) · max(‖y‖, eps))
    nx = jnp.maximum(jnp.linalg.norm(x, axis=-1), eps)
    ny = jnp.maximum(jnp.linalg.norm(y, axis=-1), eps)
    return jnp.sum(x * y, axis=-1) / (nx * ny)


def _simsiam(p, z):
    return -jnp.mean(_cos_rows(p, jax.lax.stop_gradient(swap_views(z))))


def simsiam_loss(p, z) -> jax.Array:
    """SimSiam's symmetrised negative cosine (Chen & He 2021, Eq. 2):
    `L = −½[mean_b cos(p1, sg z2) + mean_b cos(p2, sg z1)] = −mean_r cos(p_r, sg z_{Zr})`,
    with PyTorch's `CosineSimilarity(eps=1e-8)`. Range [−1, 1]; for the same vectors
    `byol_loss = 4 + 4·simsiam_loss`.

    Args:
      p: `(2n, k)` predictions; z: `(2n, k)` projections (gradient stopped).

    Example:
      >>> import jax.numpy as jnp
      >>> float(simsiam_loss(jnp.ones((4, 3)), jnp.ones((4, 3))))
      -1.0
    """
    p, z = _pair("p", p, "z", z)
    return _simsiam(p, z)


def byol_momentum(step, *, base=0.996, total_steps):
    """BYOL's target EMA decay `tau_k = 1 − (1 − tau_base)(cos(π k/K) + 1)/2` (rises to 1 at
    k = K; byol/utils/schedules.py `target_ema`, steps past K clipped to K).

    Example:
      >>> float(byol_momentum(0, base=0.99, total_steps=100))
      0.99
    """
    V.nonnegative_scalar("base", base, upper=1.0)
    total_steps = V.positive_int("total_steps", total_steps)
    k = jnp.minimum(jnp.asarray(step), total_steps)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + jnp.cos(jnp.pi * k / total_steps))


# ----------------------------------------------------------------------------------------------
# DINO


def dino_objective(student, teacher, center, tau_s, tau_t):
    q = jax.lax.stop_gradient(jax.nn.softmax((teacher - center) / tau_t, axis=-1))
    logp = jax.nn.log_softmax(student / tau_s, axis=-1)
    # two global crops: teacher crop iq supervises the student's other crop; mean of 2 terms
    return jnp.mean(jnp.sum(-swap_views(q) * logp, axis=-1))


def dino_loss(student, teacher, center=None, *, student_temp=0.1, teacher_temp=0.04):
    """DINO's centred, sharpened cross-entropy for two global crops (Caron et al. 2021, Eq. 1;
    main_dino.py `DINOLoss.forward`):

        P_t = softmax((g_t − c)/tau_t) (gradient stopped),   P_s = softmax(g_s/tau_s),
        L = mean over (iq, v ≠ iq) of mean_b Σ_k −P_t[iq] log P_s[v] = −mean_r ⟨P_t[Zr], log P_s[r]⟩.

    Args:
      student: `(2n, K)` student logits; teacher: `(2n, K)` teacher logits (stacked order).
      center: `(K,)` centre (zeros when None); update it after the loss with `dino_center`.
      student_temp: tau_s (official 0.1); teacher_temp: tau_t (official 0.04, warmed up to 0.07
        in the paper recipe; see `dino_teacher_temperature`).

    Example:
      >>> import jax.numpy as jnp
      >>> float(dino_loss(jnp.zeros((4, 8)), jnp.zeros((4, 8))))   # ln 8: uniform
      2.0794415416798357
    """
    student, teacher = _pair("student", student, "teacher", teacher)
    K = student.shape[1]
    center = (jnp.zeros((K,), student.dtype) if center is None
              else V.as_float_array("center", center, ndim=(1, 2)).reshape(-1))
    if center.shape != (K,):
        raise ValueError(f"center: expected shape ({K},) or (1, {K}), got {center.shape}")
    V.positive_float("student_temp", student_temp)
    V.positive_float("teacher_temp", teacher_temp)
    return dino_objective(student, teacher, center, student_temp, teacher_temp)


def dino_center(center, teacher, *, momentum=0.9):
    """`c ← m c + (1 − m) mean_b g_t` over both global crops (main_dino.py `update_center`;
    applied after the loss). `center (K,)`, `teacher (2n, K)`."""
    V.nonnegative_scalar("momentum", momentum, upper=1.0)
    return momentum * center + (1 - momentum) * jnp.mean(teacher, axis=0)


def dino_teacher_temperature(epoch, *, warmup=0.04, final=0.04, warmup_epochs=0):
    """DINO's teacher temperature: `np.linspace(warmup, final, warmup_epochs)[epoch]` during the
    warm-up, then `final` (main_dino.py `teacher_temp_schedule`; the paper recipe 0.04 → 0.07
    over 30 epochs; the argparse default of `--warmup_teacher_temp_epochs` is 0). `epoch` may be
    fractional (linear in between); jittable.

    Example:
      >>> float(dino_teacher_temperature(29, warmup=0.04, final=0.07, warmup_epochs=30))
      0.07
    """
    warmup_epochs = V.positive_int("warmup_epochs", warmup_epochs, minimum=0)
    e = jnp.asarray(epoch, dtype=jnp.result_type(float))
    if warmup_epochs <= 1:   # linspace(a, b, 1) == [a]; linspace(a, b, 0) == []
        return jnp.where(e < warmup_epochs, warmup, final)
    ramp = warmup + (final - warmup) * jnp.minimum(e / (warmup_epochs - 1), 1.0)
    return jnp.where(e < warmup_epochs, ramp, final)


def cosine_schedule(step, *, base, final, total_steps, warmup_steps=0, start_warmup=0.0):
    """DINO's `utils.cosine_scheduler` per iteration: linear warm-up from `start_warmup` to
    `base` over `warmup_steps`, then `final + ½(base − final)(1 + cos(π i/I))`, `I = total −
    warmup` (the teacher momentum 0.996 → 1, the weight decay 0.04 → 0.4)."""
    total_steps = V.positive_int("total_steps", total_steps)
    warmup_steps = V.positive_int("warmup_steps", warmup_steps, minimum=0)
    s = jnp.asarray(step, dtype=jnp.result_type(float))
    n_cos = total_steps - warmup_steps
    i = jnp.clip(s - warmup_steps, 0, n_cos - 1)
    cos = final + 0.5 * (base - final) * (1 + jnp.cos(jnp.pi * i / n_cos))
    if warmup_steps == 0:
        return cos
    if warmup_steps == 1:
        warm = jnp.asarray(start_warmup, s.dtype)
    else:
        warm = start_warmup + (base - start_warmup) * s / (warmup_steps - 1)
    return jnp.where(s < warmup_steps, warm, cos)


# ----------------------------------------------------------------------------------------------
# SwAV


def sinkhorn_log(scores, epsilon, n_iters):
    # main_swav.py distributed_sinkhorn, in log space (exp(s/0.05) overflows float32 for |s| > 4.4):
    # Q = exp(s/eps)ᵀ (P, B); Q /= ΣQ; n_iters × [Q /= rowsum; Q /= P; Q /= colsum; Q /= B];
    # return (B·Q)ᵀ
    B, P = scores.shape
    logq = scores.T / epsilon
    logq = logq - jax.scipy.special.logsumexp(logq)
    for _ in range(n_iters):
        logq = logq - jax.scipy.special.logsumexp(logq, axis=1, keepdims=True) - jnp.log(P)
        logq = logq - jax.scipy.special.logsumexp(logq, axis=0, keepdims=True) - jnp.log(B)
    return jnp.exp(logq + jnp.log(B)).T


def sinkhorn(scores, *, epsilon=0.05, n_iters=3):
    """SwAV's Sinkhorn-Knopp codes `q (B, P)` of prototype scores `(B, P)` (Caron et al. 2020,
    Sec. 3.1; main_swav.py `distributed_sinkhorn`, same iteration order, in the log domain).

    Each sample's code sums to 1 exactly (the last normalisation is over samples); the prototype
    marginals `Σ_b q_bp` are only approximately `B/P` after 3 iterations. Under no gradient.

    Args:
      scores: `(B, P)` = `ẑ Cᵀ` for unit embeddings and prototypes.
      epsilon: entropic regularisation (official 0.05). n_iters: iterations (official 3).

    Example:
      >>> import jax.numpy as jnp
      >>> sinkhorn(jnp.zeros((4, 2))).sum(axis=1)   # [1, 1, 1, 1]
    """
    scores = V.as_float_array("scores", scores, ndim=2)
    V.positive_float("epsilon", epsilon)
    n_iters = V.positive_int("n_iters", n_iters, minimum=0)
    return jax.lax.stop_gradient(sinkhorn_log(scores, epsilon, n_iters))


def normalize_rows(x):
    # torch.nn.functional.normalize(x, dim=1, p=2): x / max(‖x‖, 1e-12)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def swav_objective(f, prototypes, temperature, epsilon, n_iters):
    n = f.shape[0] // 2
    S = normalize_rows(f) @ prototypes.T
    # codes per crop over its own batch of n (crops_for_assign = [0, 1])
    q = jax.lax.stop_gradient(jnp.concatenate([sinkhorn_log(S[:n], epsilon, n_iters),
                                               sinkhorn_log(S[n:], epsilon, n_iters)]))
    logp = jax.nn.log_softmax(S / temperature, axis=-1)
    # subloss of crop i: −mean_b Σ q_i log p_v over the other crop v; averaged over i
    return jnp.mean(jnp.sum(-swap_views(q) * logp, axis=-1))


def swav_loss(f, prototypes, *, temperature=0.1, epsilon=0.05, n_iters=3):
    """SwAV's swapped prediction for two crops (Caron et al. 2020, Eq. 1; main_swav.py `train`):

        ẑ = f/‖f‖,  S = ẑ Cᵀ,  q_v = SK(S_v) per crop (no gradient),
        L = ½ Σ_{i∈{a,b}} −mean_b Σ_p q_i log softmax(S_{other}/temperature)
          = −mean_r ⟨q_{Zr}, log softmax(S_r/temperature)⟩.

    Args:
      f: `(2n, d)` projections (normalised here, as the official `l2norm` head).
      prototypes: `(P, d)` prototype rows (the official code renormalises them to unit rows
        before each iteration; pass unit rows).
      temperature: 0.1 official; epsilon, n_iters: Sinkhorn's (0.05, 3).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = jax.random.normal(jax.random.key(0), (8, 4))
      >>> C = jnp.eye(3, 4)
      >>> float(swav_loss(f, C)) > 0
      True
    """
    f = V.stacked_views("f", f)
    C = V.as_float_array("prototypes", prototypes, ndim=2)
    if C.shape[1] != f.shape[1]:
        raise ValueError(f"prototypes: expected shape (P, {f.shape[1]}) to score d = {f.shape[1]} "
                         f"dimensional embeddings, got {tuple(C.shape)}")
    V.positive_float("temperature", temperature)
    V.positive_float("epsilon", epsilon)
    n_iters = V.positive_int("n_iters", n_iters, minimum=0)
    return swav_objective(f, C, temperature, epsilon, n_iters)
