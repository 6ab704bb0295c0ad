"""Set-estimator rules (issue 29): a Deep Sets embedding of each cluster's window galaxies
and a conditional normalizing flow over ``log10 M`` (Wang, Thiele & Ho 2026), trained,
calibrated, evaluated and applied to the survey exactly as the neural flow of
:mod:`.flow` (the same functions, on galaxy sets instead of KDE images).

Products under ``results/{run}/`` (docs/data-products.md, "Set estimator"):

- ``set_inputs``             -> sets/inputs/{split}.h5 (the window galaxies of each cluster)
- ``set_survey_inputs``      -> sets/inputs/survey.h5
- ``set_train``              -> sets/model/flow.pt, flow.json, history.csv
- ``set_calibrate``          -> sets/joint_pdf.h5 (``calibration.recalibrate_sets``)
- ``set_evaluate``           -> sets/metrics.json, sets/posteriors.h5
- ``set_survey_posteriors``  -> sets/survey_posteriors.ecsv, .csv
- ``set_plots``              -> figures/sets_loss.png, sets_predictions.png,
  sets_calibration.png

torch is imported only inside these functions (never by ``cmpipe.stages`` itself).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.tables import read_table
from ..settings import SPLIT_CODES, ConfigError, stage_seed
from .common import log, settings_of
from .cubes import cube_rows, split_galaxies

__all__ = ["SET_ESTIMATOR", "set_flow_settings", "set_inputs", "set_survey_inputs",
           "set_train", "set_window_sets", "set_seeds", "SEED_KEYS", "set_calibrate",
           "set_evaluate", "set_survey_posteriors", "set_plots"]

#: The estimator's name in metrics, tables and figures.
SET_ESTIMATOR = "Deep Sets flow"

_GALAXY_COLUMNS = ["cluster_id", "x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"]


def set_flow_settings(s, seed: int = 0):
    """The flow settings (:class:`cmpipe.flow.model.FlowSettings`, ``input`` set) of the
    config's ``sets`` section; ``seed`` > 0: the ablation's extra seeds."""
    from ..flow.model import FlowSettings

    d = s.sets.to_dict()
    d.pop("enabled")
    renamed = dict(features="set_features", pooling="set_pooling",
                   phi_units="set_phi_units", richness_input="set_richness",
                   dispersion_input="set_dispersion")
    d = {renamed.get(k, k): v for k, v in d.items()}
    name = "sets" if seed == 0 else f"sets_seed{seed}"
    d.update(input="set", seed=stage_seed(s.seed, name) % (2 ** 31))
    try:
        return FlowSettings.from_dict(d)
    except ValueError as err:
        raise ConfigError(f"sets: {err}. Fix: correct the sets section of the config") \
            from err


def _window_attrs(s, split_name: str) -> dict:
    return dict(half_width_mpc_h=s.window.half_width_mpc_h, v_max_kms=s.window.v_max_kms,
                split=split_name, features="window galaxies of each cluster, as observed "
                "(members and interlopers above the flux limit)")


def set_inputs(*, config, clusters, split_name, out):
    """Rule ``set_inputs``: the window galaxies (projected offsets, line-of-sight velocity,
    apparent magnitude) of every cluster of one split, with the image files' per-cluster
    columns (the distance is the observer's)."""
    from ..flow.sets import write_set_file

    s = settings_of(config)
    cl, _ = read_table(clusters, group="clusters",
                       columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members",
                                "observer_distance_mpc_h"])
    rows = cube_rows(cl, cl["split"] == SPLIT_CODES[split_name])
    g = (split_galaxies(clusters, rows["cluster_id"], extra=["mag_r_app"])
         if len(rows["cluster_id"]) else {})
    write_set_file(out, rows, g, _window_attrs(s, split_name))
    log.info("set inputs %s: %d clusters, %d window galaxies (median %d per cluster)",
             split_name, len(rows["cluster_id"]), len(g.get("cluster_id", [])),
             int(np.median(rows["n_gal"])) if len(rows["n_gal"]) else 0)


def set_survey_inputs(*, config, phase_space, out):
    """Rule ``set_survey_inputs``: the window galaxies of the survey clusters that have a
    cube (``skipped == 0``); true masses NaN, apparent magnitudes NaN (the phase-space
    table has none), the distance the comoving one of the redshift, ``(1 + z) d_A``."""
    from ..flow.sets import write_set_file

    s = settings_of(config)
    cl, _ = read_table(phase_space, group="clusters",
                       columns=["cluster_id", "n_gal", "n_members", "skipped", "z",
                                "d_a_mpc_h"])
    kept = cl["skipped"] == 0
    order = np.argsort(cl["cluster_id"][kept], kind="stable")
    ids = cl["cluster_id"][kept][order]
    rows = dict(cluster_id=ids, log10_m200c=np.full(ids.size, np.nan),
                n_gal=cl["n_gal"][kept][order], n_members=cl["n_members"][kept][order],
                distance_mpc_h=((1.0 + cl["z"]) * cl["d_a_mpc_h"])[kept][order])
    g, _ = read_table(phase_space, group="galaxies", columns=_GALAXY_COLUMNS,
                      finite=_GALAXY_COLUMNS[1:])
    keep = np.isin(g["cluster_id"], ids)
    o = np.argsort(g["cluster_id"][keep], kind="stable")
    g = {c: v[keep][o] for c, v in g.items()}
    write_set_file(out, rows, g, _window_attrs(s, "survey"))
    log.info("set inputs survey: %d clusters, %d window galaxies", ids.size,
             len(g["cluster_id"]))


def set_window_sets(config, features, gal, offsets):
    """The galaxy sets (:class:`cmpipe.flow.sets.GalaxySets`) of clusters given by their
    window galaxies in memory (``gal``: ``x_proj_mpc_h``, ``y_proj_mpc_h``, ``v_los_kms``;
    cluster ``k`` is rows ``offsets[k]:offsets[k+1]``), as rule ``set_inputs`` makes them."""
    from ..flow.sets import GalaxySets, galaxy_features

    s = settings_of(config)
    f = galaxy_features(gal, features, s.window.half_width_mpc_h, s.window.v_max_kms,
                        source="the windows in memory")
    return GalaxySets(f, np.asarray(offsets, dtype=np.int64) - int(offsets[0]))


def set_train(*, config, train, validation, model_out, threads=1, seed=0, progress=False):
    """Rule ``set_train``: the Deep Sets flow on the training split's galaxy sets,
    early-stopped on the validation split's (``seed`` > 0: an extra seed of the ablation)."""
    from ..flow.training import train_flow
    from .flow import set_flow_threads

    s = settings_of(config)
    fs = set_flow_settings(s, seed)
    set_flow_threads(threads)
    r = train_flow(train, validation, Path(model_out).parent, fs, progress=progress)
    log.info("set_train: %d parameters, best epoch %d of %d (validation NLL %.4f nats per "
             "cluster), %.2f s per epoch, stopped early: %s", r.n_params, r.best_epoch,
             r.epochs_run, r.best_val_nll,
             float(np.mean([h["seconds"] for h in r.history])), r.stopped_early)


#: Eval numbers of :file:`sets/metrics.json` summarised over the training seeds.
SEED_KEYS = ("scatter_dex", "mean_residual_dex", "coverage_68", "coverage_95",
             "sigma_N_dex", "sigma_0_dex")


def set_seeds(*, metrics, out):
    """Rule ``set_seeds``: mean and sample sd over the training seeds (seed 0 =
    ``sets/metrics.json``, seed k = ``sets/seeds/{k}/metrics.json``) of the set estimator's
    eval numbers (:data:`SEED_KEYS`; the calibrated posteriors' and, under
    ``uncalibrated``, its own)."""
    import json

    from .. import io
    from .common import jsonable

    ms = [json.loads(Path(p).read_text()) for p in metrics]

    def spread(values):
        v = np.array([np.nan if x is None else float(x) for x in values])
        return dict(mean=float(np.mean(v)), sd=float(np.std(v, ddof=1)) if v.size > 1
                    else None, values=v.tolist())

    summary = dict(estimator=SET_ESTIMATOR, n_seeds=len(ms), metrics=[str(p) for p in metrics],
                   note="seed 0 is sets/metrics.json; sd is the sample standard deviation "
                        "over seeds (null for one seed)")
    summary.update({k: spread([m.get(k) for m in ms]) for k in SEED_KEYS})
    if all("uncalibrated" in m for m in ms):
        summary["uncalibrated"] = {k: spread([m["uncalibrated"][k] for m in ms])
                                   for k in ("scatter_dex", "mean_residual_dex",
                                             "coverage_68", "coverage_95")}
    io.write_json(out, jsonable(summary))
    log.info("set estimator over %d seeds: scatter %.4f +- %s dex, coverage 68%% %.3f",
             len(ms), summary["scatter_dex"]["mean"], summary["scatter_dex"]["sd"],
             summary["coverage_68"]["mean"])


# -- calibration, evaluation, survey, figures: the flow's functions on the sets -----------

def set_calibrate(*, config, model, sets, clusters, out, threads=1):
    """Rule ``set_calibrate``: the set estimator calibrated on the test split's sets as the
    flow is (:func:`.flow.flow_calibrate`; ``calibration.recalibrate_sets``)."""
    from .flow import flow_calibrate

    flow_calibrate(config=config, model=model, images=sets, clusters=clusters, out=out,
                   threads=threads)


def set_evaluate(*, config, model, sets, clusters, metrics_out, posteriors_out,
                 joint_pdf=None, threads=1):
    """Rule ``set_evaluate``: the set estimator's eval-set posteriors and metrics, as
    :func:`.flow.flow_evaluate` makes the flow's (recalibrated with ``joint_pdf``)."""
    from .flow import flow_evaluate

    flow_evaluate(config=config, model=model, images=sets, clusters=clusters,
                  metrics_out=metrics_out, posteriors_out=posteriors_out,
                  joint_pdf=joint_pdf, threads=threads, estimator=SET_ESTIMATOR)


def set_survey_posteriors(*, config, model, sets, phase_space, out, csv_out=None,
                          joint_pdf=None, threads=1, extra_meta=None):
    """Rule ``set_survey_posteriors``: the set estimator's posteriors of the survey
    clusters, the table of :func:`.flow_survey.flow_survey_posteriors`."""
    from .flow_survey import flow_survey_posteriors

    flow_survey_posteriors(config=config, model=model, images=sets, phase_space=phase_space,
                           out=out, csv_out=csv_out, joint_pdf=joint_pdf, threads=threads,
                           extra_meta=extra_meta, estimator=SET_ESTIMATOR)


def set_plots(*, history, metrics, posteriors, loss_png, predictions_png, calibration_png):
    """Rule ``set_plots``: the set estimator's NLL curves, predictions and calibration
    figures (:func:`.flow.flow_plots`)."""
    from .flow import flow_plots

    flow_plots(history=history, metrics=metrics, posteriors=posteriors, loss_png=loss_png,
               predictions_png=predictions_png, calibration_png=calibration_png,
               title=f"Set estimator ({SET_ESTIMATOR}) training")
