"""The `stability` experiment kind from the command line (sslntk.stability): the classifications
of Tian et al.'s one-mode collapse table (EMA rate × weight decay, Eq. 16 / App. D), of the
no-predictor runs (collapse to zero with weight decay, remark after Tian Thm 2) and of DINO's
collapse modes (Caron et al. 2021 Sec. 5.3), on a tiny config."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sslntk import config
from sslntk.theory import noncontrastive as T

TINY = """
kind = "stability"
seed = 0
[data]
name = "digits"
n = 12
n_test = 0
[arch]
kind = "mlp"
depth = 1
[stability]
k = 4
t_end = 1000.0
lr = 0.05
n_times = 5
ema_rates = [0.01, 0.1, 1.0]
weight_decays = [0.0, 0.04, 0.1, 0.2]
teacher_temps = [0.04, 0.1]
center_rates = [0.0, 5.0]
"""


@pytest.mark.slow
def test_stability_experiment_from_the_cli_reproduces_the_collapse_classifications(tmp_path):
    """`sslntk run stability.toml`: (i) the BYOL-mode phase diagram collapses exactly where Tian
    Eq. 16 / App. D put it for p0 = 0.3 (eta = 0.2 > 1/6 always; eta = 0.1 only with the slow
    EMA beta = 0.01; SimSiam only at eta = 0.2); (ii) without a predictor BYOL and SimSiam decay
    to zero (collapsed) with weight decay; (iii) DINO is healthy with centring and sharpening and
    collapsed without either, and its phase diagram marks both collapses."""
    cfg_path = tmp_path / "stability.toml"
    cfg_path.write_text(TINY)
    config.load(cfg_path)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "sslntk.cli", "run", str(cfg_path), "--out",
                        str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "results.json").read_text())
    labels = res["headline"]["labels"]
    arr = np.load(out / "arrays.npz")
    # (i) Tian App. D: eta columns [0, 0.04, 0.1, 0.2], beta rows [0.01, 0.1, 1]
    etas = arr["weight_decays"]
    lo, _ = T.fixed_points(tau=1.0, lambda_s=1.5, eta=etas)
    expected = np.zeros((3, 4), bool)
    expected[:, 3] = True          # eta = 0.2 > 1/6: no non-zero fixed point
    expected[0, 2] = True          # eta = 0.1, beta = 0.01: the slow-EMA trap (Obs. #10)
    np.testing.assert_array_equal(arr["mode_collapsed"], expected)
    assert np.isnan(lo[3]) and 0.3 > lo[2]
    # (ii) no predictor
    assert labels["simsiam_no_predictor"] == "collapsed"
    assert labels["byol_no_predictor"] == "collapsed"
    # (iii) DINO
    assert labels["dino"] == "healthy"
    assert labels["dino_no_centering"] == "collapsed"
    assert labels["dino_no_sharpening"] == "collapsed"
    # rows: teacher temps [0.04, 0.1]; columns: centre rates [0 (no centre), 5]
    dl = arr["dino_labels"]
    assert dl[0, 1] == 2 and dl[0, 0] == 0 and np.all(dl[1] == 0)
    assert (out / "stability_phase.png").exists() and (out / "stability_curves.pdf").exists()
