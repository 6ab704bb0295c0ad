"""Tests of the mass-function estimator and the population prior (cmpipe.massfunction).

References: scipy.stats.gaussian_kde with weights (the estimator's definition), colossus'
Tinker et al. (2008) mass function (samples drawn from it by inverse CDF with
cmpipe.mock.universe.sample_halo_masses), analytic Gaussian convolutions of an exponential
mass function (Eddington), direct quadrature of prior x likelihood products, and
cmpipe.calibration.summarise. Seeds are fixed.
"""
from __future__ import annotations

import logging

import astropy.units as u
import numpy as np
import pytest
from scipy import integrate, stats

from cmpipe.calibration import JointPDF, summarise, tabulate_joint_pdf
from cmpipe.massfunction import (LN10, eddington_bias, estimate_mass_function, forward_model,
                                 forward_model_calibrated, forward_model_from_masses,
                                 sample_variance_fraction,
                                 kde_bandwidth, kde_mass_function, kde_weights, local_slope,
                                 population_prior_posterior, prior_from_joint_pdf,
                                 summaries_under_priors, summarise_grid_posteriors,
                                 tinker08_dndlog10m, tinker08_survey_average)
from cmpipe.cosmology import tinker08_dndlnm
from cmpipe.mock.universe import UniverseSettings, sample_halo_masses

Z = 0.05


@pytest.fixture(autouse=True)
def _fixed_global_seed():
    state = np.random.get_state()
    np.random.seed(51)
    yield
    np.random.set_state(state)


@pytest.fixture(scope="module")
def tinker_sample(cosmo):
    """True masses > 10^13.7 drawn from Tinker (2008) at z = 0.05 in (400 h^-1 Mpc)^3."""
    settings = UniverseSettings(box_size_mpc_h=400.0, redshift=Z, log10_m_min=13.7,
                                log10_m_max=16.0)
    m = sample_halo_masses(settings, cosmo, np.random.default_rng(8))
    return m, settings.box_size_mpc_h ** 3


def test_tinker_per_dex_is_colossus_times_ln10(cosmo):
    m = np.linspace(13, 15.5, 11)
    np.testing.assert_allclose(tinker08_dndlog10m(m, Z, cosmo),
                               tinker08_dndlnm(m, Z, cosmo) * np.log(10), rtol=1e-12)
    # the survey average against Simpson's rule over the sphere's volume, with z(r) from
    # a table of astropy comoving distances
    mm = np.array([13.5, 14.5])
    avg = tinker08_survey_average(mm, 250.0, cosmo)
    zt = np.linspace(0.0, 0.1, 4001)
    rt = cosmo.astropy.comoving_distance(zt).to_value(u.Mpc) * cosmo.h
    r = np.linspace(0.0, 250.0, 201)
    zr = np.interp(r, rt, zt)
    nr = np.array([tinker08_dndlog10m(mm, zz, cosmo) for zz in zr])      # (201, 2)
    ref = integrate.simpson(3 * r[:, None] ** 2 / 250.0 ** 3 * nr, x=r, axis=0)
    # colossus' interpolation tables make n(M, z) smooth only to ~1e-4 in z: rtol 5e-4
    np.testing.assert_allclose(avg, ref, rtol=5e-4)


def test_estimator_is_weighted_scipy_kde_times_n_over_v():
    rng = np.random.default_rng(0)
    m = rng.normal(14.2, 0.3, 300)
    s = rng.uniform(0.08, 0.25, 300)
    grid = np.linspace(13.0, 15.5, 101)
    vol = 1.3e7
    ref = stats.gaussian_kde(m, weights=1 / s)(grid) * m.size / vol
    np.testing.assert_allclose(kde_mass_function(m, s, vol, grid), ref, rtol=1e-10)
    # normalisation: integrates to N / V whatever the weights; fixed and per-cluster kernels
    wide = np.linspace(11.0, 17.5, 6001)
    for bw in ("scott", 0.05, "posterior"):
        n = kde_mass_function(m, s, vol, wide, bandwidth_dex=bw)
        assert np.isclose(np.trapezoid(n, wide), m.size / vol, rtol=1e-8)
    # weights are 1 / sigma; "posterior" kernels are the sigmas
    np.testing.assert_allclose(kde_weights(s), 1 / s)
    np.testing.assert_allclose(kde_bandwidth(m, 1 / s, "posterior", s), s)


def test_estimator_recovers_tinker_without_errors(cosmo, tinker_sample):
    """Estimates = true masses (uncertainties random, unrelated to mass): the estimate
    follows Tinker smoothed by the kernel (criteria of :func:`_assert_within_band`)."""
    m_true, vol = tinker_sample
    s = np.random.default_rng(9).uniform(0.08, 0.25, m_true.size)
    grid = np.linspace(13.6, 15.2, 81)
    est = estimate_mass_function(m_true, s, vol, grid, n_boot=300, seed=1)
    h = float(est.bandwidth_dex[0])
    assert 0.02 < h < 0.15
    model = forward_model(grid, Z, cosmo, scatter_dex=0.0, kernel_dex=h,
                          log10_m_true_min=13.7)
    _assert_within_band(est, model, vol, h)


def test_estimator_recovers_forward_modelled_tinker_with_errors(cosmo, tinker_sample):
    """Estimates scattered by 0.15 dex about the truth: the estimate follows Tinker
    forward-modelled through the scatter and the kernel (same criteria)."""
    m_true, vol = tinker_sample
    sigma = 0.15
    m_est = m_true + np.random.default_rng(10).normal(0.0, sigma, m_true.size)
    grid = np.linspace(13.6, 15.2, 81)
    est = estimate_mass_function(m_est, np.full(m_est.size, sigma), vol, grid, n_boot=300,
                                 seed=2)
    h = float(est.bandwidth_dex[0])
    model = forward_model(grid, Z, cosmo, scatter_dex=sigma, kernel_dex=h,
                          log10_m_true_min=13.7)
    _assert_within_band(est, model, vol, h)
    # and it is Eddington-boosted above the plain Tinker function at 14.5 (beta ~ -2)
    k = np.argmin(np.abs(grid - 14.5))
    assert est.dn_dlog10m[k] > 1.1 * tinker08_dndlog10m(14.5, Z, cosmo)


def _assert_within_band(est, model, vol, h, m_min=13.7):
    """Where the expected count within +-2h exceeds 50, away from the selection edge
    (m >= m_min + 2h): every point within 4 bootstrap sd (about 40 strongly correlated
    points), and mean chi^2 < 3 over points spaced 2h apart (~12 nearly independent
    ones; expectation 1). A 60-seed Monte Carlo check (not run here) found the bootstrap
    sd within 5% of the true scatter and the mean estimate within 2% of the model."""
    expected = model * vol * 4 * h                   # clusters within +-2h
    use = (expected > 50) & (est.log10_m >= m_min + 2 * h)
    assert use.sum() > 30
    z = (est.dn_dlog10m - model) / est.boot_sd
    assert np.all(np.abs(z[use]) < 4.0), z[use]
    assert np.all(est.lo68[use] < est.dn_dlog10m[use])
    assert np.all(est.hi68[use] > est.dn_dlog10m[use])
    idx = np.flatnonzero(use)
    step = max(1, int(round(2 * h / np.diff(est.log10_m)[0])))
    chi2 = np.mean(z[idx[::step]] ** 2)
    assert chi2 < 3.0, chi2


def test_bootstrap_is_seeded_and_no_bootstrap_gives_nan(tinker_sample):
    m, vol = tinker_sample
    grid = np.linspace(13.8, 14.8, 11)
    a = estimate_mass_function(m, 0.1, vol, grid, n_boot=50, seed=3)
    b = estimate_mass_function(m, 0.1, vol, grid, n_boot=50, seed=3)
    np.testing.assert_array_equal(a.lo68, b.lo68)
    c = estimate_mass_function(m, 0.1, vol, grid, n_boot=0)
    assert np.all(np.isnan(c.boot_sd))
    with pytest.raises(ValueError, match="non-finite mass"):
        estimate_mass_function(np.array([14.0, np.nan]), 0.1, vol, grid)


def test_forward_model_and_eddington_formula_on_exponential_function(cosmo):
    """n = A exp(alpha m): Gaussian errors give exactly n exp(alpha^2 s^2 / 2)."""
    alpha, sigma = -2.0 * LN10, 0.12
    fn = lambda m: 1e-5 * np.exp(alpha * (np.asarray(m) - 14.0))   # noqa: E731
    grid = np.linspace(13.5, 14.5, 5)
    got = forward_model(grid, Z, cosmo, scatter_dex=sigma, dndlog10m=fn,
                        log10_m_true_min=11.0, log10_m_true_max=17.0, step_dex=0.0005)
    np.testing.assert_allclose(got / fn(grid), np.exp(0.5 * alpha ** 2 * sigma ** 2),
                               rtol=1e-6)


def test_eddington_formula_matches_forward_model_on_tinker(cosmo):
    """First-order formula vs exact convolution of Tinker: within 2% for sigma = 0.1 dex
    at 13.8-14.4, where the slope changes slowly."""
    m = np.linspace(13.8, 14.4, 4)
    sigma = 0.1
    exact = forward_model(m, Z, cosmo, scatter_dex=sigma, log10_m_true_min=12.0)
    edd = eddington_bias(m, Z, cosmo, sigma)
    np.testing.assert_allclose(exact / tinker08_dndlog10m(m, Z, cosmo), edd["ratio"],
                               rtol=0.02)
    assert np.all(edd["beta"] < -1) and np.allclose(edd["alpha"], LN10 * edd["beta"])
    np.testing.assert_allclose(edd["mean_true_minus_observed"],
                               LN10 * edd["beta"] * sigma ** 2)


def _gaussian(m, mu, s):
    return np.exp(-0.5 * ((m - mu) / s) ** 2) / (np.sqrt(2 * np.pi) * s)


def test_population_prior_posterior(cosmo):
    grid = np.linspace(13.0, 15.6, 1301)
    mu, sigma = np.array([14.0, 14.3, 14.7]), 0.12
    z = np.array([0.03, 0.05, 0.08])
    # test-set prior: a broad Gaussian, so the flat posterior = prior x likelihood
    prior = _gaussian(grid, 14.3, 0.5)
    like = _gaussian(grid[None, :], mu[:, None], sigma)
    flat = prior * like
    pop = population_prior_posterior(grid, flat, z, cosmo, prior)
    for k in range(mu.size):
        # reference: n(m, z) x likelihood, normalised by quadrature
        f = lambda m: tinker08_dndlog10m(m, z[k], cosmo) * _gaussian(m, mu[k], sigma)  # noqa
        norm = integrate.quad(f, grid[0], grid[-1], points=[mu[k]], limit=200)[0]
        mean = integrate.quad(lambda m: m * f(m), grid[0], grid[-1], points=[mu[k]],
                              limit=200)[0] / norm
        got_mean = np.trapezoid(grid * pop[k], grid)
        assert abs(got_mean - mean) < 1e-4
        # first-order Eddington shift alpha sigma^2 (curvature: within 20%)
        shift = local_slope(mu[k], z[k], cosmo) * sigma ** 2
        assert shift < 0 and abs((got_mean - mu[k]) - shift) < 0.2 * abs(shift)
    # summaries under each prior: the median moves down by about the same shift
    s = summaries_under_priors(grid, flat, z, cosmo, prior)
    w_l, w_p = 1 / sigma ** 2, 1 / 0.5 ** 2                # Gaussian x Gaussian
    np.testing.assert_allclose(s["test_prior"]["median"], (w_l * mu + w_p * 14.3)
                               / (w_l + w_p), atol=2e-4)
    np.testing.assert_allclose(s["test_prior"]["sd"], (w_l + w_p) ** -0.5, rtol=1e-3)
    assert np.all(s["shift_median"] < 0)
    # callable prior and a 1-D posterior give the same
    one = population_prior_posterior(grid, flat[1], z[1], cosmo,
                                     lambda m: _gaussian(m, 14.3, 0.5))
    np.testing.assert_allclose(one, pop[1], rtol=1e-10, atol=1e-12)


def test_population_prior_zero_where_test_prior_vanishes(cosmo, caplog):
    grid = np.linspace(13.0, 15.0, 401)
    prior = np.where(grid < 14.0, 1.0, 0.0)
    flat = _gaussian(grid, 14.0, 0.1)
    with caplog.at_level(logging.WARNING, logger="cmpipe.massfunction"):
        pop = population_prior_posterior(grid, flat, 0.05, cosmo, prior)
    assert np.all(pop[grid >= 14.0] == 0) and np.isclose(np.trapezoid(pop, grid), 1.0)
    assert "test-set prior vanishes" in caplog.text


def test_grid_summaries_match_calibration_and_prior_marginal():
    """A JointPDF built from scipy's 2-D KDE: summaries of its slices equal
    cmpipe.calibration.summarise, and its m-marginal equals the 1-D KDE of the masses
    (the test-set prior) with the same bandwidth factor."""
    rng = np.random.default_rng(12)
    m_true = rng.uniform(13.7, 15.0, 400)
    d = m_true + rng.normal(0, 0.15, m_true.size)
    kde = stats.gaussian_kde(np.vstack([d, m_true]), bw_method=0.2)
    dg = np.linspace(12.5, 16.2, 150)
    mg = np.linspace(12.8, 15.9, 311)
    dd, mm = np.meshgrid(dg, mg, indexing="ij")
    table = kde(np.vstack([dd.ravel(), mm.ravel()])).reshape(dd.shape)
    pdf = JointPDF(d_grid=dg, m_grid=mg, table=table, bandwidth=0.2, n_pairs=d.size,
                   kernel_covariance=kde.covariance)
    prior = prior_from_joint_pdf(pdf)
    ref = stats.gaussian_kde(m_true, bw_method=0.2)(mg)
    inner = (mg > 13.5) & (mg < 15.2)
    np.testing.assert_allclose(prior[inner], ref[inner] / np.trapezoid(ref, mg), rtol=2e-3)
    d_obs = np.array([13.9, 14.4, 14.8])
    rows = np.array([table[np.argmin(np.abs(dg - x))] for x in d_obs])
    d_node = dg[[np.argmin(np.abs(dg - x)) for x in d_obs]]
    ours = summarise_grid_posteriors(mg, rows)
    theirs = summarise(pdf, d_node)
    for key in ("map", "mean", "median", "sd", "lo68", "hi68", "lo95", "hi95"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-9, atol=1e-9)


def test_population_prior_range_truncates_and_renormalises(cosmo, caplog):
    grid = np.linspace(13.0, 15.6, 1301)
    flat = _gaussian(grid, 13.8, 0.2)
    prior = np.ones_like(grid)
    full = population_prior_posterior(grid, flat, 0.05, cosmo, prior)
    with caplog.at_level(logging.INFO, logger="cmpipe.massfunction"):
        cut = population_prior_posterior(grid, flat, 0.05, cosmo, prior,
                                         log10_m_range=(13.7, 15.0))
    inside = (grid >= 13.7) & (grid <= 15.0)
    assert np.all(cut[~inside] == 0) and np.isclose(np.trapezoid(cut, grid), 1.0)
    # inside the range: the untruncated posterior restricted and renormalised
    ref = np.where(inside, full, 0.0)
    np.testing.assert_allclose(cut, ref / np.trapezoid(ref, grid), rtol=1e-10, atol=1e-12)
    # the cut is the configured truncation: logged at INFO, not a warning (issue 30)
    assert "outside the population's mass range" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(ValueError, match="increasing"):
        population_prior_posterior(grid, flat, 0.05, cosmo, prior, log10_m_range=(14, 13))


@pytest.fixture(scope="module")
def gaussian_calibration():
    """A joint PDF of a flat-prior test set (log M uniform in 13.6..15.1, d = M + N(0, 0.15)),
    tabulated by cmpipe.calibration as the pipeline does."""
    rng = np.random.default_rng(21)
    m = rng.uniform(13.6, 15.1, 6000)
    d = m + rng.normal(0.0, 0.15, m.size)
    return tabulate_joint_pdf(d, m, bandwidth=0.2, n_d=400, n_m=500)


def test_population_prior_pulls_are_standard_normal_for_a_tinker_sample(
        cosmo, gaussian_calibration):
    """Clusters drawn from Tinker above 10^13.7 and observed through the test set's
    likelihood: (posterior mean - truth) / posterior sd under the population prior
    truncated at the sample's threshold has mean 0 and sd 1 (the posterior is the right
    one); without the truncation the KDE tail below the test set's masses drags every
    low-mass cluster down."""
    from cmpipe.calibration import posterior_rows

    pdf = gaussian_calibration
    rng = np.random.default_rng(22)
    mt = np.linspace(13.7, 15.0, 2601)
    n = tinker08_dndlog10m(mt, Z, cosmo)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (n[1:] + n[:-1]) * np.diff(mt))])
    m_true = np.interp(rng.random(3000) * cdf[-1], cdf, mt)
    d = m_true + rng.normal(0.0, 0.15, m_true.size)
    flat = posterior_rows(pdf, d)
    prior = prior_from_joint_pdf(pdf)
    pulls = {}
    for name, rng_m in (("truncated", (13.7, 15.0)), ("open", None)):
        s = summaries_under_priors(pdf.m_grid, flat, np.full(d.size, Z), cosmo, prior,
                                   log10_m_range=rng_m)["population_prior"]
        pulls[name] = (s["mean"] - m_true) / s["sd"]
    p = pulls["truncated"]
    # mean within 3 standard errors of 0 (3000 independent clusters); sd within 5%
    assert abs(p.mean()) < 3 / np.sqrt(p.size), p.mean()
    assert abs(p.std() - 1.0) < 0.05, p.std()
    assert pulls["open"].mean() < -0.3


def test_calibrated_forward_model_matches_gaussian_one_for_gaussian_errors(
        cosmo, gaussian_calibration):
    """With a Gaussian likelihood (d = M + N(0, 0.15)) the flat-prior posterior mean is d
    smoothed by the calibration kernel, so the calibrated forward model must equal the
    analytic Gaussian one (cmpipe.massfunction.forward_model, an independent computation)
    with the scatter of the simulated estimates, away from the mass-range edges; its true
    masses follow Tinker."""
    pdf = gaussian_calibration
    grid = np.linspace(13.0, 15.6, 53)
    vol = 400.0 ** 3
    fw = forward_model_calibrated(pdf, grid, cosmo, volume_mpc_h3=vol,
                                  log10_m_true_range=(13.7, 15.0), bandwidth_dex=0.08,
                                  z_clusters=np.array([Z]), z_mass_function=Z,
                                  prior="flat", estimate="mean", scale=10.0, seed=3)
    n_exp = vol * integrate.quad(lambda m: tinker08_dndlog10m(m, Z, cosmo), 13.7, 15.0)[0]
    assert np.isclose(fw["n_expected"], n_exp, rtol=1e-3)
    assert abs(fw["n_simulated"] / (10 * n_exp) - 1) < 1e-3
    # the draws' true masses are Tinker-distributed (KS against the normalised CDF)
    cdf = lambda x: np.array([integrate.quad(  # noqa: E731
        lambda m: tinker08_dndlog10m(m, Z, cosmo), 13.7, xi)[0] for xi in np.atleast_1d(x)])
    ks = stats.kstest(fw["m_true"][:2000], lambda x: cdf(x) * vol / n_exp)
    assert ks.pvalue > 0.01
    resid = fw["m_est"] - fw["m_true"]
    mid = (fw["m_true"] > 13.9) & (fw["m_true"] < 14.6)
    scatter = resid[mid].std()
    ref = forward_model(grid, Z, cosmo, scatter_dex=scatter, kernel_dex=0.08,
                        log10_m_true_min=13.7, log10_m_true_max=15.0)
    inner = (grid >= 14.0) & (grid <= 14.5)
    # Monte Carlo noise at 10x the volume: ~3-6% per 0.05 dex node here; tolerance 10%
    np.testing.assert_allclose(fw["dn_dlog10m"][inner], ref[inner], rtol=0.10)


def test_forward_model_from_masses_agrees_with_tinker_forward_model(cosmo, gaussian_calibration):
    """Masses drawn from Tinker and pushed through the calibration one by one give the
    calibrated forward model (same estimator, normalised to N / V), and integrate to
    N / V."""
    pdf = gaussian_calibration
    grid = np.linspace(13.0, 15.6, 53)
    vol = 400.0 ** 3
    fw = forward_model_calibrated(pdf, grid, cosmo, volume_mpc_h3=vol,
                                  log10_m_true_range=(13.7, 15.0), bandwidth_dex=0.08,
                                  z_clusters=np.array([Z]), z_mass_function=Z,
                                  prior="flat", estimate="median", scale=10.0, seed=4)
    m_true = fw["m_true"]                               # ~10x the volume's clusters
    v_sub = vol * m_true.size / fw["n_expected"]
    got = forward_model_from_masses(pdf, m_true, grid, cosmo, volume_mpc_h3=v_sub,
                                    bandwidth_dex=0.08, z_clusters=Z, repeats=2, seed=5)
    dm = grid[1] - grid[0]
    assert np.trapezoid(got, dx=dm) == pytest.approx(m_true.size / v_sub, rel=0.01)
    inner = (grid >= 13.9) & (grid <= 14.4)
    # the same true masses, new d~ draws: Monte Carlo noise of a few per cent
    np.testing.assert_allclose(got[inner], fw["dn_dlog10m"][inner], rtol=0.05)


def test_sample_variance_is_bias_times_sigma_of_the_survey_sphere(cosmo):
    """b(M) sigma(R_V): sigma from our own quadrature of colossus' linear P(k) with a
    top-hat window, bias from colossus' Tinker (2010)."""
    from colossus.lss import bias

    vol = 1.3e7
    r = (3 * vol / (4 * np.pi)) ** (1 / 3)
    c = cosmo.colossus

    def integrand(lnk):
        k = np.exp(lnk)
        x = k * r
        w = 3 * (np.sin(x) - x * np.cos(x)) / x ** 3
        return k ** 3 * c.matterPowerSpectrum(k, 0.1) * w ** 2 / (2 * np.pi ** 2)

    sigma = np.sqrt(integrate.quad(integrand, np.log(1e-4), np.log(2.0), limit=400)[0])
    m = np.array([13.7, 14.2, 14.8])
    ref = bias.haloBias(10 ** m, model="tinker10", z=0.1, mdef="200c") * sigma
    np.testing.assert_allclose(sample_variance_fraction(m, 0.1, cosmo, vol), ref, rtol=0.01)
    assert 0.02 < sigma < 0.08


def test_window_sigma_of_a_sphere_is_colossus_sigma_r(cosmo):
    """The rms contrast of a top-hat sphere, from the window's lattice sum in a zero-padded
    box, against colossus' sigma(R) (its own k-integral with the top-hat window): agree to
    1.5% (cells of 9.4 h^-1 Mpc, modes beyond the 1200 h^-1 Mpc box missing); the cap of
    the synthetic survey, fully sampled by its cells, has the cap's volume to 0.1%."""
    from cmpipe.massfunction import window_sigma_lin
    from cmpipe.survey.volume import survey_window_weights
    from cmpipe.survey import survey_volume_mpc_h3

    r = 146.0
    w = survey_window_weights(box_size_mpc_h=1200.0, cells=128, observer_mpc_h=[600.0] * 3,
                              radius_mpc_h=r, area_deg2=41252.96, pole_ra_deg=0.0,
                              pole_dec_deg=90.0, periodic=False)
    got = window_sigma_lin(w, 1200.0, 0.1, cosmo)
    np.testing.assert_allclose(got, cosmo.colossus.sigma(r, 0.1), rtol=0.015)
    # periodic: the synthetic survey's cap (250 h^-1 Mpc, 8,250 deg^2) in a 500 box
    cap = survey_window_weights(box_size_mpc_h=500.0, cells=128,
                                observer_mpc_h=[100.0, 200.0, 300.0], radius_mpc_h=250.0,
                                area_deg2=8250.0, pole_ra_deg=185.0, pole_dec_deg=32.0)
    vol = cap.sum() * (500.0 / 128) ** 3
    np.testing.assert_allclose(vol, survey_volume_mpc_h3(250.0, 8250.0), rtol=1e-3)
    s_cap = window_sigma_lin(cap, 500.0, 0.1, cosmo)
    # a cap is less compact than the sphere of its volume and the box has no larger mode
    r_eq = (3 * vol / (4 * np.pi)) ** (1 / 3)
    assert 0.7 * cosmo.colossus.sigma(r_eq, 0.1) < s_cap < cosmo.colossus.sigma(r_eq, 0.1)
    with pytest.raises(ValueError, match="cubic"):
        window_sigma_lin(np.ones((4, 4, 5)), 100.0, 0.1, cosmo)


def test_poisson_bootstrap_band_matches_the_scatter_of_poisson_surveys(cosmo):
    """80 independent Tinker 'surveys' (Poisson counts, true masses, random sigmas): the
    scatter of the estimate between surveys is the band to recover. The Poisson bootstrap's
    mean sd agrees with it within 20% at every mass checked; the classical N-fixed
    bootstrap under-estimates it where most clusters are (13.8, a ~60% share: by
    sqrt(1 - p) ~ 0.6), and both agree at 14.6 where the share is small."""
    grid = np.array([13.8, 14.2, 14.6])
    settings = UniverseSettings(box_size_mpc_h=300.0, redshift=Z, log10_m_min=13.7,
                                log10_m_max=16.0)
    vol = settings.box_size_mpc_h ** 3
    est, sd_p, sd_m = [], [], []
    rng = np.random.default_rng(77)
    for i in range(150):
        m = sample_halo_masses(settings, cosmo, rng)
        s = rng.uniform(0.1, 0.2, m.size)
        a = estimate_mass_function(m, s, vol, grid, bandwidth_dex=0.08, n_boot=200,
                                   seed=i, bootstrap="poisson")
        b = estimate_mass_function(m, s, vol, grid, bandwidth_dex=0.08, n_boot=200,
                                   seed=i, bootstrap="multinomial")
        est.append(a.dn_dlog10m)
        sd_p.append(a.boot_sd)
        sd_m.append(b.boot_sd)
    true_sd = np.std(est, axis=0, ddof=1)
    ratio_p = np.mean(sd_p, axis=0) / true_sd
    ratio_m = np.mean(sd_m, axis=0) / true_sd
    print("bootstrap sd / scatter between surveys, poisson:", ratio_p, "multinomial:", ratio_m)
    # 150 surveys: the sd of the sd is ~6%, so 3 of those (measured 0.92 / 0.95 / 1.13)
    np.testing.assert_allclose(ratio_p, 1.0, atol=0.2)
    assert ratio_m[0] < 0.75, ratio_m                   # measured 0.63
    assert abs(ratio_m[2] - ratio_p[2]) < 0.1, (ratio_m, ratio_p)
    with pytest.raises(ValueError, match="bootstrap"):
        estimate_mass_function(m, s, vol, grid, bootstrap="jackknife")


def test_likelihood_pit_is_the_conditional_cdf_of_the_joint_kde(gaussian_calibration):
    """u = P(d' <= d | M) from the tabulated joint PDF against the same conditional CDF
    integrated from scipy's gaussian_kde of the test pairs (the table's definition, plain
    KDE); uniform for pairs resampled from that KDE, high for predictions biased high."""
    rng = np.random.default_rng(21)                      # the fixture's test pairs
    m = rng.uniform(13.6, 15.1, 6000)
    d = m + rng.normal(0.0, 0.15, m.size)
    kde = stats.gaussian_kde(np.vstack([d, m]), bw_method=0.2)
    pdf = gaussian_calibration
    from cmpipe.massfunction import likelihood_pit

    mm = pdf.m_grid[[100, 250, 400]]                     # on mass nodes
    for mj in mm:
        x = np.linspace(pdf.d_grid[0], pdf.d_grid[-1], 4001)
        col = kde(np.vstack([x, np.full(x.size, mj)]))
        cdf = integrate.cumulative_trapezoid(col, x, initial=0.0)
        cdf /= cdf[-1]
        dd = mj + np.array([-0.3, -0.1, 0.0, 0.12, 0.25])
        np.testing.assert_allclose(likelihood_pit(pdf, dd, np.full(dd.size, mj)),
                                   np.interp(dd, x, cdf), atol=2e-3)
    sample = kde.resample(4000, seed=5)
    inner = (sample[1] > 13.8) & (sample[1] < 14.9)      # away from the table's mass edges
    u = likelihood_pit(pdf, sample[0][inner], sample[1][inner])
    assert stats.kstest(u, "uniform").pvalue > 0.01
    u_high = likelihood_pit(pdf, sample[0][inner] + 0.1, sample[1][inner])
    assert u_high.mean() > 0.65
    assert np.isnan(likelihood_pit(pdf, [np.nan], [14.0])).all()


def test_band_chi2_is_chi2_distributed_for_surveys_of_the_model(cosmo):
    """100 Poisson surveys of Tinker (true masses, random weights): the chi^2 of the
    estimate against its exact expectation (forward_model, the kernel only), with the
    Poisson bootstrap covariance of nodes two kernels apart, has mean ~ dof (within 25%)
    and rejects at p < 0.05 in at most 12% of the surveys (nominal 5%)."""
    from cmpipe.massfunction import band_chi2

    h = 0.08
    grid = np.arange(13.6, 15.0001, 0.02)
    settings = UniverseSettings(box_size_mpc_h=300.0, redshift=Z, log10_m_min=13.7,
                                log10_m_max=16.0)
    vol = settings.box_size_mpc_h ** 3
    model = forward_model(grid, Z, cosmo, kernel_dex=h, log10_m_true_min=13.7)
    compared = (grid >= 13.85) & (grid <= 14.6)
    rng = np.random.default_rng(31)
    chi2, pv = [], []
    for i in range(100):
        m = sample_halo_masses(settings, cosmo, rng)
        est = estimate_mass_function(m, rng.uniform(0.1, 0.2, m.size), vol, grid,
                                     bandwidth_dex=h, n_boot=300, seed=i, return_draws=True)
        r = band_chi2(est, model, np.zeros(grid.size), compared, h, forward_scale=1e12)
        chi2.append(r["chi2"] / r["dof"])
        pv.append(r["p_value"])
    assert r["dof"] == 5 and r["node_step"] == 8
    print("chi2/dof mean", np.mean(chi2), "fraction p < 0.05", np.mean(np.array(pv) < 0.05))
    assert 0.75 < np.mean(chi2) < 1.25
    assert np.mean(np.array(pv) < 0.05) <= 0.12
    est0 = estimate_mass_function(m, 0.1, vol, grid, bandwidth_dex=h, n_boot=50)
    assert band_chi2(est0, model, np.zeros(grid.size), compared, h, 20.0) is None
