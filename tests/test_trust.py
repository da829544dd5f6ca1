"""Outputs a researcher can trust and a command line that speaks config: one regression test per
problem found by trying about 250 inputs as a new user would (each failed before the fix).

1 step times of modes that never rise · 2 the global matplotlib backend · 3 config limits that
depend on the data · 4 damaged part files · 5 `--set` overrides · 6 file permissions · 7 two
writers and "resuming from step N of M" · 8 `metrics.cross_correlation` validation · 9 figure
labels of finite_staircase · 10 claims in example comments and the README · 11 a silent `list`
and an internal warning of finite_staircase.
"""

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sslntk import _io, cli, config, experiments, metrics, plots
from sslntk.rundir import RunDir

ROOT = Path(__file__).parents[1]

TINY_STAIRCASE = {"kind": "staircase", "data": {"n": 16, "n_test": 8},
                  "dynamics": {"k": 3, "n_times": 40, "method": "ode"}}
TINY_PHASE = {"kind": "phase_diagram", "phase": {"model": "one_layer", "grid": 4}}
# float32, lr = 1/80 (not a float32 number) and 200 steps: the saved times of a float32 run are
# off the GD grid by ~1e-5 steps, which made the prediction's GD solver warn
TINY_FINITE = {"kind": "finite_staircase", "precision": "float32",
               "data": {"n": 4, "n_test": 0, "translate": 0.0},
               "dynamics": {"k": 2, "alpha": 0.1}, "resnet": {"blocks": 1, "width": 4},
               "finite": {"lr": 0.0125, "steps": 200, "n_times": 7}}


def _write_toml(path: Path, d: dict) -> Path:
    """Scalars, lists and one level of tables (JSON spells these values as TOML does)."""
    lines, tables = [], []
    for k, v in d.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in lines)
    for k, v in tables:
        text += f"\n[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
    path.write_text(text + "\n")
    return path


def _logistic(ts, gamma, c0, amp=1.0):
    return amp / (1 + (1 / c0 - 1) * np.exp(-8 * np.asarray(gamma) * ts[:, None]))


# ------------------------------------------------------------------------ 1 step detection

def test_1_modes_that_never_rise_have_no_step_time():
    ts = np.linspace(0.0, 0.9, 10)
    # an amplitude-1e-4 spectrum (noise-level modes): no mode is learned
    tiny = 1e-4 * np.random.default_rng(0).uniform(size=(10, 2))
    d = metrics.detect_steps(tiny, ts)
    assert np.all(np.isnan(np.asarray(d.times))) and not np.any(np.asarray(d.learned))
    assert all(r.startswith("not learned") for r in d.reasons())
    # a learned logistic next to one that stays at its initial scale (γ ≈ 0 over the window)
    ts = np.linspace(0.0, 10.0, 201)
    s = _logistic(ts, [1.0, 1e-3], 1e-6)
    st = np.asarray(metrics.step_times(s, ts))
    # the 1/2-crossing of the logistic, ln(1/c0 − 1)/(8γ) (Simon et al. 2023); the grid step is
    # 0.05 and linear interpolation at the inflection point is accurate to ~1e-4 relative
    assert st[0] == pytest.approx(np.log(1e6 - 1) / 8, rel=1e-3) and np.isnan(st[1])
    assert metrics.STEP_THRESHOLD == 0.5
    # a NaN in a spectrum is refused, not silently moving the crossing
    bad = s.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="spectra: expected finite values"):
        metrics.step_times(bad, ts)


def test_1_staircase_table_and_headline_say_not_learned(tmp_path):
    """horizon = 0.3: the run ends before modes 2 and 3 step (predicted at ~90 % and 100 % of
    the horizon's base time); they must read "not learned", never a step time with an error."""
    raw = {**TINY_STAIRCASE, "dynamics": {**TINY_STAIRCASE["dynamics"], "horizon": 0.3}}
    res, _ = experiments.run(config.validate(raw), tmp_path / "run", progress=False)
    h = res["headline"]
    assert h["modes_not_learned"] == [2, 3]
    assert h["step_times_simulated"][1:] == [None, None]
    assert h["step_times_simulated"][0] is not None
    text = "\n".join(res["summary_lines"])
    assert text.count("not learned") >= 2 and "near-degenerate (γ" not in text
    assert np.isfinite(h["step_time_rel_error_max"])      # over the learned mode only


# ------------------------------------------------------------------------ 2 backend

def test_2_importing_and_plotting_leave_the_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib, matplotlib.pyplot as plt\n"
            "before = matplotlib.get_backend()\n"
            "import sslntk.experiments, sslntk.plots as P\n"
            f"P.staircase(r'{tmp_path}', 'x', [0.0, 1.0, 2.0], [3.0, 2.0, 1.0], [1.0])\n"
            "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
            "assert plt.get_fignums() == [], plt.get_fignums()\n"
            "print('ok', before)\n")
    env = {**os.environ, "MPLBACKEND": "svg"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok svg", r.stderr
    assert (tmp_path / "x.png").exists() and (tmp_path / "x.pdf").exists()


# ------------------------------------------------------------------------ 3 config vs data

BAD_RUNS = [
    (["--set", "data.n=1700", "--set", "data.n_test=200"],
     r"config keys 'data.n' \+ 'data.n_test': expected at most 1797 .*got 1700 \+ 200 = 1900"),
    (["--set", "data.n=4", "--set", "dynamics.k=200"], r"config key 'dynamics.k': expected at most "
                                                       r"2 \* data.n = 8"),
    (["--set", "data.classes=[3, 42]"], r"config key 'data.classes': expected distinct digits"),
    (["--set", "data.options={bogus = 1}"], r"config key 'data.options.bogus': unknown option"),
    (["--set", "seed=18446744073709551616"], r"config key 'seed': expected an integer in"),
    (["--set", 'data.name="cifar10"', "--set", "data.root=\"{root}\""],
     r"config key 'data.name' = \"cifar10\": files not found.*set download = true in \[data\]"),
    (["--set", "data.recipe=\"moco\""], r"config key 'data.recipe': expected one of \[\"none\", "
                                        r"\"simclr\", \"byol\", \"barlow_twins\"\], got \"moco\""),
    (["--set", "data.download=True"], r"--set 'data.download=True': 'True' is not a TOML value|"
                                      r"config key 'data.download': expected true or false, got "
                                      r"\"True\""),
]


@pytest.mark.parametrize("extra,match", BAD_RUNS, ids=[str(i) for i in range(len(BAD_RUNS))])
def test_3_data_limits_checked_before_any_work_one_line_exit_2(extra, match, tmp_path, capsys):
    cfg = _write_toml(tmp_path / "c.toml", TINY_STAIRCASE)
    out = tmp_path / "out"
    extra = [e.replace("{root}", str(tmp_path / "nodata")) for e in extra]
    assert cli.main(["run", str(cfg), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
    assert "download=True" not in err and "Traceback" not in err
    assert not out.exists()                       # nothing computed, nothing written


# the same limits written in the config file itself (no --set): a file is the common way in
BAD_FILES = [
    ({"data": {"classes": [3, 42]}}, "data.classes"),
    ({"data": {"n": 4, "n_test": 8}, "dynamics": {"k": 200}}, "dynamics.k"),
    ({"data": {"n": 1700, "n_test": 200}}, "data.n"),             # digits has 1797 images
]


def test_3_data_limits_in_the_toml_file_one_line_exit_2_nothing_written(tmp_path, capsys):
    for i, (bad, key) in enumerate(BAD_FILES):
        d = {**TINY_STAIRCASE, **{t: {**TINY_STAIRCASE.get(t, {}), **v} for t, v in bad.items()}}
        cfg = _write_toml(tmp_path / f"bad{i}.toml", d)
        out = tmp_path / f"out{i}"
        out.mkdir()                                   # an existing, empty output directory
        assert cli.main(["run", str(cfg), "--out", str(out)]) == 2, bad
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"'{key}'" in err and "Traceback" not in err, err
        assert sorted(p.name for p in out.iterdir()) == [], bad   # no config.json, parts or lock


def test_3_bad_files_and_out_paths_one_line(tmp_path, capsys):
    cfg = _write_toml(tmp_path / "c.toml", TINY_PHASE)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('kind = "phase_diagram"\n# caf\xe9\n'.encode("latin-1"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(["run", str(latin1), "--out", str(tmp_path / "o1")], r"not UTF-8 text"),
             (["run", str(cfg), "--out", str(a_file)], r"--out .* is a file, not a directory"),
             (["run", str(cfg), "--out", str(a_file / "sub")], r"is a file, not a directory")]
    for argv, match in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    with pytest.raises(config.ConfigError):          # --debug: the exception itself
        cli.main(["--debug", "run", str(latin1), "--out", str(tmp_path / "o2")])


# ------------------------------------------------------------------------ 4 damaged parts

def test_4_damaged_part_file_is_named_and_recomputed(tmp_path, capfd):
    cfg = config.validate(TINY_PHASE)
    out = tmp_path / "run"
    ref, _ = experiments.run(cfg, out, progress=False)
    part = out / "parts" / "grid.npz"
    part.write_bytes(part.read_bytes()[:100])            # truncated (a killed copy, a full disk)
    (out / "results.json").unlink()
    capfd.readouterr()
    res, did_work = experiments.run(cfg, out, progress=False)
    err = capfd.readouterr().err
    assert did_work and "grid.npz" in err and "damaged" in err and "recomputing" in err
    assert res["headline"] == ref["headline"]
    with pytest.raises(_io.DamagedFileError, match="grid.npz"):
        part.write_bytes(b"not a zip file")
        _io.load_npz(part)
    # a damaged training checkpoint: named, and training starts again from step 0
    import jax

    ckpt = tmp_path / "ckpt.npz"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    capfd.readouterr()
    assert _io.load_checkpoint(ckpt, "fp", jax.tree.structure((1, 2)), differ="x") == (None, None)
    err = capfd.readouterr().err
    assert "ckpt.npz" in err and "damaged" in err and "step 0" in err


# ------------------------------------------------------------------------ 5 --set

def test_5_set_overrides_are_validated_and_recorded(tmp_path, capsys):
    cfg = _write_toml(tmp_path / "c.toml", TINY_PHASE)
    out = tmp_path / "run"
    assert cli.main(["run", str(cfg), "--out", str(out), "--set", "phase.grid=3",
                     "--set", "phase.tau=0.5", "--set", "seed=7"]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["config"]["phase"]["grid"] == 3 and stored["config"]["phase"]["tau"] == 0.5
    assert stored["config"]["seed"] == 7
    assert stored["overrides"] == ["phase.grid=3", "phase.tau=0.5", "seed=7"]
    res = json.loads((out / "results.json").read_text())
    assert res["overrides"] == stored["overrides"] and res["config"]["phase"]["grid"] == 3
    capsys.readouterr()
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "x"), "--set", "phase.grid=1"]) == 2
    assert "config key 'phase.grid': expected an integer in [2, 200], got 1" in \
        capsys.readouterr().err
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "x"), "--set", "phase.grd=3"]) == 2
    assert "config key 'phase.grd': unknown key" in capsys.readouterr().err
    assert config.apply_overrides({"kind": "staircase"}, ["data.name=digits", "loss.constants."
                                                          "lam=0.5"]) == {
        "kind": "staircase", "data": {"name": "digits"}, "loss": {"constants": {"lam": 0.5}}}


# ------------------------------------------------------------------------ 6 permissions

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_6_files_follow_the_umask(mask, mode, tmp_path):
    old = os.umask(mask)
    try:
        p = _io.atomic_write_json(tmp_path / "r.json", {"a": 1})
        q = _io.atomic_write_npz(tmp_path / "a.npz", x=np.ones(2))
    finally:
        os.umask(old)
    for f in (p, q):
        assert stat.S_IMODE(f.stat().st_mode) == mode, oct(f.stat().st_mode)


def test_6_run_directory_files_are_shareable(tmp_path):
    old = os.umask(0o022)
    try:
        experiments.run(config.validate(TINY_PHASE), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), \
        {p.name: oct(p.stat().st_mode) for p in files}


# ------------------------------------------------------------------------ 7 lock and resume

def test_7_second_writer_waits_for_the_first(tmp_path, capfd):
    cfg = config.validate(TINY_PHASE)
    out = tmp_path / "run"
    holder = RunDir(out, cfg)
    result = {}
    err = ""
    with holder.lock():                     # another process writing the directory
        t = threading.Thread(target=lambda: result.update(
            r=experiments.run(cfg, out, progress=False)))
        t.start()
        deadline = time.monotonic() + 120
        while "is being written by another sslntk run" not in err and time.monotonic() < deadline:
            time.sleep(0.2)
            err += capfd.readouterr().err
        assert "is being written by another sslntk run" in err and "waiting" in err
        time.sleep(0.5)
        assert t.is_alive() and not (out / "results.json").exists()      # it waits
    t.join(timeout=300)
    assert not t.is_alive() and result["r"][1]


@pytest.fixture(scope="module")
def finite_run(tmp_path_factory):
    """One tiny finite_staircase run: its directory, results, warnings and the legend texts of
    every figure it saved (`plots._save` watched)."""
    out = tmp_path_factory.mktemp("finite") / "run"
    legends, real = {}, plots._save

    def spy(fig, where, name):
        legends[name] = [t.get_text() for ax in fig.axes if ax.get_legend()
                         for t in ax.get_legend().get_texts()]
        return real(fig, where, name)

    plots._save = spy
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, _ = experiments.run(config.validate(TINY_FINITE), out, progress=False)
    finally:
        plots._save = real
    return out, res, caught, legends


def test_7_resumed_training_says_from_which_step(finite_run, tmp_path, capfd):
    out, ref, _, _ = finite_run
    run = tmp_path / "run"
    import shutil

    shutil.copytree(out, run)
    for f in ("results.json", "parts/train.npz", "parts/kernel_prediction.npz"):
        (run / f).unlink()
    capfd.readouterr()
    res, did_work = experiments.run(config.validate(TINY_FINITE), run, progress=False)
    assert did_work and "train: resuming from step 200 of 200" in capfd.readouterr().err
    assert res["headline"]["final_loss_net"] == ref["headline"]["final_loss_net"]


# ------------------------------------------------------------------------ 8 cross_correlation

def test_8_cross_correlation_is_validated_like_every_metric():
    f = np.random.default_rng(1).normal(size=(2, 8, 3))
    c = np.asarray(metrics.cross_correlation(f))
    fa, fb = f[:, :4], f[:, 4:]
    ref = (np.swapaxes(fa, 1, 2) @ fb + np.swapaxes(fb, 1, 2) @ fa) / 8   # the definition
    np.testing.assert_allclose(c, ref, rtol=1e-12)
    with pytest.raises(ValueError, match=r"f: expected rank >= 2"):
        metrics.cross_correlation(np.ones(6))
    with pytest.raises(ValueError, match=r"f: expected stacked views .* even"):
        metrics.cross_correlation(np.ones((7, 2)))
    with pytest.raises(ValueError, match=r"f: expected finite values"):
        metrics.cross_correlation(np.full((4, 2), np.nan))
    with pytest.raises(TypeError, match=r"f: expected a floating dtype"):
        metrics.cross_correlation(np.ones((4, 2), int))


# ------------------------------------------------------------------------ 9 figure labels

def test_9_finite_staircase_figures_say_what_each_curve_is(finite_run):
    seen = finite_run[3]
    labels = " | ".join(seen["loss_staircase"])
    assert "ResNet" in labels and "empirical-NTK prediction" in labels, labels
    assert "kernel dynamics" not in labels and "stepwise theory" not in labels, labels
    assert any("ResNet" in t for t in seen["eigenvalues"]), seen["eigenvalues"]


# ------------------------------------------------------------------------ 10 claims

def test_10_no_unverified_measurements_in_examples_and_readme():
    """Numbers in example comments and in the README's experiment paragraph would have to come
    from a test's actual run; the measured step times and timings there did not, so none remain
    (the slow test `test_finite_staircase_resnet_steps_on_digits` checks the qualitative claim)."""
    measured = re.compile(r"\b\d+(\.\d+)?\s*s\b|[Mm]easured|\bt = \d")
    for f in sorted((ROOT / "examples").glob("*.toml")):
        comments = "\n".join(ln.split("#", 1)[1] for ln in f.read_text().splitlines() if "#" in ln)
        assert not measured.search(comments), (f.name, measured.search(comments).group(0))
    readme = (ROOT / "README.md").read_text()
    para = readme[readme.index("Experiment kinds:"):].split("\n\n")[0]
    assert not measured.search(para), measured.search(para).group(0)


# ------------------------------------------------------------------------ 11 silence and noise

def test_11_list_speaks_before_jax_starts():
    code = ("import sys, io\n"
            "import sslntk.cli as cli\n"
            "first = []\n"
            "class W(io.StringIO):\n"
            "    def write(self, s):\n"
            "        if s.strip() and not first:\n"
            "            first.append('jax' in sys.modules)\n"
            "        return super().write(s)\n"
            "out, sys.stdout = sys.stdout, W()\n"
            "rc = cli.main(['list'])\n"
            "text, sys.stdout = sys.stdout.getvalue(), out\n"
            "print(rc, first[0], 'losses:' in text)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["0", "False", "True"], (r.stdout, r.stderr)


def test_11_finite_staircase_prints_no_internal_warning(finite_run):
    _, res, caught, _ = finite_run
    internal = [w for w in caught if issubclass(w.category, UserWarning)]
    assert not internal, [str(w.message) for w in internal]
    assert res["headline"]["prediction_status"] == 0
