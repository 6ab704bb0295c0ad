"""Outlier tails of the calibration, chosen by cross-validation on the test split.

A Gaussian KDE of the (prediction, truth) pairs has the right core but too light tails
across the relation (:func:`~cmpipe.calibration.joint_pdf.tail_mixture` says why), so a
cluster a little beyond the most extreme test pair gets a posterior that excludes its true
mass at odds of millions to one. The calibration therefore mixes in an outlier component
``w B`` of width ``k`` times the relation's scatter at each mass.

``w`` and ``k`` (``calibration.tail_weight`` and ``tail_width``, ``auto`` by default) are
chosen on the test split alone (:func:`select_tail`): every candidate is scored by the
cross-validated log score, the mean over the test pairs of ``log P(m_true | d~)`` from a
calibration of the other four of five halo folds (a proper scoring rule: it rewards right
widths and punishes a truth in a too-light tail). The rule is the one-standard-error rule
(Breiman et al. 1984): the smallest weight whose score is within one standard error (over
halos) of the best score, because the score is flat near its maximum and a larger weight
only widens every posterior's core.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from .distance import DistanceJointPDF
from .joint_pdf import DEFAULT_TAIL_WIDTH, JointPDF, tail_mixture
from .crossval import cv_fold_tables
from .posterior import posterior_density_at

__all__ = ["TAIL_WEIGHTS", "TAIL_WIDTHS", "LOG_DENSITY_FLOOR", "with_tail", "select_tail",
           "selection_json", "tail_of", "tail_record"]

#: Candidate weights of the outlier component (0: the plain KDE).
TAIL_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1)
#: Candidate widths, in units of the table's scatter of d~ at each mass.
TAIL_WIDTHS = (2.0, 3.0)
#: Floor of the posterior density in the log score (dex^-1): a truth where a posterior
#: vanishes scores log(1e-300) = -690.8 instead of -inf.
LOG_DENSITY_FLOOR = 1e-300


def _mixed(pdf: JointPDF, weight: float, width: float) -> JointPDF:
    base_w = float(pdf.meta.get("tail_weight", 0.0))
    if base_w:
        raise ValueError("with_tail: the table already has an outlier component (tail_weight "
                         f"{base_w}); mix into a plain KDE")
    return dataclasses.replace(pdf, table=tail_mixture(pdf.table, pdf.d_grid, weight, width),
                               meta=dict(pdf.meta, tail_weight=float(weight),
                                         tail_width=float(width)))


def with_tail(pdf, weight: float, width: float):
    """The calibration ``pdf`` (a :class:`JointPDF` or :class:`DistanceJointPDF`, made
    without a tail) with the outlier component of ``weight`` and ``width`` mixed into every
    table (the distance nodes and the blind table alike); ``weight`` 0 returns ``pdf``."""
    if not float(weight):
        return pdf
    if isinstance(pdf, DistanceJointPDF):
        return dataclasses.replace(pdf, nodes=tuple(_mixed(n, weight, width)
                                                    for n in pdf.nodes),
                                   blind=_mixed(pdf.blind, weight, width))
    return _mixed(pdf, weight, width)


def _grouped_se(diff, group_index, n_groups) -> float:
    """Standard error of ``mean(diff)`` with pairs correlated within groups (halos): the
    per-group sums treated as independent."""
    sums = np.bincount(group_index, weights=diff, minlength=n_groups)
    if n_groups < 2:
        return float("inf")
    return float(np.sqrt(n_groups) * sums.std(ddof=1) / diff.size)


def select_tail(d_pred, m_true, groups, *, weights=TAIL_WEIGHTS, widths=TAIL_WIDTHS,
                n_folds: int = 5, seed: int = 0, distance=None, n_nodes: int | None = None,
                window: float | None = None, **tabulate_kwargs) -> dict:
    """Choose the outlier component's weight and width by cross-validation over halos.

    Parameters
    ----------
    d_pred, m_true : array_like, shape (N,)
        Test-set predictions d~ and true log10 M200c, log10 h^-1 Msun.
    groups : array_like, shape (N,)
        Host halo of each pair: folds and standard errors are over halos.
    weights, widths : sequence of float
        Candidates (a single value fixes it); weight 0 is the plain KDE, whatever the
        width.
    n_folds, seed : int
        Halo folds (:func:`~cmpipe.calibration.cv_fold_tables`).
    distance, n_nodes, window
        Observer distances [comoving h^-1 Mpc] and the distance-node settings: with
        ``distance`` every fold's calibration is distance-aware, as the run's.
    **tabulate_kwargs
        Bandwidth, grid sizes and shrink of :func:`~cmpipe.calibration.tabulate_joint_pdf`
        (not the tail).

    Returns
    -------
    dict
        ``weight``, ``width`` (the choice), ``cv_log_score`` (its mean log score, nats per
        pair), ``cv_log_score_best`` and ``cv_log_score_no_tail`` (NaN when 0 is not a
        candidate), ``candidates`` (each ``weight``, ``width``, ``cv_log_score``,
        ``se_vs_best``), ``n_pairs``, ``n_halos``, ``rule``.

    Raises
    ------
    ValueError
        No candidate, a candidate out of range, or too few halos for the folds.
    """
    cands = []
    for w in sorted({float(v) for v in weights}):
        if w == 0.0:
            cands.append((0.0, float(sorted(widths)[-1])))
        else:
            cands.extend((w, float(k)) for k in sorted({float(v) for v in widths}))
    if not cands:
        raise ValueError("select_tail: no candidate weights")
    for w, k in cands:                                  # refuse bad candidates up front
        tail_mixture(np.ones((3, 3)), np.arange(3.0), w, k)
    d = np.asarray(d_pred, dtype=float)
    m = np.asarray(m_true, dtype=float)
    D = None if distance is None else np.asarray(distance, dtype=float)
    scores = np.empty((len(cands), d.size))
    for out, pdf in cv_fold_tables(d, m, groups, n_folds=n_folds, seed=seed, distance=D,
                                   n_nodes=n_nodes, window=window, **tabulate_kwargs):
        for i, (w, k) in enumerate(cands):
            dens = posterior_density_at(with_tail(pdf, w, k), d[out], m[out],
                                        None if D is None else D[out])
            scores[i, out] = np.log(np.maximum(np.nan_to_num(dens), LOG_DENSITY_FLOOR))
    mean = scores.mean(axis=1)
    best = int(np.argmax(mean))
    _, gi = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    n_groups = int(gi.max()) + 1
    se = np.array([0.0 if i == best else _grouped_se(scores[i] - scores[best], gi, n_groups)
                   for i in range(len(cands))])
    ok = [i for i in range(len(cands)) if mean[i] >= mean[best] - se[i]]
    w_min = min(cands[i][0] for i in ok)
    chosen = max((i for i in ok if cands[i][0] == w_min), key=lambda i: mean[i])
    no_tail = [i for i, (w, _) in enumerate(cands) if w == 0.0]
    return dict(
        weight=cands[chosen][0], width=cands[chosen][1],
        cv_log_score=float(mean[chosen]), cv_log_score_best=float(mean[best]),
        cv_log_score_no_tail=float(mean[no_tail[0]]) if no_tail else float("nan"),
        candidates=[dict(weight=w, width=k, cv_log_score=float(mean[i]),
                         se_vs_best=float(se[i])) for i, (w, k) in enumerate(cands)],
        n_pairs=int(d.size), n_halos=n_groups,
        rule=f"{n_folds}-fold cross-validated log score over halos; the smallest weight "
             "within one standard error of the best")


def selection_json(selection: dict) -> str:
    """The candidates of :func:`select_tail` as a compact JSON string (HDF5 attribute)."""
    return json.dumps([[c["weight"], c["width"], round(c["cv_log_score"], 5),
                        round(c["se_vs_best"], 5)] for c in selection["candidates"]])


def tail_of(pdf) -> tuple[float, float]:
    """``(weight, width)`` of a calibration's outlier tail, read from its metadata (weight
    0: none, e.g. a table made before tails)."""
    meta = getattr(pdf, "blind", pdf).meta
    return (float(meta.get("tail_weight", 0.0)),
            float(meta.get("tail_width", DEFAULT_TAIL_WIDTH)))


def tail_record(pdf) -> dict:
    """The calibration's outlier tail for a metrics file (``calibration_tail``): ``weight``,
    ``width``, ``rule`` and, when it was chosen by :func:`select_tail`, the cross-validated
    log scores and every candidate (decoded from :func:`selection_json`)."""
    meta = getattr(pdf, "blind", pdf).meta
    weight, width = tail_of(pdf)
    out = dict(weight=weight, width=width, rule=meta.get("tail_rule", "none"))
    for k in ("cv_log_score", "cv_log_score_best", "cv_log_score_no_tail"):
        if f"tail_{k}" in meta:
            out[k] = float(meta[f"tail_{k}"])
    if "tail_candidates" in meta:
        out["candidates"] = [dict(weight=w, width=k, cv_log_score=sc, se_vs_best=se)
                             for w, k, sc, se in json.loads(meta["tail_candidates"])]
    out["note"] = ("outlier component mixed into every joint-PDF table "
                   "(cmpipe.calibration.tail_mixture); cv_log_score: mean log P(m_true | d~) "
                   "of the test pairs, each from a calibration of the other halo folds")
    return out
