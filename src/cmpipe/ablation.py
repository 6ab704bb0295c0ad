"""Dimensionality ablation: CNN1D on ``v_los``, CNN2D on ``(R_proj, v_los)``, CNN3D (paper 4.4).

Paper Figs. 7 and 8 (``docs/science.md``, step 9): the same clusters, seen through inputs of
growing dimensionality, each network calibrated by the same SBI joint PDF and judged by the
same metrics. The expectation is ``CNN1D < CNN2D < CNN3D`` in precision.

Inputs
------
Every input is a normalised Gaussian KDE of the *same* window galaxies with the *same*
bandwidth convention (:mod:`cmpipe.kde`: kernel covariance ``h0**2`` x data covariance,
voxel centres, sum 1):

* 1-D: :func:`cmpipe.kde.kde_1d` of ``v_los`` on ``n`` centres over ``[-V, V]`` km/s. The
  ``v`` marginal of a Gaussian of covariance ``h0**2 C`` has variance ``h0**2 C_vv``, so this
  is *exactly* the ``v`` marginal of the 3-D KDE; on the grid the two differ by the kernel
  mass the 3-D cube drops beyond the sky window ``|x|, |y| <= L`` and, for kernels
  narrower than a voxel in ``x, y``, by the voxel sum standing in for the integral over
  ``x, y`` (measured L1 distance 0.3-1.6% on demo clusters; the tests bound it by the
  dropped mass and check float32 agreement for kernels wider than a voxel).
* 2-D: :func:`cmpipe.kde.kde_2d` of ``(R_proj, v_los)``, ``R_proj`` on ``[0, sqrt(2) L]``:
  the paper's and Ho et al. (2019)'s 2-D input. Its ``v`` marginal is again the 1-D input
  (up to the kernel mass at ``R < 0``); in ``R`` it is a KDE of the galaxies' radii with
  bandwidth ``h0 sd(R)``, whereas the ring marginal of the 3-D KDE smooths radii with the
  ``(x, y)`` kernel (``h0 sd(x)``): the two agree to the bandwidth scale (L1 distance
  0.07-0.12 on demo clusters), which is the sense in which the 2-D input is the marginal
  of the 3-D one. The azimuthal position angle, which the paper argues separates
  interlopers from members, is what the 2-D input discards.

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
from .kde import DEFAULT_H0, DEFAULT_TRUNCATION, kde_1d, kde_2d
from .metrics import DEFAULT_MASS_BINS, evaluation_report

__all__ = [
    "DIMS",
    "input_shape",
    "ablation_inputs",
    "network_report",
    "method_entry",
    "precision_order",
]

logger = logging.getLogger(__name__)

#: Ablation inputs built here; the 3-D cubes are the pipeline's own (``cubes/{split}.h5``).
DIMS = ("1d", "2d")

#: Axis description stored with each input file.
AXES = {"1d": "v_los_kms", "2d": "r_proj_mpc_h, v_los_kms"}


def input_shape(dim: str, n: int) -> tuple[int, ...]:
    """Grid shape of one ``dim`` input of ``n`` voxels per axis: ``(n,)`` or ``(n, n)``."""
    if dim not in DIMS:
        raise ValueError(f"dimensionality must be one of {DIMS}, got {dim!r}")
    return (int(n),) * (1 if dim == "1d" else 2)


def ablation_inputs(x_mpc_h, y_mpc_h, v_kms, offsets, dim: str, *, n: int,
                    half_width_mpc_h: float = 1.6, v_max_kms: float = 2200.0,
                    h0: float = DEFAULT_H0, truncation: float = DEFAULT_TRUNCATION,
                    min_galaxies: int = 3, ids=None, out: np.ndarray | None = None) -> np.ndarray:
    """1-D ``v_los`` or 2-D ``(R_proj, v_los)`` KDE inputs of many clusters.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N_total,)
        Projected positions relative to each cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N_total,)
        Line-of-sight velocities relative to each cluster centre, km/s.
    offsets : array_like of int, shape (n_clusters + 1,)
        Cluster ``k`` is rows ``offsets[k]:offsets[k+1]``.
    dim : {"1d", "2d"}
        Which input.
    n : int
        Voxels per axis.
    half_width_mpc_h : float
        Sky half-width ``L`` of the window, h^-1 Mpc (2-D: ``R_proj`` in ``[0, sqrt(2) L]``).
    v_max_kms : float
        Velocity half-width ``V``, km/s.
    h0, truncation, min_galaxies
        As in :func:`cmpipe.kde.kde_cube`.
    ids : sequence, optional
        Cluster ids named in error messages.
    out : numpy.ndarray, optional
        float32 array of shape ``(n_clusters, *input_shape(dim, n))`` to fill.

    Returns
    -------
    numpy.ndarray
        ``(n_clusters, n)`` or ``(n_clusters, n, n)`` float32; each input sums to 1.

    Raises
    ------
    cmpipe.kde.KDEInputError
        For a cluster with non-finite values or fewer than ``min_galaxies`` galaxies.
    """
    shape = input_shape(dim, n)
    cols = [np.asarray(c, dtype=np.float64) for c in (x_mpc_h, y_mpc_h, v_kms)]
    offsets = np.asarray(offsets, dtype=np.int64)
    n_clusters = offsets.size - 1
    if out is None:
        out = np.empty((n_clusters, *shape), dtype=np.float32)
    elif out.shape != (n_clusters, *shape) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(n_clusters, *shape)}")
    kw = dict(n=n, v_max_kms=v_max_kms, h0=h0, truncation=truncation,
              min_galaxies=min_galaxies)
    for k in range(n_clusters):
        r = slice(int(offsets[k]), int(offsets[k + 1]))
        cid = None if ids is None else ids[k]
        if dim == "1d":
            out[k] = kde_1d(cols[2][r], cluster_id=cid, **kw)
        else:
            out[k] = kde_2d(cols[0][r], cols[1][r], cols[2][r], cluster_id=cid,
                            half_width_mpc_h=half_width_mpc_h, **kw)
    return out


def network_report(pdf: JointPDF, pred: dict, *, point: str = "map",
                   bins=DEFAULT_MASS_BINS) -> dict:
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

    Returns
    -------
    dict
        :func:`cmpipe.metrics.evaluation_report` of the calibrated point estimates, plus
        ``n_extrapolated`` and ``n_left_out`` (zero-density posterior rows).
    """
    t = np.asarray(pred["log10_m200c_true"], dtype=np.float64)
    n_mem = np.maximum(np.asarray(pred["n_members"]), 1)
    summ, _ = posterior_table(pdf, pred, point=point)
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
