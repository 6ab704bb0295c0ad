"""The cluster mass function from survey mass estimates (pipeline step 11; paper sec. 5).

Paper, Fig. 10: "The CNN_3D mass function is computed by means of a kernel density
estimator, weighted inversely by the uncertainties of the mass estimates. Bootstrapping
was used to obtain the predicted 1 sigma confidence interval", for the 8,250 deg^2 of the
SDSS Legacy Survey, compared with Tinker et al. (2008) for Planck 2018. The paper gives no
more detail; cmpipe's exact choices are:

Estimator
    With point estimates ``m_i`` (log10 M200c, h^-1 Msun; e.g. the posterior medians) and
    uncertainties ``sigma_i`` (dex; e.g. the posterior standard deviations) of the ``N``
    clusters of a survey of comoving volume ``V``::

        dn/dlog10M (m) = (N / V) * sum_i w_i K_h_i(m - m_i) / sum_i w_i,   w_i = 1 / sigma_i

    with ``K_h`` a unit-integral Gaussian of standard deviation ``h`` (dex). The weights
    only redistribute: the estimate integrates to ``N / V`` (h^3 Mpc^-3) over log10 M
    whatever the weights, so it is a number density per dex, h^3 Mpc^-3 dex^-1. Bandwidth
    (``bandwidth_dex``): ``"scott"`` (default) is exactly :class:`scipy.stats.gaussian_kde`
    with these weights (``h = n_eff^(-1/5) x`` the weighted standard deviation of the
    ``m_i``, ``n_eff = (sum w)^2 / sum w^2``); a number is a fixed ``h`` in dex;
    ``"posterior"`` gives each cluster a Gaussian of its own ``sigma_i`` (the sum of the
    clusters' Gaussian posteriors).
Bootstrap
    ``n_boot`` resamplings of the clusters (fixed seed), the estimator recomputed with the
    full-sample bandwidth; the 1 sigma band is the 15.87 / 84.13 percentile range at each
    mass (and the standard deviation is reported too). ``bootstrap="poisson"`` (default)
    gives every cluster an independent Poisson(1) multiplicity (Hanley & MacGibbon 2006),
    so the number of clusters varies between resamplings as a Poisson count does: the
    band of a number density then holds the uncertainty of the overall count, which the
    classical resampling of exactly N clusters (``"multinomial"``) leaves out (its
    variance of the count in a mass range holding a fraction p of the clusters is
    ``N p (1 - p)`` instead of ``N p``: 0.4 of the Poisson variance where p = 0.6).
    Neither holds the survey's sample variance (:func:`sample_variance_fraction`).
Theory
    Tinker et al. (2008) via colossus (``mdef='200c'``, ``dndlnM``) times ln 10 -> per
    dex. :func:`forward_model` gives what the estimator should see if the universe is
    Tinker's: each true mass scattered by a Gaussian of ``sigma(log M)`` (plus an optional
    bias), then smoothed by the estimator's kernel ``h``::

        <n_hat>(m) = int_{m_t >= m_min} n(m_t) N(m; m_t + b(m_t), s(m_t)^2 + h^2) dm_t

Eddington bias (:func:`eddington_bias`)
    For a locally exponential mass function ``n(m) = A exp(alpha m)`` with
    ``alpha = d ln n / d log10 M = ln(10) beta`` (``beta = d log10 n / d log10 M``, about
    -1 at 10^14 and steeper above) and Gaussian log-mass errors of ``sigma`` dex:

    * the observed function is ``n_obs(m) = n(m) exp(alpha^2 sigma^2 / 2)``, i.e.
      ``log10(n_obs / n) = ln(10) beta^2 sigma^2 / 2``;
    * clusters observed at ``m`` have mean true mass ``m + alpha sigma^2 =
      m + ln(10) beta sigma^2`` (lower, as beta < 0): a flat-prior estimate is biased high
      by ``-ln(10) beta sigma^2`` dex, the shift :func:`population_prior_posterior` removes
      by using the mass function as the prior.

    (Completing the square: ``exp(alpha m_t) N(m; m_t, sigma^2)`` is proportional to
    ``N(m_t; m + alpha sigma^2, sigma^2)`` times ``exp(alpha m + alpha^2 sigma^2 / 2)``.)
    The curvature of the real function makes these first-order; :func:`forward_model` is
    exact.

Population prior
    The calibrated posterior is ``P(m | d) = P_test(m) L(d | m) / Z`` with the test set's
    mass distribution ``P_test`` as prior (roughly flat by construction). Swapping in the
    mass function at the cluster's redshift: ``P_pop(m | d) = P(m | d) n(m, z) / P_test(m)``,
    renormalised; undefined (set to 0, with a warning) where ``P_test`` vanishes.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .calibration import QUANTILE_LEVELS, JointPDF
from .calibration import _cdf as _posterior_cdf
from .calibration import _map as _posterior_map
from .calibration import _normalise as _normalise_rows
from .calibration import _rows as _pdf_rows
from .calibration import _quantiles as _posterior_quantiles
from .cosmology import Cosmology
from .universe import halo_bias, tinker08_dndlnm

__all__ = [
    "LN10",
    "MassFunctionEstimate",
    "tinker08_dndlog10m",
    "tinker08_survey_average",
    "kde_weights",
    "kde_bandwidth",
    "kde_mass_function",
    "estimate_mass_function",
    "forward_model",
    "local_slope",
    "eddington_bias",
    "prior_from_joint_pdf",
    "population_prior_posterior",
    "summarise_grid_posteriors",
    "summaries_under_priors",
    "sample_variance_fraction",
    "window_sigma_lin",
    "sphere_sigma_lin",
    "likelihood_pit",
    "null_band_fractions",
    "band_chi2",
    "forward_in_band",
    "survey_window_weights",
]

log = logging.getLogger(__name__)

LN10 = math.log(10.0)
_LO68 = QUANTILE_LEVELS["lo68"]
_HI68 = QUANTILE_LEVELS["hi68"]


# ---------------------------------------------------------------------------- theory


def tinker08_dndlog10m(log10_m, z, cosmology: Cosmology) -> np.ndarray:
    """Tinker et al. (2008) mass function per dex for M200c.

    Parameters
    ----------
    log10_m : array_like
        log10(M200c / h^-1 Msun).
    z : float
        Redshift.
    cosmology : Cosmology

    Returns
    -------
    ndarray
        dn/dlog10 M, comoving h^3 Mpc^-3 dex^-1 (colossus ``dndlnM`` times ln 10).
    """
    return np.asarray(tinker08_dndlnm(log10_m, float(z), cosmology), dtype=float) * LN10


def tinker08_survey_average(log10_m, radius_mpc_h: float, cosmology: Cosmology, *,
                            n_nodes: int = 16) -> np.ndarray:
    """Tinker (2008) dn/dlog10M averaged over the comoving volume of a sphere (or cap).

    ``<n>(m) = int_0^R n(m, z(r)) 3 r^2 / R^3 dr`` by Gauss-Legendre quadrature with
    ``n_nodes`` nodes; the volume average a survey to depth ``radius_mpc_h`` (h^-1 Mpc)
    sees. h^3 Mpc^-3 dex^-1.
    """
    x, wq = np.polynomial.legendre.leggauss(int(n_nodes))
    r = 0.5 * radius_mpc_h * (x + 1.0)
    w = 0.5 * radius_mpc_h * wq * 3.0 * r ** 2 / radius_mpc_h ** 3
    zs = cosmology.z_at_comoving_distance(r)
    m = np.atleast_1d(np.asarray(log10_m, dtype=float))
    out = sum(wi * tinker08_dndlog10m(m, zi, cosmology) for wi, zi in zip(w, zs))
    return out if np.ndim(log10_m) else float(out[0])


def _scatter_fn(s) -> Callable:
    if callable(s):
        return lambda m: np.broadcast_to(np.asarray(s(m), dtype=float), np.shape(m))
    val = float(s)
    return lambda m: np.full(np.shape(m), val)


def forward_model(log10_m, z, cosmology: Cosmology, *, scatter_dex=0.0, bias_dex=0.0,
                  kernel_dex: float = 0.0, log10_m_true_min: float = 12.0,
                  log10_m_true_max: float = 16.5, weight: Callable | None = None,
                  dndlog10m: Callable | None = None, step_dex: float = 0.002) -> np.ndarray:
    """The Tinker (2008) mass function seen through Gaussian mass errors and the KDE.

    Parameters
    ----------
    log10_m : array_like
        Where to evaluate, log10 h^-1 Msun.
    z : float
        Redshift of the mass function.
    cosmology : Cosmology
    scatter_dex : float or callable
        Standard deviation ``s`` of the estimates about the true mass, dex; a callable takes
        the true log10 M (array) and returns ``s``.
    bias_dex : float or callable
        Mean offset ``b`` of the estimates at a given true mass, dex.
    kernel_dex : float
        The estimator's kernel standard deviation ``h``, dex (added in quadrature).
    log10_m_true_min, log10_m_true_max : float
        True-mass range of the sample (the selection threshold of a mass-selected sample).
    weight : callable, optional
        Weight of a cluster as a function of its true log10 M (e.g. ``1 / s(m)`` to mimic
        the inverse-uncertainty weighting when the uncertainties track the scatter); the
        result keeps the total ``int n dm_t``, as the estimator keeps ``N / V``.
    dndlog10m : callable, optional
        Replace Tinker by ``dndlog10m(m_true)`` (h^3 Mpc^-3 dex^-1).
    step_dex : float
        Integration step in true mass, dex.

    Returns
    -------
    ndarray
        Expected dn/dlog10 M of the estimator, h^3 Mpc^-3 dex^-1.
    """
    m = np.atleast_1d(np.asarray(log10_m, dtype=float))
    mt = np.arange(log10_m_true_min, log10_m_true_max + 0.5 * step_dex, step_dex)
    n = (dndlog10m(mt) if dndlog10m is not None
         else tinker08_dndlog10m(mt, z, cosmology))
    n = np.asarray(n, dtype=float)
    s = _scatter_fn(scatter_dex)(mt)
    b = _scatter_fn(bias_dex)(mt)
    width = np.sqrt(s ** 2 + float(kernel_dex) ** 2)
    if np.any(width <= 0):
        raise ValueError("forward_model: scatter and kernel are both zero; the estimator "
                         "then sees n itself (evaluate tinker08_dndlog10m)")
    w = np.ones_like(mt) if weight is None else np.asarray(weight(mt), dtype=float)
    tw = np.full(mt.size, step_dex)
    tw[[0, -1]] *= 0.5                                 # trapezoid
    u = (m[:, None] - mt[None, :] - b[None, :]) / width[None, :]
    g = np.exp(-0.5 * u * u) / (np.sqrt(2.0 * np.pi) * width[None, :])
    out = g @ (n * w * tw)
    if weight is not None:
        out *= np.sum(n * tw) / np.sum(n * w * tw)
    return out if np.ndim(log10_m) else float(out[0])


def local_slope(log10_m, z, cosmology: Cosmology, *, delta_dex: float = 0.01) -> np.ndarray:
    """``alpha = d ln(dn/dlog10M) / d log10 M`` of Tinker (2008), per dex (central
    difference over +-``delta_dex``). ``beta = alpha / ln 10`` is the log10 slope."""
    m = np.asarray(log10_m, dtype=float)
    up = tinker08_dndlog10m(m + delta_dex, z, cosmology)
    dn = tinker08_dndlog10m(m - delta_dex, z, cosmology)
    return (np.log(up) - np.log(dn)) / (2.0 * delta_dex)


def eddington_bias(log10_m, z, cosmology: Cosmology, sigma_dex) -> dict:
    """First-order Eddington bias for Gaussian log-mass errors (module docstring).

    Parameters
    ----------
    log10_m : array_like
        Observed log10 M200c, h^-1 Msun.
    z : float
    cosmology : Cosmology
    sigma_dex : float or array_like
        Log-mass error, dex.

    Returns
    -------
    dict of ndarray
        ``alpha`` (d ln n / d log10 M, dex^-1), ``beta`` (= alpha / ln 10),
        ``mean_true_minus_observed`` (``alpha sigma^2``, dex: the correction to apply to a
        flat-prior estimate), ``log10_ratio`` (``log10(n_obs / n) = alpha^2 sigma^2 /
        (2 ln 10)``) and ``ratio`` (``n_obs / n``).
    """
    a = local_slope(log10_m, z, cosmology)
    s2 = np.asarray(sigma_dex, dtype=float) ** 2
    return dict(alpha=a, beta=a / LN10, mean_true_minus_observed=a * s2,
                log10_ratio=a * a * s2 / (2.0 * LN10), ratio=np.exp(0.5 * a * a * s2))


# ---------------------------------------------------------------------------- estimator


@dataclass(frozen=True)
class MassFunctionEstimate:
    """A mass function measured from cluster mass estimates.

    Attributes
    ----------
    log10_m : ndarray
        Evaluation grid, log10 h^-1 Msun.
    dn_dlog10m : ndarray
        Estimate, h^3 Mpc^-3 dex^-1.
    lo68, hi68 : ndarray
        Bootstrap 15.87% and 84.13% percentiles (NaN without bootstrap).
    boot_sd : ndarray
        Bootstrap standard deviation (NaN without bootstrap).
    bandwidth_dex : ndarray
        Kernel standard deviation of each cluster, dex.
    weights : ndarray
        ``1 / sigma_i`` of each cluster (unnormalised).
    n_clusters : int
    volume_mpc_h3 : float
        Survey volume, (h^-1 Mpc)^3.
    n_boot : int
    seed : int
    bootstrap : str
        ``"poisson"`` or ``"multinomial"`` (:func:`estimate_mass_function`).
    draws : ndarray or None
        The ``(n_boot, G)`` resampled estimates, when asked for.
    """

    log10_m: np.ndarray
    dn_dlog10m: np.ndarray
    lo68: np.ndarray
    hi68: np.ndarray
    boot_sd: np.ndarray
    bandwidth_dex: np.ndarray
    weights: np.ndarray
    n_clusters: int
    volume_mpc_h3: float
    n_boot: int
    seed: int
    bootstrap: str = "poisson"
    draws: np.ndarray | None = None

    def as_dict(self) -> dict:
        """Columns on the grid (for a table product)."""
        return dict(log10_m=self.log10_m, dn_dlog10m=self.dn_dlog10m, lo68=self.lo68,
                    hi68=self.hi68, boot_sd=self.boot_sd)


def _check_estimates(log10_m_est, sigma_dex):
    m = np.asarray(log10_m_est, dtype=float).ravel()
    s = np.broadcast_to(np.asarray(sigma_dex, dtype=float), m.shape).astype(float)
    if m.size == 0:
        raise ValueError("mass function: no clusters")
    bad = ~(np.isfinite(m) & np.isfinite(s) & (s > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"mass function: {int(bad.sum())} cluster(s) with a non-finite mass "
                         f"or a non-positive/non-finite uncertainty (first: row {i}, m = "
                         f"{m[i]}, sigma = {s[i]}). Fix: drop clusters whose posterior "
                         "failed (NaN summaries) before estimating the mass function")
    return m, s


def kde_weights(sigma_dex) -> np.ndarray:
    """Cluster weights of the estimator, ``1 / sigma_i`` (sigma in dex)."""
    return 1.0 / np.asarray(sigma_dex, dtype=float)


def kde_bandwidth(log10_m_est, weights, bandwidth_dex="scott", sigma_dex=None) -> np.ndarray:
    """Kernel standard deviation of every cluster, dex.

    ``"scott"``: scipy's weighted Scott rule, ``n_eff^(-1/5)`` times the weighted standard
    deviation (``ddof`` as :class:`scipy.stats.gaussian_kde`: ``1 / (1 - sum w'^2)`` with
    normalised weights ``w'``); a number: that width for all; ``"posterior"``: ``sigma_i``.
    """
    m = np.asarray(log10_m_est, dtype=float)
    if isinstance(bandwidth_dex, str):
        if bandwidth_dex == "posterior":
            if sigma_dex is None:
                raise ValueError("bandwidth 'posterior' needs sigma_dex")
            return np.broadcast_to(np.asarray(sigma_dex, float), m.shape).copy()
        if bandwidth_dex != "scott":
            raise ValueError(f"bandwidth_dex must be a number, 'scott' or 'posterior', got "
                             f"{bandwidth_dex!r}")
        w = np.asarray(weights, dtype=float) / np.sum(weights)
        n_eff = 1.0 / np.sum(w ** 2)
        if m.size < 2:
            raise ValueError("bandwidth 'scott' needs at least two clusters; give a number")
        mean = np.sum(w * m)
        var = np.sum(w * (m - mean) ** 2) / (1.0 - np.sum(w ** 2))
        h = n_eff ** (-0.2) * math.sqrt(var)
        return np.full(m.shape, h)
    h = float(bandwidth_dex)
    if not h > 0:
        raise ValueError(f"bandwidth_dex must be > 0, got {bandwidth_dex}")
    return np.full(m.shape, h)


def _kernel_matrix(grid, m, h):
    u = (grid[None, :] - m[:, None]) / h[:, None]
    return np.exp(-0.5 * u * u) / (np.sqrt(2.0 * np.pi) * h[:, None])   # (N, G)


def kde_mass_function(log10_m_est, sigma_dex, volume_mpc_h3: float, log10_m_grid, *,
                      bandwidth_dex="scott") -> np.ndarray:
    """The paper's estimator (module docstring) without the bootstrap.

    Parameters
    ----------
    log10_m_est : array_like, shape (N,)
        Point estimates, log10 h^-1 Msun.
    sigma_dex : array_like, shape (N,) or scalar
        Their uncertainties, dex (> 0).
    volume_mpc_h3 : float
        Survey volume, (h^-1 Mpc)^3.
    log10_m_grid : array_like
        Evaluation masses, log10 h^-1 Msun.
    bandwidth_dex : "scott", "posterior" or float

    Returns
    -------
    ndarray
        dn/dlog10 M on the grid, h^3 Mpc^-3 dex^-1.
    """
    m, s = _check_estimates(log10_m_est, sigma_dex)
    w = kde_weights(s)
    h = kde_bandwidth(m, w, bandwidth_dex, s)
    g = np.asarray(log10_m_grid, dtype=float)
    k = _kernel_matrix(g, m, h)
    return (m.size / float(volume_mpc_h3)) * (w @ k) / w.sum()


BOOTSTRAPS = ("poisson", "multinomial")


def estimate_mass_function(log10_m_est, sigma_dex, volume_mpc_h3: float, log10_m_grid, *,
                           bandwidth_dex="scott", n_boot: int = 500, seed: int = 0,
                           bootstrap: str = "poisson",
                           return_draws: bool = False) -> MassFunctionEstimate:
    """The estimator with its bootstrap 1 sigma band.

    Parameters
    ----------
    log10_m_est, sigma_dex, volume_mpc_h3, log10_m_grid, bandwidth_dex
        As :func:`kde_mass_function`.
    n_boot : int
        Bootstrap resamplings (0: no band).
    seed : int
        Seed of the resampling.
    bootstrap : {"poisson", "multinomial"}
        Poisson(1) multiplicities (the count varies; default) or N clusters drawn with
        replacement (module docstring).
    return_draws : bool
        Keep the ``(n_boot, G)`` resampled estimates in ``draws`` (for a covariance).

    Returns
    -------
    MassFunctionEstimate
    """
    m, s = _check_estimates(log10_m_est, sigma_dex)
    if not volume_mpc_h3 > 0:
        raise ValueError(f"volume_mpc_h3 must be > 0, got {volume_mpc_h3}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}")
    w = kde_weights(s)
    h = kde_bandwidth(m, w, bandwidth_dex, s)
    g = np.asarray(log10_m_grid, dtype=float)
    k = _kernel_matrix(g, m, h) * w[:, None]           # (N, G), weighted kernels
    scale = m.size / float(volume_mpc_h3)
    est = scale * k.sum(axis=0) / w.sum()
    lo = hi = sd = np.full(g.shape, np.nan)
    draws = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = np.empty((n_boot, g.size))
        chunk = max(1, int(2e7 // max(m.size, 1)))
        for b0 in range(0, n_boot, chunk):
            nb = min(chunk, n_boot - b0)
            if bootstrap == "poisson":
                c = rng.poisson(1.0, size=(nb, m.size)).astype(float)
            else:
                c = rng.multinomial(m.size, np.full(m.size, 1.0 / m.size),
                                    size=nb).astype(float)
            cw = c @ w
            with np.errstate(invalid="ignore", divide="ignore"):
                d = (c.sum(axis=1) / float(volume_mpc_h3))[:, None] * (c @ k) / cw[:, None]
            d[cw <= 0] = 0.0                            # a resampling without clusters
            draws[b0:b0 + nb] = d
        lo, hi = np.percentile(draws, [100 * _LO68, 100 * _HI68], axis=0)
        sd = draws.std(axis=0, ddof=1)
    log.info("mass function: %d clusters in %.4g (h^-1 Mpc)^3, kernel %.3g..%.3g dex, "
             "%d %s bootstrap draws", m.size, volume_mpc_h3, h.min(), h.max(), n_boot,
             bootstrap)
    return MassFunctionEstimate(log10_m=g, dn_dlog10m=est, lo68=lo, hi68=hi, boot_sd=sd,
                                bandwidth_dex=h, weights=w, n_clusters=int(m.size),
                                volume_mpc_h3=float(volume_mpc_h3), n_boot=int(n_boot),
                                seed=int(seed), bootstrap=bootstrap,
                                draws=draws if return_draws else None)


def forward_in_band(est: MassFunctionEstimate, forward, sv, compared):
    """Where ``forward`` lies inside the estimate's bootstrap band (``lo68 <= forward <=
    hi68``), and inside the band widened by the sample variance (``|estimate - forward|
    <= sqrt(((hi68 - lo68) / 2)^2 + sv^2)``), on the ``compared`` nodes only: the band
    counts of the data and of :func:`null_band_fractions`.

    Returns
    -------
    (ndarray, ndarray)
        Boolean masks on the grid.
    """
    forward = np.asarray(forward, dtype=float)
    compared = np.asarray(compared, dtype=bool)
    half = 0.5 * (est.hi68 - est.lo68)
    inside = compared & (est.lo68 <= forward) & (forward <= est.hi68)
    inside_sv = compared & (np.abs(est.dn_dlog10m - forward) <= np.hypot(half, sv))
    return inside, inside_sv


def _sample_masses(mt, n, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` masses drawn from the density ``n`` tabulated on the grid ``mt`` (inverse
    CDF of its trapezoidal integral)."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (n[1:] + n[:-1]) * np.diff(mt))])
    return np.interp(rng.random(size) * cdf[-1], cdf, mt)


def band_chi2(est: MassFunctionEstimate, forward, sv, compared, kernel_dex: float,
              forward_scale: float) -> dict | None:
    """chi^2 of the estimate against the forward model over compared nodes spaced two
    kernel widths apart (nearly independent), with the bootstrap covariance of those nodes,
    the forward model's own Monte Carlo noise (its bootstrap variance / forward_scale) and
    the sample variance ``sv`` (absolute sd per node, one fully correlated fluctuation) --
    the test the band count approximates; None without bootstrap draws (``return_draws``).

    Returns
    -------
    dict or None
        ``chi2``, ``dof`` (nodes used), ``p_value`` (chi^2 survival function), the nodes'
        ``log10_m`` and ``node_step``.
    """
    from scipy import stats

    compared = np.asarray(compared, dtype=bool)
    if est.draws is None or not compared.any():
        return None
    forward, sv = np.asarray(forward, dtype=float), np.asarray(sv, dtype=float)
    idx = np.flatnonzero(compared)
    step = max(1, int(round(2.0 * kernel_dex / float(np.diff(est.log10_m)[0]))))
    idx = idx[::step]
    cov = np.atleast_2d(np.cov(est.draws[:, idx], rowvar=False))
    cov = cov * (1.0 + 1.0 / forward_scale) + np.outer(sv[idx], sv[idx])
    r = est.dn_dlog10m[idx] - forward[idx]
    try:
        val = float(r @ np.linalg.solve(cov, r))
    except np.linalg.LinAlgError:
        return None
    return dict(chi2=val, dof=int(idx.size), p_value=float(stats.chi2.sf(val, idx.size)),
                log10_m=est.log10_m[idx].tolist(), node_step=step,
                note="nodes spaced ~2 kernel widths; covariance = bootstrap x (1 + 1 / "
                     "forward_scale) + sample variance (rank one)")


# ---------------------------------------------------------------------------- priors


def prior_from_joint_pdf(pdf: JointPDF) -> np.ndarray:
    """The test-set mass prior implied by a calibration table: the ``log M`` marginal of
    the joint density (trapezoid over ``d~``), dex^-1 on ``pdf.m_grid``, normalised.

    It equals the 1-D Gaussian KDE of the test-set masses with the same bandwidth factor
    (the marginal of a Gaussian KDE is the KDE of the marginal), up to the kernel mass
    outside the ``d~`` range.
    """
    t = np.asarray(pdf.table, dtype=float)
    marg = pdf.d_step * (t.sum(axis=0) - 0.5 * (t[0] + t[-1]))
    norm = pdf.m_step * (marg.sum() - 0.5 * (marg[0] + marg[-1]))
    return marg / norm


def _uniform_step(m_grid):
    g = np.asarray(m_grid, dtype=float)
    if g.ndim != 1 or g.size < 3:
        raise ValueError("m_grid must be a 1-D grid of >= 3 nodes")
    d = np.diff(g)
    if not (np.all(d > 0) and np.allclose(d, d[0], rtol=1e-6, atol=0.0)):
        raise ValueError("m_grid must be uniform and increasing (log10 h^-1 Msun)")
    return g, float((g[-1] - g[0]) / (g.size - 1))


def _mass_function_rows(m_grid, z, cosmology, n_z_nodes=17):
    """dn/dlog10M on ``m_grid`` at each redshift of ``z`` (K,), shape (K, G)."""
    z = np.atleast_1d(np.asarray(z, dtype=float))
    uz = np.unique(z)
    if uz.size <= n_z_nodes:
        tab = np.array([tinker08_dndlog10m(m_grid, zz, cosmology) for zz in uz])
        return tab[np.searchsorted(uz, z)]
    nodes = np.linspace(uz[0], uz[-1], n_z_nodes)
    logtab = np.log([tinker08_dndlog10m(m_grid, zz, cosmology) for zz in nodes])
    j = np.clip(np.searchsorted(nodes, z) - 1, 0, n_z_nodes - 2)
    f = ((z - nodes[j]) / (nodes[j + 1] - nodes[j]))[:, None]
    return np.exp((1.0 - f) * logtab[j] + f * logtab[j + 1])


def population_prior_posterior(m_grid, flat_posterior, z, cosmology: Cosmology,
                               test_prior_density, *, log10_m_range=None,
                               prior_floor: float = 1e-6):
    """Re-weight calibrated (test-set prior) posteriors by the mass function.

    Parameters
    ----------
    m_grid : array_like, shape (G,)
        Uniform log10 M200c grid, h^-1 Msun.
    flat_posterior : array_like, shape (G,) or (N, G)
        Posteriors under the test-set prior, dex^-1 (need not be normalised).
    z : float or array_like, shape (N,)
        Cluster redshift(s): the mass function is Tinker (2008) at each.
    cosmology : Cosmology
    test_prior_density : array_like, shape (G,), or callable
        The test-set mass prior on ``m_grid`` (e.g. :func:`prior_from_joint_pdf`),
        or a function of log10 M returning it; any normalisation.
    log10_m_range : (float, float), optional
        True-mass range of the population, log10 h^-1 Msun: the prior is the mass function
        inside it and 0 outside. Give the survey's selection (e.g. a mass-selected sample's
        threshold) clipped to the calibrated range (:attr:`JointPDF.calibrated_mass_range`):
        outside the test set's masses the likelihood ``flat / test prior`` is the KDE's
        Gaussian tail, not a measurement, and the steep mass function would pull every
        low-mass posterior onto it.
    prior_floor : float
        Where the test prior is below ``prior_floor`` times its maximum the ratio is
        undefined and set to 0 (a warning reports posterior mass lost there).

    Returns
    -------
    ndarray, same shape as ``flat_posterior``
        ``P_pop(m | d)`` normalised to unit trapezoidal integral, dex^-1 (NaN rows where
        nothing is left).
    """
    g, dm = _uniform_step(m_grid)
    p = np.asarray(flat_posterior, dtype=float)
    one = p.ndim == 1
    p2 = np.atleast_2d(p)
    if p2.shape[1] != g.size:
        raise ValueError(f"flat_posterior has {p2.shape[1]} columns, m_grid {g.size} nodes")
    zz = np.broadcast_to(np.atleast_1d(np.asarray(z, dtype=float)), (p2.shape[0],))
    prior = (np.asarray(test_prior_density(g), dtype=float) if callable(test_prior_density)
             else np.asarray(test_prior_density, dtype=float))
    if prior.shape != g.shape or np.any(~np.isfinite(prior)) or np.any(prior < 0):
        raise ValueError("test_prior_density must be finite, >= 0 and given on m_grid")
    ok = prior > prior_floor * prior.max()
    if log10_m_range is not None:
        lo, hi = (float(v) for v in log10_m_range)
        if not lo < hi:
            raise ValueError(f"log10_m_range must be increasing, got {log10_m_range}")
        ok &= (g >= lo) & (g <= hi)
    ratio = np.zeros((p2.shape[0], g.size))
    nmf = _mass_function_rows(g, zz, cosmology)
    ratio[:, ok] = nmf[:, ok] / prior[ok]
    flat = _normalise_rows(p2.copy(), dm)
    lost = dm * np.nansum(np.where(ok, 0.0, flat), axis=1)
    if np.nanmax(lost, initial=0.0) > 1e-3:
        log.warning("population prior: up to %.3g of a posterior lies where the test-set "
                    "prior vanishes or outside the population's mass range; set to 0",
                    float(np.nanmax(lost)))
    out = _normalise_rows(flat * ratio, dm)
    return out[0] if one else out


def _likelihood_columns(pdf: JointPDF, m_true):
    """Yield ``(selection, cumulative)`` for the joint PDF's column nearest to each true
    mass: the clusters ``m_true[selection]`` share the column, whose running trapezoidal
    integral over ``pdf.d_grid`` is ``cumulative`` (unnormalised; empty columns skipped)."""
    table = np.asarray(pdf.table, dtype=float)
    col = np.clip(np.rint((np.asarray(m_true, dtype=float) - pdf.m_grid[0]) / pdf.m_step)
                  .astype(int), 0, pdf.m_grid.size - 1)
    for j in np.unique(col):
        c = np.concatenate([[0.0], np.cumsum(0.5 * (table[1:, j] + table[:-1, j]))])
        if c[-1] > 0:
            yield col == j, c


def likelihood_pit(pdf: JointPDF, d_pred, m_true) -> np.ndarray:
    """Probability integral transform of predictions in the calibrated likelihood:
    ``u = P(d~' <= d~ | M)`` from the joint PDF's column at each true mass (nearest node).

    If a sample's network predictions follow the test set's ``P(d~ | M)`` (the assumption
    behind every calibrated posterior of that sample), ``u`` is uniform on [0, 1]
    whatever the sample's mass distribution. A survey whose clusters are observed
    differently from the mock's (centres, redshifts, windows, selection) shows up as a
    non-uniform ``u``: a mean above 1/2 means predictions high for the true mass.

    Returns
    -------
    ndarray
        ``u`` in [0, 1], NaN where the prediction or the mass is not finite or the column
        is empty.
    """
    d = np.asarray(d_pred, dtype=float)
    m = np.asarray(m_true, dtype=float)
    u = np.full(d.shape, np.nan)
    ok = np.isfinite(d) & np.isfinite(m)
    idx = np.flatnonzero(ok)
    for sel, c in _likelihood_columns(pdf, m[ok]):
        u[idx[sel]] = np.interp(d[idx[sel]], pdf.d_grid, c) / c[-1]
    return u


def observe_through_calibration(pdf: JointPDF, m_true, cosmology: Cosmology, *,
                                rng: np.random.Generator, z=0.1, prior: str = "flat",
                                estimate: str = "median", log10_m_range=None):
    """Mock observations of clusters of known true mass through the calibration: a network
    prediction ``d~`` drawn for each from the joint PDF's column at its mass
    (``P(d~ | M)``, inverse CDF over ``pdf.d_grid``, nearest mass node), then its posterior
    under ``prior`` ("flat" = the test-set prior, or "population" at redshift ``z``,
    truncated to ``log10_m_range``) summarised by ``estimate`` and the posterior sd.

    Returns
    -------
    (m_est, sd) : ndarray, ndarray
        Shape of ``m_true``; NaN where the column or the posterior is empty.
    """
    if prior not in ("flat", "population"):
        raise ValueError(f"prior must be 'flat' or 'population', got {prior!r}")
    m_true = np.asarray(m_true, dtype=float)
    n = m_true.size
    d = np.full(n, np.nan)
    u = rng.random(n)
    for sel, c in _likelihood_columns(pdf, m_true):
        d[sel] = np.interp(u[sel] * c[-1], c, pdf.d_grid)
    zs = np.broadcast_to(np.asarray(z, dtype=float), (n,))
    test_prior = prior_from_joint_pdf(pdf)
    m_est = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    key = "test_prior" if prior == "flat" else "population_prior"
    idx = np.flatnonzero(np.isfinite(d))
    level = log.level
    log.setLevel(logging.ERROR)          # posterior mass cut at the range edges is expected
    try:
        for c0 in range(0, idx.size, 2048):
            sel = idx[c0:c0 + 2048]
            su = summaries_under_priors(pdf.m_grid, _pdf_rows(pdf, d[sel]), zs[sel],
                                        cosmology, test_prior,
                                        log10_m_range=log10_m_range)[key]
            m_est[sel], sd[sel] = su[estimate], su["sd"]
    finally:
        log.setLevel(level)
    return m_est, sd


def forward_model_calibrated(pdf: JointPDF, log10_m_grid, cosmology: Cosmology, *,
                             volume_mpc_h3: float, log10_m_true_range, bandwidth_dex,
                             z_clusters, z_mass_function: float, prior: str = "flat",
                             estimate: str = "median", dndlog10m: Callable | None = None,
                             scale: float = 20.0, seed: int = 0,
                             step_dex: float = 0.002) -> dict:
    """The mass function the estimator should see if the universe is Tinker's, through the
    calibrated likelihood ``P(d~ | M)`` of the joint PDF rather than a Gaussian scatter.

    A Monte Carlo of the survey, ``scale`` times larger: true masses drawn from
    ``dndlog10m`` (Tinker 2008 at ``z_mass_function`` by default) in
    ``log10_m_true_range``, observed through :func:`observe_through_calibration` (with a
    redshift resampled from ``z_clusters`` for the population prior), then the same
    weighted-KDE estimator with the same kernel ``bandwidth_dex`` as the data. The
    network's mean reversion, its mass-dependent scatter and the posterior edges are all in
    it; only the sample variance is reduced (by ``scale``), and the sample variance of the
    real survey (:func:`sample_variance_fraction`) is not in it.

    Returns
    -------
    dict
        ``dn_dlog10m`` (on ``log10_m_grid``, h^3 Mpc^-3 dex^-1), ``n_expected`` (clusters
        expected in the real volume), ``n_simulated``, ``m_true`` and ``m_est`` (the draws).
    """
    lo, hi = (float(v) for v in log10_m_true_range)
    mt = np.arange(lo, hi + 0.5 * step_dex, step_dex)
    n = np.asarray(dndlog10m(mt) if dndlog10m is not None
                   else tinker08_dndlog10m(mt, z_mass_function, cosmology), dtype=float)
    tw = np.full(mt.size, step_dex)
    tw[[0, -1]] *= 0.5
    n_expected = float(volume_mpc_h3) * float(np.sum(n * tw))
    n_sim = max(2, int(round(scale * n_expected)))
    rng = np.random.default_rng(seed)
    m_true = _sample_masses(mt, n, rng, n_sim)
    z = np.asarray(z_clusters, dtype=float)
    z = z[np.isfinite(z)]
    zs = rng.choice(z, size=n_sim) if z.size else np.full(n_sim, z_mass_function)
    m_est, sd = observe_through_calibration(pdf, m_true, cosmology, rng=rng, z=zs,
                                            prior=prior, estimate=estimate,
                                            log10_m_range=(lo, hi))
    ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    dn = kde_mass_function(m_est[ok], sd[ok], float(volume_mpc_h3) * ok.sum() / n_expected,
                           log10_m_grid, bandwidth_dex=bandwidth_dex)
    return dict(dn_dlog10m=dn, n_expected=n_expected, n_simulated=int(ok.sum()),
                m_true=m_true[ok], m_est=m_est[ok])


def null_band_fractions(pdf: JointPDF, log10_m_grid, cosmology: Cosmology, *,
                        forward, volume_mpc_h3: float, log10_m_true_range, bandwidth_dex,
                        log10_m_complete: float, z_clusters, z_mass_function: float,
                        sigma_lin: float | None = None, prior: str = "flat",
                        estimate: str = "median", dndlog10m: Callable | None = None,
                        n_surveys: int = 200, n_boot: int = 200, bootstrap: str = "poisson",
                        seed: int = 0, step_dex: float = 0.002,
                        progress: bool = True) -> dict:
    """How often a survey of a Tinker universe, measured by this pipeline, puts the
    forward model inside its own band: the null distribution of the band-count statistic.

    Each of ``n_surveys`` mock surveys: a sample-variance fluctuation ``delta(M) = b(M)
    sigma_lin g`` (``g ~ N(0, 1)``, one per survey, :func:`sample_variance_fraction`; none
    when ``sigma_lin`` is None), a Poisson number of true masses from ``n(M) (1 +
    delta(M))`` in ``log10_m_true_range`` over the survey volume, each observed through the
    calibration (:func:`observe_through_calibration`), the estimator with its ``bootstrap``
    band and the data's kernel, and the fraction of grid nodes from ``log10_m_complete``
    to the survey's largest estimate where ``forward`` lies inside the band (and inside
    the band widened by the sample variance, as the data are compared). ``progress``: a
    tqdm bar over the surveys.

    Returns
    -------
    dict
        ``fraction_in_band`` and ``fraction_in_band_with_sample_variance`` (arrays, one
        per survey) and ``n_bins`` (nodes compared in each survey).
    """
    from tqdm.auto import tqdm

    lo, hi = (float(v) for v in log10_m_true_range)
    mt = np.arange(lo, hi + 0.5 * step_dex, step_dex)
    n = np.asarray(dndlog10m(mt) if dndlog10m is not None
                   else tinker08_dndlog10m(mt, z_mass_function, cosmology), dtype=float)
    grid = np.asarray(log10_m_grid, dtype=float)
    forward = np.asarray(forward, dtype=float)
    b_t = np.asarray(halo_bias(mt, z_mass_function, cosmology), dtype=float)
    sv_grid = (sample_variance_fraction(grid, z_mass_function, cosmology, volume_mpc_h3,
                                        sigma_lin=sigma_lin) * forward
               if sigma_lin is not None else np.zeros(grid.size))
    z = np.asarray(z_clusters, dtype=float)
    z = z[np.isfinite(z)]
    rng = np.random.default_rng(seed)
    frac = np.full(int(n_surveys), np.nan)
    frac_sv = np.full(int(n_surveys), np.nan)
    n_bins = np.zeros(int(n_surveys), dtype=int)
    level = log.level
    log.setLevel(logging.WARNING)        # one estimator log line per mock survey otherwise
    try:
        for k in tqdm(range(int(n_surveys)), desc="null surveys", unit="survey",
                      disable=not progress):
            g = rng.standard_normal() if sigma_lin is not None else 0.0
            nk = n * np.clip(1.0 + b_t * float(sigma_lin or 0.0) * g, 0.0, None)
            count = rng.poisson(float(volume_mpc_h3) * float(
                np.sum(0.5 * (nk[1:] + nk[:-1]) * np.diff(mt))))
            if count < 2:
                continue
            m_true = _sample_masses(mt, nk, rng, count)
            zs = rng.choice(z, size=count) if z.size else np.full(count, z_mass_function)
            m_est, sd = observe_through_calibration(pdf, m_true, cosmology, rng=rng, z=zs,
                                                    prior=prior, estimate=estimate,
                                                    log10_m_range=(lo, hi))
            ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
            if ok.sum() < 2:
                continue
            est = estimate_mass_function(m_est[ok], sd[ok], volume_mpc_h3, grid,
                                         bandwidth_dex=bandwidth_dex, n_boot=int(n_boot),
                                         bootstrap=bootstrap,
                                         seed=int(rng.integers(2 ** 32)))
            cmp = (grid >= log10_m_complete) & (grid <= m_est[ok].max())
            if not cmp.any():
                continue
            inside, inside_sv = forward_in_band(est, forward, sv_grid, cmp)
            n_bins[k] = int(cmp.sum())
            frac[k] = inside.sum() / cmp.sum()
            frac_sv[k] = inside_sv.sum() / cmp.sum()
    finally:
        log.setLevel(level)
    return dict(fraction_in_band=frac, fraction_in_band_with_sample_variance=frac_sv,
                n_bins=n_bins)


def forward_model_from_masses(pdf: JointPDF, m_true, log10_m_grid, cosmology: Cosmology, *,
                              volume_mpc_h3: float, bandwidth_dex, z_clusters=0.1,
                              prior: str = "flat", estimate: str = "median",
                              log10_m_range=None, repeats: int = 20,
                              seed: int = 0) -> np.ndarray:
    """What the estimator should see for *these* true masses (e.g. the synthetic survey's
    own clusters): each observed ``repeats`` times through
    :func:`observe_through_calibration`, the same estimator and kernel, normalised to the
    real number of clusters. Free of the sample variance that separates a survey from
    Tinker, so it checks the calibration and the estimator alone.

    Returns
    -------
    ndarray
        dn/dlog10 M on ``log10_m_grid``, h^3 Mpc^-3 dex^-1.
    """
    m_true = np.asarray(m_true, dtype=float)
    m_true = m_true[np.isfinite(m_true)]
    if m_true.size == 0:
        raise ValueError("forward_model_from_masses: no finite true mass")
    rng = np.random.default_rng(seed)
    m_rep = np.repeat(m_true, repeats)
    z = np.broadcast_to(np.asarray(z_clusters, dtype=float), m_true.shape)
    m_est, sd = observe_through_calibration(pdf, m_rep, cosmology, rng=rng,
                                            z=np.repeat(z, repeats), prior=prior,
                                            estimate=estimate, log10_m_range=log10_m_range)
    ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    vol = float(volume_mpc_h3) * ok.sum() / m_true.size
    return kde_mass_function(m_est[ok], sd[ok], vol, log10_m_grid, bandwidth_dex=bandwidth_dex)


def sample_variance_fraction(log10_m, z: float, cosmology: Cosmology,
                             volume_mpc_h3: float, *,
                             sigma_lin: float | None = None) -> np.ndarray:
    """Relative sample (cosmic) variance of the cluster density in a survey volume,
    ``b(M) sigma_lin``: the Tinker et al. (2010) bias (colossus, M200c) times the rms
    linear density contrast of the survey volume (Hu & Kravtsov 2003 to first order). One
    fluctuation moves all masses together (fully correlated across bins).

    ``sigma_lin`` is that of the survey's own window when given
    (:func:`window_sigma_lin`: the synthetic survey's cap inside its periodic box, whose
    modes stop at the box size); by default the top-hat sphere of the survey's volume
    (colossus ``sigma(R)`` at ``z``), which over-estimates a cap-shaped survey somewhat.

    Returns
    -------
    ndarray
        Fractional standard deviation of dn/dlog10 M at each mass.
    """
    if sigma_lin is None:
        sigma_lin = sphere_sigma_lin(volume_mpc_h3, z, cosmology)
    b = halo_bias(log10_m, z, cosmology)
    return np.asarray(b, dtype=float) * float(sigma_lin)


def sphere_sigma_lin(volume_mpc_h3: float, z: float, cosmology: Cosmology) -> float:
    """rms linear density contrast in the top-hat sphere of ``volume_mpc_h3`` (h^-1 Mpc)^3
    at ``z`` (colossus ``sigma(R)``)."""
    r = (3.0 * float(volume_mpc_h3) / (4.0 * np.pi)) ** (1.0 / 3.0)
    return float(cosmology.colossus.sigma(r, z))


def window_sigma_lin(weights, box_size_mpc_h: float, z: float,
                     cosmology: Cosmology) -> float:
    """rms linear density contrast averaged over a survey window in a periodic box.

    ``sigma^2 = (1 / V_box) sum_{k != 0} P_lin(k, z) |W(k)|^2`` over the box's lattice of
    modes, with ``W(k) = sum_x w(x) exp(-i k.x)`` the transform of the window's cell weights
    normalised to unit sum: the variance of the window-averaged contrast of a Gaussian
    field of power ``P_lin`` (colossus) that lives on this periodic box. For the synthetic
    universe (a lognormal field with exactly these modes and no mode larger than the box)
    this is the sample variance of its survey; for a real survey, a box several times the
    window's size (zero-padded) gives the continuum integral
    ``int d^3k / (2 pi)^3 P |W|^2`` up to the modes larger than that box.

    Parameters
    ----------
    weights : ndarray, shape (n, n, n)
        Window weight of every cell (e.g. the number of survey images of the cell); any
        normalisation.
    box_size_mpc_h : float
        Comoving side of the box, h^-1 Mpc.
    z : float
    cosmology : Cosmology

    Returns
    -------
    float
        sigma_lin of the window-averaged density contrast (dimensionless).
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 3 or len(set(w.shape)) != 1:
        raise ValueError("weights must be a cubic (n, n, n) grid of cell weights")
    if not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("window weights must be finite, >= 0 and not all zero")
    n = w.shape[0]
    f = np.fft.rfftn(w / w.sum())
    k1 = 2.0 * np.pi * np.fft.fftfreq(n, d=box_size_mpc_h / n)
    kz = 2.0 * np.pi * np.fft.rfftfreq(n, d=box_size_mpc_h / n)
    k = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + kz[None, None, :] ** 2)
    mult = np.full(kz.size, 2.0)                     # the half of k-space rfftn leaves out
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    p = np.zeros_like(k)
    nz = k > 0
    p[nz] = cosmology.colossus.matterPowerSpectrum(k[nz], z)
    var = np.sum(p * (f.real ** 2 + f.imag ** 2) * mult[None, None, :]) / box_size_mpc_h ** 3
    return float(np.sqrt(var))


def survey_window_weights(*, box_size_mpc_h: float, cells: int, observer_mpc_h,
                          radius_mpc_h: float, area_deg2: float, pole_ra_deg: float,
                          pole_dec_deg: float, inner_radius_mpc_h: float = 0.0,
                          periodic: bool = True) -> np.ndarray:
    """Cell weights of a cap-shaped survey volume (``inner_radius <= r <= radius``, within
    the cap of ``area_deg2`` around the pole, as :func:`cmpipe.survey.in_footprint`)
    around ``observer_mpc_h`` in a box of ``cells^3`` cells: the number of the volume's
    images (``periodic``: the box repeats, as the synthetic survey tiles it) or 0/1 (an
    isolated, zero-padded box) at every cell centre."""
    from .survey import cap_cos_half_angle
    from .sky import radec_to_unit

    L = float(box_size_mpc_h)
    cell = L / int(cells)
    x = (np.arange(int(cells)) + 0.5) * cell
    o = np.asarray(observer_mpc_h, dtype=float)
    pole = radec_to_unit(pole_ra_deg, pole_dec_deg)
    cos_cap = cap_cos_half_angle(area_deg2)
    reach = int(np.ceil(radius_mpc_h / L)) if periodic else 0
    out = np.zeros((cells,) * 3)
    for sx in range(-reach, reach + 1):
        dx = (x + sx * L - o[0])[:, None, None]
        for sy in range(-reach, reach + 1):
            dy = (x + sy * L - o[1])[None, :, None]
            for sz in range(-reach, reach + 1):
                dz = (x + sz * L - o[2])[None, None, :]
                r = np.sqrt(dx * dx + dy * dy + dz * dz)
                mu = (dx * pole[0] + dy * pole[1] + dz * pole[2]) / np.maximum(r, 1e-12)
                out += (r <= radius_mpc_h) & (r >= inner_radius_mpc_h) & (mu >= cos_cap)
    return out


def summarise_grid_posteriors(m_grid, posteriors) -> dict:
    """MAP, mean, median, sd and 68%/95% limits of posteriors tabulated on ``m_grid``.

    Same definitions as :func:`cmpipe.calibration.summarise` (trapezoidal moments, quantiles
    by linear interpolation of the node CDF, parabolic MAP), for posteriors given as arrays.

    Parameters
    ----------
    m_grid : array_like, shape (G,)
        Uniform grid, log10 h^-1 Msun.
    posteriors : array_like, shape (G,) or (N, G)
        Densities (any normalisation), dex^-1.

    Returns
    -------
    dict of ndarray, each shape (N,)
        ``map``, ``mean``, ``median``, ``sd``, ``lo68``, ``hi68``, ``lo95``, ``hi95``
        (log10 h^-1 Msun; sd in dex). NaN for rows with no mass.
    """
    g, dm = _uniform_step(m_grid)
    p = _normalise_rows(np.atleast_2d(np.asarray(posteriors, dtype=float)).copy(), dm)
    w = np.full(g.size, dm)
    w[[0, -1]] *= 0.5
    mean = (p * (w * g)).sum(axis=1)
    out = dict(map=_posterior_map(p, g[0], dm), mean=mean,
               sd=np.sqrt((p * (w * (g[None, :] - mean[:, None]) ** 2)).sum(axis=1)))
    good = np.isfinite(p[:, 0])
    cdf = np.full_like(p, np.nan)
    if good.any():
        cdf[good] = _posterior_cdf(p[good], dm)
    for key, q in QUANTILE_LEVELS.items():
        out[key] = np.where(good, _posterior_quantiles(np.nan_to_num(cdf), g[0], dm, q),
                            np.nan)
    for key in ("map", "mean", "sd"):
        out[key] = np.where(good, out[key], np.nan)
    return out


def summaries_under_priors(m_grid, flat_posterior, z, cosmology: Cosmology,
                           test_prior_density, *, log10_m_range=None) -> dict:
    """Posterior summaries under the test-set prior and under the mass-function prior.

    Returns
    -------
    dict
        ``{"test_prior": summaries, "population_prior": summaries, "shift_median": dex}``
        with the summaries of :func:`summarise_grid_posteriors` and the median shift
        (population minus test prior; about ``ln(10) beta sigma^2`` per the Eddington
        formula).
    """
    flat = summarise_grid_posteriors(m_grid, flat_posterior)
    pop = summarise_grid_posteriors(m_grid, population_prior_posterior(
        m_grid, flat_posterior, z, cosmology, test_prior_density,
        log10_m_range=log10_m_range))
    return {"test_prior": flat, "population_prior": pop,
            "shift_median": pop["median"] - flat["median"]}
