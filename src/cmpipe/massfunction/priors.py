"""Cluster posteriors under a population prior: the mass function instead of the test
set's mass distribution, and their summaries.

Conventions
-----------
Population prior
    The calibrated posterior is ``P(m | d) = P_test(m) L(d | m) / Z`` with the test set's
    mass distribution ``P_test`` as prior (roughly flat by construction). Swapping in the
    mass function at the cluster's redshift: ``P_pop(m | d) = P(m | d) n(m, z) / P_test(m)``,
    renormalised; undefined (set to 0, with a warning) where ``P_test`` vanishes.
    ``P_test`` is the ``log M`` marginal of the joint PDF (:func:`prior_from_joint_pdf`).
    The mass function as prior removes the Eddington bias of a flat-prior estimate
    (:func:`cmpipe.massfunction.theory.eddington_bias`).
Summaries
    :func:`summarise_grid_posteriors`: the definitions of
    :func:`cmpipe.calibration.summarise` for posteriors given as arrays on a grid.
"""
from __future__ import annotations

import logging

import numpy as np

from ..calibration import QUANTILE_LEVELS, JointPDF
from ..calibration.posterior import cdf_quantiles, normalise_rows, posterior_cdf, posterior_map
from ..cosmology import Cosmology
from .theory import tinker08_dndlog10m

__all__ = [
    "prior_from_joint_pdf",
    "population_prior_posterior",
    "summarise_grid_posteriors",
    "summaries_under_priors",
]

log = logging.getLogger(__name__)


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
        undefined and set to 0 (a warning reports posterior mass lost there; mass outside
        ``log10_m_range`` is cut by design and only logged at INFO).

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
    defined = prior > prior_floor * prior.max()
    in_range = np.ones(g.size, dtype=bool)
    if log10_m_range is not None:
        lo, hi = (float(v) for v in log10_m_range)
        if not lo < hi:
            raise ValueError(f"log10_m_range must be increasing, got {log10_m_range}")
        in_range = (g >= lo) & (g <= hi)
    ok = defined & in_range
    ratio = np.zeros((p2.shape[0], g.size))
    nmf = _mass_function_rows(g, zz, cosmology)
    ratio[:, ok] = nmf[:, ok] / prior[ok]
    flat = normalise_rows(p2.copy(), dm)
    # outside the population's mass range the prior is 0 by definition (the truncation the
    # caller asked for): logged; where the test prior vanishes inside it the likelihood is
    # undefined: a warning
    cut = dm * np.nansum(np.where(in_range, 0.0, flat), axis=1)
    lost = dm * np.nansum(np.where(in_range & ~defined, flat, 0.0), axis=1)
    if np.nanmax(cut, initial=0.0) > 1e-3:
        log.info("population prior: up to %.3g of a flat-prior posterior lies outside the "
                 "population's mass range %s (prior 0 there, as configured)",
                 float(np.nanmax(cut)), log10_m_range)
    if np.nanmax(lost, initial=0.0) > 1e-3:
        log.warning("population prior: up to %.3g of a posterior lies where the test-set "
                    "prior vanishes inside the population's mass range (likelihood "
                    "undefined); set to 0", float(np.nanmax(lost)))
    out = normalise_rows(flat * ratio, dm)
    return out[0] if one else out


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
    p = normalise_rows(np.atleast_2d(np.asarray(posteriors, dtype=float)).copy(), dm)
    w = np.full(g.size, dm)
    w[[0, -1]] *= 0.5
    mean = (p * (w * g)).sum(axis=1)
    out = dict(map=posterior_map(p, g[0], dm), mean=mean,
               sd=np.sqrt((p * (w * (g[None, :] - mean[:, None]) ** 2)).sum(axis=1)))
    good = np.isfinite(p[:, 0])
    cdf = np.full_like(p, np.nan)
    if good.any():
        cdf[good] = posterior_cdf(p[good], dm)
    for key, q in QUANTILE_LEVELS.items():
        out[key] = np.where(good, cdf_quantiles(np.nan_to_num(cdf), g[0], dm, q),
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
