"""Dimensionality ablation: CNN1D on ``v_los``, CNN2D on ``(R_proj, v_los)``, CNN3D (paper 4.4).

Paper Figs. 7 and 8 (``docs/science.md``, step 9): the same clusters, seen through inputs of
growing dimensionality, each network calibrated by the same SBI joint PDF and judged by the
same metrics. The expectation is ``CNN1D < CNN2D < CNN3D`` in precision.

Inputs
------
The 1-D and 2-D inputs are made by :mod:`cmpipe.images` (re-exported here).

Everything else (network layer specification, training settings, early stopping on the
validation split, SBI calibration on the test split, metrics on the eval split) is shared
with the CNN3D chain, so the comparison isolates the input dimensionality.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .calibration import JointPDF
from .evaluation import posterior_table
from .images import AXES, DIMS, ablation_inputs, input_shape
from .metrics import DEFAULT_MASS_BINS, evaluation_report

__all__ = [
    "DIMS",
    "AXES",
    "input_shape",
    "ablation_inputs",
    "network_report",
    "method_entry",
    "precision_order",
]

logger = logging.getLogger(__name__)


def network_report(pdf: JointPDF, pred: dict, *, point: str = "map",
                   bins=DEFAULT_MASS_BINS, distance=None) -> dict:
    """Eval-set report of one network through the SBI calibration ``pdf``.

    The same computation as the network part of :func:`cmpipe.evaluation.evaluate`:
    posterior slices of the joint PDF at each prediction, the point estimate ``point``,
    residuals, coverage of the 68%/95% intervals, PIT and the eq. (7) precision fit.

    Parameters
    ----------
    pdf : JointPDF
        This network's calibration (its own test-set predictions against truth).
    pred : dict of ndarray
        Eval predictions: ``log10_m200c_pred`` (d~), ``log10_m200c_true`` (log10 h^-1
        Msun) and ``n_members``.
    point : str
        Posterior point estimate (``map``, ``median`` or ``mean``).
    bins : array_like
        Mass-bin edges, log10 h^-1 Msun.
    distance : array_like, optional
        Observer distances of the eval clusters, comoving h^-1 Mpc (a distance-aware
        calibration needs them).

    Returns
    -------
    dict
        :func:`cmpipe.metrics.evaluation_report` of the calibrated point estimates, plus
        ``n_extrapolated`` and ``n_left_out`` (zero-density posterior rows).
    """
    t = np.asarray(pred["log10_m200c_true"], dtype=np.float64)
    n_mem = np.maximum(np.asarray(pred["n_members"]), 1)
    summ, _ = posterior_table(pdf, pred, point=point, distance=distance)
    ok = np.isfinite(summ["point"])
    rep = evaluation_report(t[ok], {k: v[ok] for k, v in summ.items()}, pit=summ["pit"][ok],
                            n_mem=n_mem[ok], point="point", bins=bins)
    rep["n_extrapolated"] = int(np.count_nonzero(summ["extrapolated"]))
    rep["n_left_out"] = int((~ok).sum())
    return rep


def method_entry(report: dict, *, label: str, kind: str) -> dict:
    """One row of the ablation table from an :func:`cmpipe.metrics.evaluation_report`.

    Parameters
    ----------
    report : dict
        An evaluation report (arrays or the JSON lists of ``metrics.json``).
    label : str
        Display name (e.g. ``"CNN2D + SBI"``).
    kind : {"network", "baseline"}
        Networks carry posterior coverage; baselines are point estimates only.

    Returns
    -------
    dict
        ``label``, ``kind``, ``n``, ``mean_residual_dex``, ``scatter_dex``,
        ``half_width_68_dex``, ``coverage_68``/``coverage_95`` (None for baselines),
        ``sigma_N_dex``, ``sigma_0_dex`` and their errors (eq. 7), and ``per_bin`` with
        ``bin_edges``, ``bin_centres`` (log10 h^-1 Msun), ``n``, ``mean``, ``std``,
        ``half_width_68`` (dex) per bin of true mass.
    """
    o = report["overall"]
    p = report.get("precision", {})
    cov = report.get("coverage")
    pb = report["per_bin"]
    return dict(
        label=label, kind=kind, n=int(o["n"]),
        mean_residual_dex=o["mean"], mean_residual_err_dex=o["mean_err"],
        scatter_dex=o["std"], half_width_68_dex=o["half_width_68"],
        coverage_68=cov["68"]["fraction"] if cov else None,
        coverage_95=cov["95"]["fraction"] if cov else None,
        sigma_N_dex=p.get("sigma_N_dex"), sigma_N_err_dex=p.get("sigma_N_err_dex"),
        sigma_0_dex=p.get("sigma_0_dex"), sigma_0_err_dex=p.get("sigma_0_err_dex"),
        per_bin={k: pb[k] for k in ("bin_edges", "bin_centres", "n", "mean", "std",
                                    "half_width_68")},
    )


def precision_order(methods: dict, order=("cnn1d", "cnn2d", "cnn3d")) -> dict:
    """Whether the overall scatter falls with dimensionality, as the paper finds.

    Parameters
    ----------
    methods : dict
        Ablation rows (:func:`method_entry`) keyed by method name.
    order : sequence of str
        Methods in order of growing input dimensionality.

    Returns
    -------
    dict
        ``order``, ``scatter_dex`` of each, ``monotonic`` (every step lowers the scatter)
        and ``steps``: per step the scatter difference and its standard error for
        independent samples of equal size, ``sd * sqrt(2 / (n - 1))`` summed in quadrature
        (an approximation: the networks see the same clusters, so errors are correlated
        and the real uncertainty of the difference is smaller).
    """
    present = [m for m in order if m in methods and methods[m].get("scatter_dex") is not None]
    sd = {m: float(methods[m]["scatter_dex"]) for m in present}
    steps = []
    for a, b in zip(present[:-1], present[1:]):
        err = math.sqrt(sum(sd[m] ** 2 * 2.0 / max(methods[m]["n"] - 1, 1) for m in (a, b)))
        steps.append(dict(step=f"{a} -> {b}", scatter_change_dex=sd[b] - sd[a],
                          approx_err_dex=err))
    return dict(order=present, scatter_dex=sd,
                monotonic=bool(all(s["scatter_change_dex"] < 0 for s in steps)) if steps
                else None, steps=steps)
