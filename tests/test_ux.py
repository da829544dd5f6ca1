"""What a user sees: progress display (pty and logs), honest statuses, loss terms, the VICReg
conventions, collapse diagnostics and explained headline numbers."""

import io
import json
import os
import pty
import select
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import _progress, data, diagnostics, dynamics, finite, kernels, losses
from sslntk._status import DIVERGED, NONFINITE, STATIONARY, SUCCESS

F64 = jnp.float64
KEY = jax.random.key(3)


def _f(n=12, k=3, key=0):
    return jax.random.normal(jax.random.key(key), (2 * n, k), F64)


# ------------------------------------------------------------------------------ loss terms

CASES = [(name, {}) for name in losses.names()] + [
    ("vicreg", {"convention": "official"}), ("simclr", {"similarity": "dot"}),
    ("naive", {"negatives": "shift"}), ("barlow_twins", {"lam": 0.3})]


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_terms_sum_to_the_loss(name, opts):
    loss = losses.get(name, **opts)
    for key in range(3):
        f = _f(key=key) * (0.3 + key)
        t = loss.terms(f)
        assert set(t) == set(loss.term_names) and len(t) >= 1
        # float64: the terms are the loss's own summands, so only summation round-off differs
        assert abs(float(sum(t.values())) - float(loss(f))) <= 1e-12 * max(1.0, abs(float(loss(f))))


def test_terms_have_the_expected_names():
    assert set(losses.get("barlow_twins").term_names) == {"on_diagonal", "off_diagonal"}
    assert set(losses.get("vicreg").term_names) == {"invariance", "variance", "covariance"}
    assert set(losses.get("simclr").term_names) == {"alignment", "uniformity"}


def _vicreg_official_numpy(x, y, sim=25.0, std=25.0, cov=1.0):
    """facebookresearch/vicreg main_vicreg.py `VICReg.forward`, re-derived in float64 numpy:
    repr = F.mse_loss(x, y); x, y centred; std = sqrt(var_unbiased + 1e-4);
    std_loss = mean(relu(1 - std_x))/2 + mean(relu(1 - std_y))/2;
    cov = xᵀx/(B − 1); cov_loss = Σ offdiag(cov_x)²/D + Σ offdiag(cov_y)²/D."""
    B, D = x.shape
    repr_loss = np.mean((x - y) ** 2)
    x = x - x.mean(0)
    y = y - y.mean(0)
    sx = np.sqrt(x.var(0, ddof=1) + 1e-4)
    sy = np.sqrt(y.var(0, ddof=1) + 1e-4)
    std_loss = np.mean(np.maximum(0, 1 - sx)) / 2 + np.mean(np.maximum(0, 1 - sy)) / 2
    cx, cy = x.T @ x / (B - 1), y.T @ y / (B - 1)
    off = lambda c: np.sum(c**2) - np.sum(np.diag(c) ** 2)
    cov_loss = off(cx) / D + off(cy) / D
    return sim * repr_loss + std * std_loss + cov * cov_loss, (repr_loss, std_loss, cov_loss)


def test_vicreg_official_convention_matches_the_reference_code():
    for key, scale in ((0, 0.3), (1, 1.0), (2, 3.0)):    # hinge active, mixed, inactive
        f = _f(n=16, k=5, key=key) * scale
        x, y = np.asarray(f[:16]), np.asarray(f[16:])
        ref, (r, s, c) = _vicreg_official_numpy(x, y)
        got = float(losses.get("vicreg", convention="official")(f))
        assert abs(got - ref) <= 1e-12 * abs(ref)
        t = losses.get("vicreg", convention="official").terms(f)
        assert np.allclose([t["invariance"], t["variance"], t["covariance"]],
                           [25 * r, 25 * s, c], rtol=1e-12)
        paper = losses.get("vicreg").terms(f)          # paper: invariance d×, variance 2×
        assert np.isclose(paper["invariance"], 5 * t["invariance"], rtol=1e-12)
        assert np.isclose(paper["variance"], 2 * t["variance"], rtol=1e-12)
    with pytest.raises(ValueError, match="vicreg.convention"):
        losses.get("vicreg", convention="lightly")


def test_solve_records_terms_and_diagnostics():
    X = jax.random.normal(KEY, (16, 6), F64)
    K = X @ X.T / 6
    f0 = 1e-3 * _f(n=8, k=2)
    tr = dynamics.solve(K, "barlow_twins", f0, jnp.linspace(0, 30, 7), method="ode",
                        record_terms=True, diagnostics=True)
    assert np.allclose(tr.terms["on_diagonal"] + tr.terms["off_diagonal"], tr.loss, rtol=1e-10)
    assert set(tr.diagnostics) == set(diagnostics.KEYS) and tr.diagnostics["rankme"].shape == (7,)


# ------------------------------------------------------------------------------ statuses

@pytest.fixture(scope="module")
def views():
    ds = data.load("digits", n=8, dtype=F64)
    return data.make_views(ds.flat, data.gaussian_noise(0.5), jax.random.key(0))


def test_divergent_train_names_the_step(views):
    m = finite.network(kernels.mlp(1, activation="erf"), 16, 2, key=KEY, in_shape=(64,),
                       alpha=1.0, dtype=F64)
    lr = 3.0                                           # blows up after a few steps (measured: 4)
    ts = lr * np.array([0, 10, 20])                    # save points every 10 steps
    with pytest.warns(RuntimeWarning, match=r"finite.train: did not succeed \(status=(diverged|"
                                            r"nonfinite), failed_step=\d+"):
        r = finite.train(m, views, "barlow_twins", lr=lr, steps=20, ts=ts, progress=False,
                         check_lr=False)
    assert int(r.status) in (DIVERGED, NONFINITE) and not r.ok
    step = int(r.failed_step)
    # the step is exact (replayed), not the save point: the same run saved at every step agrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = finite.train(m, views, "barlow_twins", lr=lr, steps=20, ts=lr * np.arange(21),
                             progress=False, check_lr=False)
    assert int(every.failed_step) == step and 1 < step < 10
    assert np.isfinite(np.asarray(every.loss)[step - 1]) and np.isnan(np.asarray(every.loss)[step])
    assert np.isnan(np.asarray(r.loss)[-1])
    with pytest.raises(RuntimeError, match="failed_step"):
        r.raise_if_failed()


def test_saddle_start_is_stationary(views):
    m = finite.network(kernels.mlp(1), 16, 2, key=KEY, in_shape=(64,), alpha=0.0, dtype=F64)
    with pytest.warns(RuntimeWarning, match="stationary"):
        r = finite.train(m, views, "barlow_twins", lr=0.05, steps=3, progress=False,
                         check_lr=False)
    assert int(r.status) == STATIONARY
    X = jax.random.normal(KEY, (8, 3), F64)
    with pytest.warns(RuntimeWarning, match="stationary point"):
        tr = dynamics.solve(X @ X.T, "barlow_twins", jnp.zeros((8, 2), F64), [0.0, 1.0],
                            method="ode")
    assert int(tr.status) == STATIONARY
    with pytest.raises(ValueError, match=r"f0: expected k >= 1"):
        dynamics.solve(X @ X.T, "barlow_twins", jnp.zeros((8, 0), F64), [0.0, 1.0])


def test_healthy_train_succeeds_with_terms_and_diagnostics(views, recwarn):
    """A genuinely healthy VICReg run ends SUCCESS with its loss terms and diagnostics and warns
    about nothing: at k = 3 RankMe rises 2.64 -> 2.72 over the 8 steps (measured; it stays near
    2.6 even when trained to convergence), far above the default collapse threshold 1.5, and
    lr·ρ ≈ 0.037 is under the GD step-size limit 0.05 (the step-size check runs, default)."""
    m = finite.network(kernels.mlp(1), 16, 3, key=KEY, in_shape=(64,), alpha=1.0, dtype=F64)
    r = finite.train(m, views, "vicreg", lr=0.005, steps=8, progress=False,
                     record_terms=True, diagnostics=True)
    # CollapseWarning is a RuntimeWarning, and so is the lr·ρ warning: neither may fire
    assert not [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert r.diagnostics["rankme"][-1] > 2.5 and float(r.lr_rate) < 0.05
    assert int(r.status) == SUCCESS and int(r.failed_step) == -1
    tot = r.terms["invariance"] + r.terms["variance"] + r.terms["covariance"]
    assert np.allclose(tot, r.loss, rtol=1e-10) and r.diagnostics["rankme"].shape == r.loss.shape


# ------------------------------------------------------------------------------ collapse

def test_collapse_diagnostics_and_warning():
    u = jax.random.normal(KEY, (1, 4), F64)
    rank1 = jnp.broadcast_to(u, (3, 16, 4)) * jnp.arange(1.0, 17.0)[None, :, None]
    d = diagnostics.collapse(rank1)
    assert np.allclose(d["rankme"], 1.0, atol=1e-3) and np.allclose(d["center_ratio"], 1.0)
    with pytest.warns(diagnostics.CollapseWarning, match="RankMe"):
        assert diagnostics.check_collapse(d, k=4)
    assert not diagnostics.check_collapse(d, k=4, threshold=0.5)     # user threshold
    healthy = diagnostics.collapse(_f(n=32, k=4)[None])
    assert healthy["rankme"][0] > 3.5 and healthy["center_ratio"][0] < 0.5
    nan = diagnostics.collapse(jnp.full((2, 8, 2), jnp.nan))
    assert np.all(np.isnan(nan["rankme"]))
    dead = diagnostics.collapse(jnp.zeros((2, 8, 2)))       # e.g. every ReLU died: f = 0
    assert np.all(np.isnan(dead["rankme"])) and np.all(dead["embedding_rms"] == 0)
    with pytest.warns(diagnostics.CollapseWarning, match="zero"):
        assert diagnostics.check_collapse(dead, k=2)
    with pytest.raises(ValueError, match="fs: expected"):
        diagnostics.collapse(jnp.ones((5, 2)))


def test_naive_loss_run_warns_collapse():
    X = jax.random.normal(KEY, (16, 6), F64)
    K = X @ X.T / 6
    with pytest.warns(diagnostics.CollapseWarning):
        tr = dynamics.solve(K, "naive", 0.1 * _f(n=8, k=3), jnp.linspace(0, 20, 5), method="ode",
                            collapse_threshold=1.5)
    assert tr.diagnostics["rankme"][-1] < 1.5


# ------------------------------------------------------------------------------ progress

def test_progress_line_mode_one_line_and_off(monkeypatch):
    monkeypatch.delenv("SSLNTK_PROGRESS", raising=False)
    s = io.StringIO()
    with _progress.Progress(50, "phase A", stream=s) as p:
        for _ in range(50):
            p.update(1, loss=0.5)
    out = s.getvalue()
    assert out.count("\n") == 1 and out.startswith("phase A: 50/50 it in ") and "loss=0.5" in out
    s = io.StringIO()
    with _progress.Progress(5, "quiet", stream=s, enabled=False) as p:
        p.update(5)
    assert s.getvalue() == ""
    monkeypatch.setenv("SSLNTK_PROGRESS", "bar")
    s = io.StringIO()
    with _progress.Progress(5, "bar", stream=s, every=0) as p:
        for _ in range(5):
            p.update(1)
    assert "\r" in s.getvalue() and "5/5" in s.getvalue() and "it/s" in s.getvalue()


TINY_STAIRCASE = """kind = "staircase"
[data]
n = 16
n_test = 8
[dynamics]
k = 3
n_times = 40
method = "ode"
"""


def _run_pty(args, cwd, timeout=600):
    """Run a command with stdout/stderr on a pseudo-terminal; return everything it wrote."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("SSLNTK_PROGRESS", None)
    p = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], timeout)
        if not r:
            p.kill()
            raise AssertionError("pty run timed out")
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    p.wait(timeout=60)
    os.close(master)
    assert p.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_cli_progress_bar_on_a_tty_and_lines_in_logs(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_STAIRCASE)
    cmd = [sys.executable, "-m", "sslntk.cli", "run", str(cfg), "--out"]
    phases = ("mlp kernel blocks", "ode solve")
    # a terminal: one updating bar per phase (\r redraws on ONE line, rate and ETA shown)
    out = _run_pty(cmd + [str(tmp_path / "tty")], tmp_path)
    lines = out.replace("\r\n", "\n").split("\n")
    for ph in phases:
        bar_lines = [ln for ln in lines if ph in ln]
        assert len(bar_lines) == 1, (ph, bar_lines)
        assert "100%" in bar_lines[0] and "<" in bar_lines[0], bar_lines[0]   # elapsed<remaining
        assert "/s" in bar_lines[0]                                             # rate
    assert "0.00%" not in out and "5.05%" not in out          # no diffrax TextProgressMeter
    # not a terminal: one line per phase, no carriage returns
    env = {k: v for k, v in os.environ.items() if k != "SSLNTK_PROGRESS"}
    r = subprocess.run(cmd + [str(tmp_path / "log")], capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    for ph in phases:
        assert sum(ph in ln for ln in r.stderr.splitlines()) == 1, r.stderr
    # the summary explains its headline numbers (meaning + expected size)
    assert "expected ≲ 3·α^gap" in r.stdout and "→ step times: expected" in r.stdout
    assert "→ final loss: expected" in r.stdout and "collapse diagnostics" in r.stdout
    res = json.loads((tmp_path / "log" / "results.json").read_text())
    notes = res["headline"]["notes"]
    for key in ("step_time_rel_error_max", "final_loss", "test_gram_rel_error_vs_kernel_pca"):
        assert notes[key]["meaning"] and notes[key]["expected"], key
    g = notes["test_gram_rel_error_vs_kernel_pca"]
    assert g["bound"] == pytest.approx(3 * g["alpha_gap"]) and "α^gap" in g["expected"]
