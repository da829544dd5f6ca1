"""CLI and experiments end to end on tiny configs: every kind runs, a killed run resumes to the same
numbers, a rerun does no work, bad configs fail with clear errors and leave nothing behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sslntk import cli, config, experiments

TINY = {
    "staircase": {"kind": "staircase", "data": {"n": 16, "n_test": 8},
                  "dynamics": {"k": 3, "n_times": 60, "method": "ode"}},
    "width_sweep": {"kind": "width_sweep", "data": {"n": 8, "n_test": 4},
                    "arch": {"depth": 1},
                    "dynamics": {"k": 2, "n_times": 6, "alpha": 0.1},
                    "finite": {"widths": [32, 128], "seeds": 2, "lr": 0.035, "steps": 56}},
    "phase_diagram": {"kind": "phase_diagram", "phase": {"model": "one_layer", "grid": 5}},
    "hypergradient": {"kind": "hypergradient", "data": {"n": 12, "n_test": 0},
                      "dynamics": {"k": 2}},
    "finite_staircase": {"kind": "finite_staircase", "precision": "float32",
                         "data": {"n": 4, "n_test": 0, "translate": 0.0},
                         "dynamics": {"k": 2, "alpha": 0.1},
                         "resnet": {"blocks": 1, "width": 4},
                         "finite": {"lr": 0.05, "steps": 10, "n_times": 4}},
}


def _toml(d: dict, prefix="") -> str:
    """Tiny TOML writer for the nested dicts above (tables of scalars and lists)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, v in tables:
        lines.append(f"\n[{prefix}{k}]")
        lines.append(_toml(v, prefix=f"{prefix}{k}."))
    return "\n".join(lines)


def _cli(args, env=None, check=True):
    e = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, "-m", "sslntk.cli", *args], capture_output=True, text=True,
                       env=e, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"sslntk {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.parametrize("kind", sorted(TINY))
def test_every_kind_end_to_end(kind, tmp_path):
    cfg = config.validate(TINY[kind])
    res, did_work = experiments.run(cfg, tmp_path / "run", progress=False)
    assert did_work
    out = tmp_path / "run"
    stored = json.loads((out / "results.json").read_text())
    assert stored["config_hash"] == config.config_hash(cfg)
    assert stored["versions"]["jax"] == jax.__version__ and stored["device"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p.replace(".png", ".pdf")).exists() for p in pngs)
    assert (out / "arrays.npz").exists()
    h = stored["headline"]
    if kind == "staircase":
        # stepwise theory vs the ODE: step times of an α = 1e-3 random init agree to a few % (the
        # QR-effective prediction carries O(1/ln(1/α)) corrections, Simon et al. 2023).
        assert h["status"] == 0 and h["method"] == "ode"
        assert h["step_time_rel_error_max"] < 0.05
        assert h["final_loss"] < 1e-2
    elif kind == "hypergradient":
        # autodiff through data → NTK → theory vs central finite differences (h = 1e-3 θ, float64):
        # FD truncation error O(h²) relative ~1e-6, so 1e-4 is a safe margin.
        assert h["grad_rel_error_vs_fd"] < 1e-4
    elif kind == "phase_diagram":
        assert h["agreement_outside_hysteresis"] == 1.0
        assert h["max_boundary_offset_cells"] <= 1
    elif kind == "finite_staircase":
        assert (out / "eigenvalues.png").exists() and (out / "loss_staircase.png").exists()
        for key in ("n_steps_detected", "order_matches", "steps_in_sequence", "step_times_net",
                    "step_times_predicted", "final_loss_net", "final_loss_predicted"):
            assert key in h, key
        assert len(h["step_times_net"]) == 2 and np.isfinite(h["final_loss_net"])
    elif kind == "width_sweep":
        assert len(h["deviation_mean"]) == 2
        assert np.all(np.isfinite(h["deviation_mean"]))


def test_rerun_does_no_work_and_kill_resume_matches(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(_toml(TINY["staircase"]))
    ref = tmp_path / "ref"
    _cli(["run", str(cfg_path), "--out", str(ref)])
    # rerun into the same directory: nothing recomputed, same results file
    before = (ref / "results.json").read_text()
    r = _cli(["run", str(cfg_path), "--out", str(ref)])
    assert "up to date" in r.stdout
    assert (ref / "results.json").read_text() == before
    # killed abruptly right after the first finished part (the kernel), then resumed
    run = tmp_path / "killed"
    r = _cli(["run", str(cfg_path), "--out", str(run)], env={"SSLNTK_KILL_AFTER_PARTS": "1"},
             check=False)
    assert r.returncode == 137
    assert (run / "parts" / "kernel.npz").exists() and not (run / "results.json").exists()
    r = _cli(["run", str(cfg_path), "--out", str(run)])
    # in a log (not a TTY) each part prints one "done" line; "computing" only on a terminal
    assert "kernel: loaded" in r.stderr and "solve: done in" in r.stderr
    a = json.loads(before)["headline"]
    b = json.loads((run / "results.json").read_text())["headline"]
    assert a == b


@pytest.mark.parametrize("raw,match", [
    ({"kind": "nope"}, "config key 'kind'"),
    ({"kind": "staircase", "dynamics": {"alpha": -1.0}}, "config key 'dynamics.alpha'.*> 0"),
    ({"kind": "staircase", "dynamics": {"alfa": 1.0}}, "config key 'dynamics.alfa': unknown key"),
    ({"kind": "staircase", "loss": {"name": "bt"}}, "config key 'loss.name'"),
    ({"kind": "staircase", "loss": {"constants": {"lam": "one"}}}, "config key 'loss.constants.lam'"),
    ({"kind": "staircase", "loss": {"constants": {"zz": 1.0}}}, "unknown constant"),
    ({"kind": "width_sweep", "finite": {"widths": [64, 32]}}, "strictly increasing"),
    ({"kind": "staircase", "data": {"n": 1}}, "config key 'data.n'"),
    ({"kind": "staircase", "dynamics": {"method": "closed_form"},
      "loss": {"constants": {"lam": 0.5}}}, "closed_form"),
])
def test_bad_configs_fail_clearly_and_write_nothing(raw, match, tmp_path):
    with pytest.raises(config.ConfigError, match=match):
        config.validate(raw)
    p = tmp_path / "bad.toml"
    p.write_text(_toml(raw))
    out = tmp_path / "out"
    r = _cli(["run", str(p), "--out", str(out)], check=False)
    assert r.returncode == 2 and "sslntk: error: config" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("raw,match", [
    # limits between keys, checked by validate (before any work)
    ({"kind": "staircase", "data": {"n": 4}, "dynamics": {"k": 9}},
     r"config key 'dynamics.k': expected at most 2 \* data.n = 8"),
    ({"kind": "hypergradient", "dynamics": {"k": 2}, "hypergradient": {"mode": 3}},
     r"config key 'hypergradient.mode': expected at most dynamics.k = 2"),
    ({"kind": "phase_diagram", "phase": {"x_axis": "imbalance", "x_range": [0.1, 1.5]}},
     r"config key 'phase.x_range': expected minority fractions inside \(0, 1\)"),
    ({"kind": "width_sweep", "dynamics": {"n_times": 50}, "finite": {"steps": 40}},
     r"config key 'dynamics.n_times': expected at most finite.steps \+ 1 = 41"),
    ({"kind": "finite_staircase", "finite": {"n_times": 12, "steps": 10}},
     r"config key 'finite.n_times': expected at most finite.steps \+ 1 = 11"),
    ({"kind": "staircase", "data": {"options": {"n": 5}}},
     r"config key 'data.options.n': set by the config itself; use data.n and data.n_test"),
    ({"kind": "staircase", "arch": {"activation": True}},
     r"config key 'arch.activation': expected one of \[.*\], got true"),
])
def test_limits_between_keys(raw, match):
    with pytest.raises(config.ConfigError, match=match):
        config.validate(raw)


def test_cli_refuses_other_runs_directory_and_lists(tmp_path, capsys):
    out = tmp_path / "o"
    experiments.run(config.validate(TINY["phase_diagram"]), out, progress=False)
    other = dict(TINY["phase_diagram"], seed=1)
    p = tmp_path / "other.toml"
    p.write_text(_toml(other))
    assert cli.main(["run", str(p), "--out", str(out)]) == 2
    assert "holds a run of a different config" in capsys.readouterr().err
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in ("barlow_twins", "vicreg", "digits", "mlp", "ode", "closed_form", "staircase"):
        assert name in listed
    bad = tmp_path / "broken.toml"
    bad.write_text("kind = [")
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "y")]) == 2


def test_shipped_example_configs_validate():
    files = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    kinds = set()
    for f in files:            # `<kind>.toml` or `<variant>_<kind>.toml`
        kind = config.load(f)["kind"]
        assert f.stem == kind or f.stem.endswith("_" + kind), f
        kinds.add(kind)
    assert kinds == set(config.KINDS)


def test_config_lists_agree_with_the_library():
    from sslntk import data

    assert sorted(config.DATASETS) == data.datasets()
    assert sorted(config.RECIPES[1:]) == data.recipes()


def test_cifar10_example_and_new_data_keys(tmp_path):
    cfg = config.load(Path(__file__).parent.parent / "examples" / "cifar10_staircase.toml")
    assert cfg["data"]["name"] == "cifar10" and cfg["data"]["recipe"] == "simclr"
    base = {"kind": "staircase", "data": {"name": "cifar10", "recipe": "byol"}}
    assert config.validate(base)["data"]["download"] is False
    bad = [({"recipe": "moco"}, r"'data.recipe': expected one of \[\"none\", \"simclr\""),
           ({"download": "yes"}, r"'data.download': expected true or false"),
           ({"classes": [0, -1]}, r"'data.classes\[1\]': expected an integer >= 0"),
           ({"colour_strength": 0.5}, r"'data.colour_strength': unknown key"),
           ({"color_strength": 0.5}, r"'data.color_strength': only the simclr recipe"),
           ({"split": "unlabeled"}, r"'data.split': 'unlabeled' exists only for stl10")]
    for extra, match in bad:
        with pytest.raises(config.ConfigError, match=match):
            config.validate({**base, "data": {**base["data"], **extra}})
    with pytest.raises(config.ConfigError, match=r"'data.root': only file datasets"):
        config.validate({"kind": "staircase", "data": {"name": "digits", "root": "/x"}})
    with pytest.raises(config.ConfigError, match=r"'data.recipe': expected 'none' for non-image"):
        config.validate({"kind": "staircase", "data": {"name": "spiked", "recipe": "simclr"}})


def test_file_dataset_and_recipe_reach_the_views(tmp_path):
    """A tiny MNIST-format file set through the config path: data.load with root, the recipe with
    the dataset's pixel statistics, two different views."""
    from sslntk import data, experiments

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    y = np.resize(np.arange(10, dtype=np.uint8), 60)
    data.write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", x)
    data.write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", y)
    cfg = config.validate({"kind": "staircase", "precision": "float32",
                           "data": {"name": "mnist", "root": str(tmp_path), "n": 8, "n_test": 2,
                                    "classes": [1, 2], "recipe": "simclr", "noise": 0.0,
                                    "blur": False}})
    x_tr, x_te, aug = experiments._dataset_and_augment(cfg)
    assert x_tr.shape == (8, 28, 28, 1) and x_te.shape == (2, 28, 28, 1)
    v = data.make_views(x_tr, aug, jax.random.PRNGKey(0))
    assert v.a.shape == x_tr.shape and not np.allclose(v.a, v.b)


def test_finite_staircase_fast_through_the_cli(tmp_path):
    """The kind end to end through the CLI and a TOML file, at tiny size (seconds)."""
    f = tmp_path / "fs.toml"
    f.write_text(_toml(TINY["finite_staircase"]))
    _cli(["run", str(f), "--out", str(tmp_path / "run")])
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"n_steps_detected", "order_matches", "steps_in_sequence"} <= set(stored["headline"])
    assert (tmp_path / "run" / "eigenvalues.png").exists()


@pytest.mark.slow
def test_finite_staircase_resnet_steps_on_digits(tmp_path):
    """Acceptance: a ResNet trained with Barlow Twins from small init on digits
    learns its embedding eigenvalues one at a time, >= 4 steps, in the order of its own
    empirical-NTK prediction."""
    cfg = config.load(Path(__file__).parents[1] / "examples" / "finite_staircase.toml")
    res, _ = experiments.run(cfg, tmp_path / "run", progress=False)
    h = res["headline"]
    assert h["status"] == 0
    assert h["n_steps_detected"] >= 4 and h["n_steps_both"] >= 4   # measured: 5 and 5
    assert h["order_matches"] and h["steps_in_sequence"]
