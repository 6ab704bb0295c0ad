"""Tests of cmpipe.calibration: the tabulated joint PDF and the posterior slices.

References
----------
* the table: :class:`scipy.stats.gaussian_kde` (``bw_method`` = bandwidth) evaluated at the
  same nodes; tolerance 1e-6 of the reference maximum (we truncate kernels at a Mahalanobis
  radius of 7.5, a relative error below ~1e-8 here, plus rounding);
* the slices: the closed-form moments of the exact KDE conditional (a Gaussian mixture) and,
  for Gaussian pairs, the analytic conditional of the *smoothed* Gaussian.

Why "smoothed": the KDE of a sample of N(mu, S) tends (large N) to N(mu, S) convolved with the
kernel covariance ``H = h^2 S``, i.e. N(mu, (1 + h^2) S). Its conditional of log M given d~
has the same mean ``mu_m + rho (s_m / s_d)(d - mu_d)`` and standard deviation
``sqrt(1 + h^2) sqrt(1 - rho^2) s_m`` (2% wider than the true conditional for h = 0.2).
"""
import math

import numba
import numpy as np
import pytest
from scipy.stats import gaussian_kde, kstest, norm

from cmpipe.calibration import (DEFAULT_BANDWIDTH, QUANTILE_LEVELS, JointPDF,
                                is_extrapolated, kernel_covariance, posterior,
                                posterior_cdf_at, summarise, tabulate_joint_pdf)

H0 = DEFAULT_BANDWIDTH
MU = np.array([14.45, 14.50])          # (d~, log M), log10 h^-1 Msun
SD = np.array([0.35, 0.40])            # dex
RHO = 0.8


@pytest.fixture
def rng():
    return np.random.default_rng(20200907)


def _gaussian_pairs(rng, n, mu=MU, sd=SD, rho=RHO):
    cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    x = rng.multivariate_normal(mu, cov, size=n)
    return x[:, 0], x[:, 1]


def _lattice_pairs(n_d=100, n_e=200, mu=MU, sd=SD, rho=RHO):
    """A deterministic 'sample' of the bivariate normal without sampling noise.

    Every one of ``n_d`` prediction levels (normal quantiles) carries the same ``n_e``
    residuals (normal quantiles), both standardised to exact zero mean and unit variance:
    ``m = mu_m + beta (d - mu_d) + e``. The sample covariance is then exactly the target one,
    so the KDE conditional at *any* d~ is the mixture of the ``n_e`` kernels
    ``N(mu_m + beta (d - mu_d) + e_k, s^2)``, ``s^2 = h^2 var(e) N / (N - 1)``: mean
    ``mu_m + beta (d - mu_d)`` and variance ``var(e) (1 + h^2 N / (N - 1))``, i.e. the
    smoothed-Gaussian conditional up to 1e-5.
    """
    def std_quantiles(n):
        q = norm.ppf((np.arange(n) + 0.5) / n)
        q -= q.mean()
        return q / q.std()
    beta = rho * sd[1] / sd[0]
    sd_e = sd[1] * math.sqrt(1.0 - rho ** 2)
    d = mu[0] + sd[0] * std_quantiles(n_d)
    e = sd_e * std_quantiles(n_e)
    dd, ee = np.meshgrid(d, e, indexing="ij")
    return dd.ravel(), (mu[1] + beta * (dd - mu[0]) + ee).ravel(), beta, sd_e


def _smoothed_conditional(d, mean, cov, h=H0):
    """Mean and sd of log M given d~ for N(mean, (1 + h^2) cov)."""
    c = (1.0 + h * h) * cov
    return (mean[1] + c[0, 1] / c[0, 0] * (d - mean[0]),
            math.sqrt(c[1, 1] - c[0, 1] ** 2 / c[0, 0]))


def _mixture_moments(d_obs, d, m, h=H0):
    """Exact mean and sd of the KDE conditional at d_obs (no grid): Gaussian mixture."""
    H = kernel_covariance(d, m, h)
    beta = H[0, 1] / H[0, 0]
    s2 = H[1, 1] - H[0, 1] ** 2 / H[0, 0]
    w = np.exp(-0.5 * (d_obs - d) ** 2 / H[0, 0])
    mu = m + beta * (d_obs - d)
    mean = np.sum(w * mu) / w.sum()
    var = s2 + np.sum(w * (mu - mean) ** 2) / w.sum()
    n_eff = w.sum() ** 2 / np.sum(w * w)
    return mean, math.sqrt(var), n_eff


# --------------------------------------------------------------------------------- table

@pytest.mark.parametrize("case", ["realistic", "anticorrelated", "cut_by_grid",
                                  "under_resolved"])
def test_table_equals_scipy_gaussian_kde(rng, case):
    n = 2000
    m = rng.uniform(13.7, 15.2, n)
    d = 0.7 * m + 0.3 * 14.45 + rng.normal(0.0, 0.15, n)
    kw = dict(n_d=120, n_m=100)
    if case == "anticorrelated":
        d = 29.0 - d
    elif case == "cut_by_grid":            # grid narrower than the data: kernels cut off
        kw.update(d_range=(14.0, 14.9), m_range=(13.9, 15.0))
    elif case == "under_resolved":         # near-degenerate pairs: kernel < grid step
        d = m + rng.normal(0.0, 0.01, n)
    pdf = tabulate_joint_pdf(d, m, bandwidth=0.2, **kw)
    D, M = np.meshgrid(pdf.d_grid, pdf.m_grid, indexing="ij")
    ref = gaussian_kde(np.stack([d, m]), bw_method=0.2)(
        np.stack([D.ravel(), M.ravel()])).reshape(D.shape)
    err = np.max(np.abs(pdf.table - ref))
    assert pdf.table.shape == (120, 100)
    assert err <= 1e-6 * ref.max(), f"max |diff| {err:.3g} vs max {ref.max():.3g}"
    np.testing.assert_allclose(pdf.kernel_covariance, 0.04 * np.cov(np.stack([d, m])),
                               rtol=1e-12)
    assert pdf.n_pairs == n and pdf.bandwidth == 0.2


def test_default_grid_extents_and_no_mass_lost_along_m(rng):
    """Default extents: d~ range + 2 kernel sds, log M range + 7.5 kernel sds; each row then
    integrates over log M to the exact 1-D marginal KDE of d~ (no kernel mass off the m axis),
    mean_i N(d_j; d_i, H_dd), to 1e-6 relative (trapezoid on a Gaussian, truncation)."""
    d, m = _gaussian_pairs(rng, 3000)
    pdf = tabulate_joint_pdf(d, m, n_d=200, n_m=400)
    sd_k = np.sqrt(np.diag(pdf.kernel_covariance))
    assert pdf.d_grid[0] == pytest.approx(d.min() - 2.0 * sd_k[0])
    assert pdf.d_grid[-1] == pytest.approx(d.max() + 2.0 * sd_k[0])
    assert pdf.m_grid[0] == pytest.approx(m.min() - 7.5 * sd_k[1])
    assert pdf.m_grid[-1] == pytest.approx(m.max() + 7.5 * sd_k[1])
    marginal = norm.pdf(pdf.d_grid[:, None], d[None, :], sd_k[0]).mean(axis=1)
    np.testing.assert_allclose(np.trapezoid(pdf.table, pdf.m_grid, axis=1), marginal,
                               rtol=1e-6)
    assert np.all(pdf.table[[0, -1]].sum(axis=1) > 0)     # edge rows carry density


def test_table_independent_of_thread_count(rng):
    """Rows are computed independently, each summing its pairs in one fixed order."""
    d, m = _gaussian_pairs(rng, 1500)
    n0 = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = tabulate_joint_pdf(d, m, n_d=90, n_m=70).table
    finally:
        numba.set_num_threads(n0)
    np.testing.assert_array_equal(tabulate_joint_pdf(d, m, n_d=90, n_m=70).table, one)


def test_bad_inputs_raise():
    d = np.array([14.0, 14.5, 15.0, 14.2])
    with pytest.raises(ValueError, match="same test-set clusters"):
        tabulate_joint_pdf(d, d[:3])
    with pytest.raises(ValueError, match="non-finite"):
        tabulate_joint_pdf(np.r_[d[:3], np.nan], d)
    with pytest.raises(ValueError, match="singular covariance"):
        tabulate_joint_pdf(np.full(4, 14.3), d)
    with pytest.raises(ValueError, match="at least 3"):
        tabulate_joint_pdf(d[:2], d[:2])
    with pytest.raises(ValueError, match="bandwidth"):
        tabulate_joint_pdf(d, d[::-1], bandwidth=0.0)


# ------------------------------------------------------------------------- Gaussian case

@pytest.fixture(scope="module")
def lattice_pdf():
    d, m, beta, sd_e = _lattice_pairs()
    return tabulate_joint_pdf(d, m, n_d=500, n_m=800), beta, sd_e


@pytest.mark.parametrize("z", [-1.5, 0.0, 0.37, 1.0])
def test_posterior_equals_analytic_conditional_noise_free(lattice_pdf, z):
    """Lattice sample (no sampling noise): posterior mean and sd equal the smoothed-Gaussian
    conditional within 1% of the conditional sd (in practice ~1e-4: grid and trapezoid)."""
    pdf, beta, sd_e = lattice_pdf
    d_obs = MU[0] + z * SD[0]
    mean_ref = MU[1] + beta * (d_obs - MU[0])
    sd_ref = math.sqrt(1.0 + H0 ** 2) * math.sqrt(1.0 - RHO ** 2) * SD[1]
    assert sd_ref == pytest.approx(sd_e * math.sqrt(1 + H0 ** 2), rel=1e-12)
    s = summarise(pdf, [d_obs])
    assert abs(s["mean"][0] - mean_ref) < 0.01 * sd_ref
    assert s["sd"][0] == pytest.approx(sd_ref, rel=0.01)
    # the mixture of 200 residual quantiles smoothed by s = 0.2 sd is Gaussian to ~1e-3, so
    # quantiles and the peak sit where a Gaussian's do (1% of the sd)
    for key, q in QUANTILE_LEVELS.items():
        assert s[key][0] == pytest.approx(mean_ref + norm.ppf(q) * sd_ref,
                                          abs=0.01 * sd_ref), key
    assert s["map"][0] == pytest.approx(mean_ref, abs=0.01 * sd_ref)
    assert not s["extrapolated"][0]
    # the posterior density itself is that Gaussian to 1% of its peak
    mg, p = posterior(pdf, d_obs)
    ref = norm.pdf(mg, mean_ref, sd_ref)
    assert np.max(np.abs(p - ref)) < 0.01 * ref.max()
    assert np.trapezoid(p, mg) == pytest.approx(1.0, rel=1e-12)


@pytest.fixture(scope="module")
def iid_sample():
    rng = np.random.default_rng(777)
    d, m = _gaussian_pairs(rng, 20000)
    return d, m, tabulate_joint_pdf(d, m, n_d=600, n_m=600)


@pytest.mark.parametrize("z", [-1.0, 0.0, 0.5, 1.0])
def test_posterior_of_iid_gaussian_sample(iid_sample, z):
    """2e4 pairs drawn from the bivariate normal.

    (a) Slicing is exact: the tabulated posterior's mean and sd equal the closed-form moments
    of the KDE conditional at d_obs (a Gaussian mixture over all pairs) to 1e-3 of the sd
    (row interpolation and trapezoid rules).
    (b) The KDE conditional equals the analytic smoothed-Gaussian conditional (reference built
    from the sample mean and covariance) within its sampling noise: the mean has noise
    sd_c / sqrt(N_eff) and the sd relative noise ~ 1 / sqrt(2 N_eff), with N_eff = (sum w)^2 /
    sum w^2 of the kernel weights at d_obs (~5600 at the centre: ~1.3% and ~0.9%). Tolerance:
    4 times that noise (so "1%" holds only on average; the noise-free lattice test above
    checks 1%).
    """
    d, m, pdf = iid_sample
    mean = np.array([d.mean(), m.mean()])
    cov = np.cov(np.stack([d, m]))
    d_obs = mean[0] + z * math.sqrt(cov[0, 0])
    s = summarise(pdf, d_obs)
    mix_mean, mix_sd, n_eff = _mixture_moments(d_obs, d, m)
    assert abs(s["mean"][0] - mix_mean) < 1e-3 * mix_sd
    assert s["sd"][0] == pytest.approx(mix_sd, rel=1e-3)
    ref_mean, ref_sd = _smoothed_conditional(d_obs, mean, cov)
    assert ref_sd == pytest.approx(math.sqrt(1 + H0 ** 2) * math.sqrt(
        1 - (cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]))) * math.sqrt(cov[1, 1]), rel=1e-12)
    assert abs(s["mean"][0] - ref_mean) < 4.0 * ref_sd / math.sqrt(n_eff)
    assert s["sd"][0] == pytest.approx(ref_sd, rel=4.0 / math.sqrt(2.0 * n_eff))


def test_calibrated_end_to_end_coverage_and_pit(iid_sample):
    """Posteriors from the test-set table are calibrated on an independent draw of 5000
    clusters: 68% and 95% coverage within a 3-sigma binomial band and PIT uniform (KS p >
    0.01). (The KDE widens posteriors by sqrt(1 + h^2) = 1.02: the 68% interval covers 69.2%
    in expectation, 1.4 binomial sigma above nominal at n = 5000.)"""
    _, _, pdf = iid_sample
    d, m = _gaussian_pairs(np.random.default_rng(4242), 5000)
    s = summarise(pdf, d)
    for lo, hi, nominal in (("lo68", "hi68", math.erf(1 / math.sqrt(2))),
                            ("lo95", "hi95", 0.95)):
        frac = np.mean((m >= s[lo]) & (m <= s[hi]))
        band = 3.0 * math.sqrt(nominal * (1 - nominal) / m.size)
        assert abs(frac - nominal) < band, (lo, frac)
    pit = posterior_cdf_at(pdf, d, m)
    assert kstest(pit, "uniform").pvalue > 0.01


# ----------------------------------------------------------------- slicing conventions

def test_row_interpolation_and_extrapolation(rng):
    d, m = _gaussian_pairs(rng, 2000)
    pdf = tabulate_joint_pdf(d, m, n_d=80, n_m=90)
    j, f = 37, 0.3
    d_obs = pdf.d_grid[j] + f * pdf.d_step
    row = (1 - f) * pdf.table[j] + f * pdf.table[j + 1]
    mg, p, flag = posterior(pdf, d_obs, with_flag=True)
    np.testing.assert_allclose(p, row / np.trapezoid(row, mg), rtol=1e-10)
    assert not flag
    # outside the tabulated range: the edge row, flagged
    for d_out, edge in ((pdf.d_grid[0] - 1.0, 0), (pdf.d_grid[-1] + 0.2, -1)):
        _, p_out, flag = posterior(pdf, d_out, with_flag=True)
        np.testing.assert_allclose(p_out, pdf.table[edge] / np.trapezoid(pdf.table[edge], mg),
                                   rtol=1e-10)
        assert flag
    s = summarise(pdf, [pdf.d_grid[0] - 1.0, d_obs, pdf.d_grid[-1] + 0.2])
    np.testing.assert_array_equal(s["extrapolated"], [True, False, True])
    np.testing.assert_array_equal(is_extrapolated(pdf, pdf.d_grid[[0, -1]]), [False, False])
    # vectorised summaries equal one-at-a-time ones
    one = summarise(pdf, d_obs)
    for k in one:
        assert s[k][1] == one[k][0]


def test_summaries_on_a_hand_made_table():
    """A table whose every row is a triangle on [0, 2] peaking at 1 (m grid step 0.5):
    trapezoid-normalised density 1 - |m - 1|, CDF at the nodes (0, 0.125, 0.5, 0.875, 1);
    the linear-interpolated quantiles follow from it by hand."""
    m_grid = np.linspace(0.0, 2.0, 5)
    tri = np.array([0.0, 0.5, 1.0, 0.5, 0.0])
    pdf = JointPDF(d_grid=np.array([0.0, 1.0]), m_grid=m_grid, table=np.stack([tri, 2 * tri]),
                   bandwidth=0.2, n_pairs=10, kernel_covariance=np.eye(2))
    s = summarise(pdf, [0.5])
    assert s["map"][0] == pytest.approx(1.0)
    assert s["mean"][0] == pytest.approx(1.0)
    assert s["median"][0] == pytest.approx(1.0)
    # variance by trapezoid of (m - 1)^2 p on the nodes: 0.5 * (0.25 * 0.5 * 2) = 0.125
    assert s["sd"][0] == pytest.approx(math.sqrt(0.125))
    q = QUANTILE_LEVELS["lo68"]                     # 0.1587 in (0.125, 0.5] -> node 1..2
    assert s["lo68"][0] == pytest.approx(0.5 + (q - 0.125) / 0.375 * 0.5)
    assert s["lo95"][0] == pytest.approx(0.0 + 0.025 / 0.125 * 0.5)
    assert s["hi95"][0] == pytest.approx(1.5 + (0.975 - 0.875) / 0.125 * 0.5)
    assert posterior_cdf_at(pdf, 0.5, 0.75) == pytest.approx(0.5 * (0.125 + 0.5))
    assert posterior_cdf_at(pdf, 0.5, -3.0) == 0.0
    assert posterior_cdf_at(pdf, 0.5, 9.0) == 1.0
    assert isinstance(posterior_cdf_at(pdf, 0.5, 1.0), float)


def test_vanishing_row_gives_nan():
    m_grid = np.linspace(0.0, 1.0, 4)
    table = np.zeros((3, 4))
    table[0] = [0.0, 1.0, 1.0, 0.0]
    pdf = JointPDF(d_grid=np.array([0.0, 1.0, 2.0]), m_grid=m_grid, table=table,
                   bandwidth=0.2, n_pairs=3, kernel_covariance=np.eye(2))
    s = summarise(pdf, [0.0, 2.0])
    assert np.isfinite(s["mean"][0]) and np.isnan(s["mean"][1])
    assert np.all(np.isnan(posterior(pdf, 2.0)[1]))


def test_pit_matches_gaussian_cdf(lattice_pdf):
    pdf, beta, sd_e = lattice_pdf
    sd_ref = math.sqrt(1 + H0 ** 2) * sd_e
    d_obs = np.full(5, 14.3)
    mean_ref = MU[1] + beta * (14.3 - MU[0])
    m_true = mean_ref + sd_ref * np.array([-2.0, -1.0, 0.0, 0.5, 1.7])
    np.testing.assert_allclose(posterior_cdf_at(pdf, d_obs, m_true),
                               norm.cdf([-2.0, -1.0, 0.0, 0.5, 1.7]), atol=3e-3)


def test_save_load_roundtrip(tmp_path, rng):
    d, m = _gaussian_pairs(rng, 500)
    pdf = tabulate_joint_pdf(d, m, n_d=50, n_m=60, meta=dict(network="cnn3d", seed=3))
    path = tmp_path / "sub" / "joint_pdf.h5"
    pdf.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["joint_pdf.h5"]  # no temp left
    back = JointPDF.load(path)
    for k in ("d_grid", "m_grid", "table", "kernel_covariance"):
        np.testing.assert_array_equal(getattr(back, k), getattr(pdf, k))
    assert (back.bandwidth, back.n_pairs, back.truncation) == (
        pdf.bandwidth, pdf.n_pairs, pdf.truncation)
    assert back.meta == pdf.meta                       # the caller's and the tabulation's
    assert back.meta["network"] == "cnn3d" and back.meta["seed"] == 3
    assert back.calibrated_mass_range == (m.min(), m.max())
    np.testing.assert_array_equal(summarise(back, d[:20])["median"],
                                  summarise(pdf, d[:20])["median"])
    with pytest.raises(FileNotFoundError):
        JointPDF.load(tmp_path / "missing.h5")


def test_file_format_is_plain_arrays(tmp_path, rng):
    """The file format lives in cmpipe.io.joint_pdf, which knows arrays and values only:
    what it reads back builds the same JointPDF and writes back to the same fields."""
    from cmpipe.io.joint_pdf import JOINT_PDF_GROUP, read_joint_pdf, write_joint_pdf

    d, m = _gaussian_pairs(rng, 300)
    pdf = tabulate_joint_pdf(d, m, n_d=40, n_m=30, meta=dict(network="cnn3d"))
    pdf.save(tmp_path / "a.h5")
    fields = read_joint_pdf(tmp_path / "a.h5")
    assert set(fields) == {"d_grid", "m_grid", "table", "kernel_covariance", "bandwidth",
                           "n_pairs", "truncation", "meta"}
    np.testing.assert_array_equal(JointPDF(**fields).table, pdf.table)
    write_joint_pdf(tmp_path / "b.h5", **fields)
    again = read_joint_pdf(tmp_path / "b.h5")
    for k, v in fields.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(again[k], v)
        else:
            assert again[k] == v
    assert JOINT_PDF_GROUP == "joint_pdf"


def test_cross_validated_pit_is_uniform_for_gaussian_pairs():
    """Pairs d = M + N(0, 0.2) with M flat: the out-of-sample PIT values (each halo fold
    calibrated on the others) are uniform (KS), and the 68%/95% coverages sit within three
    binomial standard errors of nominal plus the KDE's smoothing (the bandwidth-0.2 kernel
    widens the conditional by ~2%: at most +0.01 in coverage)."""
    from cmpipe.calibration import cross_validated_pit

    rng = np.random.default_rng(17)
    n_halo, per = 600, 3
    m = np.repeat(rng.uniform(13.7, 15.0, n_halo), per)
    d = m + rng.normal(0.0, 0.2, m.size)
    groups = np.repeat(np.arange(n_halo) * 7 + 3, per)
    pit = cross_validated_pit(d, m, groups, n_folds=5, seed=2, n_d=300, n_m=300)
    assert np.all(np.isfinite(pit))
    # edges of the flat prior: posteriors there are truncated, still calibrated
    assert kstest(pit, "uniform").pvalue > 0.01
    for half, nominal in ((0.5 * 0.6826895, 0.6826895), (0.475, 0.95)):
        cov = np.mean(np.abs(pit - 0.5) < half)
        se = math.sqrt(nominal * (1 - nominal) / n_halo)   # sightlines share a halo
        assert -3 * se < cov - nominal < 3 * se + 0.01, (nominal, cov)
    with pytest.raises(ValueError, match="folds"):
        cross_validated_pit(d[:6], m[:6], groups[:6], n_folds=5)


def test_evaluation_leaves_out_a_cluster_in_a_gap_of_the_test_set():
    """An eval prediction where the joint PDF vanishes (a gap between test-set masses wider
    than the truncated kernels) gets NaN summaries, is counted out of every metric with a
    warning, and does not stop the evaluation."""
    from cmpipe.evaluation.eval_set import BASELINES, evaluate

    rng = np.random.default_rng(8)
    m = np.concatenate([rng.uniform(13.7, 14.0, 300), rng.uniform(14.8, 15.1, 300)])
    d = m + rng.normal(0, 0.02, m.size)
    pdf = tabulate_joint_pdf(d, m, bandwidth=0.05, n_d=400, n_m=400)
    m_e = np.array([13.8, 13.9, 14.4, 14.9, 15.0])
    d_e = m_e + np.array([0.01, -0.01, 0.0, 0.01, -0.01])     # 14.4: in the gap
    ids = np.arange(5)
    ev = dict(cluster_id=ids, log10_m200c_true=m_e, log10_m200c_pred=d_e,
              n_members=np.array([20, 40, 60, 80, 100]), n_gal=np.full(5, 120))
    te = dict(cluster_id=np.arange(600), log10_m200c_true=m, log10_m200c_pred=d,
              n_members=rng.integers(10, 200, 600), n_gal=np.full(600, 220))
    cl = dict(cluster_id=ids, interloper_mass_ratio=np.zeros(5),
              interloper_distance=np.full(5, np.nan))
    base = lambda t: {c: t + 0.1 + rng.normal(0, 0.2, t.size)  # noqa: E731
                      for c in BASELINES.values()}
    metrics, post, _ = evaluate(pdf=pdf, test_pred=te, eval_pred=ev, eval_clusters=cl,
                                test_baselines=base(m), eval_baselines=base(m_e))
    assert metrics["n_eval"] == 4
    assert np.isnan(post["point"][2]) and np.all(np.isfinite(np.delete(post["point"], 2)))
    assert abs(metrics["mean_residual_dex"]) < 0.05


def test_shrunk_kde_keeps_the_pairs_covariance_and_posterior_width():
    """shrink=True: the tabulated density's covariance equals the pairs' (numerical moments
    of the table), where the plain KDE's is (1 + h^2) times it; for Gaussian pairs the
    posterior sd at the centre is the analytic conditional sd within 1% (plain: ~2% wider)."""
    rng = np.random.default_rng(31)
    cov = np.array([[0.16, 0.14], [0.14, 0.16]])
    d, m = rng.multivariate_normal([14.3, 14.3], cov, 20000).T
    data_cov = np.cov(np.stack([d, m]))
    h = 0.2
    moments = {}
    for shrink in (False, True):
        pdf = tabulate_joint_pdf(d, m, bandwidth=h, n_d=500, n_m=500, shrink=shrink)
        dd, mm = np.meshgrid(pdf.d_grid, pdf.m_grid, indexing="ij")
        w = pdf.table / pdf.table.sum()
        md, mmu = (w * dd).sum(), (w * mm).sum()
        moments[shrink] = np.array([[(w * (dd - md) ** 2).sum(), (w * (dd - md) * (mm - mmu)).sum()],
                                    [(w * (dd - md) * (mm - mmu)).sum(), (w * (mm - mmu) ** 2).sum()]])
        sd = summarise(pdf, float(d.mean()))["sd"]
        cond = math.sqrt(data_cov[1, 1] - data_cov[0, 1] ** 2 / data_cov[0, 0])
        if shrink:
            assert abs(sd / cond - 1) < 0.01, sd / cond
            assert pdf.calibrated_mass_range == (pytest.approx(m.min()), pytest.approx(m.max()))
        else:
            assert abs(sd / (cond * math.sqrt(1 + h * h)) - 1) < 0.01, sd / cond
    np.testing.assert_allclose(moments[True], data_cov, rtol=0.01)
    np.testing.assert_allclose(moments[False], (1 + h * h) * data_cov, rtol=0.01)
