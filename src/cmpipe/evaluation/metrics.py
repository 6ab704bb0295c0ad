"""Evaluation metrics of mass estimates: residuals, scatter, coverage, calibration, precision.

Pipeline step 9 (``docs/science.md``; paper sections 4.2-4.4, eq. 7). Everything here is
meant for the *evaluation* set only (the test set calibrates the posteriors). Functions take
plain arrays and return dicts of floats and arrays (JSON-able with
:func:`cmpipe.io.tables.write_json`); plotting lives elsewhere.

Conventions
-----------
Residual
    ``eps = log10(M_true / M_pred) = log10 M_true - log10 M_pred`` (dex), for a point
    estimate ``M_pred`` (posterior MAP by default in :func:`evaluation_report`). Positive
    ``eps``: the mass is underestimated.
Scatter
    ``std``: sample standard deviation (``ddof=1``); ``half_width_68``: half the distance
    between the 15.87% and 84.13% percentiles (equals the standard deviation for a Gaussian,
    robust to outliers).
Mass bins
    Half-open ``[lo, hi)`` bins of ``log10 M_true`` (the last one closed); clusters outside
    all bins are left out of the per-bin numbers but counted overall. Default edges
    :data:`DEFAULT_MASS_BINS` (0.2 dex from 13.7 to 15.3, log10 h^-1 Msun).
Coverage
    Fraction of clusters whose true mass lies in ``[lower, upper]``; ``stderr`` is the
    binomial standard error of that fraction ``sqrt(f (1 - f) / n)``, ``stderr_nominal``
    the one expected at the nominal level ``sqrt(p (1 - p) / n)`` and ``z`` the deviation
    from nominal in units of the latter.
"""
from __future__ import annotations

import functools
import logging
import math

import numpy as np
from scipy import optimize, stats

__all__ = [
    "grouped_coverage_error",
    "grouped_mean",
    "mass_bin_edges",
    "DEFAULT_MASS_BINS",
    "NOMINAL_68",
    "NOMINAL_95",
    "residuals",
    "scatter_stats",
    "binned_scatter",
    "coverage",
    "interval_coverage",
    "pit_curve",
    "fit_precision_model",
    "precision_model_sigma",
    "interloper_diagnostic",
    "evaluation_report",
]

logger = logging.getLogger(__name__)

#: Default log10 M_true bin edges, log10 h^-1 Msun.
DEFAULT_MASS_BINS = np.round(np.arange(13.7, 15.3 + 1e-9, 0.2), 10)
#: Probability content of the 68% interval (tails Phi(-1) each).
NOMINAL_68 = math.erf(1.0 / math.sqrt(2.0))        # 0.682689
#: Probability content of the 95% interval (tails 2.5% each).
NOMINAL_95 = 0.95
_Q16 = 0.5 * math.erfc(1.0 / math.sqrt(2.0))


def mass_bin_edges(lo: float, hi: float, width: float = 0.2) -> np.ndarray:
    """Bin edges ``lo, lo + width, ...`` up to the first edge >= ``hi`` (log10 h^-1 Msun):
    the mass bins of a set of clusters from its selection threshold ``lo`` to its heaviest
    cluster ``hi``."""
    n = max(1, int(np.ceil((float(hi) - float(lo)) / width - 1e-9)))
    return np.round(float(lo) + width * np.arange(n + 1), 10)


def _as_1d(name, x, n=None, positive=False):
    a = np.asarray(x, dtype=np.float64).ravel()
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values, expected {n} (one per cluster)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite value(s); drop "
                         "those clusters first")
    if positive and np.any(a <= 0):
        raise ValueError(f"{name} must be positive")
    return a


def residuals(log10_m_true, log10_m_pred) -> np.ndarray:
    """``eps = log10 M_true - log10 M_pred`` (dex); both in log10 h^-1 Msun."""
    t = _as_1d("log10_m_true", log10_m_true)
    return t - _as_1d("log10_m_pred", log10_m_pred, t.size)


def scatter_stats(eps) -> dict:
    """Mean, spread and robust spread of residuals (dex).

    Returns
    -------
    dict
        ``n``; ``mean`` and its standard error ``mean_err``; ``median``; ``std``
        (``ddof=1``); ``half_width_68`` = (P84.13 - P15.87) / 2. NaN where ``n`` is too
        small (``std`` needs 2 values).
    """
    e = np.asarray(eps, dtype=np.float64).ravel()
    n = e.size
    if n == 0:
        return dict(n=0, mean=np.nan, mean_err=np.nan, median=np.nan, std=np.nan,
                    half_width_68=np.nan)
    std = float(np.std(e, ddof=1)) if n > 1 else np.nan
    lo, hi = np.quantile(e, [_Q16, 1.0 - _Q16])
    return dict(n=int(n), mean=float(e.mean()), mean_err=std / math.sqrt(n),
                median=float(np.median(e)), std=std, half_width_68=float(0.5 * (hi - lo)))


def _bin_index(log10_m_true, bins):
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be increasing edges (at least 2) in log10 h^-1 Msun")
    idx = np.searchsorted(edges, log10_m_true, side="right") - 1
    idx[log10_m_true == edges[-1]] = edges.size - 2          # last bin closed
    idx[(log10_m_true < edges[0]) | (log10_m_true > edges[-1])] = -1
    return edges, idx


def binned_scatter(eps, log10_m_true, bins=DEFAULT_MASS_BINS) -> dict:
    """:func:`scatter_stats` of residuals per bin of true mass.

    Parameters
    ----------
    eps : array_like, shape (N,)
        Residuals, dex.
    log10_m_true : array_like, shape (N,)
        True masses, log10 h^-1 Msun.
    bins : array_like
        Bin edges, log10 h^-1 Msun.

    Returns
    -------
    dict of numpy.ndarray
        ``bin_edges`` (n_bins + 1), ``bin_centres`` and every key of :func:`scatter_stats`
        (each n_bins long).
    """
    e = _as_1d("eps", eps)
    t = _as_1d("log10_m_true", log10_m_true, e.size)
    edges, idx = _bin_index(t, bins)
    rows = [scatter_stats(e[idx == b]) for b in range(edges.size - 1)]
    out = dict(bin_edges=edges, bin_centres=0.5 * (edges[1:] + edges[:-1]))
    for k in rows[0]:
        out[k] = np.array([r[k] for r in rows])
    return out


def coverage(log10_m_true, lower, upper, *, nominal: float, bins=None,
             bin_by=None) -> dict:
    """Empirical coverage of credible intervals, overall and per mass bin.

    Calibrated posteriors cover at the nominal rate overall and in bins of anything the
    posterior is conditioned on (the prediction); in bins of the *true* mass they need not
    (near the edges of the training mass range posteriors lean towards the bulk of the
    prior, so the extreme true-mass bins are under-covered even when nothing is wrong).
    Use ``bin_by`` (e.g. the point prediction) for the conditional check.

    Parameters
    ----------
    log10_m_true : array_like, shape (N,)
        True masses, log10 h^-1 Msun.
    lower, upper : array_like, shape (N,)
        Interval limits, log10 h^-1 Msun.
    nominal : float
        Probability content of the intervals (e.g. :data:`NOMINAL_68`).
    bins : array_like, optional
        Bin edges (log10 h^-1 Msun) for the per-bin numbers.
    bin_by : array_like, shape (N,), optional
        The values binned, log10 h^-1 Msun; default ``log10_m_true``.

    Returns
    -------
    dict
        ``nominal``, ``n``, ``fraction``, ``stderr`` (binomial, of the fraction),
        ``stderr_nominal`` (binomial at the nominal level) and ``z``
        (``(fraction - nominal) / stderr_nominal``); with ``bins`` also ``per_bin``: a dict
        of the same keys as arrays plus ``bin_edges``/``bin_centres``.
    """
    t = _as_1d("log10_m_true", log10_m_true)
    lo = _as_1d("lower", lower, t.size)
    hi = _as_1d("upper", upper, t.size)
    if not 0.0 < nominal < 1.0:
        raise ValueError(f"nominal must be in (0, 1), got {nominal}")
    inside = (t >= lo) & (t <= hi)

    def one(mask):
        n = int(mask.size)
        if n == 0:
            return dict(n=0, fraction=np.nan, stderr=np.nan, stderr_nominal=np.nan,
                        z=np.nan)
        f = float(mask.mean())
        se0 = math.sqrt(nominal * (1.0 - nominal) / n)
        return dict(n=n, fraction=f, stderr=math.sqrt(f * (1.0 - f) / n),
                    stderr_nominal=se0, z=(f - nominal) / se0)

    out = dict(nominal=float(nominal), **one(inside))
    if bins is not None:
        by = t if bin_by is None else _as_1d("bin_by", bin_by, t.size)
        edges, idx = _bin_index(by, bins)
        rows = [one(inside[idx == b]) for b in range(edges.size - 1)]
        per = dict(bin_edges=edges, bin_centres=0.5 * (edges[1:] + edges[:-1]))
        for k in rows[0]:
            per[k] = np.array([r[k] for r in rows])
        out["per_bin"] = per
    return out


def grouped_coverage_error(inside, groups, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Standard error of a coverage fraction when clusters come in correlated groups.

    Projections of one halo along different sightlines are not independent (the same
    halo, the same neighbours): the binomial error of :func:`coverage` is too small when
    halos have many sightlines. This resamples whole groups (halos) with replacement.

    Parameters
    ----------
    inside : array_like of bool, shape (N,)
        Whether each cluster's interval covers its true mass.
    groups : array_like, shape (N,)
        Group label of each cluster (the host halo id).
    n_boot : int
        Bootstrap resamplings.
    seed : int

    Returns
    -------
    dict
        ``fraction``, ``stderr_grouped`` (bootstrap s.d. of the fraction), ``n`` and
        ``n_groups``.
    """
    inside = np.asarray(inside, dtype=bool).ravel()
    g = grouped_mean(inside.astype(float), groups, n_boot=n_boot, seed=seed)
    return dict(fraction=g["mean"], stderr_grouped=g["stderr_grouped"], n=g["n"],
                n_groups=g["n_groups"])


#: Largest resampling-count matrix kept for reuse (entries; 8 bytes each: 64 MB).
_KEEP_COUNTS = 8 * 1024 * 1024


def _draw_counts(n_groups: int, n_boot: int, seed) -> np.ndarray:
    """How often each of ``n_groups`` groups is drawn in each of ``n_boot`` resamplings
    with replacement, ``(n_boot, n_groups)`` float, read-only."""
    rng = np.random.default_rng(seed)
    c = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    c = c.astype(float)
    c.flags.writeable = False
    return c


_kept_counts = functools.lru_cache(maxsize=2)(_draw_counts)


def _group_counts(n_groups: int, n_boot: int, seed) -> np.ndarray:
    """:func:`_draw_counts`, kept for reuse up to ``_KEEP_COUNTS`` entries: the counts
    depend on the sizes and the seed only, so the many metrics of one set of clusters (mean,
    68 and 95% coverage of every estimator) share one draw: the same numbers, drawn once."""
    if n_groups * n_boot <= _KEEP_COUNTS:
        return _kept_counts(n_groups, n_boot, seed)
    return _draw_counts(n_groups, n_boot, seed)


def grouped_mean(values, groups, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of ``values`` and its standard error from resampling whole ``groups``.

    The sightlines of one halo share its shape, its neighbours and its galaxies, so their
    residuals are correlated: the error of a mean over clusters comes from resampling the
    halos (groups) with replacement, not from s.d./sqrt(N).

    Parameters
    ----------
    values : array_like, shape (N,)
    groups : array_like, shape (N,)
        Group label of each value (the host halo id).
    n_boot : int
    seed : int

    Returns
    -------
    dict
        ``mean``, ``stderr_grouped`` (bootstrap s.d. of the mean; NaN with one group),
        ``n`` and ``n_groups``.
    """
    values = np.asarray(values, dtype=float).ravel()
    _, g = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if g.size != values.size:
        raise ValueError("values and groups differ in length")
    if values.size == 0:
        return dict(mean=float("nan"), stderr_grouped=float("nan"), n=0, n_groups=0)
    n_g = int(g.max()) + 1
    sums = np.bincount(g, weights=values, minlength=n_g)
    sizes = np.bincount(g, minlength=n_g).astype(float)
    c = _group_counts(n_g, int(n_boot), seed)
    means = (c @ sums) / (c @ sizes)
    err = float(means.std(ddof=1)) if n_g > 1 else float("nan")
    return dict(mean=float(values.mean()), stderr_grouped=err, n=int(values.size),
                n_groups=n_g)


def interval_coverage(log10_m_true, summaries: dict, *, bins=DEFAULT_MASS_BINS,
                      bin_by=None) -> dict:
    """Coverage of the 68% and 95% intervals of :func:`cmpipe.calibration.summarise`.

    Returns
    -------
    dict
        ``{"68": coverage(...), "95": coverage(...)}`` using ``lo68``/``hi68`` and
        ``lo95``/``hi95`` of ``summaries`` (``bins``/``bin_by`` as in :func:`coverage`).
    """
    return {"68": coverage(log10_m_true, summaries["lo68"], summaries["hi68"],
                           nominal=NOMINAL_68, bins=bins, bin_by=bin_by),
            "95": coverage(log10_m_true, summaries["lo95"], summaries["hi95"],
                           nominal=NOMINAL_95, bins=bins, bin_by=bin_by)}


def pit_curve(pit, levels=None) -> dict:
    """Calibration (QQ) curve of probability-integral-transform values.

    For calibrated posteriors the PIT values ``P(M <= M_true | data)`` are uniform on
    [0, 1], so their empirical CDF equals the nominal level everywhere.

    Parameters
    ----------
    pit : array_like, shape (N,)
        PIT values (:func:`cmpipe.calibration.posterior_cdf_at`).
    levels : array_like, optional
        Nominal levels; default 0, 0.05, ..., 1.

    Returns
    -------
    dict
        ``levels``, ``ecdf`` (fraction of PIT values <= level), ``ecdf_stderr`` (binomial
        at the nominal level), ``deviation`` (ecdf - level), ``ks_statistic`` and
        ``ks_pvalue`` (one-sample Kolmogorov-Smirnov test against U(0, 1)), ``n``.
    """
    u = _as_1d("pit", pit)
    if np.any((u < 0) | (u > 1)):
        raise ValueError("PIT values must lie in [0, 1]")
    lv = np.linspace(0.0, 1.0, 21) if levels is None else np.asarray(levels, dtype=float)
    su = np.sort(u)
    ecdf = np.searchsorted(su, lv, side="right") / u.size
    ks = stats.kstest(u, "uniform")
    return dict(levels=lv, ecdf=ecdf, ecdf_stderr=np.sqrt(lv * (1.0 - lv) / u.size),
                deviation=ecdf - lv, ks_statistic=float(ks.statistic),
                ks_pvalue=float(ks.pvalue), n=int(u.size))


# ----------------------------------------------------------------------------------------
# precision model, eq. (7)
# ----------------------------------------------------------------------------------------

def precision_model_sigma(n_mem, sigma_n_dex: float, sigma_0_dex: float):
    """Eq. (7): ``sigma = sqrt(sigma_N**2 (N_mem / 100)**-1 + sigma_0**2)``, dex."""
    return np.sqrt(sigma_n_dex ** 2 * 100.0 / np.asarray(n_mem, dtype=float)
                   + sigma_0_dex ** 2)


def _nll(theta, eps, x):
    """Negative log-likelihood (constants dropped) and gradient in (mu, ln sN, ln s0)."""
    mu, ln_sn, ln_s0 = theta
    a, b = math.exp(2.0 * ln_sn), math.exp(2.0 * ln_s0)
    v = a * x + b
    r = eps - mu
    r2v = r * r / v
    nll = 0.5 * float(np.sum(np.log(v) + r2v))
    dv = 0.5 * (1.0 - r2v) / v                    # d nll / d v_i
    grad = np.array([-float(np.sum(r / v)), float(np.sum(dv * x)) * 2.0 * a,
                     float(np.sum(dv)) * 2.0 * b])
    return nll, grad


def _hessian_mu_a_b(mu, a, b, eps, x):
    """Observed-information matrix (Hessian of the NLL) in (mu, a = sN^2, b = s0^2)."""
    v = a * x + b
    r = eps - mu
    w = -0.5 / v ** 2 + r * r / v ** 3             # d2 nll / d v_i^2
    h = np.empty((3, 3))
    h[0, 0] = np.sum(1.0 / v)
    h[0, 1] = h[1, 0] = np.sum(r * x / v ** 2)
    h[0, 2] = h[2, 0] = np.sum(r / v ** 2)
    h[1, 1] = np.sum(w * x * x)
    h[1, 2] = h[2, 1] = np.sum(w * x)
    h[2, 2] = np.sum(w)
    return h


def _fit(eps, x):
    """ML fit; returns (mu, sN, s0, nll, success)."""
    mu0 = float(eps.mean())
    r2 = (eps - mu0) ** 2
    # starting point: least squares of r^2 = a x + b, kept positive
    A = np.column_stack([x, np.ones_like(x)])
    (a0, b0), *_ = np.linalg.lstsq(A, r2, rcond=None)
    var = float(r2.mean())
    a0 = min(max(a0, 0.05 * var / max(x.mean(), 1e-12)), var / max(x.mean(), 1e-12))
    b0 = max(b0, 0.05 * var)
    th0 = np.array([mu0, 0.5 * math.log(a0), 0.5 * math.log(b0)])
    n = eps.size

    def mean_nll(th):                    # per-cluster NLL: well-scaled gradient tolerance
        f, g = _nll(th, eps, x)
        return f / n, g / n

    res = optimize.minimize(mean_nll, th0, jac=True, method="BFGS",
                            options=dict(gtol=1e-8, maxiter=1000))
    mu, ln_sn, ln_s0 = res.x
    return float(mu), math.exp(ln_sn), math.exp(ln_s0), float(res.fun) * n, bool(res.success)


def fit_precision_model(eps, n_mem, *, error_method: str = "hessian", n_boot: int = 200,
                        seed: int = 12345) -> dict:
    """Fit eq. (7), ``sigma^2 = sigma_N^2 (N_mem/100)^-1 + sigma_0^2``, to residuals.

    Maximum likelihood with Gaussian residuals about a common mean offset:
    ``eps_i ~ N(mu, sigma_N^2 100 / N_i + sigma_0^2)``. The NLL is minimised by BFGS over
    ``(mu, ln sigma_N, ln sigma_0)`` (log-parameters keep the dispersions positive), with an
    analytic gradient.

    Parameters
    ----------
    eps : array_like, shape (N,)
        Residuals ``log10(M_true / M_pred)``, dex.
    n_mem : array_like, shape (N,)
        Number of member galaxies (richness) of each cluster, > 0.
    error_method : {"hessian", "bootstrap"}
        ``hessian``: standard errors from the inverse of the analytic observed-information
        matrix in ``(mu, sigma_N^2, sigma_0^2)``, propagated to ``sigma = sqrt(var)`` to
        first order (``err(sigma) = err(sigma^2) / (2 sigma)``; unreliable when a fitted
        sigma is within about one error of zero). ``bootstrap``: standard deviation of the
        fits to ``n_boot`` resamplings of the clusters with replacement (``seed`` fixed).
    n_boot : int
        Bootstrap resamplings.
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        ``sigma_N_dex``, ``sigma_N_err_dex``, ``sigma_0_dex``, ``sigma_0_err_dex``,
        ``mean_offset_dex``, ``mean_offset_err_dex``, ``covariance`` (3x3 in (mu, sigma_N,
        sigma_0), dex^2), ``n``, ``nll`` (minimised, constants dropped), ``converged``,
        ``error_method``.
    """
    e = _as_1d("eps", eps)
    nm = _as_1d("n_mem", n_mem, e.size, positive=True)
    if e.size < 3:
        raise ValueError("fit_precision_model needs at least 3 clusters")
    if error_method not in ("hessian", "bootstrap"):
        raise ValueError(f"error_method must be 'hessian' or 'bootstrap', got "
                         f"'{error_method}'")
    x = 100.0 / nm
    mu, sn, s0, nll, ok = _fit(e, x)
    if not ok:
        logger.warning("precision-model fit: optimiser reported no convergence")
    if error_method == "hessian":
        h = _hessian_mu_a_b(mu, sn * sn, s0 * s0, e, x)
        try:
            cov_ab = np.linalg.inv(h)
        except np.linalg.LinAlgError:
            cov_ab = np.full((3, 3), np.nan)
        jac = np.diag([1.0, 0.5 / sn, 0.5 / s0])
        cov = jac @ cov_ab @ jac.T
    else:
        rng = np.random.default_rng(seed)
        fits = np.empty((n_boot, 3))
        for k in range(n_boot):
            i = rng.integers(0, e.size, e.size)
            fits[k, :3] = _fit(e[i], x[i])[:3]
        cov = np.cov(fits, rowvar=False)
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if sn < err[1] or s0 < err[2]:
        logger.warning("precision-model fit: a fitted sigma is within one standard error "
                       "of zero (sigma_N = %.3g +- %.3g, sigma_0 = %.3g +- %.3g dex)",
                       sn, err[1], s0, err[2])
    return dict(sigma_N_dex=sn, sigma_N_err_dex=float(err[1]), sigma_0_dex=s0,
                sigma_0_err_dex=float(err[2]), mean_offset_dex=mu,
                mean_offset_err_dex=float(err[0]), covariance=cov, n=int(e.size), nll=nll,
                converged=ok, error_method=error_method)


# ----------------------------------------------------------------------------------------
# interlopers, one-call report
# ----------------------------------------------------------------------------------------

def interloper_diagnostic(eps, mass_ratio, distance, *, log10_m_true=None,
                          ratio_bins=(1.0, 2.0, 5.0, 10.0, np.inf)) -> dict:
    """Residuals against interloper-cluster contamination (paper section 4.3, Fig. 6).

    A cluster is *contaminated* when the most massive other host halo in its window is
    more massive than itself (``mass_ratio > 1``; ``interloper_mass_ratio`` of the projected
    cluster table), at phase-space distance ``distance`` (paper eq. 6, dimensionless).

    Parameters
    ----------
    eps : array_like, shape (N,)
        Residuals, dex.
    mass_ratio : array_like, shape (N,)
        Interloper-to-cluster mass ratio (0 when the window holds no other host).
    distance : array_like, shape (N,)
        Phase-space distance (NaN when there is no other host).
    log10_m_true : array_like, optional
        True masses, log10 h^-1 Msun, carried along for plotting.
    ratio_bins : sequence of float
        Mass-ratio bin edges for the binned summary of contaminated clusters.

    Returns
    -------
    dict
        Arrays per cluster: ``eps``, ``mass_ratio``, ``distance``, ``inverse_distance``
        (0 where there is no interloper cluster), ``contaminated`` (bool), and
        ``log10_m_true`` if given; summaries ``clean`` and ``contaminated_stats``
        (:func:`scatter_stats`), ``by_ratio`` (:func:`scatter_stats` per ``ratio_bins``
        bin, as arrays, with ``bin_edges``), ``fraction_contaminated``.
    """
    e = _as_1d("eps", eps)
    ratio = np.asarray(mass_ratio, dtype=np.float64).ravel()
    dist = np.asarray(distance, dtype=np.float64).ravel()
    if ratio.size != e.size or dist.size != e.size:
        raise ValueError("eps, mass_ratio and distance must have one value per cluster")
    ratio = np.nan_to_num(ratio, nan=0.0)
    cont = ratio > 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cont & np.isfinite(dist) & (dist > 0), 1.0 / dist, 0.0)
    edges = np.asarray(ratio_bins, dtype=np.float64)
    rows = [scatter_stats(e[cont & (ratio >= lo) & (ratio < hi)])
            for lo, hi in zip(edges[:-1], edges[1:])]
    by_ratio = dict(bin_edges=edges)
    for k in rows[0]:
        by_ratio[k] = np.array([r[k] for r in rows])
    out = dict(eps=e, mass_ratio=ratio, distance=dist, inverse_distance=inv,
               contaminated=cont, clean=scatter_stats(e[~cont]),
               contaminated_stats=scatter_stats(e[cont]), by_ratio=by_ratio,
               fraction_contaminated=float(cont.mean()) if e.size else np.nan)
    if log10_m_true is not None:
        out["log10_m_true"] = _as_1d("log10_m_true", log10_m_true, e.size)
    return out


def evaluation_report(log10_m_true, summaries: dict, *, pit=None, n_mem=None,
                      point: str = "map", bins=DEFAULT_MASS_BINS,
                      error_method: str = "hessian") -> dict:
    """All evaluation-set metrics of one estimator in one dict.

    Parameters
    ----------
    log10_m_true : array_like, shape (N,)
        True masses, log10 h^-1 Msun.
    summaries : dict of array_like
        Posterior summaries (:func:`cmpipe.calibration.summarise`); only ``point`` is needed
        for estimators without intervals.
    pit : array_like, optional
        PIT values, for the calibration curve.
    n_mem : array_like, optional
        Richness per cluster, for the eq. (7) fit.
    point : str
        Key of ``summaries`` used as the point estimate (``map``, ``median`` or ``mean``).
    bins : array_like
        Mass-bin edges, log10 h^-1 Msun.

    Returns
    -------
    dict
        ``point``, ``overall`` (:func:`scatter_stats`), ``per_bin``
        (:func:`binned_scatter`), ``coverage`` and ``coverage_by_prediction``
        (:func:`interval_coverage` in bins of true and of predicted mass, if the summaries
        hold intervals), ``pit`` (:func:`pit_curve`), ``precision``
        (:func:`fit_precision_model`), the last ones only when their inputs are given.
    """
    t = _as_1d("log10_m_true", log10_m_true)
    eps = residuals(t, summaries[point])
    out = dict(point=point, overall=scatter_stats(eps), per_bin=binned_scatter(eps, t, bins))
    if all(k in summaries for k in ("lo68", "hi68", "lo95", "hi95")):
        out["coverage"] = interval_coverage(t, summaries, bins=bins)
        out["coverage_by_prediction"] = interval_coverage(t, summaries, bins=bins,
                                                          bin_by=summaries[point])
    if pit is not None:
        out["pit"] = pit_curve(pit)
    if n_mem is not None:
        out["precision"] = fit_precision_model(eps, n_mem, error_method=error_method)
    return out
