"""Neural-flow rules (issue 9); the estimator comparison is :mod:`cmpipe.stages.compare`.

Products under ``results/{run}/`` (docs/data-products.md, "Neural flow"):

- ``flow_images``           -> flow/images/{split}.h5 (2-D (R_proj, v) KDE images)
- ``flow_train``            -> flow/model/flow.pt, flow.json, history.csv
- ``flow_evaluate``         -> flow/metrics.json, flow/posteriors.h5
- ``flow_plots``            -> figures/flow_loss.png, flow_predictions.png, flow_calibration.png

The survey rules of the flow are :mod:`.flow_survey`.

torch is imported only inside the flow functions (never by ``cmpipe.stages`` itself), so the
other rules' processes do not load it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import io
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, TableWriter, read_table
from ..settings import SPLIT_CODES, ConfigError, stage_seed
from .common import jsonable, settings_of, log
from .cubes import cube_rows, split_galaxies
from .evaluate import bootstrap_seed, eval_mass_bins, survey_range_report

#: Clusters per batch of KDE images (bounds memory; one write per batch).
_IMAGE_BATCH = 256


def _flow_settings(s):
    from ..flow.training import FlowSettings

    d = {k: v for k, v in s.flow.to_dict().items() if k != "n_grid" and v is not None}
    d["seed"] = stage_seed(s.seed, "flow") % (2 ** 31)
    try:
        return FlowSettings.from_dict(d)
    except ValueError as err:
        raise ConfigError(f"flow: {err}. Fix: correct the flow section of the config") \
            from err


def _image_n(s) -> int:
    return int(s.flow.n_grid or s.kde.n_grid)


def set_flow_threads(threads):
    import torch

    torch.set_num_threads(max(1, int(threads)))


# -- inputs ---------------------------------------------------------------------------------

def _image_batches(s, gal, offsets, ids, source):
    """(b0, b1, images) of clusters ``ids[b0:b1]``, ``_IMAGE_BATCH`` at a time: the flow's
    2-D (R_proj, v) KDE images (the ablation's 2-D inputs, same code path) of the window
    galaxies ``gal`` (cluster ``k`` is rows ``offsets[k]:offsets[k+1]``)."""
    from ..kde import KDEInputError
    from ..kde.images import ablation_inputs

    k, n = s.kde, _image_n(s)
    for b0 in range(0, len(ids), _IMAGE_BATCH):
        b1 = min(b0 + _IMAGE_BATCH, len(ids))
        o = offsets[b0:b1 + 1]
        r = slice(int(o[0]), int(o[-1]))
        try:
            batch = ablation_inputs(gal["x_proj_mpc_h"][r], gal["y_proj_mpc_h"][r],
                                    gal["v_los_kms"][r], o - o[0], "2d", n=n,
                                    half_width_mpc_h=s.window.half_width_mpc_h,
                                    v_max_kms=s.window.v_max_kms, h0=k.h0,
                                    truncation=k.truncation, min_galaxies=3,
                                    ids=np.asarray(ids[b0:b1]).tolist())
        except KDEInputError as err:
            raise CatalogueError(source, "galaxies", str(err),
                                 "rebuild it with min_galaxies >= 3 or drop the "
                                 "cluster") from err
        yield b0, b1, batch


def write_flow_images(out, ids, gal, rows, s, split_name, source, progress):
    """2-D KDE images of clusters ``ids`` (sorted) from their window galaxies ``gal``."""
    from tqdm.auto import tqdm

    from ..io.cubes import CubeWriter

    n = _image_n(s)
    k = s.kde
    W, V = s.window.half_width_mpc_h, s.window.v_max_kms
    attrs = dict(n_grid=n, half_width_mpc_h=W, v_max_kms=V, h0=k.h0, truncation=k.truncation,
                 normalisation="each image sums to 1", split=split_name,
                 axes="R_proj_mpc_h, v_los_kms",
                 r_axis=f"voxel centres over [0, sqrt(2) x {W}] h^-1 Mpc",
                 v_axis=f"voxel centres over [-{V}, {V}] km/s")
    offsets = galaxy_offsets(ids, gal["cluster_id"]) if len(ids) else np.zeros(1, np.int64)
    with CubeWriter(out, len(ids), (n, n), attrs) as w:
        bar = tqdm(total=len(ids), desc=f"flow images {split_name}", unit="image",
                   disable=not progress)
        for b0, b1, batch in _image_batches(s, gal, offsets, ids, source):
            w.write(batch, {c: v[b0:b1] for c, v in rows.items()})
            bar.update(b1 - b0)
        bar.close()
    log.info("flow images %s: %d images of %dx%d (R_proj, v)", split_name, len(ids), n, n)


def flow_images(*, config, clusters, split_name, out, progress=False):
    """Rule ``flow_images``: the normalised 2-D KDE of (R_proj, v_los) of every cluster of
    one split (:func:`cmpipe.kde.kde_2d`, the cubes' bandwidth factor and window), with
    the cube files' per-cluster columns (the distance is the observer's)."""
    s = settings_of(config)
    cl, _ = read_table(clusters, group="clusters",
                       columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members",
                                "observer_distance_mpc_h"])
    rows = cube_rows(cl, cl["split"] == SPLIT_CODES[split_name])
    ids = rows["cluster_id"]
    gal = split_galaxies(clusters, ids) if len(ids) else {}
    write_flow_images(out, ids, gal, rows, s, split_name, clusters, progress)


# -- training ---------------------------------------------------------------------------

def flow_train(*, config, train, validation, model_out, threads=1, progress=False):
    """Rule ``flow_train``: the flow on the training split, early-stopped on validation."""
    from ..flow.training import train_flow

    s = settings_of(config)
    fs = _flow_settings(s)
    set_flow_threads(threads)
    r = train_flow(train, validation, Path(model_out).parent, fs, progress=progress)
    log.info("flow_train: %d parameters, best epoch %d of %d (validation NLL %.4f nats per "
             "cluster), stopped early: %s", r.n_params, r.best_epoch, r.epochs_run,
             r.best_val_nll, r.stopped_early)


# -- posteriors ---------------------------------------------------------------------------

def load_flow(model):
    """The trained flow of ``flow/model/flow.pt``: model, metadata and its mass grid."""
    from ..flow.training import FlowModel, grid_of

    fm, meta = FlowModel.load(Path(model).parent)
    return fm, meta, grid_of(meta)


def flow_curves(fm, grid, images, chunk=1024):
    """Posterior curves and in-grid probability of every image/cube of a file (given its
    ``distance_mpc_h`` when the flow takes the distance), or of every galaxy set of a set
    file for a set flow (:mod:`cmpipe.flow.sets`)."""
    from ..io.cubes import CubeReader

    if fm.settings.input == "set":
        from ..flow.sets import read_set_file

        cols, sets, _ = read_set_file(images, fm.settings.set_features)
        curves, mass = np.empty((len(sets), grid.size)), np.empty(len(sets))
        for i0 in range(0, len(sets), chunk):
            i1 = min(i0 + chunk, len(sets))
            curves[i0:i1], mass[i0:i1] = fm.posterior_curves(
                sets[i0:i1], grid, cols["distance_mpc_h"][i0:i1], source=images)
        return cols, curves, mass
    with CubeReader(images) as r:
        cols = {c: r.column(c) for c in ("cluster_id", "log10_m200c", "n_gal", "n_members",
                                         "distance_mpc_h")}
        if len(r) and tuple(r.shape[1:]) != fm.shape:
            raise CatalogueError(images, "cubes", f"inputs of shape {tuple(r.shape[1:])}, the "
                                 f"flow was trained on {fm.shape}",
                                 "rebuild the inputs and the flow from one config")
        curves = np.empty((len(r), grid.size))
        mass = np.empty(len(r))
        for i0 in range(0, len(r), chunk):
            i1 = min(i0 + chunk, len(r))
            curves[i0:i1], mass[i0:i1] = fm.posterior_curves(
                r.cubes(i0, i1), grid, cols["distance_mpc_h"][i0:i1], source=images)
    return cols, curves, mass


#: A posterior is flagged ``extrapolated`` when more than this much of the flow's
#: probability lies outside the tabulated mass grid.
OUTSIDE_GRID_TOLERANCE = 0.01

FLOW_PRIOR = ("training-set prior (flat in log M by construction): the neural flow's "
              "posterior P(log M | image)")


FLOW_SBI_PRIOR = ("test-set prior (flat in log M by construction): the flow's point "
                  "estimate as the summary d~ of a joint PDF over the test split, as the CNN3D "
                  "+ SBI (rule flow_calibrate)")


def flow_calibrate(*, config, model, images, clusters, out, threads=1):
    """Rule ``flow_calibrate``: the flow calibrated on the test split as the CNN3D is.

    The flow's posterior point estimate (``calibration.point_estimate``) of every test
    cluster is its summary d~; the joint PDF of (d~, log M) over the test split
    (distance-aware with ``calibration.distance_aware``; the same settings and code as rule
    ``calibrate``) is sliced at each eval or survey cluster's d~ by ``flow_evaluate`` and
    ``flow_survey_posteriors``.
    """
    from ..calibration import tail_of
    from .evaluate import cluster_columns, cross_validated_coverage, tabulate_calibration

    s = settings_of(config)
    set_flow_threads(threads)
    fm, meta, grid = load_flow(model)
    cols, curves, _ = flow_curves(fm, grid, images)
    d = grid_summaries(grid, curves, None, None, s.calibration.point_estimate)["point"]
    fin = np.isfinite(d)
    pred = dict(cluster_id=cols["cluster_id"][fin], log10_m200c_pred=d[fin],
                log10_m200c_true=cols["log10_m200c"][fin].astype(np.float64))
    pdf = tabulate_calibration(s, pred, clusters, images)
    rows = cluster_columns(clusters, pred["cluster_id"],
                           ["halo_id", "observer_distance_mpc_h"])
    cv = cross_validated_coverage(
        s, pred["log10_m200c_pred"], pred["log10_m200c_true"], rows["halo_id"],
        distance=rows["observer_distance_mpc_h"] if s.calibration.distance_aware else None,
        tail=tail_of(pdf))
    thirds = cv.pop("test_cv_by_observer_distance", None)
    if thirds is not None:                             # HDF5 attributes hold scalars
        cv["test_cv_by_observer_distance"] = json.dumps(jsonable(thirds))
    getattr(pdf, "blind", pdf).meta.update(cv)         # read back by flow_evaluate
    pdf.save(out)
    log.info("flow calibration: test set cross-validated coverage 68%% %.3f +- %.3f, 95%% "
             "%.3f (%d halos)", cv["test_cv_coverage_68"], cv["test_cv_coverage_68_err_halos"],
             cv["test_cv_coverage_95"], cv["n_test_halos"])
    log.info("flow calibration: joint PDF of %d test clusters (%d without a flow density "
             "left out), the flow's posterior %s as d~", int(fin.sum()), int((~fin).sum()),
             s.calibration.point_estimate)


def grid_summaries(grid, curves, mass, t, point) -> dict:
    """The flow's own posterior summaries on ``grid`` (with PIT of ``t`` and the
    ``extrapolated`` flag from the in-grid probability ``mass`` when given)."""
    from ..flow.training import pit_from_curves
    from ..massfunction import summarise_grid_posteriors

    summ = summarise_grid_posteriors(grid, curves)
    if mass is not None:
        summ["extrapolated"] = ~(mass >= 1.0 - OUTSIDE_GRID_TOLERANCE)
    if t is not None:
        summ["pit"] = pit_from_curves(grid, curves, t)
    summ["point"] = summ[point]
    return summ


def _recalibrated(s, joint_pdf, raw, t, distance):
    """Eval posteriors of the flow + SBI: slices of ``joint_pdf`` at the flow's point
    estimate (NaN where the flow has none). Returns summaries, curves and their grid."""
    from ..calibration import load_calibration
    from ..evaluation.eval_set import posterior_table

    pdf = (load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
           if isinstance(joint_pdf, (str, os.PathLike)) else joint_pdf)
    fin = np.isfinite(raw["point"])
    sub, cv = posterior_table(pdf, dict(log10_m200c_pred=raw["point"][fin],
                                        log10_m200c_true=t[fin]),
                              point=s.calibration.point_estimate, distance=distance[fin])
    summ = {}
    for k, v in sub.items():
        summ[k] = np.zeros(t.size, dtype=v.dtype) if v.dtype == bool else np.full(t.size,
                                                                                   np.nan)
        summ[k][fin] = v
    curves = np.full((t.size, pdf.m_grid.size), np.nan, dtype=np.float32)
    curves[fin] = cv
    return summ, curves, pdf.m_grid


def flow_window_inputs(config, gal, offsets, ids) -> list:
    """The flow's inputs of clusters given by their window galaxies in memory, as rule
    ``flow_images`` makes them: 2-D ``(R_proj, v)`` KDE images, or the CNN3D's cubes when
    ``flow.input`` is 3d; a list of ``(b0, b1, inputs of ids[b0:b1])`` batches.

    Parameters
    ----------
    gal : mapping
        ``x_proj_mpc_h``, ``y_proj_mpc_h``, ``v_los_kms`` of the windows, by cluster.
    offsets, ids : ndarray
        Cluster ``k`` (id ``ids[k]``) is galaxies ``offsets[k]:offsets[k+1]``.
    """
    from ..kde import Grid3D, kde_cube_batches

    s = settings_of(config)
    if s.flow.input != "3d":
        return list(_image_batches(s, gal, offsets, ids, "the windows in memory"))
    k, W, V = s.kde, s.window.half_width_mpc_h, s.window.v_max_kms
    return list(kde_cube_batches(gal["x_proj_mpc_h"], gal["y_proj_mpc_h"], gal["v_los_kms"],
                                 offsets, grid=Grid3D(n=k.n_grid, half_width_mpc_h=W,
                                                      v_max_kms=V),
                                 h0=k.h0, truncation=k.truncation, batch_size=_IMAGE_BATCH,
                                 ids=ids))


def flow_window_summaries(config, flow, joint_pdf, inputs, distance, log10_m_true) -> dict:
    """Posterior summaries of the flow (+ SBI with ``joint_pdf``, rule ``flow_calibrate``'s)
    on :func:`flow_window_inputs`' ``inputs``, as rule ``flow_evaluate`` makes them: the
    posterior curves at each cluster's ``distance`` [h^-1 Mpc], the point estimate, and the
    test-split recalibration.

    Parameters
    ----------
    flow : tuple
        :func:`load_flow`'s (model, metadata, mass grid).
    joint_pdf : path or calibration, optional
        Rule ``flow_calibrate``'s file, or the calibration already loaded from it
        (:func:`cmpipe.calibration.load_calibration`, for callers that summarise many sets
        of windows); None: the flow's own posteriors.

    Returns
    -------
    dict of ndarray
        ``median``, ``lo68``, ``hi68``, ``lo95``, ``hi95`` (log10 h^-1 Msun), ... per cluster.
    """
    s = settings_of(config)
    fm, _, grid = flow
    n = len(distance)
    curves, mass = np.empty((n, grid.size)), np.empty(n)
    for b0, b1, x in inputs:
        curves[b0:b1], mass[b0:b1] = fm.posterior_curves(x, grid, distance[b0:b1])
    t = np.asarray(log10_m_true, dtype=float)
    raw = grid_summaries(grid, curves, mass, t, s.calibration.point_estimate)
    if joint_pdf is None:
        return raw
    return _recalibrated(s, joint_pdf, raw, t, np.asarray(distance, dtype=float))[0]


def _uncalibrated_metrics(t, raw) -> dict:
    """Headline numbers of the flow's own posteriors, beside the recalibrated ones."""
    from ..evaluation.metrics import residuals

    ok = np.isfinite(raw["point"])
    eps = residuals(t[ok], raw["point"][ok])
    return dict(note="the flow's own posteriors (training-set prior), before the test-split "
                     "calibration", mean_residual_dex=float(eps.mean()),
                scatter_dex=float(eps.std(ddof=1)),
                coverage_68=float(np.mean((t[ok] >= raw["lo68"][ok])
                                          & (t[ok] <= raw["hi68"][ok]))),
                coverage_95=float(np.mean((t[ok] >= raw["lo95"][ok])
                                          & (t[ok] <= raw["hi95"][ok]))))


def _eval_rows(clusters, cols, images):
    """Rows of the cluster table of the flow's eval clusters (ids checked)."""
    cl, _ = read_table(clusters, group="clusters", columns=[
        "cluster_id", "halo_id", "interloper_mass_ratio", "interloper_distance",
        "observer_distance_mpc_h"])
    row = np.searchsorted(cl["cluster_id"], cols["cluster_id"])
    if np.any(row >= len(cl["cluster_id"])) or np.any(
            cl["cluster_id"][np.minimum(row, len(cl["cluster_id"]) - 1)] != cols["cluster_id"]):
        raise CatalogueError(images, "cluster_id", "image ids missing from the cluster table",
                             "rebuild the flow images from this run's mock")
    return {k: v[row] for k, v in cl.items()}


def flow_evaluate(*, config, model, images, clusters, metrics_out, posteriors_out,
                  joint_pdf=None, threads=1, estimator="neural flow"):
    """Rule ``flow_evaluate``: eval-set posteriors of the flow and their metrics.

    The same summaries (:func:`cmpipe.massfunction.summarise_grid_posteriors`), point
    estimate (``calibration.point_estimate``) and metrics (:func:`cmpipe.evaluation.metrics.
    evaluation_report`: residuals, coverage, PIT, sigma_N / sigma_0) as the CNN3D + SBI
    evaluation, on the same eval clusters; products in the same layout. With ``joint_pdf``
    (rule ``flow_calibrate``, ``calibration.recalibrate_flow``) the posteriors are its
    slices at the flow's point estimate, and the flow's own numbers go under
    ``uncalibrated``. ``estimator``: its name in the products (the set estimator's rule
    ``set_evaluate`` runs this on galaxy sets, :mod:`.sets`).
    """
    from ..evaluation.eval_set import by_observer_distance, flat_keys
    from ..evaluation.metrics import evaluation_report, interloper_diagnostic, residuals

    s = settings_of(config)
    set_flow_threads(threads)
    point = s.calibration.point_estimate
    fm, meta, grid = load_flow(model)
    cols, curves, mass = flow_curves(fm, grid, images)
    if len(cols["cluster_id"]) == 0:
        raise CatalogueError(images, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    t = cols["log10_m200c"].astype(np.float64)
    summ = raw = grid_summaries(grid, curves, mass, t, point)
    rows = _eval_rows(clusters, cols, images)
    if joint_pdf is not None:
        summ, curves, grid = _recalibrated(s, joint_pdf, raw, t,
                                           rows["observer_distance_mpc_h"])
    ok = np.isfinite(summ["point"])
    if not ok.all():
        log.warning("%d eval clusters have a vanishing flow density on the grid and are "
                    "left out", int((~ok).sum()))
    rep = evaluation_report(t[ok], {k: v[ok] for k, v in summ.items()}, pit=summ["pit"][ok],
                            n_mem=np.maximum(cols["n_members"], 1)[ok], point="point",
                            bins=eval_mass_bins(s, t))
    inter = interloper_diagnostic(residuals(t, summ["point"])[ok],
                                  rows["interloper_mass_ratio"][ok],
                                  rows["interloper_distance"][ok], log10_m_true=t[ok])
    cov_err = _halo_coverage_errors(s, t[ok], {k: v[ok] for k, v in summ.items()},
                                    rows["halo_id"][ok])
    training = meta.get("training", {})
    prior = FLOW_PRIOR if joint_pdf is None else FLOW_SBI_PRIOR
    metrics = dict(
        run=s.run, estimator=estimator, members=s.mock.members, input=fm.settings.input,
        flow=fm.settings.model, distance_input=fm.settings.distance_input, prior=prior,
        n_eval=int(ok.sum()),
        n_train=training.get("n_train"), n_validation=training.get("n_validation"),
        n_params=training.get("n_params"), best_epoch=training.get("best_epoch"),
        point_estimate=point, **flat_keys("", rep),
        coverage_68=rep["coverage"]["68"]["fraction"],
        coverage_95=rep["coverage"]["95"]["fraction"], **cov_err,
        n_eval_halos=int(np.unique(rows["halo_id"][ok]).size),
        n_extrapolated=int(np.count_nonzero(summ["extrapolated"])),
        mean_predictor_scatter_dex=float(np.std(t, ddof=1)) if t.size > 1 else np.nan,
        network=rep,
        interlopers={k: v for k, v in inter.items()
                     if not (isinstance(v, np.ndarray) and v.size == ok.sum())})
    metrics["by_observer_distance"] = by_observer_distance(
        rows["observer_distance_mpc_h"], rows["halo_id"], t, summ["point"], summ["lo68"],
        summ["hi68"], seed=bootstrap_seed(s))
    if joint_pdf is not None:
        metrics["uncalibrated"] = _uncalibrated_metrics(t, raw)
    from ..calibration import load_calibration

    blind = load_calibration(joint_pdf, distance_aware=False) if joint_pdf else None
    cal_range = blind.calibrated_mass_range if blind else meta["training_mass_range"]
    if blind is not None:                  # the test set's own, from rule flow_calibrate
        metrics.update({k: blind.meta[k] for k in (
            "test_cv_coverage_68", "test_cv_coverage_68_err_halos", "test_cv_coverage_95",
            "test_cv_coverage_95_err_halos", "n_test_halos", "test_cv_calibration")
            if k in blind.meta})
        if "test_cv_by_observer_distance" in blind.meta:
            metrics["test_cv_by_observer_distance"] = json.loads(
                blind.meta["test_cv_by_observer_distance"])
        from ..calibration import tail_record

        metrics["calibration_tail"] = tail_record(blind)
    metrics["survey_range"] = survey_range_report(
        s, rows, dict(log10_m200c_true=t, **summ), cal_range)
    io.write_json(metrics_out, jsonable(metrics))
    _write_flow_posteriors(posteriors_out, cols, rows, t, raw, summ, mass, grid, curves,
                           prior, point, estimator)
    log.info("%s eval: n=%d, mean residual %.3f dex, scatter %.3f dex, coverage 68%% %.3f "
             "+- %.3f, 95%% %.3f +- %.3f (halo resampling, %d halos), sigma_N %.3f, "
             "sigma_0 %.3f%s", estimator, metrics["n_eval"], metrics["mean_residual_dex"],
             metrics["scatter_dex"], metrics["coverage_68"], cov_err["coverage_68_err_halos"],
             metrics["coverage_95"], cov_err["coverage_95_err_halos"],
             metrics["n_eval_halos"], metrics["sigma_N_dex"], metrics["sigma_0_dex"],
             "" if joint_pdf is None else " (recalibrated on the test split; the flow's own: "
             "scatter %.3f, coverage %.3f / %.3f)" % tuple(
                 metrics["uncalibrated"][k] for k in ("scatter_dex", "coverage_68",
                                                      "coverage_95")))


def _halo_coverage_errors(s, t, summ, halos) -> dict:
    """Coverage errors from resampling whole halos (sightlines of one halo correlate)."""
    from ..evaluation.metrics import grouped_coverage_error

    seed = stage_seed(s.seed, "flow_evaluate") % (2 ** 32)
    out = {}
    for lvl, lo, hi in (("68", "lo68", "hi68"), ("95", "lo95", "hi95")):
        inside = (t >= summ[lo]) & (t <= summ[hi])
        out[f"coverage_{lvl}_err_halos"] = grouped_coverage_error(
            inside, halos, seed=seed)["stderr_grouped"]
    return out


def _write_flow_posteriors(path, cols, rows, t, raw, summ, mass, grid, curves, prior, point,
                           estimator):
    """``flow/posteriors.h5``: per eval cluster the summaries, and the curves on ``grid``."""
    from .evaluate import POSTERIOR_SCHEMA_UNITS

    post = dict(cluster_id=cols["cluster_id"], log10_m200c_true=t,
                log10_m200c_pred=np.asarray(raw["point"], dtype=np.float64),
                n_members=cols["n_members"], n_gal=cols["n_gal"],
                interloper_mass_ratio=rows["interloper_mass_ratio"],
                interloper_distance=rows["interloper_distance"],
                grid_probability=mass,
                **{k: np.asarray(v) for k, v in summ.items()})
    post["extrapolated"] = post["extrapolated"].astype(np.int8)
    units = dict(POSTERIOR_SCHEMA_UNITS, grid_probability="")
    schema = io.Schema({k: (np.asarray(v).dtype.str, units.get(k, ""), k)
                        for k, v in post.items()})
    with TableWriter(path) as w:
        w.add_group("posteriors", schema, dict(
            prior=prior, point_estimate=point, estimator=estimator,
            log10_m200c_pred="the flow's own posterior point estimate (the summary d~ of the "
                             "test-split calibration when recalibrated)",
            grid_probability="flow probability inside the grid before renormalisation",
            extrapolated=f"1: more than {OUTSIDE_GRID_TOLERANCE:g} of the flow's "
                         "probability outside the grid (recalibrated: d~ outside the "
                         "calibration's range)"))
        w.append("posteriors", post)
        w.add_group("grid", io.Schema({"log10_m200c": ("f8", "log10(h^-1 Msun)",
                                                        "mass grid of the curves")}))
        w.append("grid", {"log10_m200c": grid})
        w.add_array("curves", np.asarray(curves, dtype=np.float32), unit="dex^-1",
                    description="posterior density per eval cluster on grid/log10_m200c; "
                                "rows as posteriors/")


# -- figures ---------------------------------------------------------------------------------

def flow_plots(*, history, metrics, posteriors, loss_png, predictions_png, calibration_png,
               title="Neural flow training"):
    """Rule ``flow_plots``: the flow's NLL curves (``title``), predictions and calibration
    curve."""
    from ..plots import pipeline as plots
    from ..plots.flow import flow_loss_figure

    m = json.loads(Path(metrics).read_text())
    post, _ = read_table(posteriors, group="posteriors")
    flow_loss_figure(history, loss_png, title)
    plots.predictions_figure(post, m, predictions_png)
    plots.calibration_figure(m, calibration_png)
