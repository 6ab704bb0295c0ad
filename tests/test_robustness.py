"""Robustness: perturbations of the window galaxies, predictions of in-memory cubes, the
comparison against the unperturbed posteriors and the retraining verdict."""
import json

import keras
import numpy as np
import pytest

from cmpipe.calibration import tabulate_joint_pdf
from cmpipe.io.cubes import CubeWriter
from cmpipe.kde import Grid3D, kde_cubes
from cmpipe.cnn.model import build_cnn
from cmpipe.evaluation.robustness import (Perturbation, compare, perturb_galaxies, perturbations,
                                          predict_inputs, verdict)
from cmpipe.settings import stage_rng
from cmpipe.cnn.training import predict

GRID = Grid3D(n=12)
TINY = [{"conv": 4, "kernel": 3}, {"pool": 2}, {"dense": 8}]


def clusters(rng, n_clusters=12):
    counts = rng.integers(8, 40, n_clusters)
    n = counts.sum()
    x = rng.uniform(-1.5, 1.5, n)
    y = rng.normal(0, 0.5, n).clip(-1.5, 1.5)
    v = rng.normal(0, 700, n).clip(-2100, 2100)
    return x, y, v, np.concatenate([[0], np.cumsum(counts)])


@pytest.fixture(scope="module")
def network():
    keras.utils.set_random_seed(3)
    model = build_cnn(GRID.shape, TINY)
    norm = {"input": {"scale": float(GRID.n ** 3), "grid": list(GRID.shape)},
            "target": {"mean": 14.3, "std": 0.4}}
    return model, norm


@pytest.mark.parametrize("kind", ["incompleteness", "velocity_error"])
def test_zero_perturbation_leaves_predictions_identical(network, kind):
    model, norm = network
    x, y, v, off = clusters(np.random.default_rng(1))
    ref = predict_inputs(model, norm, kde_cubes(x, y, v, off, grid=GRID), batch_size=5)
    p = perturb_galaxies(x, y, v, off, Perturbation(kind, 0.0), stage_rng(7, "t"),
                         min_galaxies=3)
    assert p["kept"].all()
    for a, b in ((p["x_mpc_h"], x), (p["y_mpc_h"], y), (p["v_kms"], v), (p["offsets"], off)):
        np.testing.assert_array_equal(a, b)
    got = predict_inputs(model, norm, kde_cubes(p["x_mpc_h"], p["y_mpc_h"], p["v_kms"],
                                                p["offsets"], grid=GRID), batch_size=5)
    np.testing.assert_array_equal(got, ref)
    # a non-zero level does change them
    p = perturb_galaxies(x, y, v, off, Perturbation(kind, 0.3 if kind == "incompleteness"
                                                    else 300.0), stage_rng(7, "t"))
    got = predict_inputs(model, norm, kde_cubes(p["x_mpc_h"], p["y_mpc_h"], p["v_kms"],
                                                p["offsets"], grid=GRID), batch_size=5)
    assert not np.array_equal(got, ref[p["kept"]])


def test_incompleteness_loses_the_requested_fraction_and_drops_poor_clusters():
    rng = np.random.default_rng(2)
    counts = np.r_[np.full(400, 50), np.full(100, 6)]
    off = np.concatenate([[0], np.cumsum(counts)])
    n = off[-1]
    x, y, v = rng.uniform(-1, 1, (3, n))
    p = perturb_galaxies(x, y, v * 1000, off, Perturbation("incompleteness", 0.3),
                         np.random.default_rng(5), min_galaxies=5)
    lost = 1 - p["n_gal"].sum() / n
    assert abs(lost - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)               # binomial, 4 sigma
    np.testing.assert_array_equal(p["kept"], p["n_gal"] >= 5)
    assert p["kept"][:400].all() and (~p["kept"][400:]).sum() > 20    # 6 -> <5 is common
    assert p["offsets"][-1] == p["x_mpc_h"].size == p["n_gal"][p["kept"]].sum()
    # surviving galaxies are a subset, in order, of their own cluster's galaxies
    k = int(np.flatnonzero(p["kept"])[0])
    sub = p["x_mpc_h"][p["offsets"][0]:p["offsets"][1]]
    assert np.isin(sub, x[off[k]:off[k + 1]]).all()
    again = perturb_galaxies(x, y, v * 1000, off, Perturbation("incompleteness", 0.3),
                             np.random.default_rng(5), min_galaxies=5)
    np.testing.assert_array_equal(again["x_mpc_h"], p["x_mpc_h"])     # seeded


def test_velocity_errors_have_the_requested_sd_and_respect_the_window():
    n = 40000
    off = np.array([0, n])
    v = np.zeros(n)
    p = perturb_galaxies(np.zeros(n), np.zeros(n), v, off, Perturbation("velocity_error", 100),
                         np.random.default_rng(3), v_max_kms=2200.0)
    assert np.std(p["v_kms"]) == pytest.approx(100.0, rel=4 / np.sqrt(2 * n))
    edge = np.full(n, 2150.0)
    q = perturb_galaxies(np.zeros(n), np.zeros(n), edge, off,
                         Perturbation("velocity_error", 100), np.random.default_rng(3),
                         v_max_kms=2200.0)
    assert np.all(np.abs(q["v_kms"]) <= 2200.0)
    # P(N(0, 100) > 50) = 0.3085 of them leave the window
    assert q["n_gal"][0] / n == pytest.approx(1 - 0.3085, abs=4 * np.sqrt(0.21 / n))


def test_perturbation_validation_and_order():
    assert [p.label for p in perturbations([0.1], [30])] == [
        "incompleteness 10%", "velocity error 30 km/s"]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        Perturbation("incompleteness", 1.0)
    with pytest.raises(ValueError, match="kind"):
        Perturbation("photometry", 0.1)


def test_predict_inputs_is_bit_identical_to_training_predict(network, tmp_path):
    """Same transforms and batches as cmpipe.cnn.training.predict on a cube file."""
    model, norm = network
    x, y, v, off = clusters(np.random.default_rng(4), 9)
    cubes = kde_cubes(x, y, v, off, grid=GRID)
    d = tmp_path / "model"
    d.mkdir()
    model.save(d / "cnn3d.keras")
    (d / "normalisation.json").write_text(json.dumps(norm))
    cols = dict(cluster_id=np.arange(9), log10_m200c=np.full(9, 14.0), n_gal=np.diff(off),
                n_members=np.diff(off), distance_mpc_h=np.linspace(50.0, 250.0, 9))
    with CubeWriter(tmp_path / "c.h5", 9, GRID.n, {}) as w:
        w.write(cubes, cols)
    ref = predict(d, tmp_path / "c.h5", batch_size=4)["log10_m200c_pred"]
    np.testing.assert_array_equal(predict_inputs(model, norm, cubes, batch_size=4), ref)


def test_predict_inputs_with_a_distance_input_matches_training_predict(tmp_path):
    """A network trained with the distance input: predict_inputs takes the distances the
    cube file holds, and gives the predictions of cmpipe.cnn.training.predict on that file."""
    keras.utils.set_random_seed(4)
    model = build_cnn(GRID.shape, TINY, distance_input=True)
    norm = {"input": {"scale": float(GRID.n ** 3), "grid": list(GRID.shape)},
            "target": {"mean": 14.3, "std": 0.4}, "distance": {"mean": 150.0, "std": 60.0}}
    x, y, v, off = clusters(np.random.default_rng(5), 9)
    cubes = kde_cubes(x, y, v, off, grid=GRID)
    dist = np.linspace(50.0, 250.0, 9)
    d = tmp_path / "model"
    d.mkdir()
    model.save(d / "cnn3d.keras")
    (d / "normalisation.json").write_text(json.dumps(norm))
    cols = dict(cluster_id=np.arange(9), log10_m200c=np.full(9, 14.0), n_gal=np.diff(off),
                n_members=np.diff(off), distance_mpc_h=dist)
    with CubeWriter(tmp_path / "c.h5", 9, GRID.n, {}) as w:
        w.write(cubes, cols)
    ref = predict(d, tmp_path / "c.h5", batch_size=4)["log10_m200c_pred"]
    got = predict_inputs(model, norm, cubes, batch_size=4, distance_mpc_h=dist)
    np.testing.assert_array_equal(got, ref)
    # the distance matters, and a distance-input network refuses to run without it
    assert not np.allclose(predict_inputs(model, norm, cubes, batch_size=4,
                                          distance_mpc_h=dist[::-1]), ref)
    with pytest.raises(ValueError, match="distance input"):
        predict_inputs(model, norm, cubes, batch_size=4)


@pytest.fixture(scope="module")
def calibrated():
    """A joint PDF of Gaussian pairs d = m + N(0, 0.15) and fresh eval pairs from it."""
    rng = np.random.default_rng(11)
    m = rng.uniform(13.7, 15.0, 4000)
    pdf = tabulate_joint_pdf(m + rng.normal(0, 0.15, m.size), m, n_d=300, n_m=300)
    t = rng.uniform(13.9, 14.8, 600)
    return pdf, t, t + rng.normal(0, 0.15, t.size)


def test_identical_predictions_compare_equal_and_pass(calibrated):
    pdf, t, d = calibrated
    r = compare(pdf, t, d, d)
    assert r["bias_shift_dex"] == 0.0 and r["scatter_ratio"] == 1.0
    assert r["perturbed"]["coverage_68"] == r["reference"]["coverage_68"]
    v = verdict(r)
    assert not v["retraining_needed"] and v["reasons"] == []
    lo, hi = v["coverage_band_68"]
    assert lo < r["perturbed"]["coverage_68"] < hi                     # calibrated


def test_a_biased_summary_calls_for_retraining(calibrated):
    """Predictions 0.2 dex high: the point estimates shift by about -0.2 dex in eps and
    the test-set posteriors no longer cover the truth."""
    pdf, t, d = calibrated
    r = compare(pdf, t, d, d + 0.2)
    assert r["bias_shift_dex"] == pytest.approx(-0.2, abs=0.03)
    assert r["prediction_shift_dex"] == pytest.approx(0.2)
    v = verdict(r, max_bias_shift_dex=0.05)
    assert v["retraining_needed"] and v["undercovered"] and v["bias_significant"]
    assert any("68% coverage" in s for s in v["reasons"])
    # extra noise alone widens the scatter but SBI posteriors stay >= conservative-ish:
    noisy = d + np.random.default_rng(0).normal(0, 0.02, d.size)
    assert not verdict(compare(pdf, t, d, noisy))["bias_significant"]
