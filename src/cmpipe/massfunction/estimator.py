"""The paper's mass-function estimator: a KDE of the clusters' mass estimates weighted
inversely by their uncertainties, with its bootstrap band (paper sec. 5, Fig. 10).

Paper, Fig. 10: "The CNN_3D mass function is computed by means of a kernel density
estimator, weighted inversely by the uncertainties of the mass estimates. Bootstrapping
was used to obtain the predicted 1 sigma confidence interval". The paper gives no more
detail; cmpipe's exact choices are:

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
    Neither holds the survey's sample variance
    (:func:`cmpipe.massfunction.theory.sample_variance_fraction`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..calibration import QUANTILE_LEVELS

__all__ = [
    "BOOTSTRAPS",
    "MassFunctionEstimate",
    "kde_weights",
    "kde_bandwidth",
    "kde_mass_function",
    "estimate_mass_function",
]

log = logging.getLogger(__name__)

_LO68 = QUANTILE_LEVELS["lo68"]
_HI68 = QUANTILE_LEVELS["hi68"]


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
