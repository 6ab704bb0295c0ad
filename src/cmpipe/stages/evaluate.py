"""Calibration and evaluation rules: the joint PDF, eval-set posteriors, metrics, figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from ..cosmology import make_cosmology
from ..io.tables import CatalogueError, TableWriter, read_table
from ..settings import stage_seed
from .common import jsonable, settings_of, log
from .cubes import split_galaxies


def calibrate(*, config, test_predictions, clusters, out):
    """Rule ``calibrate``: the joint PDF P(d~, log M) of the test set, tabulated once, and
    with ``calibration.distance_aware`` its distance nodes P(d~, log M | D) (the test
    clusters' observer distances from ``clusters``) in the same file."""
    s = settings_of(config)
    pred, _ = read_table(test_predictions, group="predictions",
                         finite=["log10_m200c_true", "log10_m200c_pred"])
    pdf = tabulate_calibration(s, pred, clusters, test_predictions)
    pdf.save(out)
    c = s.calibration
    log.info("calibration: joint PDF of %d test pairs on %dx%d nodes%s", pdf.n_pairs,
             pdf.d_grid.size, pdf.m_grid.size,
             f", {c.distance_nodes} distance nodes" if c.distance_aware else "")


def tabulate_calibration(s, pred, clusters, source):
    """The calibration of ``calibration.*`` from test predictions ``pred``
    (``cluster_id``, ``log10_m200c_pred``, ``log10_m200c_true``): the joint PDF and, when
    distance-aware, its distance nodes (observer distances from ``clusters``), every table
    with the outlier tail of ``calibration.tail_weight``/``tail_width``
    (:func:`calibration_tail`; ``auto`` chooses it on these pairs). ``source`` (the
    predictions' file) is named in errors and recorded."""
    from ..calibration import tabulate_by_distance, tabulate_joint_pdf

    c = s.calibration
    if len(pred["cluster_id"]) < 10:
        raise CatalogueError(source, "log10_m200c_pred",
                             f"only {len(pred['cluster_id'])} test clusters to calibrate on",
                             "raise splits.fractions.test or sightlines.target_per_bin")
    rows = cluster_columns(clusters, pred["cluster_id"], ["observer_distance_mpc_h", "halo_id"])
    dist = (np.asarray(rows["observer_distance_mpc_h"], dtype=np.float64)
            if c.distance_aware else None)
    tail, tail_meta = calibration_tail(s, pred["log10_m200c_pred"], pred["log10_m200c_true"],
                                       rows["halo_id"], dist)
    kw = dict(bandwidth=c.bandwidth, shrink=c.shrink, tail_weight=tail[0], tail_width=tail[1],
              meta=dict(source=str(source), **tail_meta))
    pdf = tabulate_joint_pdf(pred["log10_m200c_pred"], pred["log10_m200c_true"],
                             n_d=c.n_grid_pred, n_m=c.n_grid_mass, **kw)
    if c.distance_aware:
        pdf = tabulate_by_distance(pred["log10_m200c_pred"], pred["log10_m200c_true"], dist,
                                   n_nodes=c.distance_nodes, window=c.distance_window,
                                   blind=pdf, **kw)
    return pdf


def calibration_tail(s, d_pred, m_true, halos, distance=None) -> tuple[tuple, dict]:
    """The outlier tail ``(weight, width)`` of ``calibration.tail_weight``/``tail_width``
    and its provenance for the joint PDF's metadata: fixed numbers as given, ``auto`` chosen
    on these test pairs by :func:`cmpipe.calibration.select_tail` (distance-aware folds
    when ``distance`` is given, the run's bandwidth and grids)."""
    from ..calibration import TAIL_WEIGHTS, TAIL_WIDTHS, select_tail, selection_json

    c = s.calibration
    weights = TAIL_WEIGHTS if c.tail_weight == "auto" else (float(c.tail_weight),)
    widths = TAIL_WIDTHS if c.tail_width == "auto" else (float(c.tail_width),)
    if len(weights) == 1 and (len(widths) == 1 or weights[0] == 0.0):
        tail = (weights[0], widths[-1])
        log.info("calibration tail: weight %g, width %g (fixed by calibration.tail_weight/"
                 "tail_width)", *tail)
        return tail, dict(tail_rule="fixed by calibration.tail_weight/tail_width")
    sel = select_tail(d_pred, m_true, halos, weights=weights, widths=widths,
                      seed=stage_seed(s.seed, "calibration_tail") % (2 ** 32),
                      distance=distance, n_nodes=c.distance_nodes, window=c.distance_window,
                      bandwidth=c.bandwidth, shrink=c.shrink, n_d=c.n_grid_pred,
                      n_m=c.n_grid_mass)
    log.info("calibration tail: weight %g, width %g chosen (cross-validated log score %.4f "
             "nats per pair; best %.4f, without a tail %.4f; %d pairs, %d halos)",
             sel["weight"], sel["width"], sel["cv_log_score"], sel["cv_log_score_best"],
             sel["cv_log_score_no_tail"], sel["n_pairs"], sel["n_halos"])
    return (sel["weight"], sel["width"]), dict(
        tail_rule=sel["rule"], tail_cv_log_score=sel["cv_log_score"],
        tail_cv_log_score_best=sel["cv_log_score_best"],
        tail_cv_log_score_no_tail=sel["cv_log_score_no_tail"],
        tail_candidates=selection_json(sel))


def cluster_columns(clusters, cluster_ids, columns) -> dict:
    """``columns`` of the cluster table for ``cluster_ids`` (in their order).

    Raises
    ------
    CatalogueError
        An id is not in the table.
    """
    cl, _ = read_table(clusters, group="clusters", columns=["cluster_id", *columns])
    row = np.searchsorted(cl["cluster_id"], cluster_ids)
    row = np.clip(row, 0, max(len(cl["cluster_id"]) - 1, 0))
    if len(cluster_ids) and not np.array_equal(cl["cluster_id"][row], cluster_ids):
        raise CatalogueError(clusters, "cluster_id", "predicted clusters missing from the "
                             "cluster table", "rebuild the predictions (snakemake ... "
                             "--forcerun summaries)")
    return {c: cl[c][row] for c in columns}


def bootstrap_seed(s) -> int:
    """Seed of the halo bootstraps of the eval-set metrics: one stream for every estimator
    judged on the eval clusters, so their coverage errors resample the same halos."""
    return stage_seed(s.seed, "evaluate") % (2 ** 32)


def observer_distances(clusters, cluster_ids) -> np.ndarray:
    """Observer distances (comoving h^-1 Mpc) of ``cluster_ids`` from the cluster table."""
    return np.asarray(cluster_columns(clusters, cluster_ids, ["observer_distance_mpc_h"])[
        "observer_distance_mpc_h"], dtype=np.float64)


POSTERIOR_SCHEMA_UNITS = {
    "log10_m200c_true": "log10(h^-1 Msun)", "log10_m200c_pred": "log10(h^-1 Msun)",
    "map": "log10(h^-1 Msun)", "mean": "log10(h^-1 Msun)", "median": "log10(h^-1 Msun)",
    "point": "log10(h^-1 Msun)", "sd": "dex", "lo68": "log10(h^-1 Msun)",
    "hi68": "log10(h^-1 Msun)", "lo95": "log10(h^-1 Msun)", "hi95": "log10(h^-1 Msun)",
}


def _predictions(path):
    pred, attrs = read_table(path, group="predictions")
    return pred


def _baselines_for(s, clusters, pred, redshift, cosmo):
    from ..evaluation.eval_set import baseline_table

    ids = pred["cluster_id"]
    if len(ids) == 0:
        return {}
    gal = split_galaxies(clusters, ids)
    return baseline_table(gal, ids, redshift, cosmo,
                          interlopers=s.baselines.interlopers,
                          min_galaxies=s.baselines.min_galaxies)


def evaluate(*, config, joint_pdf, test_predictions, eval_predictions, clusters, metrics_out,
             posteriors_out):
    """Rule ``evaluate``: posteriors and metrics of the network and baselines (eval set)."""
    from ..calibration import load_calibration
    from ..evaluation.eval_set import evaluate as run_evaluation

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    pdf = load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
    test_pred = _predictions(test_predictions)
    eval_pred = _predictions(eval_predictions)
    if len(eval_pred["cluster_id"]) == 0:
        raise CatalogueError(eval_predictions, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    cl, attrs = read_table(clusters, group="clusters")
    row = np.searchsorted(cl["cluster_id"], eval_pred["cluster_id"])
    eval_rows = {k: v[row] for k, v in cl.items()}
    z = attrs["redshift"]
    dist = np.asarray(eval_rows["observer_distance_mpc_h"], dtype=np.float64)
    kw = dict(test_pred=test_pred, eval_pred=eval_pred, eval_clusters=eval_rows,
              test_baselines=_baselines_for(s, clusters, test_pred, z, cosmo),
              eval_baselines=_baselines_for(s, clusters, eval_pred, z, cosmo),
              point=s.calibration.point_estimate,
              bins=eval_mass_bins(s, eval_pred["log10_m200c_true"]))
    metrics, post, curves = run_evaluation(pdf=pdf, distance=dist, **kw)
    metrics = dict(run=s.run, prior="test-set prior (flat in log M by construction)",
                   calibration=("distance-aware: P(d~, log M | D) at the cluster's observer "
                                "distance" if s.calibration.distance_aware else
                                "distance-blind: P(d~, log M) over all distances (the "
                                "paper's)"), **metrics)
    from ..calibration import tail_of, tail_record

    metrics.update(_coverage_checks(s, cl, test_pred, eval_pred, post, tail_of(pdf)))
    metrics["calibration_tail"] = tail_record(pdf)
    seed = bootstrap_seed(s)
    metrics["by_observer_distance"] = _by_distance(eval_rows, post, seed)
    metrics["survey_range"] = survey_range_report(s, eval_rows, post,
                                                  pdf.calibrated_mass_range)
    if s.calibration.distance_aware:
        blind, blind_post, _ = run_evaluation(pdf=pdf.blind, **kw)
        metrics["distance_blind"] = dict(
            note="the same eval clusters under the distance-blind calibration (the paper's)",
            **{k: blind.get(k) for k in ("mean_residual_dex", "scatter_dex", "coverage_68",
                                     "coverage_95", "sigma_N_dex", "sigma_0_dex")},
            by_observer_distance=_by_distance(eval_rows, blind_post, seed))
    io.write_json(metrics_out, jsonable(metrics))
    post["extrapolated"] = post["extrapolated"].astype(np.int8)
    schema = io.Schema({k: (np.asarray(v).dtype.str, POSTERIOR_SCHEMA_UNITS.get(k, ""), k)
                        for k, v in post.items()})
    with TableWriter(posteriors_out) as w:
        w.add_group("posteriors", schema, dict(
            prior="test-set prior (flat in log M): the paper's posterior",
            point_estimate=s.calibration.point_estimate))
        w.append("posteriors", post)
        w.add_group("grid", io.Schema({"log10_m200c": ("f8", "log10(h^-1 Msun)",
                                                        "mass grid of the curves")}))
        w.append("grid", {"log10_m200c": pdf.m_grid})
        w.add_array("curves", curves, unit="dex^-1", description=(
            "posterior density per eval cluster on grid/log10_m200c; rows as posteriors/"))
    log.info("eval: n=%d, mean residual %.3f dex, scatter %.3f dex, coverage 68%% %.3f, "
             "95%% %.3f, sigma_N %.3f, sigma_0 %.3f; M-sigma (gapper) scatter %.3f",
             metrics["n_eval"], metrics["mean_residual_dex"], metrics["scatter_dex"],
             metrics["coverage_68"], metrics["coverage_95"], metrics["sigma_N_dex"],
             metrics["sigma_0_dex"], metrics["msigma_gapper_scatter_dex"])


def eval_mass_bins(s, log10_m_true) -> np.ndarray:
    """0.2-dex mass bins of the eval metrics, from the selection threshold to the heaviest
    eval cluster (the training tail's top with ``simulation.tail``)."""
    from ..evaluation.metrics import mass_bin_edges

    top = float(np.max(log10_m_true)) if len(log10_m_true) else s.log10_m200c_min + 0.2
    return mass_bin_edges(s.log10_m200c_min, top + 1e-6)


#: Width of the top and bottom slices of the survey's mass range in the eval report, dex.
RANGE_END_DEX = 0.3


def survey_range_report(s, eval_rows, post, calibrated_range) -> dict:
    """Eval residuals and coverage inside the survey's mass range
    (``calibration.survey_mass_range``), in its top and bottom :data:`RANGE_END_DEX`, and
    how far the calibrated range (the test set's true masses) reaches beyond it.

    Errors of the means resample whole halos (a halo's sightlines are correlated)."""
    from ..evaluation.metrics import grouped_mean

    lo, hi = (float(v) for v in s.calibration.survey_mass_range)
    cal_lo, cal_hi = (float(v) for v in calibrated_range)
    t = np.asarray(post["log10_m200c_true"], dtype=float)
    fin = np.isfinite(post["point"])
    halo = np.asarray(eval_rows["halo_id"])
    seed = stage_seed(s.seed, "survey_range") % (2 ** 32)

    def block(a, b):
        sel = fin & (t >= a) & (t <= b)
        if sel.sum() < 2:
            return dict(log10_m_range=[a, b], n=int(sel.sum()))
        eps = t[sel] - post["point"][sel]
        r = grouped_mean(eps, halo[sel], seed=seed)
        out = dict(log10_m_range=[a, b], n=int(sel.sum()), n_halos=r["n_groups"],
                   mean_residual_dex=r["mean"], mean_residual_err_dex=r["stderr_grouped"],
                   scatter_dex=float(eps.std(ddof=1)))
        for lvl in ("68", "95"):
            inside = (t[sel] >= post[f"lo{lvl}"][sel]) & (t[sel] <= post[f"hi{lvl}"][sel])
            c = grouped_mean(inside.astype(float), halo[sel], seed=seed)
            out[f"coverage_{lvl}"] = c["mean"]
            out[f"coverage_{lvl}_err_halos"] = c["stderr_grouped"]
        return out

    margins = (lo - cal_lo, cal_hi - hi)
    rep = dict(log10_m_range=[lo, hi], calibrated_log10_m_range=[cal_lo, cal_hi],
               margin_below_dex=margins[0], margin_above_dex=margins[1],
               edge_free=bool(min(margins) >= 0.2), all=block(lo, hi),
               top=block(hi - RANGE_END_DEX, hi), bottom=block(lo, lo + RANGE_END_DEX),
               note="eval clusters with true log10 M in calibration.survey_mass_range; "
                    "top/bottom: its highest/lowest 0.3 dex; residual log10 M_true - point "
                    "estimate, errors from resampling whole halos; edge_free: the "
                    "calibrated range (test-set true masses) reaches >= 0.2 dex beyond both "
                    "ends, so no survey mass sits at a training edge")
    if not rep["edge_free"]:
        log.warning("the calibrated range %.2f-%.2f reaches only %.2f / %.2f dex beyond the "
                    "survey's %.2f-%.2f: clusters at its ends sit at a training edge (lower "
                    "selection.log10_m200c_min, raise simulation.tail.log10_m_max)",
                    cal_lo, cal_hi, *margins, lo, hi)
    log.info("survey range %.2f-%.2f: residual %.3f +- %.3f dex, coverage 68%% %.3f; top "
             "%.2f-%.2f: residual %.3f +- %.3f dex (n=%d), coverage 68%% %.3f", lo, hi,
             rep["all"].get("mean_residual_dex", np.nan),
             rep["all"].get("mean_residual_err_dex", np.nan),
             rep["all"].get("coverage_68", np.nan), hi - RANGE_END_DEX, hi,
             rep["top"].get("mean_residual_dex", np.nan),
             rep["top"].get("mean_residual_err_dex", np.nan), rep["top"]["n"],
             rep["top"].get("coverage_68", np.nan))
    return rep


def _by_distance(eval_rows, post, seed=0) -> dict:
    """:func:`cmpipe.evaluation.eval_set.by_observer_distance` of the eval posteriors ``post`` (the
    clusters' ``observer_distance_mpc_h`` and ``halo_id`` from ``eval_rows``)."""
    from ..evaluation.eval_set import by_observer_distance

    return by_observer_distance(eval_rows["observer_distance_mpc_h"], eval_rows["halo_id"],
                                post["log10_m200c_true"], post["point"], post["lo68"],
                                post["hi68"], seed=seed)


def _coverage_checks(s, cl, test_pred, eval_pred, post, tail=None) -> dict:
    """How sure the coverage numbers are: the eval-set coverage with errors from
    resampling whole halos (sightlines of one halo are correlated), and the test set's own
    out-of-sample coverage by 5-fold cross-validation over halos (3-4x the eval pairs)."""
    from ..evaluation.metrics import grouped_coverage_error

    halo = dict(zip(cl["cluster_id"].tolist(), cl["halo_id"].tolist()))
    eval_halos = np.array([halo[i] for i in eval_pred["cluster_id"].tolist()])
    test_halos = np.array([halo[i] for i in test_pred["cluster_id"].tolist()])
    seed = bootstrap_seed(s)
    fin = np.isfinite(post["point"])                  # as the metrics: posterior rows > 0
    m = post["log10_m200c_true"][fin]
    eval_halos = eval_halos[fin]
    out = {"n_eval_halos": int(np.unique(eval_halos).size)}
    for lvl, lo, hi in (("68", "lo68", "hi68"), ("95", "lo95", "hi95")):
        inside = (m >= post[lo][fin]) & (m <= post[hi][fin])
        out[f"coverage_{lvl}_err_halos"] = grouped_coverage_error(
            inside, eval_halos, seed=seed)["stderr_grouped"]
    test_dist = None
    if s.calibration.distance_aware:
        dist = dict(zip(cl["cluster_id"].tolist(), cl["observer_distance_mpc_h"].tolist()))
        test_dist = np.array([dist[i] for i in test_pred["cluster_id"].tolist()])
    out.update(cross_validated_coverage(s, test_pred["log10_m200c_pred"],
                                        test_pred["log10_m200c_true"], test_halos,
                                        distance=test_dist, tail=tail))
    out["coverage_checks"] = (
        "coverage_*_err_halos: s.d. of the coverage over 1000 resamplings of whole halos; "
        "test_cv_coverage_*: the test set's out-of-sample coverage, each of 5 halo folds "
        "calibrated on the other four as the run is (cmpipe.calibration.cross_validated_pit; "
        "test_cv_calibration says how), test_cv_by_observer_distance the same in thirds of "
        "the test pairs' distance")
    log.info("coverage 68%%: eval %.3f +- %.3f (%d halos); test set cross-validated %.3f "
             "+- %.3f (%d halos)", float(np.mean((m >= post["lo68"][fin])
                                                 & (m <= post["hi68"][fin]))),
             out["coverage_68_err_halos"], out["n_eval_halos"], out["test_cv_coverage_68"],
             out["test_cv_coverage_68_err_halos"], out["n_test_halos"])
    return out


def cross_validated_coverage(s, d_pred, m_true, halos, distance=None, tail=None) -> dict:
    """The test set's own out-of-sample coverage: each of 5 folds of whole halos calibrated
    on the other four (:func:`cmpipe.calibration.cross_validated_pit`) as the run is:
    ``calibration.*`` bandwidth and grids, the outlier ``tail`` ((weight, width); None:
    none) and, with ``distance`` (the pairs' observer distances, comoving h^-1 Mpc), the
    distance nodes; errors from resampling halos.

    Returns
    -------
    dict
        ``test_cv_coverage_68``, ``test_cv_coverage_95`` (+ ``_err_halos``),
        ``n_test_halos``, ``test_cv_calibration`` and, with ``distance``,
        ``test_cv_by_observer_distance`` (68% coverage in thirds of the test pairs'
        distance, with halo errors).
    """
    from ..calibration import DEFAULT_TAIL_WIDTH, cross_validated_pit
    from ..evaluation.eval_set import distance_thirds
    from ..evaluation.metrics import NOMINAL_68, grouped_coverage_error

    c = s.calibration
    halos = np.asarray(halos)
    seed = bootstrap_seed(s)
    D = None if distance is None else np.asarray(distance, dtype=np.float64)
    tail = tail or (0.0, DEFAULT_TAIL_WIDTH)
    pit = cross_validated_pit(d_pred, m_true, halos, seed=seed, bandwidth=c.bandwidth,
                              shrink=c.shrink, n_d=c.n_grid_pred, n_m=c.n_grid_mass,
                              tail_weight=tail[0], tail_width=tail[1], distance=D,
                              n_nodes=c.distance_nodes, window=c.distance_window)
    ok = np.isfinite(pit)
    out = {}
    for lvl, half in (("68", 0.5 * NOMINAL_68), ("95", 0.475)):
        inside = np.abs(pit[ok] - 0.5) < half
        g = grouped_coverage_error(inside, halos[ok], seed=seed)
        out[f"test_cv_coverage_{lvl}"] = g["fraction"]
        out[f"test_cv_coverage_{lvl}_err_halos"] = g["stderr_grouped"]
    out["n_test_halos"] = int(np.unique(halos).size)
    out["test_cv_calibration"] = ("distance-aware" if D is not None else "distance-blind") + (
        f", outlier tail weight {tail[0]:g} width {tail[1]:g}" if tail[0] else ", no tail")
    if D is not None:
        thirds = {}
        for label, sel in distance_thirds(D, ok):
            g = grouped_coverage_error(np.abs(pit[sel] - 0.5) < 0.5 * NOMINAL_68, halos[sel],
                                       seed=seed)
            thirds[label] = dict(n=int(sel.sum()), coverage_68=g["fraction"],
                                 coverage_68_err_halos=g["stderr_grouped"])
        out["test_cv_by_observer_distance"] = thirds
    return out


def evaluation_plots(*, joint_pdf, test_predictions, metrics, posteriors, joint_png,
                     predictions_png, calibration_png, interlopers_png, baselines_png):
    """Rule ``evaluation_plots``: paper Figs. 4-6, the calibration curve, baselines."""
    import json

    from ..plots import pipeline as plots
    from ..calibration import JointPDF

    m = json.loads(Path(metrics).read_text())
    post, _ = read_table(posteriors, group="posteriors")
    plots.joint_pdf_figure(JointPDF.load(joint_pdf), _predictions(test_predictions), joint_png)
    plots.predictions_figure(post, m, predictions_png)
    plots.calibration_figure(m, calibration_png)
    plots.interloper_figure(post, interlopers_png)
    plots.baselines_figure(m, baselines_png)


def training_plots(*, history, loss_png):
    """Rule ``training_plots``: the CNN3D's loss curve.

    Drawn by :func:`cmpipe.plots.pipeline.loss_curve_figure` from ``history.csv``, without
    importing :mod:`cmpipe.cnn.training` (Keras, TensorFlow): the rule runs in
    ``envs/plots.yaml``."""
    from ..plots import pipeline as plots

    plots.loss_curve_figure(history, loss_png)


def metrics_table(*, metrics, out):
    """Rule ``metrics_table``: ``evaluation/metrics.json`` as a CSV table for the report.

    One row per headline metric (the JSON's top-level numbers), one column per estimator:
    ``cnn3d_sbi`` (the network's posteriors) and each baseline (keys ``<baseline>_<metric>``
    in the JSON). Values keep 6 significant digits; the JSON keeps full precision."""
    import json

    from ..io.tables import write_csv

    m = json.loads(Path(metrics).read_text())
    baselines = list(m.get("baselines", {}))
    columns = ["cnn3d_sbi", *baselines]
    rows = {}
    for key, value in m.items():
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            continue
        owner = next((b for b in baselines if key.startswith(f"{b}_")), None)
        metric, column = (key[len(owner) + 1:], owner) if owner else (key, "cnn3d_sbi")
        rows.setdefault(metric, {})[column] = value
    write_csv(out, ["metric", *columns], [dict(vals, metric=metric)
                                          for metric, vals in rows.items()])
    log.info("metrics table: %d metrics x %d estimators -> %s", len(rows), len(columns), out)


#: Titles of the tables the report shows (rule ``report_tables``).
REPORT_TABLE_TITLES = {
    "metrics": "Evaluation metrics on the eval set (evaluation/metrics.csv)",
    "comparison": "Estimators compared (comparison/summary.csv)",
    "mass_function": "Survey mass function (survey/mass_function.csv)",
    "posteriors": "Survey posteriors per cluster (survey/posteriors.csv)",
}


def report_tables(*, tables, outs):
    """Rule ``report_tables``: HTML renderings of the key CSV tables for the report.

    ``tables`` and ``outs`` map the names of :data:`REPORT_TABLE_TITLES` to CSV inputs and
    HTML outputs."""
    from ..io.html import csv_to_html

    for name, csv_path in tables.items():
        n = csv_to_html(csv_path, outs[name], title=REPORT_TABLE_TITLES[name])
        log.info("report table %s: %d rows -> %s", name, n, outs[name])
