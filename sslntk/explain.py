"""What the headline numbers of an experiment mean and how large they are expected to be.

Every experiment kind returns, next to its headline numbers, `notes = {key: {"meaning": ...,
"expected": ..., "verdict": ...}}` (written to `results.json` as `headline_notes`) and the summary
lines the CLI prints. The expectations come from the papers (Simon et al. 2023 for the
staircase; `docs/concepts.md`).

Near-degenerate eigenvalue pairs: the stepwise theory separates step j from step j + 1 only when
`γ_j / γ_{j+1}` is clearly above 1 (the ordering of steps is checked only for ratios ≥
`DEGENERATE_RATIO` = 1.2). Closer pairs learn together; their individual step times (and, at the
k/k+1 boundary, the learned subspace) are ill-determined, so large errors there are expected.
"""

from __future__ import annotations

import math

import numpy as np

#: neighbouring contrastive eigenvalues with γ_j/γ_{j+1} below this are "near-degenerate"
DEGENERATE_RATIO = 1.2


def degenerate_pairs(gammas, ratio: float = DEGENERATE_RATIO) -> list[tuple[int, int, float]]:
    """`(j, j+1, γ_j/γ_{j+1})` (1-based modes) for neighbouring positive eigenvalues closer than
    `ratio`; `gammas` descending."""
    g = np.asarray(gammas, dtype=np.float64)
    out = []
    for j in range(len(g) - 1):
        if g[j] > 0 and g[j + 1] > 0 and g[j] / g[j + 1] < ratio:
            out.append((j + 1, j + 2, float(g[j] / g[j + 1])))
    return out


def staircase_notes(headline: dict, gammas_all, *, k: int, alpha: float,
                    step_rel_errors=None) -> tuple[dict, list[str]]:
    """Notes and summary lines for the staircase headline (BT λ = 1 kernel dynamics vs theory).

    `gammas_all`: descending contrastive eigenvalues (at least k + 1 when available);
    `step_rel_errors`: `(k,)` relative step-time errors (mode order), NaN for a mode that was not
    learned (`sslntk.metrics.detect_steps`)."""
    g = np.asarray(gammas_all, dtype=np.float64)
    notes: dict[str, dict] = {}
    lines: list[str] = []
    inv_log = 1.0 / math.log(1.0 / alpha) if 0 < alpha < 1 else float("nan")
    pairs = [p for p in degenerate_pairs(g[: k + 1]) if p[0] <= k]

    # step times
    rel = None if step_rel_errors is None else np.asarray(step_rel_errors, dtype=np.float64)
    flagged = sorted({m for a, b, _ in pairs if b <= k for m in (a, b)})
    if "step_time_rel_error_max" in headline:
        worst = float(headline["step_time_rel_error_max"])
        clean = [j for j in range(1, k + 1) if j not in flagged]
        # modes not learned have no step time (NaN): they are reported as such, not as errors
        rc = None if rel is None or not clean else rel[np.array(clean) - 1]
        worst_clean = (float(np.max(rc[np.isfinite(rc)])) if rc is not None
                       and np.isfinite(rc).any() else float("nan"))
        verdict = "no mode learned" if not np.isfinite(worst) else \
            "as expected" if worst <= max(0.05, inv_log) else (
            "explained by near-degenerate pairs" if rel is not None and flagged
            and not (worst_clean > max(0.05, inv_log)) else "larger than expected")
        notes["step_time_rel_error_max"] = {
            "meaning": "largest relative difference between a simulated step time (an eigenvalue "
                       "of C(t) reaching half its final value) and the stepwise prediction "
                       "t_j = ln(1/c0_j - 1)/(8 γ_j)",
            "expected": f"a few % (corrections are O(1/ln(1/α)) = {inv_log:.0%} at α = {alpha:g}); "
                        f"larger within near-degenerate pairs (γ_j/γ_(j+1) < {DEGENERATE_RATIO}),"
                        " whose steps merge",
            "degenerate_pairs": [[a, b, r] for a, b, r in pairs if b <= k],
            "max_without_degenerate_modes": worst_clean,
            "verdict": verdict}
        lines.append(f"  → step times: expected error a few % (O(1/ln(1/α)) = {inv_log:.0%}); "
                     f"max {worst:.2%}, {verdict}")
        for a, b, r in (p for p in pairs if p[1] <= k):
            if rel is not None and not (np.isfinite(rel[a - 1]) and np.isfinite(rel[b - 1])):
                continue       # a mode of the pair was not learned: nothing to explain
            err = "" if rel is None else f": errors {rel[a - 1]:.2%} / {rel[b - 1]:.2%}"
            lines.append(f"    ! modes {a}-{b} are near-degenerate (γ_{a}/γ_{b} = {r:.3f} < "
                         f"{DEGENERATE_RATIO}){err}; their step times are ill-determined")

    if "final_loss" in headline:
        fl = float(headline["final_loss"])
        notes["final_loss"] = {
            "meaning": "Barlow Twins loss ‖C − I‖_F² at the last time (t_end = horizon × the "
                       "last predicted step time)",
            "expected": "≈ 0 (below 1e-3) once all k steps have happened; an integer j plateau "
                        "value means k − j modes were not learned by t_end",
            "verdict": "as expected" if fl < 1e-3 else "steps missing: raise dynamics.horizon"}
        lines.append(f"  → final loss: expected ≈ 0 once all k modes are learned; "
                     f"{notes['final_loss']['verdict']}")

    if "test_gram_rel_error_vs_kernel_pca" in headline:
        err = float(headline["test_gram_rel_error_vs_kernel_pca"])
        gap = float((g[k - 1] - g[k]) / g[k - 1]) if len(g) > k and g[k - 1] > 0 else float("nan")
        ag = alpha**gap if np.isfinite(gap) else float("nan")
        bound = 3.0 * ag
        boundary = [p for p in pairs if p[1] == k + 1]
        if np.isfinite(bound) and err <= bound:
            verdict = "within the bound"
        else:
            verdict = "above the bound"
        why = (f"the gap at the k/k+1 boundary is small (γ_{k}/γ_{k + 1} = "
               f"{g[k - 1] / g[k]:.3f}): mode {k + 1} is partly learned in place of mode {k}, so "
               "a large value is expected (it does not heal with longer training)"
               if boundary else "the k-th and (k+1)-th eigenvalues are well separated")
        notes["test_gram_rel_error_vs_kernel_pca"] = {
            "meaning": "relative Frobenius error between the held-out embedding Gram f_test fᵀ_test "
                       "at t_end and that of the kernel-PCA closed form (the α → 0 limit of BT: "
                       "top-k eigenfunctions of the contrastive kernel)",
            "expected": f"≲ 3 α^gap, gap = (γ_k − γ_(k+1))/γ_k (Simon et al. 2023): "
                        f"gap = {gap:.3g}, α^gap = {ag:.3g}, bound {bound:.3g}",
            "relative_gap": gap, "alpha_gap": ag, "bound": bound,
            "degenerate_boundary": bool(boundary),
            "verdict": verdict}
        lines.append(f"  → held-out Gram error: expected ≲ 3·α^gap = {bound:.3g} (gap "
                     f"(γ_k − γ_k+1)/γ_k = {gap:.3g}); {err:.3g} is {verdict}; {why}")
    return notes, lines


def width_sweep_notes(summary: dict) -> tuple[dict, list[str]]:
    """Notes and summary lines for a width sweep's summary (`WidthSweep.summary()`)."""
    notes: dict[str, dict] = {
        "deviation_mean": {
            "meaning": "max over t ≤ window of ‖f_net(t) − f_ntk(t)‖_F/‖f_ntk(t)‖_F on the train "
                       "views, mean over seeds, per width (network vs its kernel prediction from "
                       "the same f0)",
            "expected": "falls with width: ∝ width^(−1/2) in the NTK regime (kernel fluctuation "
                        "at init, O(1/sqrt(width))); faster or slower when the kernel moves",
        },
        "kernel_drift_mean": {
            "meaning": "‖Θ_end − Θ_0‖_F/‖Θ_0‖_F of the empirical NTK, mean over seeds",
            "expected": "≈ 1/sqrt(width) × (how far f travels); ≪ 1 in the kernel regime",
        },
    }
    lines = ["  → deviation: expected to fall like width^(-1/2) in the kernel regime; "
             "kernel drift ≪ 1"]
    fit = summary.get("exponent")
    if fit:
        notes["exponent"] = {"meaning": "slope b of log deviation = a + b·log width",
                             "expected": "≈ −0.5 (NTK regime)",
                             "verdict": "consistent with −1/2" if fit["ci_boot"][0] <= -0.5
                             <= fit["ci_boot"][1] else "differs from −1/2"}
        lines.append(f"  → exponent: expected ≈ −0.5; {notes['exponent']['verdict']}")
    if not summary.get("ok", True):
        notes["status"] = {"meaning": "runs that did not succeed", "expected": "success",
                           "verdict": summary.get("status", "")}
        lines.append(f"  ! not every run succeeded: {summary.get('status', '')}")
    return notes, lines


def collapse_lines(diag: dict, *, k: int, threshold: float) -> tuple[dict, dict, list[str]]:
    """Headline numbers, notes and summary lines for the collapse diagnostics at the last time
    (`diag`: `sslntk.diagnostics.collapse` output, time on the last axis; seeds averaged)."""
    r = float(np.asarray(diag["rankme"])[..., -1].mean())
    er = float(np.asarray(diag["effective_rank"])[..., -1].mean())
    c = float(np.asarray(diag["center_norm"])[..., -1].mean())
    ratio = float(np.asarray(diag["center_ratio"])[..., -1].mean())
    head = {"final_rankme": r, "final_effective_rank": er, "final_center_norm": c,
            "final_center_ratio": ratio}
    collapsed = k > 1 and np.isfinite(r) and r < threshold
    note = {"meaning": "RankMe (raw) / effective rank (centred) of the embeddings and the Jha et "
                       "al. centre-vector norm ‖s‖ and ratio ‖s‖/E‖μ‖ of the normalised views, "
                       "at the last time",
            "expected": f"ranks ≈ k = {k} for a healthy run, ≈ 1 when collapsed (warning below "
                        f"{threshold:g}); ratio 1 = complete collapse",
            "verdict": "collapsed" if collapsed else "no collapse"}
    lines = [f"collapse diagnostics (end): RankMe {r:.3g}, effective rank {er:.3g} of k = {k}, "
             f"‖s‖ = {c:.3g}, ‖s‖/E‖μ‖ = {ratio:.3g}",
             f"  → expected ≈ k when healthy, ≈ 1 when collapsed; {note['verdict']}"]
    return head, {"collapse": note}, lines


__all__ = ["DEGENERATE_RATIO", "degenerate_pairs", "staircase_notes", "width_sweep_notes",
           "collapse_lines"]
