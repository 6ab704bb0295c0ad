"""Evaluation of the CNN3D + SBI estimator and the classical baselines on the eval set.

Everything is fitted on the *test* set (the joint PDF; the single offset each classical
estimator may need) and measured on the *eval* set only, so no number in
``metrics.json`` is tuned on the clusters it describes.
"""
from __future__ import annotations

import logging

import numpy as np

from ..calibration import JointPDF, posterior, posterior_cdf_at, summarise
from .metrics import (DEFAULT_MASS_BINS, evaluation_report, grouped_coverage_error,
                      interloper_diagnostic, residuals)

__all__ = ["BASELINES", "posterior_table", "baseline_table", "evaluate", "distance_thirds",
           "by_observer_distance"]

log = logging.getLogger(__name__)

#: Classical estimators reported beside the network: name -> column of baseline_masses.
BASELINES = {
    "msigma_gapper": "log10_m_msigma_gapper",
    "msigma_biweight": "log10_m_msigma_biweight",
    "virial": "log10_m_virial",
}


def posterior_table(pdf: JointPDF, pred: dict, *, point: str = "map", distance=None):
    """Posterior summaries, PIT values and the posterior curves of predicted clusters.

    Parameters
    ----------
    pdf : JointPDF
        The calibration (joint PDF of test-set predictions and truths).
    pred : dict of ndarray
        ``log10_m200c_pred`` (d~) and ``log10_m200c_true``, log10 h^-1 Msun.
    point : str
        Which summary is the point estimate.
    distance : ndarray, optional
        Observer distances of the clusters, comoving h^-1 Mpc (a distance-aware
        calibration, :class:`cmpipe.calibration.DistanceJointPDF`, needs them).

    Returns
    -------
    summaries : dict of ndarray
        :func:`cmpipe.calibration.summarise` output plus ``pit`` and ``point``.
    curves : ndarray, shape (N, n_m), float32
        Each cluster's normalised posterior density on ``pdf.m_grid`` (dex^-1).
    """
    d = np.asarray(pred["log10_m200c_pred"], dtype=np.float64)
    summ = summarise(pdf, d, distance)
    summ["pit"] = np.asarray(posterior_cdf_at(pdf, d, pred["log10_m200c_true"], distance),
                             dtype=np.float64)
    summ["point"] = summ[point]
    curves = np.empty((d.size, pdf.m_grid.size), dtype=np.float32)
    for i, di in enumerate(d):
        curves[i] = posterior(pdf, float(di), distance=None if distance is None
                              else float(distance[i]))[1]
    return summ, curves


def distance_thirds(distance, ok):
    """``(label, mask)`` of the thirds (by quantile) of the rows ``ok`` in observer
    distance, labelled ``"lo-hi"`` (comoving h^-1 Mpc); thirds of fewer than 2 rows, or
    all of them with fewer than 3 rows, are left out."""
    distance = np.asarray(distance, dtype=float)
    ok = np.asarray(ok, dtype=bool)
    if ok.sum() < 3:
        return
    q = np.quantile(distance[ok], [0.0, 1 / 3, 2 / 3, 1.0])
    for j in range(3):
        sel = ok & (distance >= q[j]) & ((distance < q[j + 1]) if j < 2
                                         else (distance <= q[j + 1]))
        if sel.sum() >= 2:
            yield f"{q[j]:.0f}-{q[j + 1]:.0f}", sel


def by_observer_distance(distance, halos, log10_m_true, point, lo68, hi68, *,
                         seed: int = 0) -> dict:
    """Residuals and 68% coverage of posteriors in thirds of the observer distance.

    The flux limit makes a nearby cluster richer than a distant one of the same mass, and
    the network reads richness: a calibration averaged over the mock's observer distances
    leaves nearby clusters too heavy and distant ones too light, which these rows show (a
    distance-aware calibration should leave every third unbiased).

    Parameters
    ----------
    distance : array_like, shape (N,)
        Observer distances, comoving h^-1 Mpc.
    halos : array_like, shape (N,)
        Host halo of each cluster: the coverage error resamples whole halos (a halo's
        sightlines are correlated).
    log10_m_true, point, lo68, hi68 : array_like, shape (N,)
        True mass, posterior point estimate and 68% interval, log10 h^-1 Msun; rows with
        a non-finite ``point`` are left out.
    seed : int
        Seed of the halo bootstrap.

    Returns
    -------
    dict
        Per third ``"lo-hi"``: ``n``, ``mean_residual_dex`` (log10 M_true - point) and its
        ``mean_residual_err_dex``, ``scatter_dex``, ``coverage_68`` and
        ``coverage_68_err_halos``; and a ``note``. Empty with fewer than 3 finite rows.
    """
    r = np.asarray(distance, dtype=float)
    halo = np.asarray(halos)
    t = np.asarray(log10_m_true, dtype=float)
    pt = np.asarray(point, dtype=float)
    lo, hi = np.asarray(lo68, dtype=float), np.asarray(hi68, dtype=float)
    fin = np.isfinite(pt)
    if fin.sum() < 3:
        return {}
    out = {}
    for label, sel in distance_thirds(r, fin):
        n = int(sel.sum())
        eps = residuals(t[sel], pt[sel])
        inside = (t[sel] >= lo[sel]) & (t[sel] <= hi[sel])
        out[label] = dict(
            n=n, mean_residual_dex=float(eps.mean()),
            mean_residual_err_dex=float(eps.std(ddof=1) / np.sqrt(n)),
            scatter_dex=float(eps.std(ddof=1)),
            coverage_68=float(np.mean(inside)),
            coverage_68_err_halos=grouped_coverage_error(inside, halo[sel],
                                                         seed=seed)["stderr_grouped"])
    out["note"] = ("clusters in thirds of their observer distance (comoving h^-1 Mpc): "
                   "residual log10 M_true - point estimate, 68% coverage with its error from "
                   "resampling whole halos; the flux limit makes nearby clusters richer, "
                   "which a distance-blind calibration does not know")
    return out


def baseline_table(galaxies: dict, cluster_ids, redshift, cosmology, **options) -> dict:
    """Classical masses of the clusters ``cluster_ids`` (sorted) from their window galaxies.

    ``galaxies`` holds ``cluster_id``, ``x_proj_mpc_h``, ``y_proj_mpc_h``, ``v_los_kms`` of
    at least these clusters, sorted by cluster id.
    """
    from .baselines import baseline_masses
    from ..io.mock import galaxy_offsets

    ids = np.asarray(cluster_ids)
    keep = np.isin(galaxies["cluster_id"], ids)
    g = {k: np.asarray(v)[keep] for k, v in galaxies.items()}
    offsets = galaxy_offsets(ids, g["cluster_id"])
    return baseline_masses(g["x_proj_mpc_h"], g["y_proj_mpc_h"], g["v_los_kms"], offsets,
                           redshift, cosmology, **options)


def flat_keys(prefix, report):
    o = report["overall"]
    out = {f"{prefix}mean_residual_dex": o["mean"], f"{prefix}scatter_dex": o["std"],
           f"{prefix}half_width_68_dex": o["half_width_68"], f"{prefix}n": o["n"]}
    if "precision" in report:
        p = report["precision"]
        out.update({f"{prefix}sigma_N_dex": p["sigma_N_dex"],
                    f"{prefix}sigma_N_err_dex": p["sigma_N_err_dex"],
                    f"{prefix}sigma_0_dex": p["sigma_0_dex"],
                    f"{prefix}sigma_0_err_dex": p["sigma_0_err_dex"]})
    return out


def evaluate(*, pdf: JointPDF, test_pred: dict, eval_pred: dict, eval_clusters: dict,
             test_baselines: dict, eval_baselines: dict, point: str = "map",
             bins=DEFAULT_MASS_BINS, distance=None):
    """All metrics of the network and the baselines on the eval set.

    Parameters
    ----------
    pdf : JointPDF
    test_pred, eval_pred : dict of ndarray
        Predictions tables (``cluster_id``, ``log10_m200c_true``, ``log10_m200c_pred``,
        ``n_members``) of the test and eval splits.
    eval_clusters : dict of ndarray
        Rows of the cluster table for the eval clusters, in the same order
        (``interloper_mass_ratio``, ``interloper_distance``).
    test_baselines, eval_baselines : dict of ndarray
        :func:`baseline_table` of the test and eval clusters, same orders.
    point : str
        The network's point estimate (``map``, ``median`` or ``mean``).
    distance : ndarray, optional
        Observer distances of the eval clusters, comoving h^-1 Mpc: needed with a
        distance-aware calibration (:class:`cmpipe.calibration.DistanceJointPDF`).

    Returns
    -------
    metrics : dict
        Flat headline keys (``n_eval``, ``mean_residual_dex``, ``scatter_dex``,
        ``coverage_68``, ``coverage_95``, ``sigma_N_dex``, ``sigma_0_dex``, the same
        residual keys per baseline prefixed by its name) and the full reports under
        ``network``, ``baselines`` and ``interlopers``.
    posteriors : dict of ndarray
        Per eval cluster: summaries, PIT, baseline masses, interloper data.
    curves : ndarray
        Posterior densities on ``pdf.m_grid``.
    """
    # the baselines (astropy's biweight) are imported here, not at module level: the
    # ablation's network_report uses posterior_table in envs/train.yaml, without astropy
    from .baselines import apply_offset, calibrate_offset

    if not np.array_equal(eval_pred["cluster_id"], eval_clusters["cluster_id"]):
        raise ValueError("eval predictions and cluster rows are not in the same order")
    t = np.asarray(eval_pred["log10_m200c_true"], dtype=np.float64)
    n_mem = np.maximum(np.asarray(eval_pred["n_members"]), 1)
    summ, curves = posterior_table(pdf, eval_pred, point=point, distance=distance)
    ok = np.isfinite(summ["point"])
    if not ok.all():
        log.warning("%d eval clusters have a zero-density posterior row and are left out",
                    int((~ok).sum()))
    net = evaluation_report(t[ok], {k: v[ok] for k, v in summ.items()}, pit=summ["pit"][ok],
                            n_mem=n_mem[ok], point="point", bins=bins)
    metrics = dict(
        n_eval=int(ok.sum()), n_test_pairs=int(pdf.n_pairs), point_estimate=point,
        **flat_keys("", net),
        coverage_68=net["coverage"]["68"]["fraction"],
        coverage_95=net["coverage"]["95"]["fraction"],
        n_extrapolated=int(np.count_nonzero(summ["extrapolated"])),
        mean_predictor_scatter_dex=float(np.std(t, ddof=1)) if t.size > 1 else np.nan,
        raw_prediction_scatter_dex=float(np.std(residuals(t, eval_pred["log10_m200c_pred"]),
                                                ddof=1)) if t.size > 1 else np.nan,
    )
    reports = {}
    post = dict(cluster_id=np.asarray(eval_pred["cluster_id"]), log10_m200c_true=t,
                log10_m200c_pred=np.asarray(eval_pred["log10_m200c_pred"], dtype=np.float64),
                n_members=np.asarray(eval_pred["n_members"]),
                n_gal=np.asarray(eval_pred["n_gal"]),
                interloper_mass_ratio=np.asarray(eval_clusters["interloper_mass_ratio"]),
                interloper_distance=np.asarray(eval_clusters["interloper_distance"]),
                **{k: np.asarray(v) for k, v in summ.items()})
    t_test = np.asarray(test_pred["log10_m200c_true"], dtype=np.float64)
    for name, col in BASELINES.items():
        raw_eval = np.asarray(eval_baselines[col], dtype=np.float64)
        raw_test = np.asarray(test_baselines[col], dtype=np.float64)
        fin = np.isfinite(raw_test)
        offset = calibrate_offset(raw_test[fin], t_test[fin]) if fin.any() else np.nan
        cal = apply_offset(raw_eval, offset)
        okb = np.isfinite(cal)
        rep = evaluation_report(t[okb], {"point": cal[okb]}, n_mem=n_mem[okb], point="point",
                                bins=bins)
        rep["offset_dex_from_test"] = float(offset)
        rep["raw"] = evaluation_report(t[okb], {"point": raw_eval[okb]}, point="point",
                                       bins=bins)["overall"]
        reports[name] = rep
        metrics.update(flat_keys(f"{name}_", rep))
        metrics[f"{name}_offset_dex"] = float(offset)
        metrics[f"{name}_raw_mean_residual_dex"] = rep["raw"]["mean"]
        post[f"log10_m_{name}"] = cal
    eps = np.full(t.shape, np.nan)
    eps[ok] = residuals(t[ok], summ["point"][ok])
    inter = interloper_diagnostic(eps[ok], post["interloper_mass_ratio"][ok],
                                  post["interloper_distance"][ok], log10_m_true=t[ok])
    metrics["network"] = net
    metrics["baselines"] = reports
    metrics["interlopers"] = {k: v for k, v in inter.items()
                              if not (isinstance(v, np.ndarray) and v.size == ok.sum())}
    return metrics, post, curves
