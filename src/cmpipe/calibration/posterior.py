"""Posteriors from the joint PDF: slices, summaries, PIT values.

The posterior of any cluster is the slice of the tabulated joint density
(:class:`cmpipe.calibration.JointPDF`) at its own network prediction ``d~`` (log10 h^-1
Msun), renormalised over ``log M`` (:func:`posterior`); :func:`summarise` gives MAP, mean,
median and interval limits for many clusters at once, :func:`posterior_cdf_at` the
probability integral transform (PIT) of a known true mass and :func:`cross_validated_pit`
the test set's own out-of-sample PIT values. The row helpers (:func:`posterior_rows`,
:func:`normalise_rows`, :func:`posterior_cdf`, :func:`cdf_quantiles`,
:func:`posterior_map`) are public: :mod:`cmpipe.massfunction` summarises re-weighted
posteriors with the same definitions.

Conventions
-----------
Slicing and extrapolation
    A prediction between two grid rows gets the linear interpolation of the two rows
    (``(1 - f) T[j] + f T[j+1]``), then is renormalised by the trapezoidal integral over the
    ``m`` grid. A prediction outside ``[d_grid[0], d_grid[-1]]`` is clipped to the edge row
    and flagged ``extrapolated`` (with the default margin: more than two kernel widths
    beyond every test-set prediction, outside what the calibration set can speak for; the
    edge-row posterior is a stand-in, not an extrapolation). A row with zero density (a
    prediction in a gap of the test set wider than twice the truncation radius) gives an
    all-NaN posterior.
Summaries
    From the normalised slice on the uniform ``m`` grid: MAP (grid maximum refined by a
    parabola through the three nodes around it), mean and standard deviation (trapezoidal
    moments), and quantiles from the trapezoidal CDF by linear interpolation between nodes:
    median, the 68.27% central interval (tails ``Phi(-1) = 15.87%`` each, ``docs/science.md``)
    and the 95% central interval (tails 2.5%).
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .distance import DistanceJointPDF
from .joint_pdf import JointPDF, is_extrapolated, posterior_rows

__all__ = [
    "QUANTILE_LEVELS",
    "calibration_rows",
    "normalise_rows",
    "posterior_cdf",
    "cdf_quantiles",
    "posterior_map",
    "posterior",
    "summarise",
    "posterior_cdf_at",
    "posterior_density_at",
]

logger = logging.getLogger(__name__)

#: Cumulative probabilities reported by :func:`summarise` (key -> level).
QUANTILE_LEVELS = {
    "lo95": 0.025,
    "lo68": 0.5 * math.erfc(1.0 / math.sqrt(2.0)),     # Phi(-1) = 0.158655
    "median": 0.5,
    "hi68": 1.0 - 0.5 * math.erfc(1.0 / math.sqrt(2.0)),
    "hi95": 0.975,
}
_CHUNK_ROWS = 2048


def calibration_rows(pdf, d, distance=None):
    """Unnormalised slices at predictions ``d`` (1-D, log10 h^-1 Msun) of either kind of
    calibration: a :class:`~cmpipe.calibration.JointPDF` (``distance`` ignored) or a
    :class:`~cmpipe.calibration.DistanceJointPDF`, blended at each cluster's ``distance``
    (comoving h^-1 Mpc, same length as ``d``)."""
    if isinstance(pdf, DistanceJointPDF):
        if distance is None:
            raise ValueError("a distance-aware calibration needs each cluster's distance")
        return pdf.rows(d, np.asarray(distance, dtype=np.float64))
    return posterior_rows(pdf, d)


def normalise_rows(p, dm):
    """Normalise rows of ``p`` to unit trapezoidal integral; all-zero rows become NaN."""
    norm = dm * (p.sum(axis=1) - 0.5 * (p[:, 0] + p[:, -1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / norm[:, None]
    p[~(norm > 0)] = np.nan
    return p


def posterior_cdf(p, dm):
    """Trapezoidal CDF at the nodes of normalised rows ``p``; ``cdf[:, 0] = 0``."""
    c = np.empty_like(p)
    c[:, 0] = 0.0
    np.cumsum(0.5 * dm * (p[:, 1:] + p[:, :-1]), axis=1, out=c[:, 1:])
    c /= c[:, -1:]                       # exactly 1 at the top (rounding)
    return c


def posterior(pdf: JointPDF, d_obs: float, *, with_flag: bool = False, distance=None):
    """Posterior ``P(log M | d~_obs)``: the slice of the joint density, renormalised.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : float
        The cluster's network prediction, log10 h^-1 Msun. Values outside the tabulated
        range use the edge row (see ``with_flag``).
    with_flag : bool
        Also return whether ``d_obs`` was outside the tabulated range (extrapolated).
    distance : float, optional
        The cluster's observer distance, comoving h^-1 Mpc: needed (and only used) with a
        :class:`~cmpipe.calibration.DistanceJointPDF`.

    Returns
    -------
    m_grid : numpy.ndarray, shape (n_m,)
        log10 M200c nodes, log10 h^-1 Msun (the table's own array; do not modify).
    p : numpy.ndarray, shape (n_m,)
        Posterior density, dex^-1, integrating to 1 (trapezoid) over ``m_grid``; all NaN if
        the density vanishes on that row.
    extrapolated : bool
        Only with ``with_flag``.
    """
    d = float(d_obs)
    if not math.isfinite(d):
        raise ValueError(f"posterior: prediction must be finite, got {d_obs}")
    if isinstance(pdf, DistanceJointPDF):
        p = normalise_rows(calibration_rows(pdf, np.array([d]), np.array([distance],
                                                                            dtype=float)),
                           pdf.m_step)[0]
        flag = bool(d < pdf.d_grid[0] or d > pdf.d_grid[-1])
        return (pdf.m_grid, p, flag) if with_flag else (pdf.m_grid, p)
    nd = pdf.d_grid.size
    u = min(max((d - pdf.d_grid[0]) / pdf.d_step, 0.0), nd - 1.0)
    j = min(int(u), nd - 2)
    f = u - j
    p = pdf.table[j] * (1.0 - f)
    p += f * pdf.table[j + 1]
    norm = pdf.m_step * (p.sum() - 0.5 * (p[0] + p[-1]))
    if norm > 0:
        p *= 1.0 / norm
    else:
        p[:] = np.nan
    if with_flag:
        return pdf.m_grid, p, bool(d < pdf.d_grid[0] or d > pdf.d_grid[-1])
    return pdf.m_grid, p


def cdf_quantiles(cdf, m0, dm, q):
    """Linear interpolation of the node CDF (rows) at level ``q``; log10 h^-1 Msun."""
    k = np.count_nonzero(cdf < q, axis=1)          # first node with cdf >= q
    k = np.clip(k, 1, cdf.shape[1] - 1)
    rows = np.arange(cdf.shape[0])
    c0, c1 = cdf[rows, k - 1], cdf[rows, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((q - c0) / (c1 - c0), 0.0, 1.0)
    return m0 + (k - 1 + frac) * dm


def posterior_map(p, m0, dm):
    """Posterior peak, refined by the parabola through the maximum node and neighbours."""
    n = p.shape[1]
    k = np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)
    rows = np.arange(p.shape[0])
    kk = np.clip(k, 1, n - 2)
    a, b, c = p[rows, kk - 1], p[rows, kk], p[rows, kk + 1]
    den = a - 2.0 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where((den < 0) & (k == kk), 0.5 * (a - c) / den, 0.0)
    return m0 + (k + np.clip(np.nan_to_num(shift), -0.5, 0.5)) * dm


def summarise(pdf: JointPDF, d_obs, distance=None) -> dict:
    """Posterior summaries for many clusters at once.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : array_like, shape (N,)
        Network predictions, log10 h^-1 Msun.
    distance : array_like, shape (N,), optional
        Observer distances, comoving h^-1 Mpc: needed (and only used) with a
        :class:`~cmpipe.calibration.DistanceJointPDF`.

    Returns
    -------
    dict of numpy.ndarray, each shape (N,)
        ``map``, ``mean``, ``median`` (log10 h^-1 Msun), ``sd`` (posterior standard
        deviation, dex), ``lo68``/``hi68`` (the 15.87% / 84.13% quantiles: the 68.27%
        central interval), ``lo95``/``hi95`` (2.5% / 97.5%), all log10 h^-1 Msun, and
        ``extrapolated`` (bool: prediction outside the tabulated range, edge row used).
        Rows with vanishing density give NaN.
    """
    d = np.atleast_1d(np.asarray(d_obs, dtype=np.float64)).ravel()
    dist = None if distance is None else np.broadcast_to(
        np.asarray(distance, dtype=np.float64), d.shape)
    m0, dm, mg = float(pdf.m_grid[0]), pdf.m_step, pdf.m_grid
    out = {k: np.empty(d.size) for k in ("map", "mean", "median", "sd", "lo68", "hi68",
                                         "lo95", "hi95")}
    for s in range(0, d.size, _CHUNK_ROWS):
        sl = slice(s, min(s + _CHUNK_ROWS, d.size))
        p = normalise_rows(calibration_rows(pdf, d[sl], None if dist is None else dist[sl]),
                           dm)
        w = np.full(mg.size, dm)
        w[[0, -1]] *= 0.5                            # trapezoid weights
        mean = (p * (w * mg)).sum(axis=1)
        var = (p * (w * (mg[None, :] - mean[:, None]) ** 2)).sum(axis=1)
        out["mean"][sl] = mean
        out["sd"][sl] = np.sqrt(var)
        out["map"][sl] = posterior_map(p, m0, dm)
        cdf = posterior_cdf(p, dm)
        for key, q in QUANTILE_LEVELS.items():
            out[key][sl] = cdf_quantiles(cdf, m0, dm, q)
        bad = ~np.isfinite(p[:, 0])
        if bad.any():
            for key in out:
                out[key][sl][bad] = np.nan
    out["extrapolated"] = is_extrapolated(pdf, d)
    n_ex = int(out["extrapolated"].sum())
    if n_ex:
        logger.warning("%d of %d predictions outside the tabulated d~ range [%.3f, %.3f]; "
                       "their posteriors use the edge row (flagged 'extrapolated')", n_ex,
                       d.size, pdf.d_grid[0], pdf.d_grid[-1])
    return out


def posterior_cdf_at(pdf: JointPDF, d_obs, m_true, distance=None) -> np.ndarray | float:
    """Posterior CDF at the true mass: the PIT value ``P(log M <= m_true | d~_obs)``.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : float or array_like, shape (N,)
        Network predictions, log10 h^-1 Msun.
    m_true : float or array_like, shape (N,)
        True log10 M200c, log10 h^-1 Msun; 0 below the grid, 1 above.
    distance : float or array_like, shape (N,), optional
        Observer distances, comoving h^-1 Mpc (a :class:`~cmpipe.calibration.DistanceJointPDF`
        only).

    Returns
    -------
    float or numpy.ndarray
        PIT values in [0, 1] (NaN for rows of vanishing density); a float for scalar input.
    """
    scalar = np.ndim(d_obs) == 0 and np.ndim(m_true) == 0
    out = _at_true_mass(pdf, d_obs, m_true, distance, "posterior_cdf_at",
                        lambda p: posterior_cdf(p, pdf.m_step), outside=None)
    return float(out[0]) if scalar else out


def _at_true_mass(pdf, d_obs, m_true, distance, name, of_rows, outside):
    """``of_rows`` (a function of the normalised posterior rows on the mass grid) linearly
    interpolated at each true mass; ``outside`` the value beyond the grid (None: the edge
    node's)."""
    d, mt = np.broadcast_arrays(np.atleast_1d(np.asarray(d_obs, dtype=np.float64)),
                                np.atleast_1d(np.asarray(m_true, dtype=np.float64)))
    d, mt = d.ravel(), mt.ravel()
    dist = None if distance is None else np.broadcast_to(
        np.asarray(distance, dtype=np.float64).ravel(), d.shape)
    if not np.all(np.isfinite(mt)):
        raise ValueError(f"{name}: true masses must be finite (got NaN/inf)")
    m0, dm, nm = float(pdf.m_grid[0]), pdf.m_step, pdf.m_grid.size
    out = np.empty(d.size)
    for s in range(0, d.size, _CHUNK_ROWS):
        sl = slice(s, min(s + _CHUNK_ROWS, d.size))
        vals = of_rows(normalise_rows(
            calibration_rows(pdf, d[sl], None if dist is None else dist[sl]), dm))
        u = (mt[sl] - m0) / dm
        inside = (u >= 0.0) & (u <= nm - 1.0)
        u = np.clip(u, 0.0, nm - 1.0)
        k = np.minimum(u.astype(np.int64), nm - 2)
        f = u - k
        r = np.arange(vals.shape[0])
        got = (1.0 - f) * vals[r, k] + f * vals[r, k + 1]
        out[sl] = got if outside is None else np.where(inside, got, outside)
    return out


def posterior_density_at(pdf: JointPDF, d_obs, m_true, distance=None) -> np.ndarray:
    """Posterior density at the true mass, ``P(m_true | d~_obs)`` (dex^-1): the normalised
    slice linearly interpolated between mass nodes (0 outside the grid; NaN for rows of
    vanishing density). Its log averaged over held-out pairs is the cross-validated log
    score of :func:`cmpipe.calibration.select_tail`.

    Parameters are those of :func:`posterior_cdf_at`; returns an array.
    """
    return _at_true_mass(pdf, d_obs, m_true, distance, "posterior_density_at",
                         lambda p: p, outside=0.0)


