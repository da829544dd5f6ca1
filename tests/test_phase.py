"""sslntk.phase: simulated collapse phase diagrams against the predicted boundaries of Ziyin et al. 2023.

Non-slow: 12×12 grids (one jitted, vmapped call each), measured boundary within one grid cell of the
predicted one outside the hysteresis band. Slow: 30×30 grids.
"""

import itertools

import jax
import numpy as np
import pytest

from sslntk import data, phase
from sslntk.theory import landscape as L

KEY = jax.random.PRNGKey(0)
X_AUG = np.linspace(0.0, 3.0, 12)
X_IMB = np.linspace(0.02, 0.5, 12)
GAMMA = np.linspace(0.0, 0.8, 12)


@pytest.fixture(scope="module")
def two_layer_aug():
    before = phase._grid._cache_size()
    pd = phase.phase_diagram("two_layer", "augmentation", x=X_AUG, gamma=GAMMA, key=KEY)
    return pd, phase._grid._cache_size() - before


def test_two_layer_augmentation_boundary_within_one_cell(two_layer_aug):
    pd, compiles = two_layer_aug
    print(pd.summary())
    assert compiles == 1                                  # the whole grid: one jitted, vmapped call
    assert pd.measured_rank.shape == pd.predicted_rank.shape == (12, 12)
    assert np.all(pd.boundary_agreement() <= 1.0), pd.boundary_agreement()
    # theory on the result matches the landscape module
    gc, gs = L.m2_thresholds(pd.a, X_AUG[:, None], 1.0)
    np.testing.assert_allclose(pd.gamma_c, np.asarray(gc), rtol=1e-12)
    np.testing.assert_allclose(pd.gamma_s, np.asarray(gs), rtol=1e-12)
    # hysteresis is real: the band is non-empty and the large init sits on the metastable branch
    assert pd.hysteresis.sum() >= 10
    band = pd.hysteresis
    assert np.mean(pd.measured_rank[band] == pd.metastable_rank[band]) >= 0.9
    assert np.mean(pd.measured_rank[band] > pd.predicted_rank[band]) >= 0.9
    assert np.max(pd.grad_norm) < 1e-5


def test_one_layer_imbalance_boundary_within_one_cell():
    pd = phase.phase_diagram("one_layer", "imbalance", x=X_IMB, gamma=GAMMA, key=KEY)
    print(pd.summary())
    assert not pd.hysteresis.any()
    assert np.all(pd.boundary_agreement() <= 1.0), pd.boundary_agreement()
    assert pd.agreement() >= 0.95
    # the class-direction boundary is the imbalance law a_e(p) = γτ (Ziyin et al. 2023)
    a_e = np.asarray(L.imbalance_variance(X_IMB, 4.0, 0.1))
    np.testing.assert_allclose(pd.a[:, 0], a_e, rtol=1e-12)
    np.testing.assert_array_equal(pd.predicted_rank,
                                  (a_e[:, None] > GAMMA[None, :]).astype(int)
                                  + (0.1 > GAMMA[None, :]).astype(int))


@pytest.mark.slow
@pytest.mark.parametrize("model,x_axis", [("one_layer", "augmentation"), ("two_layer", "imbalance")])
def test_other_diagrams_boundary_within_one_cell(model, x_axis):
    pd = phase.phase_diagram(model, x_axis, x=X_AUG if x_axis == "augmentation" else X_IMB,
                             gamma=GAMMA, key=KEY)
    print(pd.summary())
    assert np.all(pd.boundary_agreement() <= 1.0), pd.boundary_agreement()


def test_covariances_are_those_of_the_data_models():
    """The sweeps' (A, B) equal `sslntk.data`'s population covariances of the same models."""
    x = np.array([0.25, 0.4])
    As, Bs = phase._covariances("augmentation", x, spectrum=np.array([4.0, 2.0, 1.0, 0.5]), b=1.0,
                                delta2=4.0, sigma_w2=0.1, dim=2)
    Ai, Bi = phase._covariances("imbalance", x, spectrum=None, b=0.7, delta2=4.0, sigma_w2=0.1,
                                dim=3)
    for i, xi in enumerate(x):
        ds = data.load("spiked", n=2, key=KEY, spikes=(4.0, 2.0, 1.0, 0.5), sigma=np.sqrt(xi),
                       dtype=np.float64)
        np.testing.assert_allclose(As[i], np.asarray(ds.A), atol=1e-12)
        np.testing.assert_allclose(Bs[i], np.asarray(ds.B), atol=1e-12)
        gm = data.load("gaussian_mixture", n=2, key=KEY, n_classes=2, dim=3, separation=2.0,
                       within_std=np.sqrt(0.1), weights=[xi, 1 - xi], dtype=np.float64)
        np.testing.assert_allclose(Ai[i], np.asarray(gm.A), atol=1e-12)
        np.testing.assert_allclose(Bi[i], 0.7 * np.eye(3), atol=0)


def _pd(measured, predicted, hysteresis=None):
    g1, g2 = measured.shape
    z = np.zeros((g1, 1))
    return phase.PhaseDiagram(
        x=np.arange(g1, dtype=float), gamma=np.arange(g2, dtype=float), measured_rank=measured,
        predicted_rank=predicted, metastable_rank=predicted,
        hysteresis=np.zeros_like(measured, bool) if hysteresis is None else hysteresis,
        gamma_c=z, gamma_s=z, variances=np.zeros((g1, g2, 1)), grad_norm=np.zeros((g1, g2)),
        loss=np.zeros((g1, g2)), maps=np.zeros((g1, g2, 1, 1)), a=z, model="one_layer",
        x_axis="augmentation", tau=1.0, lr=0.1, steps=1, rtol=1e-6)


def test_boundary_agreement_definition():
    pred = np.array([[2, 2, 1, 1, 0, 0, 0, 0]] * 4)
    meas = pred.copy()
    meas[1, 2] = 2                      # boundary 2|1 measured one cell late
    meas[2, 4:6] = 1                    # boundary 1|0 measured two cells late
    meas[3, 7] = 1                      # a stray mismatch far from every boundary
    np.testing.assert_array_equal(_pd(meas, pred).boundary_agreement(), [0, 1, 2, 4])
    hyst = np.zeros_like(pred, bool)
    hyst[2, 4:6] = True                 # excluded: inside the hysteresis band
    np.testing.assert_array_equal(_pd(meas, pred, hyst).boundary_agreement(), [0, 1, 0, 4])
    flat = np.zeros((1, 5), int)
    assert _pd(flat + np.eye(1, 5, 2, dtype=int), flat).boundary_agreement()[0] == np.inf


def test_bad_inputs():
    with pytest.raises(ValueError, match="model"):
        phase.phase_diagram("three_layer", x=X_AUG, gamma=GAMMA, key=KEY)
    with pytest.raises(ValueError, match="x_axis"):
        phase.phase_diagram("one_layer", "temperature", x=X_AUG, gamma=GAMMA, key=KEY)
    with pytest.raises(ValueError, match="gamma"):
        phase.phase_diagram("one_layer", x=X_AUG, gamma=-GAMMA, key=KEY)
    with pytest.raises(ValueError, match="x"):
        phase.phase_diagram("one_layer", "imbalance", x=np.array([0.0, 0.5]), gamma=GAMMA, key=KEY)
    with pytest.raises(ValueError, match="gamma"):
        phase.phase_diagram("one_layer", x=X_AUG, gamma=np.ones((2, 2)), key=KEY)
    with pytest.raises(ValueError, match="spectrum"):
        phase.phase_diagram("one_layer", x=X_AUG, gamma=GAMMA, key=KEY, spectrum=(1.0, -1.0))
    with pytest.raises(ValueError, match="tau"):
        phase.phase_diagram("one_layer", x=X_AUG, gamma=GAMMA, key=KEY, tau=0.0)
    with pytest.raises(TypeError, match="dtype"):
        phase.phase_diagram("one_layer", x=X_AUG, gamma=GAMMA, key=KEY, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Ziyin Ziyin et al. 2023 (slow): 30 × 30, global rank = minimum-loss candidate


def _balanced_loss(V, A, S, tau, gamma):
    """M2 loss at a balanced point, `−Tr[VAVᵀ]/τ + ||VΣVᵀ||²/(2τ²) + 2γ||V||_*` (Ziyin et al. 2023)."""
    VSV = np.einsum("...ij,jk,...lk->...il", V, S, V)
    nuc = np.linalg.svd(V, compute_uv=False).sum(-1)
    return (-np.einsum("...ij,jk,...ik->...", V, A, V) / tau
            + np.sum(VSV**2, axis=(-1, -2)) / (2 * tau**2) + 2 * gamma * nuc)


@pytest.mark.slow
def test_ziyin_check12_phase_diagram_30x30():
    x, g = np.linspace(0.0, 3.0, 30), np.linspace(0.0, 0.8, 30)
    # M2: candidates = the simulated (metastable) state restricted to every subset of eigen-directions
    pd = phase.phase_diagram("two_layer", "augmentation", x=x, gamma=g, key=KEY)
    print(pd.summary())
    d = pd.a.shape[1]
    global_rank = np.zeros_like(pd.measured_rank)
    for i, j in itertools.product(range(30), range(30)):
        A, S = np.diag(pd.a[i]), np.diag(pd.a[i]) + x[i] * np.eye(d)
        best = (np.inf, 0)
        for mask in itertools.product([0, 1], repeat=d):
            Vc = pd.maps[i, j] * np.asarray(mask, float)[None, :]     # A diagonal: columns = dirs
            val = float(_balanced_loss(Vc, A, S, 1.0, g[j]))
            rank = int(np.sum(np.linalg.svd(Vc, compute_uv=False) > 1e-6))
            best = min(best, (val, rank))
        global_rank[i, j] = best[1]
    predicted = np.sum(g[None, :, None] < pd.gamma_c[:, None, :], axis=-1)
    band = np.any(np.abs(g[None, :, None] - pd.gamma_c[:, None, :])
                  <= 0.01 * pd.gamma_c[:, None, :], axis=-1)
    np.testing.assert_array_equal(global_rank[~band], predicted[~band])
    assert np.all(pd.boundary_agreement() <= 1.0)
    # M1: flat boundaries γ = a_i/τ, independent of σ²
    pd1 = phase.phase_diagram("one_layer", "augmentation", x=x, gamma=g, key=KEY)
    band1 = np.any(np.abs(g[None, :, None] - pd1.a[:, None, :]) <= 0.01 * pd1.a[:, None, :], -1)
    np.testing.assert_array_equal(pd1.measured_rank[~band1], pd1.predicted_rank[~band1])
    assert np.all(pd1.predicted_rank == pd1.predicted_rank[0])        # same in every row


def test_diverged_cells_are_not_counted_as_collapsed():
    """Issue 15 audit: with lr = 2 (curvature 4a_1/τ = 16) every cell diverges; NaN variances used to
    count as rank 0 and 'agree' with the collapsed predictions (agreement 0.33). Now rank -1 + warning."""
    with pytest.warns(RuntimeWarning, match="GD diverged in 6 of 6 cells"):
        pd = phase.phase_diagram("one_layer", x=[0.1, 1.0], gamma=[0.0, 1.0, 10.0],
                                 key=jax.random.PRNGKey(0), lr=2.0, steps=200)
    assert np.all(pd.measured_rank == -1) and pd.agreement() == 0.0
