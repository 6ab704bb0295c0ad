"""Mass and distance ranges (issue 16): the mock's depth tied to the survey's, the eval
report inside the survey's mass range, the calibrated-range flag of survey posteriors,
mass bins and halo-grouped errors. References are hand values, astropy's comoving
distance and the configuration's own numbers."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from cmpipe.cosmology import observer_radius_mpc_h, survey_depth_mpc_h
from cmpipe.evaluation.metrics import grouped_coverage_error, grouped_mean, mass_bin_edges
from cmpipe.settings import Settings, load_config
from cmpipe.stages.evaluate import eval_mass_bins, survey_range_report
from cmpipe.survey.posteriors import CALIBRATION_EDGE_DEX, flag_calibration_edge

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src/cmpipe/data/config.schema.yaml"


@pytest.fixture(scope="module")
def settings():
    return Settings.from_config(load_config(ROOT / "config.yaml", SCHEMA))


def _with(s, section, **changes):
    return dataclasses.replace(s, **{section: dataclasses.replace(getattr(s, section),
                                                                  **changes)})


def test_default_mock_depth_is_the_synthetic_survey_depth(settings, cosmo):
    assert settings.mock.observer_radius_mpc_h is None                 # config.yaml: null
    assert observer_radius_mpc_h(settings, cosmo) == settings.survey.synthetic.radius_mpc_h


def test_catalogue_survey_depth_is_the_comoving_distance_of_z_max(settings, cosmo):
    sv = dataclasses.replace(settings.survey, source="catalogue")
    s = dataclasses.replace(settings, survey=sv)
    z_max = sv.catalogue_volume.z_max
    ref = cosmo.astropy.comoving_distance(z_max).to_value("Mpc") * cosmo.astropy.h
    assert survey_depth_mpc_h(sv, cosmo) == pytest.approx(ref, rel=1e-6)
    assert observer_radius_mpc_h(s, cosmo) == pytest.approx(ref, rel=1e-6)
    assert 500 < ref < 650                                             # z = 0.2: ~570


def test_explicit_radius_short_of_the_survey_is_kept_and_logged(settings, cosmo, caplog):
    s = _with(settings, "mock", observer_radius_mpc_h=150.0)
    with caplog.at_level(logging.WARNING, logger="cmpipe.mock.fluxlimit"):
        assert observer_radius_mpc_h(s, cosmo) == 150.0
    assert "short of the survey's depth" in caplog.text


def test_mass_bin_edges():
    np.testing.assert_allclose(mass_bin_edges(13.4, 15.39), np.arange(13.4, 15.41, 0.2))
    np.testing.assert_allclose(mass_bin_edges(13.7, 15.1), [13.7, 13.9, 14.1, 14.3, 14.5,
                                                            14.7, 14.9, 15.1])
    np.testing.assert_allclose(mass_bin_edges(14.0, 14.0), [14.0, 14.2])


def test_eval_bins_run_from_the_selection_threshold_to_the_heaviest_cluster(settings):
    b = eval_mass_bins(settings, np.array([13.45, 14.2, 15.38]))
    assert b[0] == settings.log10_m200c_min and b[-1] >= 15.38 and b[-2] < 15.38


def test_grouped_mean_by_hand():
    v = np.array([1.0, 1.0, 1.0, 0.0])
    g = np.array([7, 7, 7, 9])
    r = grouped_mean(v, g, n_boot=4000, seed=1)
    assert r["mean"] == 0.75 and r["n"] == 4 and r["n_groups"] == 2
    # two groups of sizes 3 and 1 with means 1 and 0: resampled means are 1 (p=1/4),
    # 0 (1/4) or 3/4 (1/2): s.d. = sqrt(E[x^2] - E[x]^2)
    ex = 0.25 * 1 + 0.5 * 0.75
    ex2 = 0.25 * 1 + 0.5 * 0.75 ** 2
    assert r["stderr_grouped"] == pytest.approx(np.sqrt(ex2 - ex ** 2), rel=0.05)
    c = grouped_coverage_error(v.astype(bool), g, n_boot=4000, seed=1)
    assert c["fraction"] == r["mean"] and c["stderr_grouped"] == r["stderr_grouped"]
    assert np.isnan(grouped_mean([0.3, 0.5], [1, 1])["stderr_grouped"])    # one group


def test_calibration_edge_flag():
    t = {"flat_median": np.array([13.45, 13.61, 14.5, 15.19, 15.25, np.nan])}
    n = flag_calibration_edge(t, (13.4, 15.4))
    assert CALIBRATION_EDGE_DEX == 0.2
    np.testing.assert_array_equal(t["outside_calibrated_range"], [1, 0, 0, 0, 1, 0])
    assert n == 2


def test_survey_range_report(settings):
    """Posteriors centred on the truth with unit-normal errors of 0.1 dex: residual ~0 and
    68% coverage ~0.68 in the survey's range; a range reaching 0.3 dex beyond the survey's
    ends is edge-free, one reaching 0.1 dex is not."""
    rng = np.random.default_rng(3)
    n = 6000
    t = rng.uniform(13.4, 15.4, n)
    point = t + 0.1 * rng.standard_normal(n)
    post = dict(log10_m200c_true=t, point=point,
                lo68=point - 0.1, hi68=point + 0.1, lo95=point - 0.196, hi95=point + 0.196)
    rows = dict(halo_id=np.arange(n) // 3)
    rep = survey_range_report(settings, rows, post, (13.4, 15.4))
    lo, hi = settings.calibration.survey_mass_range
    assert rep["edge_free"] and rep["margin_below_dex"] == pytest.approx(lo - 13.4)
    for part in ("all", "top", "bottom"):
        b = rep[part]
        assert abs(b["mean_residual_dex"]) < 4 * b["mean_residual_err_dex"] + 1e-3, part
        assert b["coverage_68"] == pytest.approx(0.6827, abs=4 * b["coverage_68_err_halos"])
    assert rep["top"]["log10_m_range"] == pytest.approx([hi - 0.3, hi])
    assert rep["all"]["n"] == int(((t >= lo) & (t <= hi)).sum())
    assert not survey_range_report(settings, rows, post, (lo - 0.1, hi + 0.1))["edge_free"]
