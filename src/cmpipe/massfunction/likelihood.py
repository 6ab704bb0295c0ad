"""The calibrated likelihood ``P(d~ | M)``: the joint PDF's columns, the PIT of predictions
in it, and mock observations of clusters of known mass through it.

Each column of the joint density (:class:`cmpipe.calibration.JointPDF`, rows ``d~``,
columns ``log M``) is, normalised over ``d~``, the distribution of the network's
prediction for a cluster of that true mass. :func:`likelihood_pit` tests whether a
sample's predictions follow it; :func:`observe_through_calibration` draws predictions from
it and summarises their posteriors, which the calibrated forward models
(:mod:`cmpipe.massfunction.forward`) feed to the estimator.
"""
from __future__ import annotations

import logging

import numpy as np

from ..calibration import DistanceJointPDF, JointPDF
from ..calibration.posterior import calibration_rows
from ..cosmology import Cosmology
from .priors import prior_from_joint_pdf, summaries_under_priors

__all__ = ["likelihood_columns", "likelihood_pit", "draw_predictions",
           "observe_through_calibration"]


def likelihood_columns(pdf: JointPDF, m_true):
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
    for sel, c in likelihood_columns(pdf, m[ok]):
        u[idx[sel]] = np.interp(d[idx[sel]], pdf.d_grid, c) / c[-1]
    return u


def draw_predictions(pdf, m_true, u, rng, distance=None):
    """Predictions ``d~`` drawn by inverse CDF (uniforms ``u``) from ``P(d~ | M)``: the
    joint PDF's column at each mass, or, for a :class:`DistanceJointPDF`, the column of
    one of the two distance nodes around each cluster's ``distance`` (chosen with the
    blend's weights), shifted by the drift ``s(D)``."""
    d = np.full(m_true.size, np.nan)
    if not isinstance(pdf, DistanceJointPDF):
        for sel, c in likelihood_columns(pdf, m_true):
            d[sel] = np.interp(u[sel] * c[-1], c, pdf.d_grid)
        return d
    lo, hi, w = pdf.node_weights(distance)
    node = np.where(rng.random(m_true.size) < w, hi, lo)
    for k, nd in enumerate(pdf.nodes):
        rows = np.flatnonzero(node == k)
        for sel, c in likelihood_columns(nd, m_true[rows]):
            d[rows[sel]] = np.interp(u[rows[sel]] * c[-1], c, nd.d_grid)
    return d + pdf.drift(distance)


def observe_through_calibration(pdf, m_true, cosmology: Cosmology, *,
                                rng: np.random.Generator, z=0.1, prior: str = "flat",
                                estimate: str = "median", log10_m_range=None):
    """Mock observations of clusters of known true mass through the calibration: a network
    prediction ``d~`` drawn for each from the joint PDF's column at its mass
    (``P(d~ | M)``, inverse CDF over ``pdf.d_grid``, nearest mass node), then its posterior
    under ``prior`` ("flat" = the test-set prior, or "population" at redshift ``z``,
    truncated to ``log10_m_range``) summarised by ``estimate`` and the posterior sd.

    With a distance-aware calibration (:class:`cmpipe.calibration.DistanceJointPDF`) each
    cluster is observed at the comoving distance of its redshift ``z``: ``d~`` from
    ``P(d~ | M, D)`` and its posterior sliced at ``D``, as the survey's posteriors are.

    Returns
    -------
    (m_est, sd) : ndarray, ndarray
        Shape of ``m_true``; NaN where the column or the posterior is empty.
    """
    if prior not in ("flat", "population"):
        raise ValueError(f"prior must be 'flat' or 'population', got {prior!r}")
    m_true = np.asarray(m_true, dtype=float)
    n = m_true.size
    u = rng.random(n)
    zs = np.broadcast_to(np.asarray(z, dtype=float), (n,))
    dist = None
    if isinstance(pdf, DistanceJointPDF):
        dist = np.asarray(cosmology.comoving_distance_mpc_h(zs), dtype=float).reshape(n)
    d = draw_predictions(pdf, m_true, u, rng, dist)
    test_prior = prior_from_joint_pdf(getattr(pdf, "blind", pdf))
    m_est = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    key = "test_prior" if prior == "flat" else "population_prior"
    idx = np.flatnonzero(np.isfinite(d))
    quiet = logging.getLogger(__package__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)        # posterior mass cut at the range edges is expected
    try:
        for c0 in range(0, idx.size, 2048):
            sel = idx[c0:c0 + 2048]
            rows = calibration_rows(pdf, d[sel], None if dist is None else dist[sel])
            su = summaries_under_priors(pdf.m_grid, rows, zs[sel],
                                        cosmology, test_prior,
                                        log10_m_range=log10_m_range)[key]
            m_est[sel], sd[sel] = su[estimate], su["sd"]
    finally:
        quiet.setLevel(level)
    return m_est, sd
