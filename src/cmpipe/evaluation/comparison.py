"""The estimators side by side: CNN3D + SBI, the neural flow, the set estimator (Deep Sets
flow), M-sigma and virial, on the eval sets of a contaminated and (optionally) a pure
catalogue.

Everything here is read from finished products -- ``evaluation/metrics.json`` (the CNN3D +
SBI posteriors and the classical baselines, each baseline with one offset fitted on the test
set), ``flow/metrics.json`` and ``sets/metrics.json`` -- so the numbers are the ones those rules measured with the
same :mod:`cmpipe.evaluation.metrics` functions on the same eval clusters. The talk's
headline ("the flow is about 4x better than M-sigma on contaminated mocks") is the ratio
``msigma_over_flow_scatter``. The table is written by :mod:`cmpipe.stages.compare`, the
figure drawn by :func:`cmpipe.plots.flow.comparison_figure`.
"""
from __future__ import annotations

import math

__all__ = ["ESTIMATORS", "POSTERIOR_ESTIMATORS", "DISTANCE_VARIANTS", "ROW_KEYS", "SURVEY_RANGE_KEYS",
           "estimator_rows", "distance_variant_rows", "comparison_summary"]

#: Estimator key -> (label, source, key prefix in its metrics JSON).
ESTIMATORS = {
    "cnn3d_sbi": ("CNN3D + SBI", "metrics", ""),
    "flow": ("neural flow", "flow", ""),
    "sets": ("Deep Sets flow", "sets", ""),
    "msigma_gapper": ("M-sigma (gapper)", "metrics", "msigma_gapper_"),
    "virial": ("virial", "metrics", "virial_"),
}

#: The CNN3D + SBI with the distance switched off, side by side with the run's own row:
#: estimator key -> label. ``cnn3d_sbi_blind_calibration``: the run's network under the
#: distance-blind calibration (``evaluation/metrics.json`` ``distance_blind``);
#: ``cnn3d_cube_only_sbi`` and ``..._blind_calibration``: the CNN3D trained without the
#: distance input (``ablation.cube_only``, ``ablation/3dcube/metrics.json``) under the
#: run's distance-aware calibration and under the distance-blind one (the paper's
#: pipeline).
DISTANCE_VARIANTS = {
    "cnn3d_sbi_blind_calibration": "CNN3D + SBI, distance-blind calibration",
    "cnn3d_cube_only_sbi": "CNN3D cube only + SBI",
    "cnn3d_cube_only_sbi_blind_calibration": "CNN3D cube only + SBI, distance-blind "
                                             "calibration (the paper's)",
}

#: Columns of a comparison row (after ``catalogue``, ``run``, ``estimator``, ``label``).
ROW_KEYS = ("n", "mean_residual_dex", "scatter_dex", "half_width_68_dex", "coverage_68",
            "coverage_68_err_halos", "coverage_95", "coverage_95_err_halos", "sigma_N_dex",
            "sigma_N_err_dex", "sigma_0_dex", "sigma_0_err_dex")

#: Keys of the posterior estimators' ``survey_range`` report copied to their rows as
#: ``survey_all_*`` (inside ``calibration.survey_mass_range``) and ``survey_top_*`` (its top
#: 0.3 dex); None for the point estimators.
SURVEY_RANGE_KEYS = ("n", "mean_residual_dex", "mean_residual_err_dex", "coverage_68",
                     "coverage_95")

_CATALOGUE_ORDER = ("contaminated", "contaminated_fiducial", "pure", "pure_fiducial")


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


#: The estimators with posteriors (coverage), in :data:`ESTIMATORS` order.
POSTERIOR_ESTIMATORS = tuple(k for k, v in ESTIMATORS.items() if v[2] == "")


def estimator_rows(catalogue: str, run: str, metrics: dict, flow_metrics: dict,
                   set_metrics: dict | None = None) -> list:
    """One row per estimator of one catalogue's eval set.

    Parameters
    ----------
    catalogue : str
        ``contaminated`` or ``pure``.
    run : str
        The run the metrics come from.
    metrics, flow_metrics : dict
        ``evaluation/metrics.json`` and ``flow/metrics.json`` of that run.
    set_metrics : dict, optional
        ``sets/metrics.json`` (the set estimator's row; none without it, e.g. a run made
        before the set estimator existed).

    Returns
    -------
    list of dict
        ``catalogue``, ``run``, ``estimator``, ``label`` and :data:`ROW_KEYS` (residuals in
        dex; coverage only for the posterior estimators, None for the point estimators).
    """
    rows = []
    src = {"metrics": metrics, "flow": flow_metrics, "sets": set_metrics}
    for key, (label, which, prefix) in ESTIMATORS.items():
        m = src[which]
        if m is None:
            continue
        if which != "metrics" and "uncalibrated" in m:  # recalibrate_flow / _sets
            label = f"{label} + SBI"
        row = dict(catalogue=catalogue, run=run, estimator=key, label=label)
        for k in ROW_KEYS:
            if k.startswith("coverage"):
                row[k] = _num(m.get(k)) if prefix == "" else None
            else:
                row[k] = _num(m.get(prefix + k))
        if row["n"] is None and prefix == "":
            row["n"] = m.get("n_eval")
        sr = (m.get("survey_range") or {}) if prefix == "" else {}
        for part in ("all", "top"):
            for k in SURVEY_RANGE_KEYS:
                row[f"survey_{part}_{k}"] = _num((sr.get(part) or {}).get(k))
        rows.append(row)
    return rows


def _report_row(rep: dict, n_eval) -> dict:
    """:data:`ROW_KEYS` of a network report (:func:`cmpipe.evaluation.ablation.network_report`)."""
    o, cov, p = rep["overall"], rep.get("coverage") or {}, rep.get("precision") or {}
    return dict(n=o.get("n", n_eval), mean_residual_dex=o.get("mean"),
                scatter_dex=o.get("std"), half_width_68_dex=o.get("half_width_68"),
                coverage_68=(cov.get("68") or {}).get("fraction"),
                coverage_68_err_halos=None,
                coverage_95=(cov.get("95") or {}).get("fraction"),
                coverage_95_err_halos=None,
                **{k: p.get(k) for k in ("sigma_N_dex", "sigma_N_err_dex", "sigma_0_dex",
                                         "sigma_0_err_dex")})


def distance_variant_rows(catalogue: str, run: str, metrics: dict,
                          cube_only_metrics: dict | None = None) -> list:
    """Rows of :data:`DISTANCE_VARIANTS` that the products hold (none for a distance-blind
    run without ``ablation.cube_only``): the same eval clusters as the run's CNN3D + SBI row.

    Parameters
    ----------
    catalogue, run : str
        As :func:`estimator_rows`.
    metrics : dict
        The run's ``evaluation/metrics.json`` (its ``distance_blind`` block).
    cube_only_metrics : dict, optional
        ``ablation/3dcube/metrics.json`` (``network`` and ``network_distance_blind``).
    """
    found = {}
    blind = metrics.get("distance_blind")
    if blind:
        found["cnn3d_sbi_blind_calibration"] = dict(
            {k: None for k in ROW_KEYS}, n=metrics.get("n_eval"),
            **{k: blind.get(k) for k in ("mean_residual_dex", "scatter_dex", "coverage_68",
                                         "coverage_95", "sigma_N_dex", "sigma_0_dex")})
    if cube_only_metrics:
        n = cube_only_metrics.get("n_eval")
        found["cnn3d_cube_only_sbi"] = _report_row(cube_only_metrics["network"], n)
        if "network_distance_blind" in cube_only_metrics:
            found["cnn3d_cube_only_sbi_blind_calibration"] = _report_row(
                cube_only_metrics["network_distance_blind"], n)
    rows = []
    for key, label in DISTANCE_VARIANTS.items():
        if key in found:
            row = dict(catalogue=catalogue, run=run, estimator=key, label=label)
            row.update({k: _num(found[key].get(k)) for k in ROW_KEYS})
            for part in ("all", "top"):
                for k in SURVEY_RANGE_KEYS:
                    row[f"survey_{part}_{k}"] = None
            rows.append(row)
    return rows


def _ratio(a, b):
    return float(a / b) if a is not None and b not in (None, 0) else None


def comparison_summary(catalogues: dict) -> dict:
    """The comparison of every estimator on every catalogue.

    Parameters
    ----------
    catalogues : dict
        ``{"contaminated" | "pure": {"run": str, "metrics": dict, "flow": dict}}``, each
        optionally with ``sets`` (the set estimator's metrics), ``set_seeds`` (its
        ``sets/seeds.json``) and ``cube_only`` (the cube-only CNN3D's metrics); with a fiducial-model
        run (``compare.fiducial_run``) also ``contaminated_fiducial`` (its own eval set: the
        models trained on one universe).

    Returns
    -------
    dict
        ``runs`` (catalogue -> run), ``rows`` (:func:`estimator_rows` of each catalogue, then
        its :func:`distance_variant_rows`),
        ``ratios`` per catalogue (scatters of CNN3D + SBI, flow, set estimator and M-sigma,
        dex, and ``msigma_over_flow_scatter``, ``msigma_over_cnn3d_sbi_scatter``,
        ``flow_over_cnn3d_sbi_scatter``, ``sets_over_flow_scatter``; with its seeds,
        ``sets_seed_scatter_dex``: mean, sd and values over the training seeds), and ``n_eval`` per catalogue and estimator.
    """
    rows, ratios, runs = [], {}, {}
    for cat in sorted(catalogues, key=lambda c: _CATALOGUE_ORDER.index(c)
                      if c in _CATALOGUE_ORDER else 99):
        c = catalogues[cat]
        runs[cat] = c["run"]
        r = estimator_rows(cat, c["run"], c["metrics"], c["flow"], c.get("sets"))
        rows += r + distance_variant_rows(cat, c["run"], c["metrics"], c.get("cube_only"))
        sc = {x["estimator"]: x["scatter_dex"] for x in r}
        sc.setdefault("sets", None)
        ratios[cat] = dict(
            cnn3d_sbi_scatter_dex=sc["cnn3d_sbi"], flow_scatter_dex=sc["flow"],
            sets_scatter_dex=sc["sets"],
            msigma_scatter_dex=sc["msigma_gapper"], virial_scatter_dex=sc["virial"],
            msigma_over_flow_scatter=_ratio(sc["msigma_gapper"], sc["flow"]),
            msigma_over_cnn3d_sbi_scatter=_ratio(sc["msigma_gapper"], sc["cnn3d_sbi"]),
            flow_over_cnn3d_sbi_scatter=_ratio(sc["flow"], sc["cnn3d_sbi"]),
            sets_over_flow_scatter=_ratio(sc["sets"], sc["flow"]))
        if c.get("set_seeds"):
            ratios[cat]["sets_seed_scatter_dex"] = c["set_seeds"].get("scatter_dex")
    return dict(
        runs=runs, rows=rows, ratios=ratios,
        definitions=dict(
            residual="log10(M_true / M_pred) on the eval set; posterior estimators use the "
                     "posterior point estimate (calibration.point_estimate), classical ones "
                     "one offset fitted on the test set",
            scatter_dex="standard deviation of the residuals",
            coverage="fraction of eval clusters whose true mass lies in the 68.27% / 95% "
                     "central posterior interval",
            sigma_N_sigma_0="fit of sigma^2 = sigma_N^2 (N_mem/100)^-1 + sigma_0^2 to the "
                            "residuals (cmpipe.evaluation.metrics.fit_precision_model)",
            msigma_over_flow_scatter="M-sigma (gapper) scatter / flow scatter; the talk "
                                     "quotes about 4 on contaminated MDPL2 mocks",
            distance_variants="the CNN3D + SBI with the cluster's distance switched off: "
                              "the same network under the distance-blind calibration, and "
                              "the CNN3D trained on the cube alone (ablation.cube_only, the "
                              "main CNN3D's training seed) under either calibration; same "
                              "eval clusters"))
