"""Tests of cmpipe.evaluation.metrics against hand computations and synthetic calibrated posteriors."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from cmpipe.evaluation.eval_set import by_observer_distance
from cmpipe.io.tables import write_json
from cmpipe.evaluation.metrics import (DEFAULT_MASS_BINS, NOMINAL_68, NOMINAL_95, binned_scatter,
                                       coverage, evaluation_report, fit_precision_model,
                                       interloper_diagnostic, interval_coverage, pit_curve,
                                       precision_model_sigma, residuals, scatter_stats)


@pytest.fixture
def rng():
    return np.random.default_rng(31415)


def _calibrated(rng, n=5000):
    """Perfectly calibrated Gaussian posteriors N(mu, sd^2) under a flat prior: truths
    uniform, the 'measurement' mu = truth + sd z. Then intervals mu +- k sd cover the truth
    iff |z| < k whatever the truth, so coverage is nominal also per bin of *true* mass (with
    an informative prior it would be nominal only overall and per bin of the prediction)."""
    truth = rng.uniform(13.7, 15.3, n)
    sd = rng.uniform(0.08, 0.3, n)
    mu = truth + sd * rng.standard_normal(n)
    z1 = norm.ppf(0.5 * (1 + NOMINAL_68))          # = 1
    z2 = norm.ppf(0.5 * (1 + NOMINAL_95))          # = 1.95996
    summ = dict(map=mu, median=mu, mean=mu, lo68=mu - z1 * sd, hi68=mu + z1 * sd,
                lo95=mu - z2 * sd, hi95=mu + z2 * sd)
    return truth, summ, norm.cdf((truth - mu) / sd)


# ---------------------------------------------------------------------- residuals, scatter

def test_residual_sign_and_hand_scatter():
    eps = residuals([14.0, 14.5, 15.0, 13.9], [13.9, 14.6, 14.8, 13.9])
    np.testing.assert_allclose(eps, [0.1, -0.1, 0.2, 0.0], atol=1e-12)
    s = scatter_stats(eps)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(0.05)
    # deviations (0.05, -0.15, 0.15, -0.05): sum of squares 0.05, / 3
    assert s["std"] == pytest.approx(math.sqrt(0.05 / 3))
    assert s["mean_err"] == pytest.approx(math.sqrt(0.05 / 3) / 2)
    assert s["median"] == pytest.approx(0.05)
    # sorted (-0.1, 0, 0.1, 0.2); linear-interpolated quantiles at 0.15866 and 0.84134:
    # positions 3 q = 0.47597 and 2.52403 -> -0.1 + 0.047597 and 0.1 + 0.052403
    q = 0.5 * math.erfc(1 / math.sqrt(2))
    lo, hi = -0.1 + 3 * q * 0.1, 0.1 + (3 * (1 - q) - 2) * 0.1
    assert s["half_width_68"] == pytest.approx(0.5 * (hi - lo))
    assert np.isnan(scatter_stats([])["mean"]) and np.isnan(scatter_stats([1.0])["std"])


def test_half_width_is_sigma_for_gaussian(rng):
    s = scatter_stats(rng.normal(0.04, 0.16, 200000))
    assert s["half_width_68"] == pytest.approx(0.16, rel=0.01)
    assert s["std"] == pytest.approx(0.16, rel=0.01)


def test_binned_scatter_by_hand():
    t = np.array([13.75, 13.8, 14.0, 14.05, 15.3, 12.0])   # 14.0 -> [14.0, 14.2); 15.3 last
    eps = np.array([0.1, 0.3, -0.2, 0.0, 0.5, 9.0])         # 12.0 outside every bin
    b = binned_scatter(eps, t, bins=[13.7, 13.9, 14.1, 15.3])
    np.testing.assert_allclose(b["bin_centres"], [13.8, 14.0, 14.7])
    np.testing.assert_array_equal(b["n"], [2, 2, 1])
    np.testing.assert_allclose(b["mean"], [0.2, -0.1, 0.5])
    np.testing.assert_allclose(b["std"][:2], [math.sqrt(0.02), math.sqrt(0.02)])
    assert np.isnan(b["std"][2])
    assert DEFAULT_MASS_BINS[0] == 13.7 and DEFAULT_MASS_BINS[-1] == 15.3


# ------------------------------------------------------------------------------- coverage

def test_coverage_by_hand():
    t = np.array([14.0, 14.5, 15.0, 13.8])
    lo = np.array([13.9, 14.6, 14.9, 13.8])                 # the 2nd misses; edges count
    hi = np.array([14.1, 14.7, 15.1, 13.9])
    c = coverage(t, lo, hi, nominal=0.68, bins=[13.7, 14.2, 15.2])
    assert c["fraction"] == 0.75 and c["n"] == 4
    assert c["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert c["stderr_nominal"] == pytest.approx(math.sqrt(0.68 * 0.32 / 4))
    assert c["z"] == pytest.approx((0.75 - 0.68) / math.sqrt(0.68 * 0.32 / 4))
    np.testing.assert_array_equal(c["per_bin"]["n"], [2, 2])
    np.testing.assert_array_equal(c["per_bin"]["fraction"], [1.0, 0.5])


def test_calibrated_intervals_cover_within_binomial_band(rng):
    """5000 perfectly calibrated posteriors: coverage of the 68.27% and 95% intervals within
    3 binomial standard errors (at the nominal level), overall and in each mass bin."""
    truth, summ, _ = _calibrated(rng)
    cov = interval_coverage(truth, summ)
    for key, nominal in (("68", NOMINAL_68), ("95", NOMINAL_95)):
        c = cov[key]
        assert c["nominal"] == nominal
        assert abs(c["fraction"] - nominal) < 3 * c["stderr_nominal"], (key, c)
        per = c["per_bin"]
        ok = per["n"] > 0
        assert np.all(np.abs(per["fraction"][ok] - nominal) < 3 * per["stderr_nominal"][ok])


def test_coverage_binned_by_prediction_with_informative_prior(rng):
    """Exact Bayesian posteriors with a Gaussian prior N(14.5, 0.3^2) and Gaussian
    measurement error 0.2 dex: nominal overall and in bins of the posterior mean (3-sigma
    binomial band), but the highest true-mass bin is under-covered (shrinkage), which is why
    :func:`coverage` can bin by the prediction."""
    n, tau, s = 20000, 0.3, 0.2
    truth = 14.5 + tau * rng.standard_normal(n)
    x = truth + s * rng.standard_normal(n)
    w = 1 / s**2 + 1 / tau**2
    mu, sd = (x / s**2 + 14.5 / tau**2) / w, np.full(n, w ** -0.5)
    bins = [13.9, 14.2, 14.5, 14.8, 15.1]
    by_pred = coverage(truth, mu - sd, mu + sd, nominal=NOMINAL_68, bins=bins, bin_by=mu)
    assert abs(by_pred["z"]) < 3
    assert np.all(np.abs(by_pred["per_bin"]["z"]) < 3)
    by_true = coverage(truth, mu - sd, mu + sd, nominal=NOMINAL_68, bins=bins)
    assert by_true["per_bin"]["z"][-1] < -5


def test_miscalibrated_intervals_are_caught(rng):
    truth, summ, _ = _calibrated(rng)
    mid = 0.5 * (summ["lo68"] + summ["hi68"])
    half = 0.5 * (summ["hi68"] - summ["lo68"])
    c = coverage(truth, mid - 0.7 * half, mid + 0.7 * half, nominal=NOMINAL_68)
    assert c["z"] < -10


# ------------------------------------------------------------------------------------ PIT

def test_pit_uniform_for_calibrated_posteriors(rng):
    _, _, pit = _calibrated(rng)
    c = pit_curve(pit)
    assert c["ks_pvalue"] > 0.01
    assert c["levels"][0] == 0 and c["levels"][-1] == 1 and c["ecdf"][-1] == 1.0
    inner = slice(1, -1)
    assert np.all(np.abs(c["deviation"][inner]) < 4 * c["ecdf_stderr"][inner])


def test_pit_curve_by_hand_and_overconfidence():
    c = pit_curve([0.1, 0.2, 0.2, 0.9], levels=[0.0, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(c["ecdf"], [0.0, 0.75, 0.75, 1.0])
    np.testing.assert_allclose(c["deviation"], [0.0, 0.55, 0.25, 0.0])
    # overconfident posteriors (too narrow by 2x) pile PIT values at 0 and 1
    rng = np.random.default_rng(5)
    z = rng.standard_normal(3000)
    assert pit_curve(norm.cdf(2 * z))["ks_pvalue"] < 1e-6
    with pytest.raises(ValueError):
        pit_curve([0.5, 1.5])


# ----------------------------------------------------------------------- precision model

def _inject(rng, n=5000, sn=0.04, s0=0.08, mu=0.03):
    n_mem = rng.integers(10, 301, n)
    return mu + precision_model_sigma(n_mem, sn, s0) * rng.standard_normal(n), n_mem


def test_precision_model_formula():
    assert precision_model_sigma(100, 0.04, 0.08) == pytest.approx(math.hypot(0.04, 0.08))
    assert precision_model_sigma(25, 0.04, 0.0) == pytest.approx(0.08)


def test_precision_fit_recovers_injected_values(rng):
    """sigma_N = 0.04, sigma_0 = 0.08 dex, offset 0.03, N_mem uniform in 10..300, 5000
    clusters: recovered within 2 fitted standard errors and within 15%."""
    eps, n_mem = _inject(rng)
    f = fit_precision_model(eps, n_mem)
    assert f["converged"]
    for key, true in (("sigma_N", 0.04), ("sigma_0", 0.08), ("mean_offset", 0.03)):
        val, err = f[f"{key}_dex"], f[f"{key}_err_dex"]
        assert 0 < err < 0.2 * abs(true)
        assert abs(val - true) < 2 * err, (key, val, err)
        assert val == pytest.approx(true, rel=0.15)
    assert f["covariance"].shape == (3, 3)


def test_precision_fit_errors_match_replicates():
    """The inverse-Hessian errors equal the scatter of fits to 30 independent replicates
    (within 35%: the relative sd of a sd from 30 draws is 13%) and the bootstrap errors."""
    rng = np.random.default_rng(99)
    fits, errs = [], []
    for _ in range(30):
        eps, n_mem = _inject(rng)
        f = fit_precision_model(eps, n_mem)
        fits.append((f["sigma_N_dex"], f["sigma_0_dex"]))
        errs.append((f["sigma_N_err_dex"], f["sigma_0_err_dex"]))
    spread = np.std(fits, axis=0, ddof=1)
    np.testing.assert_allclose(np.mean(errs, axis=0), spread, rtol=0.35)
    fb = fit_precision_model(eps, n_mem, error_method="bootstrap", n_boot=100, seed=1)
    np.testing.assert_allclose([fb["sigma_N_err_dex"], fb["sigma_0_err_dex"]],
                               errs[-1], rtol=0.3)
    assert fb["sigma_N_dex"] == f["sigma_N_dex"]     # same point estimate
    with pytest.raises(ValueError):
        fit_precision_model(eps, np.zeros_like(n_mem))


# ----------------------------------------------------------------- interlopers, report

def test_interloper_diagnostic_organises_arrays():
    eps = np.array([0.0, -0.5, -0.2, 0.1])
    ratio = np.array([0.0, 12.0, 3.0, 0.5])                 # >1: more massive neighbour
    dist = np.array([np.nan, 0.5, 2.0, 4.0])
    out = interloper_diagnostic(eps, ratio, dist, log10_m_true=[14, 14, 14.2, 14.4])
    np.testing.assert_array_equal(out["contaminated"], [False, True, True, False])
    np.testing.assert_allclose(out["inverse_distance"], [0.0, 2.0, 0.5, 0.0])
    assert out["fraction_contaminated"] == 0.5
    assert out["contaminated_stats"]["mean"] == pytest.approx(-0.35)
    assert out["clean"]["mean"] == pytest.approx(0.05)
    np.testing.assert_array_equal(out["by_ratio"]["n"], [0, 1, 0, 1])


def test_evaluation_report_is_json_serialisable(rng, tmp_path):
    truth, summ, pit = _calibrated(rng, 800)
    n_mem = rng.integers(10, 300, truth.size)
    rep = evaluation_report(truth, summ, pit=pit, n_mem=n_mem)
    assert set(rep) == {"point", "overall", "per_bin", "coverage", "coverage_by_prediction",
                        "pit", "precision"}
    assert rep["overall"]["n"] == 800
    write_json(tmp_path / "metrics.json", rep)
    assert (tmp_path / "metrics.json").stat().st_size > 0
    point_only = evaluation_report(truth, {"map": summ["map"]})
    assert "coverage" not in point_only


def test_grouped_coverage_error_counts_groups_not_clusters():
    """Groups whose members share one outcome (sightlines of one halo) carry the binomial
    error of the number of groups; singleton groups that of the number of clusters."""
    from cmpipe.evaluation.metrics import grouped_coverage_error

    rng = np.random.default_rng(5)
    n_groups, size, p = 400, 10, 0.68
    hit = rng.random(n_groups) < p
    inside = np.repeat(hit, size)
    groups = np.repeat(np.arange(n_groups), size)
    g = grouped_coverage_error(inside, groups, n_boot=2000, seed=1)
    assert g["n"] == n_groups * size and g["n_groups"] == n_groups
    binom_groups = math.sqrt(p * (1 - p) / n_groups)
    assert abs(g["stderr_grouped"] / binom_groups - 1) < 0.1
    single = grouped_coverage_error(inside, np.arange(inside.size), n_boot=2000, seed=1)
    assert abs(single["stderr_grouped"] / math.sqrt(p * (1 - p) / inside.size) - 1) < 0.1
    # the same seed gives the same number
    assert grouped_coverage_error(inside, groups, n_boot=2000, seed=1) == g


def test_grouped_mean_is_the_halo_bootstrap_by_hand():
    """grouped_mean against the bootstrap written out: resample the groups with replacement
    (numpy's multinomial of the same seed), the mean of each resample, their s.d. Repeated
    calls (the resampling counts are drawn once and kept) give the same numbers, and
    values never change the counts of other calls."""
    from cmpipe.evaluation.metrics import grouped_mean

    rng = np.random.default_rng(11)
    groups = rng.integers(0, 300, 1500)
    a, b = rng.normal(size=1500), rng.normal(2.0, 3.0, size=1500)
    _, g = np.unique(groups, return_inverse=True)
    n_g = g.max() + 1
    counts = np.random.default_rng(4).multinomial(n_g, np.full(n_g, 1.0 / n_g), size=500)
    for values in (a, b, a):
        means = (counts @ np.bincount(g, weights=values)) / (counts @ np.bincount(g))
        got = grouped_mean(values, groups, n_boot=500, seed=4)
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["stderr_grouped"] == pytest.approx(means.std(ddof=1), rel=1e-12)
        assert got["n_groups"] == n_g


def test_by_observer_distance_thirds_by_hand(rng):
    """Residuals and 68% coverage per distance third against a hand split of the same
    clusters; calibrated posteriors cover 0.683 within the binomial band in every third,
    and one third made too narrow is caught."""
    truth, summ, _ = _calibrated(rng, n=6000)
    dist = rng.uniform(20.0, 250.0, truth.size)
    halos = np.arange(truth.size) // 2                     # two sightlines per halo
    point = summ["median"].copy()
    point[:5] = np.nan                                     # left out
    lo, hi = summ["lo68"].copy(), summ["hi68"].copy()
    out = by_observer_distance(dist, halos, truth, point, lo, hi, seed=1)
    labels = [k for k in out if k != "note"]
    assert len(labels) == 3
    ok = np.isfinite(point)
    q = np.quantile(dist[ok], [0, 1 / 3, 2 / 3, 1])
    for j, lab in enumerate(labels):
        assert lab == f"{q[j]:.0f}-{q[j + 1]:.0f}"
        sel = ok & (dist >= q[j]) & ((dist < q[j + 1]) if j < 2 else (dist <= q[j + 1]))
        v = out[lab]
        assert v["n"] == sel.sum()
        assert v["mean_residual_dex"] == pytest.approx(np.mean(truth[sel] - point[sel]))
        assert v["scatter_dex"] == pytest.approx(np.std(truth[sel] - point[sel], ddof=1))
        inside = (truth[sel] >= lo[sel]) & (truth[sel] <= hi[sel])
        assert v["coverage_68"] == pytest.approx(inside.mean())
        band = 3 * math.sqrt(NOMINAL_68 * (1 - NOMINAL_68) / sel.sum())
        assert abs(v["coverage_68"] - NOMINAL_68) < band
        # the halo bootstrap's error is at least the binomial one (pairs share a halo)
        assert v["coverage_68_err_halos"] > 0.8 * math.sqrt(
            NOMINAL_68 * (1 - NOMINAL_68) / sel.sum())
    far = dist >= q[2]                                     # intervals halved in the far third
    mid = 0.5 * (lo + hi)
    lo2, hi2 = np.where(far, mid - 0.5 * (mid - lo), lo), np.where(far, mid + 0.5 * (hi - mid), hi)
    out2 = by_observer_distance(dist, halos, truth, point, lo2, hi2)
    assert out2[labels[2]]["coverage_68"] < NOMINAL_68 - 0.2
    assert out2[labels[0]]["coverage_68"] == out[labels[0]]["coverage_68"]
    assert by_observer_distance(dist[:2], halos[:2], truth[:2], point[:2], lo[:2], hi[:2]) == {}
