"""Distance-aware calibration (issue 16): P(d~, log M | D) from the test pairs near each
observer distance. A mock whose predictions drift with distance (as the flux limit makes
nearby clusters richer) is calibrated without bias in every distance third, where the
distance-blind calibration is biased at both ends; nodes blend linearly; files round-trip."""
import numpy as np
import pytest

from cmpipe.calibration import (DistanceJointPDF, load_calibration, posterior,
                                posterior_cdf_at, summarise, tabulate_by_distance,
                                tabulate_joint_pdf)
from cmpipe.calibration.distance import fit_drift
from cmpipe.io.tables import CatalogueError

GRID = dict(n_d=300, n_m=300, bandwidth=0.2, shrink=True)
DRIFT = -0.002              # dex per h^-1 Mpc: nearby clusters predicted heavier


def _mock(n, rng, lo=13.7, hi=15.0):
    """Clusters uniform in volume within 250 h^-1 Mpc, flat in log M; d~ = log M + drift
    (0 at 170 h^-1 Mpc) + noise growing with distance."""
    D = 250.0 * rng.uniform(0.0, 1.0, n) ** (1.0 / 3.0)
    m = rng.uniform(lo, hi, n)
    d = m + DRIFT * (D - 170.0) + (0.08 + 0.0004 * D) * rng.standard_normal(n)
    return d, m, D


@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(16)
    d, m, D = _mock(1500, rng)
    return tabulate_by_distance(d, m, D, n_nodes=5, window=0.4, **GRID), rng


def test_unbiased_and_covered_in_every_distance_third(calibrated):
    cp, rng = calibrated
    d, m, D = _mock(6000, rng, 13.9, 14.8)     # inside the calibrated range (no edges)
    aware, blind = summarise(cp, d, D), summarise(cp.blind, d)
    q = np.quantile(D, [0, 1 / 3, 2 / 3, 1])
    res_blind = []
    for j in range(3):
        s = (D >= q[j]) & (D <= q[j + 1])
        res = np.mean(m[s] - aware["median"][s])
        err = np.std(m[s] - aware["median"][s]) / np.sqrt(s.sum())
        cov = np.mean((m[s] >= aware["lo68"][s]) & (m[s] <= aware["hi68"][s]))
        # tolerance: the 0.02 dex, and 3 standard errors of a 2000-cluster third
        assert abs(res) < 0.02 + 3 * err, (j, res)
        assert abs(cov - 0.6827) < 0.05, (j, cov)     # the band, 0.68 +- 0.05
        res_blind.append(np.mean(m[s] - blind["median"][s]))
    # the blind table is biased at both ends, in the directions the drift implies
    assert res_blind[0] < -0.05 and res_blind[2] > 0.04


def test_pit_of_the_mock_is_uniform(calibrated):
    cp, rng = calibrated
    d, m, D = _mock(3000, rng, 13.9, 14.8)
    pit = posterior_cdf_at(cp, d, m, D)
    assert abs(pit.mean() - 0.5) < 0.02 and abs(pit.std() - 1 / np.sqrt(12)) < 0.02


def test_fit_drift_recovers_the_slope():
    rng = np.random.default_rng(3)
    d, m, D = _mock(4000, rng)
    d_ref, c1, c2 = fit_drift(d, m, D)
    assert c1 == pytest.approx(DRIFT * 100.0, abs=0.01)    # per 100 h^-1 Mpc
    assert abs(c2) < 0.01


def test_node_weights_interpolate_and_clamp(calibrated):
    cp, _ = calibrated
    x = cp.distance_mpc_h
    lo, hi, w = cp.node_weights(np.array([x[0] - 50, x[0], 0.75 * x[1] + 0.25 * x[2],
                                          x[-1], x[-1] + 40]))
    np.testing.assert_array_equal(lo, [0, 0, 1, 3, 3])
    np.testing.assert_array_equal(hi, [1, 1, 2, 4, 4])
    np.testing.assert_allclose(w, [0.0, 0.0, 0.25, 1.0, 1.0], atol=1e-12)
    # at a node, the posterior is that node's slice of the drift-corrected prediction
    d0 = 14.3
    _, p = posterior(cp, d0, distance=x[2])
    _, p_node = posterior(cp.nodes[2], d0 - cp.drift(x[2]))
    np.testing.assert_allclose(p, p_node, rtol=1e-12, atol=1e-12)


def test_distance_needed_for_a_distance_aware_calibration(calibrated):
    cp, _ = calibrated
    with pytest.raises(ValueError, match="distance"):
        summarise(cp, [14.2])


def test_file_round_trip_and_blind_readers(calibrated, tmp_path):
    cp, rng = calibrated
    path = tmp_path / "joint_pdf.h5"
    cp.save(path)
    back = load_calibration(path)
    assert isinstance(back, DistanceJointPDF) and back.shift == cp.shift
    np.testing.assert_array_equal(back.distance_mpc_h, cp.distance_mpc_h)
    d, m, D = _mock(200, rng)
    for key in ("map", "lo68", "hi95"):
        np.testing.assert_array_equal(summarise(back, d, D)[key], summarise(cp, d, D)[key])
    blind = load_calibration(path, distance_aware=False)       # what the blind readers see
    np.testing.assert_array_equal(blind.table, cp.blind.table)


def test_blind_file_refused_when_distance_aware(tmp_path):
    rng = np.random.default_rng(5)
    d, m, _ = _mock(300, rng)
    path = tmp_path / "blind.h5"
    tabulate_joint_pdf(d, m, **GRID).save(path)
    with pytest.raises(CatalogueError, match="distance_aware: true"):
        load_calibration(path)


@pytest.mark.parametrize("kw, match", [(dict(n_nodes=0), "n_nodes"),
                                       (dict(window=1.5), "window"),
                                       (dict(window=0.001), "per distance node")])
def test_bad_settings(kw, match):
    rng = np.random.default_rng(6)
    d, m, D = _mock(300, rng)
    with pytest.raises(ValueError, match=match):
        tabulate_by_distance(d, m, D, **dict(dict(n_nodes=3, window=0.4), **kw), **GRID)


def test_run_made_before_distance_calibration_is_read_distance_blind(tmp_path):
    """``cmpipe infer`` on a run whose resolved config predates the key: its joint PDF
    has no distance nodes, so the run is applied as it was calibrated."""
    import yaml

    from cmpipe.stages.infer import RESOLVED_CONFIG, load_run_config

    old = {"run": "old", "calibration": {"bandwidth": 0.2, "shrink": True}}
    (tmp_path / RESOLVED_CONFIG).write_text(yaml.safe_dump(old))
    assert load_run_config(tmp_path)["calibration"]["distance_aware"] is False
    new = {"run": "new", "calibration": {"bandwidth": 0.2, "distance_aware": True}}
    (tmp_path / RESOLVED_CONFIG).write_text(yaml.safe_dump(new))
    assert load_run_config(tmp_path)["calibration"]["distance_aware"] is True


def test_forward_observations_follow_the_distance_drift(calibrated, cosmo):
    """observe_through_calibration with a distance-aware calibration draws d~ from
    P(d~ | M, D) at the distance of each cluster's redshift: the drawn predictions carry
    the mock's drift (reference: the generating law d~ = log M + DRIFT (D - 170) + noise),
    and their posteriors, sliced at the same D, come back unbiased at every distance."""
    from cmpipe.massfunction import observe_through_calibration
    from cmpipe.massfunction.likelihood import draw_predictions

    cp, _ = calibrated
    rng = np.random.default_rng(5)
    m = np.full(4000, 14.3)
    for D in (100.0, 170.0, 240.0):       # 6% of the pairs lie nearer than 100
        # the redshift whose comoving distance is D
        zgrid = np.linspace(0.001, 0.1, 2000)
        z = float(np.interp(D, cosmo.comoving_distance_mpc_h(zgrid), zgrid))
        d = draw_predictions(cp, m, rng.random(m.size), rng, np.full(m.size, D))
        noise = 0.08 + 0.0004 * D
        # mean and s.d. of the generating law; tolerance: the drift fit and the KDE's
        # smoothing of the nodes (0.02 dex) and 4 standard errors of the mean
        assert abs(d.mean() - (14.3 + DRIFT * (D - 170.0))) < 0.02 + 4 * noise / 63, D
        assert d.std() == pytest.approx(noise, rel=0.25)
        est, sd = observe_through_calibration(cp, m, cosmo, rng=rng, z=z, prior="flat")
        assert abs(np.nanmean(est) - 14.3) < 0.02, D
