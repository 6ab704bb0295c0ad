"""Tests of the survey statistics behind ``survey/pulls.json`` and ``mass_function.csv``
(:mod:`cmpipe.survey.stats`, :mod:`cmpipe.survey.volume`, :mod:`cmpipe.survey.mass_function`,
:mod:`cmpipe.survey.posteriors`, :mod:`cmpipe.survey.windows`), without the workflow.

References: hand-computed pulls; the top-hat sigma(R) integrated here from colossus'
P(k) (0.5%); the PIT of draws from the joint PDF's own likelihood (uniform: KS p > 0.001,
mean within 4 of its standard errors) against the same draws shifted by +0.1 dex (KS
p < 1e-6); Tinker (2008) from :func:`cmpipe.massfunction.tinker08_dndlog10m`. Seeds fixed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cmpipe.calibration import JointPDF
from cmpipe.io.tables import CatalogueError
from cmpipe.massfunction import tinker08_dndlog10m, tinker08_survey_average
from cmpipe.sections import PopulationPriorSettings
from cmpipe.settings import ConfigError, Settings, load_config
from cmpipe.survey import FULL_SKY_DEG2
from cmpipe.survey.mass_function import (band_count_null, completeness_mass,
                                         consistency_verdict, forward_scatter,
                                         mass_function_sample)
from cmpipe.survey.posteriors import population_mass_range, predictions_by_cluster
from cmpipe.survey.stats import (ReferenceMasses, eddington_shift, likelihood_check,
                                 pit_summary, pull_stats, pulls_record, reference_masses,
                                 survey_pulls)
from cmpipe.survey.volume import catalogue_survey_record, survey_sigma_lin, survey_theory
from cmpipe.survey.windows import (Windows, phase_space_windows, select_windows,
                                   survey_min_galaxies)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fixed_global_seed():
    state = np.random.get_state()
    np.random.seed(23)
    yield
    np.random.set_state(state)


@pytest.fixture(scope="module")
def settings():
    return Settings.from_config(load_config(ROOT / "config.yaml",
                                            ROOT / "src/cmpipe/data/config.schema.yaml",
                                            overlays=[ROOT / "configs/tiny.yaml"]))


# ------------------------------------------------------------------------------- pulls

def test_pull_stats_by_hand():
    est = np.array([14.0, 14.5, np.nan, 15.0, 13.2])
    sigma = np.array([0.1, 0.2, 0.1, 0.0, 0.3])
    ref = np.array([13.9, 14.8, 14.0, 15.0, np.nan])
    ref_err = np.array([np.nan, 0.15, np.nan, 0.0, 0.1])
    lo = np.array([13.85, 14.2, 13.9, 14.9, 13.0])
    hi = np.array([14.15, 14.7, 14.1, 15.1, 13.4])
    out, pull = pull_stats(est, sigma, ref, ref_err, lo, hi)
    # counted: rows 0 (tot 0.1) and 1 (tot sqrt(0.2^2 + 0.15^2) = 0.25); row 2 has no
    # estimate, row 3 a zero total error, row 4 no reference
    np.testing.assert_allclose(pull, [1.0, -1.2, np.nan, np.nan, np.nan], rtol=1e-12)
    assert out["n"] == 2
    assert out["pull_mean"] == pytest.approx(-0.1, abs=1e-12)
    assert out["pull_sd"] == pytest.approx(np.sqrt(2 * 1.1 ** 2), rel=1e-12)
    assert out["pull_mean_err"] == pytest.approx(1.1, rel=1e-12)
    assert out["residual_mean_dex"] == pytest.approx(-0.1, abs=1e-12)
    assert out["residual_sd_dex"] == pytest.approx(np.sqrt(0.08), rel=1e-12)
    assert out["median_sigma_dex"] == pytest.approx(0.175, rel=1e-12)
    assert out["coverage_68"] == pytest.approx(0.5)          # 13.9 in, 14.8 above 14.7


def test_pull_stats_degenerate_samples():
    one = np.array([14.0])
    out, pull = pull_stats(one, np.array([0.2]), np.array([14.1]), np.array([np.nan]),
                           one - 1, one + 1)
    assert out["n"] == 1 and out["pull_mean"] == pytest.approx(-0.5)
    assert out["pull_sd"] is None and out["residual_sd_dex"] is None
    out, pull = pull_stats(one, np.array([0.2]), np.array([np.nan]), np.array([0.1]),
                           one - 1, one + 1)
    assert out == dict(n=0) and np.isnan(pull).all()


def _gaussian_posteriors(rng, n, sd=0.15, shift=0.0):
    """Posteriors N(m_obs, sd) with m_obs = M + N(0, sd) + shift: the pulls of a correct
    posterior (shift 0) have mean 0 and sd 1."""
    m = rng.uniform(13.8, 14.8, n)
    mean = m + rng.normal(0.0, sd, n) + shift
    post = {}
    for p in ("flat", "pop"):
        post.update({f"{p}_mean": mean, f"{p}_median": mean, f"{p}_sd": np.full(n, sd),
                     f"{p}_lo68": mean - sd, f"{p}_hi68": mean + sd})
    return post, m


def test_survey_pulls_of_correct_posteriors_are_standard_normal():
    n = 4000
    post, m = _gaussian_posteriors(np.random.default_rng(5), n)
    pulls, per_cluster = survey_pulls(post, m, np.full(n, np.nan), 14.3)
    for prior in ("flat", "population"):
        a = pulls[prior]["all"]
        assert a["n"] == n
        # mean 0 within 4 standard errors (1/sqrt(n)); sd 1 within 4 of its ~1/sqrt(2n)
        assert abs(a["pull_mean"]) < 4 / np.sqrt(n)
        assert abs(a["pull_sd"] - 1) < 4 / np.sqrt(2 * n)
        # a symmetric Gaussian posterior: the 68% interval covers 68.27%, binomial 4 sd
        assert abs(a["coverage_68"] - 0.6827) < 4 * np.sqrt(0.6827 * 0.3173 / n)
        # median +- half the 68% interval is the same pull here
        assert pulls[prior]["median_half68"]["all"]["pull_mean"] == pytest.approx(
            a["pull_mean"], abs=1e-12)
        sel = pulls[prior]["selected_on_estimate"]
        assert sel["n"] == int(np.sum(post["flat_mean"] >= 14.3))
        # selecting on the estimate picks the up-scattered ones: a positive mean pull
        assert sel["pull_mean"] > 0.1
    np.testing.assert_allclose(per_cluster["flat"], (post["flat_mean"] - m) / 0.15)


def test_survey_pulls_see_a_biased_posterior():
    n = 2000
    post, m = _gaussian_posteriors(np.random.default_rng(6), n, shift=0.1)
    pulls, _ = survey_pulls(post, m, np.full(n, np.nan), 14.3)
    # +0.1 dex / 0.15 dex = +0.67 pull
    assert pulls["flat"]["all"]["pull_mean"] == pytest.approx(0.1 / 0.15, abs=4 / np.sqrt(n))


def test_reference_masses_truth_catalogue_none():
    post = dict(cluster_id=np.array([1, 2, 5]), log10_m_cat=np.array([np.nan, 14.2, np.nan]),
                log10_m_cat_err=np.array([np.nan, 0.1, np.nan]))
    truth = dict(cluster_id=np.array([1, 2, 3]), log10_m200c=np.array([13.8, 14.1, 14.9]))
    r = reference_masses(post, truth, True)
    assert r.kind == "truth"
    np.testing.assert_array_equal(r.log10_m, [13.8, 14.1, np.nan])    # id 5 has no truth
    assert np.isnan(r.err).all()
    r = reference_masses(post, {k: v[:0] for k, v in truth.items()}, False)
    assert r.kind == "catalogue"
    np.testing.assert_array_equal(r.err, post["log10_m_cat_err"])
    post["log10_m_cat"] = np.full(3, np.nan)
    assert reference_masses(post, truth, False).kind == "none"


def test_eddington_shift_uses_the_tinker_slope(cosmo):
    n = 500
    post, m = _gaussian_posteriors(np.random.default_rng(7), n)
    refs = ReferenceMasses(m, np.full(n, np.nan), "truth")
    pulls, _ = survey_pulls(post, m, refs.err, 14.3)
    e = eddington_shift(post, refs, 14.3, 0.1, cosmo, pulls)
    fm = post["flat_mean"]
    sigma = np.std(fm - m, ddof=1)
    # the slope d ln n / d log10 M by a central difference of Tinker (2008), 0.01 dex
    sel = fm >= 14.3
    dm = 0.01
    slope = (np.log(tinker08_dndlog10m(fm[sel] + dm, 0.1, cosmo))
             - np.log(tinker08_dndlog10m(fm[sel] - dm, 0.1, cosmo))) / (2 * dm)
    assert e["scatter_dex"] == pytest.approx(sigma, rel=1e-12)
    assert e["alpha_per_dex"] == pytest.approx(np.mean(slope), rel=1e-3)
    assert e["alpha_per_dex"] < -1                       # the mass function falls steeply
    assert e["shift_dex"] == pytest.approx(-e["alpha_per_dex"] * sigma ** 2, rel=1e-12)
    assert e["beta"] == pytest.approx(e["alpha_per_dex"] / np.log(10), rel=1e-12)
    assert eddington_shift(post, refs._replace(kind="none"), 14.3, 0.1, cosmo, pulls) is None


def test_pulls_record_counts_and_key_order():
    post, m = _gaussian_posteriors(np.random.default_rng(8), 20)
    post.update(cluster_id=np.arange(20), flat_median=post["flat_mean"])
    refs = ReferenceMasses(np.where(np.arange(20) < 15, m, np.nan), np.full(20, np.nan),
                           "truth")
    pulls, _ = survey_pulls(post, refs.log10_m, refs.err, 14.0)
    rec = pulls_record(run="r", meta=dict(source="synthetic"), post=post, refs=refs,
                       log10_m_complete=14.0, log10_m_complete_from="x", pulls=pulls,
                       eddington=None, likelihood=None, population_log10_m_range=[13.7, 15],
                       mass_function={})
    assert rec["n_clusters"] == 20 and rec["n_matched"] == 15 and rec["reference"] == "truth"
    assert list(rec)[:3] == ["run", "source", "reference"]
    assert list(rec)[-4:] == ["population", "eddington", "likelihood_check", "mass_function"]


# ---------------------------------------------------------------- likelihood (PIT) check

def _gaussian_joint_pdf(sd=0.15):
    """P(d~, M) = N(d~; M, sd) on a flat M prior: P(d~ | M) is that Gaussian."""
    m = np.round(np.arange(13.5, 15.2 + 1e-9, 0.01), 6)
    d = np.round(np.arange(12.8, 15.9 + 1e-9, 0.005), 6)
    table = np.exp(-0.5 * ((d[:, None] - m[None, :]) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
    return JointPDF(d_grid=d, m_grid=m, table=table, bandwidth=0.1, n_pairs=1000,
                    kernel_covariance=np.eye(2) * 1e-3,
                    meta=dict(m_true_min=13.5, m_true_max=15.2))


def _draws(rng, pdf, n, sd=0.15, shift=0.0):
    """True masses on the grid's nodes, predictions from P(d~ | M) (+ shift), distances."""
    m = rng.choice(pdf.m_grid[30:-30], n)
    return m, m + rng.normal(0.0, sd, n) + shift, rng.uniform(30.0, 250.0, n)


def test_pit_summary_of_uniform_and_of_too_few():
    u = np.random.default_rng(1).random(5000)
    s = pit_summary(u)
    assert s["n"] == 5000 and abs(s["mean"] - 0.5) < 4 * s["mean_err"]
    assert s["mean_err"] == pytest.approx(np.sqrt(1 / 12 / 5000))
    assert abs(s["frac_below_16"] - 0.1587) < 4 * np.sqrt(0.1587 * 0.8413 / 5000)
    assert s["ks_p_value"] > 0.001
    assert pit_summary(u[:1]) == dict(n=1)


def test_likelihood_check_is_uniform_on_the_model_and_not_when_shifted(cosmo):
    rng = np.random.default_rng(11)
    pdf = _gaussian_joint_pdf()
    n = 3000
    m, d, _ = _draws(rng, pdf, n)
    post = dict(log10_m_pred=d, z=np.full(n, 0.05))
    use = np.ones(n, dtype=bool)
    ok = likelihood_check(pdf, post, m, use, cosmo)
    a = ok["all"]
    assert a["n"] == n and abs(a["mean"] - 0.5) < 4 * a["mean_err"]
    assert a["ks_p_value"] > 0.001
    for b in ok["by_true_mass"].values():
        if b["n"] > 100:
            assert abs(b["mean"] - 0.5) < 4 * b["mean_err"]
    assert "matched_to_test_set" not in ok
    # the same draws 0.1 dex high: P(u) piles up near 1
    post["log10_m_pred"] = d + 0.1
    bad = likelihood_check(pdf, post, m, use, cosmo)["all"]
    assert bad["mean"] - 0.5 > 10 * bad["mean_err"] and bad["ks_p_value"] < 1e-6
    assert bad["frac_above_84"] > 0.25
    # fewer than two clusters: no check
    assert likelihood_check(pdf, post, m, np.arange(n) < 1, cosmo) is None


def test_likelihood_check_matched_to_the_test_set(cosmo):
    rng = np.random.default_rng(12)
    pdf = _gaussian_joint_pdf()
    m_t, d_t, r_t = _draws(rng, pdf, 4000)
    n = 600
    m, d, _ = _draws(rng, pdf, n)
    z = rng.uniform(0.02, 0.07, n)
    post = dict(log10_m_pred=d, z=z)
    out = likelihood_check(pdf, post, m, np.ones(n, bool), cosmo, (d_t, m_t, r_t))
    mt = out["matched_to_test_set"]
    assert mt["all"]["n"] == n and len(mt["by_distance"]) == 3
    assert abs(mt["all"]["difference"]) < 4 * mt["all"]["difference_err"]
    post["log10_m_pred"] = d + 0.1
    shifted = likelihood_check(pdf, post, m, np.ones(n, bool), cosmo, (d_t, m_t, r_t))
    diff = shifted["matched_to_test_set"]["all"]
    assert diff["difference"] > 8 * diff["difference_err"]


# ----------------------------------------------------------- survey volume and theory

def test_catalogue_record_volume_and_range_check(cosmo):
    rec = catalogue_survey_record(dict(z_min=0.02, z_max=0.1, area_deg2=1000.0), cosmo,
                                  clusters_file="c.fits", galaxies_file="g.csv")
    r1, r2 = cosmo.comoving_distance_mpc_h(0.02), cosmo.comoving_distance_mpc_h(0.1)
    omega = 1000.0 * (np.pi / 180) ** 2
    assert rec["volume_mpc_h3"] == pytest.approx(omega * (r2 ** 3 - r1 ** 3) / 3, rel=1e-12)
    assert rec["has_truth"] is False and rec["theory"]["kind"] == "volume_average"
    with pytest.raises(ConfigError, match="z_max"):
        catalogue_survey_record(dict(z_min=0.1, z_max=0.1, area_deg2=1000.0), cosmo,
                                clusters_file="c", galaxies_file="g")


def test_survey_theory_snapshot_and_shell(cosmo):
    m = np.array([13.8, 14.5, 15.0])
    n_of_m, z, label = survey_theory(dict(theory=dict(kind="snapshot", z=0.1)), cosmo)
    assert z == 0.1 and "z = 0.1" in label
    np.testing.assert_allclose(n_of_m(m), tinker08_dndlog10m(m, 0.1, cosmo), rtol=1e-12)
    r1, r2 = 100.0, 300.0
    n_of_m, z_mid, label = survey_theory(
        dict(theory=dict(kind="volume_average", r_min_mpc_h=r1, r_max_mpc_h=r2)), cosmo)
    # z_mid: the redshift of the volume-median distance
    assert cosmo.comoving_distance_mpc_h(z_mid) ** 3 == pytest.approx(
        (r1 ** 3 + r2 ** 3) / 2, rel=1e-5)
    # the shell average lies between Tinker at the near and far edges (massive clusters
    # grow more common towards z = 0)
    near = tinker08_dndlog10m(m, float(cosmo.z_at_comoving_distance(r1)), cosmo)
    far = tinker08_dndlog10m(m, float(cosmo.z_at_comoving_distance(r2)), cosmo)
    shell = n_of_m(m)
    assert np.all(shell < near) and np.all(shell > far)
    # an inner radius of 0: the sphere average itself
    n0, _, _ = survey_theory(
        dict(theory=dict(kind="volume_average", r_min_mpc_h=0.0, r_max_mpc_h=r2)), cosmo)
    np.testing.assert_allclose(n0(m), tinker08_survey_average(m, r2, cosmo), rtol=1e-12)


def _tophat_sigma(cosmo, radius, z):
    """sigma(R) of a top-hat sphere, integrated here from colossus' linear P(k)."""
    lnk = np.linspace(np.log(1e-5), np.log(10.0), 20001)
    k = np.exp(lnk)
    x = k * radius
    w = 3 * (np.sin(x) - x * np.cos(x)) / x ** 3
    p = cosmo.colossus.matterPowerSpectrum(k, z)
    return float(np.sqrt(np.trapezoid(k ** 3 * p * w ** 2, lnk) / (2 * np.pi ** 2)))


def test_sample_variance_sigma_of_a_sphere(cosmo):
    R, z = 150.0, 0.1
    ref = _tophat_sigma(cosmo, R, z)
    # no window in the record: the top-hat sphere of the survey's volume (0.5%)
    s, what = survey_sigma_lin(dict(volume_mpc_h3=4 / 3 * np.pi * R ** 3), z, cosmo)
    assert "top-hat sphere" in what and s == pytest.approx(ref, rel=5e-3)
    # a full-sky catalogue shell from r = 0 is that sphere, in a zero-padded box of 2.6 R:
    # the modes larger than the box are missing, so it is below the continuum value, by
    # less than 20%
    s_win, what = survey_sigma_lin(dict(source="catalogue", volume_mpc_h3=1.0,
                                        comoving_distance_range_mpc_h=[0.0, R],
                                        area_deg2=FULL_SKY_DEG2), z, cosmo, cells=64)
    assert "zero-padded" in what and 0.8 * ref < s_win < ref


def test_sample_variance_vanishes_when_the_window_fills_the_periodic_box(cosmo):
    # a full-sky synthetic survey 10 box sizes deep covers the box (almost) uniformly: no
    # mode of the periodic box changes its mean density
    meta = dict(source="synthetic", observer_mpc_h=[50.0, 50.0, 50.0], box_size_mpc_h=100.0,
                radius_mpc_h=1000.0, area_deg2=FULL_SKY_DEG2, pole_ra_deg=0.0,
                pole_dec_deg=90.0, volume_mpc_h3=4 / 3 * np.pi * 1e9)
    s, what = survey_sigma_lin(meta, 0.1, cosmo, cells=16)
    assert "periodic" in what
    assert s < 0.01 * _tophat_sigma(cosmo, (3 / (4 * np.pi)) ** (1 / 3) * 100.0, 0.1)


# ------------------------------------------------------------ mass-function helpers

def test_mass_function_sample_and_scatter():
    post = dict(flat_median=np.array([14.0, 14.2, np.nan, 14.6, 14.1]),
                flat_sd=np.array([0.1, 0.2, 0.1, 0.0, 0.3]),
                z=np.array([0.05, 0.08, 0.05, 0.05, 0.3]))
    s = mass_function_sample(post, prior="flat", estimate="median", z_range=[0.01, 0.2])
    assert s.column == "flat_median"
    np.testing.assert_array_equal(s.use, [True, True, False, False, False])
    ref = np.array([13.9, 14.4, 14.0, 14.6, 14.0])
    scatter, what = forward_scatter(s, ReferenceMasses(ref, ref * np.nan, "truth"))
    assert scatter == pytest.approx(np.std([0.1, -0.2], ddof=1), rel=1e-12)
    assert "over 2 clusters" in what
    scatter, what = forward_scatter(s, ReferenceMasses(ref * np.nan, ref * np.nan, "none"))
    assert scatter == pytest.approx(0.15) and "no reference masses" in what


def test_completeness_mass_sources():
    grid = np.linspace(13.0, 15.0, 21)
    dn = np.exp(-((grid - 13.6) / 0.3) ** 2)
    assert completeness_mass(14.2, source="synthetic", log10_m_true_min=13.7, grid=grid,
                             dn_dlog10m=dn) == (14.2, "survey.mass_function.log10_m_complete")
    assert completeness_mass(None, source="synthetic", log10_m_true_min=13.7, grid=grid,
                             dn_dlog10m=dn)[0] == 13.7
    assert completeness_mass(None, source="catalogue", log10_m_true_min=12.0, grid=grid,
                             dn_dlog10m=dn)[0] == pytest.approx(13.6)


def test_band_count_null_by_hand():
    nb = dict(fraction_in_band=np.array([0.5, 0.7, 0.9, 1.0, np.nan]))
    null = band_count_null(nb, dict(fraction_in_band=0.7), 5)
    f = null["fraction_in_band"]
    assert null["n_surveys"] == 5
    assert f["observed"] == 0.7 and f["null_median"] == pytest.approx(0.8)
    assert f["p_value"] == pytest.approx(0.5)                 # 0.5 and 0.7 of four <= 0.7
    assert f["null_prob_at_least_two_thirds"] == pytest.approx(0.75)


# ------------------------------------------------------- population prior, windows

def test_population_mass_range(settings):
    cal = (13.5, 15.0)
    # synthetic survey: its mass threshold (tiny: 13.7) inside the calibrated range
    assert population_mass_range(settings, cal) == (13.7, 15.0)
    def with_survey(**kw):
        return dataclasses.replace(settings, survey=dataclasses.replace(settings.survey, **kw))

    def prior(lo, hi):
        return PopulationPriorSettings(log10_m_min=lo, log10_m_max=hi)

    assert population_mass_range(with_survey(population_prior=prior(13.0, 14.5)), cal) == (
        13.5, 14.5)
    assert population_mass_range(with_survey(source="catalogue"), cal) == cal
    with pytest.raises(ConfigError, match="empty"):
        population_mass_range(with_survey(population_prior=prior(15.2, None)), cal)


def test_predictions_by_cluster_rows_and_mismatch():
    ids = np.array([2, 5, 9])
    d = predictions_by_cluster(ids, dict(cluster_id=np.array([5, 9]),
                                         log10_m200c_pred=np.array([14.1, 14.9])), "c.h5")
    np.testing.assert_array_equal(d, [np.nan, 14.1, 14.9])
    with pytest.raises(CatalogueError, match="cube ids differ"):
        predictions_by_cluster(ids, dict(cluster_id=np.array([7]),
                                         log10_m200c_pred=np.array([14.0])), "c.h5")


def test_phase_space_windows_cut_sort_and_select(cosmo):
    cl = dict(cluster_id=np.array([3, 8]), ra_deg=np.zeros(2), dec_deg=np.zeros(2),
              z=np.array([0.05, 0.07]), n_mem=np.full(2, -1),
              log10_m_cat=np.full(2, np.nan), log10_m_cat_err=np.full(2, np.nan))
    g = dict(cluster_id=np.array([8, 3, 8, 3, 8, 3]), galaxy_id=np.arange(6),
             x_proj_mpc_h=np.array([0.1, 0.2, 5.0, -0.3, 0.4, 0.0]),
             y_proj_mpc_h=np.zeros(6), v_los_kms=np.array([0.0, 10.0, 0.0, -20.0, 3000.0, 5.0]))
    win = phase_space_windows(g, cl, cosmo, half_width_mpc_h=1.0, v_max_kms=2000.0)
    # rows 2 (x = 5 h^-1 Mpc) and 4 (3000 km/s) fall outside; the rest sorted by cluster
    np.testing.assert_array_equal(win.galaxies["galaxy_id"], [1, 3, 5, 0])
    np.testing.assert_array_equal(win.n_gal, [3, 1])
    assert win.counts == dict(n_clusters=2, n_galaxies_in=6, n_window_pairs=4)
    np.testing.assert_allclose(win.d_a_mpc_h, cosmo.angular_diameter_distance_mpc_h(cl["z"]))
    sel = select_windows(cl, win, 3, half_width_mpc_h=1.0, v_max_kms=2000.0)
    np.testing.assert_array_equal(sel.kept, [True, False])
    np.testing.assert_array_equal(sel.skipped_ids, [8])
    np.testing.assert_array_equal(sel.clusters["skipped"], [0, 1])
    np.testing.assert_array_equal(sel.n_members, [-1, -1])
    assert sel.counts["n_window_galaxies_kept"] == 3 and sel.counts["n_skipped"] == 1


def test_select_windows_counts_members():
    cl = dict(cluster_id=np.array([1, 2]), ra_deg=np.zeros(2), dec_deg=np.zeros(2),
              z=np.full(2, 0.05), n_mem=np.full(2, -1), log10_m_cat=np.full(2, np.nan),
              log10_m_cat_err=np.full(2, np.nan))
    g = dict(cluster_id=np.array([1, 1, 1, 2, 2, 2]),
             is_member=np.array([1, 0, 1, 1, 1, 1], dtype=np.int8))
    win = Windows(g, np.array([3, 3]), np.ones(2), {}, True)
    sel = select_windows(cl, win, 3, half_width_mpc_h=1.0, v_max_kms=2000.0)
    np.testing.assert_array_equal(sel.n_members, [2, 3])


def test_survey_min_galaxies():
    assert survey_min_galaxies(None, 5) == 5
    assert survey_min_galaxies(8, 5) == 8
    assert survey_min_galaxies(None, 2) == 3                  # a 3D KDE needs three


@pytest.mark.parametrize("p_band, p_chi2, verdict", [
    (0.125, 0.34, True), (0.04, 0.34, False), (0.2, 0.01, False), (0.05, 0.05, True),
    (None, 0.3, None), (0.2, float("nan"), None)])
def test_mass_function_consistency_verdict(p_band, p_chi2, verdict):
    null = {"fraction_in_band_with_sample_variance": {"p_value": p_band},
            "fraction_in_band": {"p_value": 0.9}}          # the no-variance count is not used
    out = consistency_verdict(null, {"p_value": p_chi2})
    assert out["consistent_with_tinker"] is verdict
    assert out["band_count_p_value"] == p_band
