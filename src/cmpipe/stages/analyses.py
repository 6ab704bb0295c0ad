"""Rules of the paper's remaining analyses: robustness, saliency (the dimensionality
ablation's are in :mod:`.ablation`).

Products under ``results/{run}/`` (``docs/data-products.md``, "Analyses"):

- ``perturbed_eval``    -> ``robustness/summary.json``, ``robustness/predictions.h5``;
  ``robustness_plots``  -> ``robustness/robustness.png``
- ``saliency_maps``     -> ``saliency/saliency.h5``, ``saliency/summary.json``;
  ``saliency_plots``    -> ``saliency/mean.png``, ``saliency/abs.png``

The misspecification matrix is :mod:`.misspecification`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import io
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, atomic_output, read_table, write_table
from ..settings import stage_rng
from .common import jsonable, settings_of, log
from .cubes import split_galaxies


# -- helpers ------------------------------------------------------------------------------

def read_json(path, what, fix):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CatalogueError(path, what, "file does not exist", fix) from None
    except json.JSONDecodeError as err:
        raise CatalogueError(path, what, f"not valid JSON ({err})", fix) from None


def load_network(model, normalisation):
    """The trained Keras model and its ``normalisation.json``."""
    import keras

    if not Path(model).is_file():
        raise CatalogueError(model, "model", "trained model missing", "run the train rule")
    norm = read_json(normalisation, "normalisation", "rerun the train rule")
    return keras.saving.load_model(model, compile=False), norm


# -- robustness -------------------------------------------------------------------------------

ROBUSTNESS_SCHEMA = io.Schema({
    "perturbation": ("i4", "", "index into summary.json 'perturbations'"),
    "kind": ("i1", "", "0 incompleteness, 1 velocity_error"),
    "level": ("f8", "fraction | km/s", "fraction of galaxies lost, or velocity error sd"),
    "cluster_id": ("i8", "", "eval cluster (only those kept: n_gal >= min_galaxies)"),
    "n_gal": ("i8", "", "window galaxies left after the perturbation"),
    "log10_m200c_true": ("f8", "log10(h^-1 Msun)", "true M200c"),
    "log10_m200c_pred_reference": ("f8", "log10(h^-1 Msun)", "network d~, unperturbed"),
    "log10_m200c_pred": ("f8", "log10(h^-1 Msun)", "network d~, perturbed"),
})


def cubes_and_predict(networks, gal, offsets, ids, grid, k, batch_size, distance, chunk=256):
    """KDE cubes of the clusters in ``offsets`` (chunked, made once) -> the predictions of
    each network of ``networks`` (pairs of Keras model and ``normalisation.json``), shape
    (len(networks), n clusters); ``distance``: the clusters' observer distances, h^-1 Mpc."""
    from ..kde import kde_cube_batches
    from ..evaluation.robustness import predict_inputs

    pred = np.empty((len(networks), offsets.size - 1))
    for b0, b1, cubes in kde_cube_batches(gal["x_mpc_h"], gal["y_mpc_h"], gal["v_kms"], offsets,
                                          grid=grid, h0=k.h0, truncation=k.truncation,
                                          batch_size=chunk, ids=ids):
        for i, (model, norm) in enumerate(networks):
            pred[i, b0:b1] = predict_inputs(model, norm, cubes, batch_size=batch_size,
                                            distance_mpc_h=distance[b0:b1])
    return pred


def _eval_clusters(s, clusters, eval_predictions, normalisation, norm):
    """The stored eval-set predictions, the eval clusters' window galaxies (sorted by
    cluster, with their offsets) and the KDE grid, checked against the model's grid."""
    from ..kde import Grid3D

    ref_table, _ = read_table(eval_predictions, group="predictions")
    ids = ref_table["cluster_id"]
    if len(ids) == 0:
        raise CatalogueError(eval_predictions, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    g = split_galaxies(clusters, ids)
    offsets = galaxy_offsets(ids, g["cluster_id"])
    gal = dict(x_mpc_h=g["x_proj_mpc_h"], y_mpc_h=g["y_proj_mpc_h"], v_kms=g["v_los_kms"])
    grid = Grid3D(n=s.kde.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                  v_max_kms=s.window.v_max_kms)
    if tuple(norm["input"]["grid"]) != grid.shape:
        raise CatalogueError(normalisation, "input.grid", f"model grid "
                             f"{tuple(norm['input']['grid'])} differs from kde.n_grid "
                             f"{s.kde.n_grid}", "rerun the train rule with this config")
    return ref_table, ids, gal, offsets, grid


def _reference_predictions(predict, s, ref_table, gal, offsets, ids, checks,
                           eval_predictions, bar):
    """Unperturbed predictions through the same code path as every perturbation, compared
    with ``summaries/eval.h5``; zero perturbations must leave them unchanged.

    Returns the predictions (log10 h^-1 Msun), their largest difference from the stored
    ones (dex) and, per zero perturbation, whether it changed nothing."""
    from ..evaluation.robustness import perturb_galaxies

    ref = predict(gal, offsets, ids)
    bar.update(1)
    max_diff_stored = float(np.max(np.abs(ref - ref_table["log10_m200c_pred"])))
    if max_diff_stored > 1e-6:
        log.warning("recomputed unperturbed predictions differ from %s by up to %.3g dex",
                    eval_predictions, max_diff_stored)
    zero = {}
    for p in checks:
        pg = perturb_galaxies(gal["x_mpc_h"], gal["y_mpc_h"], gal["v_kms"], offsets, p,
                              stage_rng(s.seed, f"robustness/{p.key}"),
                              v_max_kms=s.window.v_max_kms, min_galaxies=3)
        pred0 = predict(pg, pg["offsets"], ids[pg["kept"]])
        zero[p.key] = bool(pg["kept"].all() and np.array_equal(pred0, ref))
        bar.update(1)
    if not all(zero.values()):
        raise RuntimeError(f"a zero perturbation changed the predictions ({zero}); the "
                           "perturbation code is broken")
    return ref, max_diff_stored, zero


def _perturbed(predict, pdf, s, p, gal, offsets, ids, truth, ref, min_gal, eval_predictions,
               point, distance):
    """One perturbation of the eval clusters: the galaxies left, the clusters kept
    (>= ``min_gal`` galaxies) and the paired comparison of their predictions."""
    from ..evaluation.robustness import compare, perturb_galaxies
    from .evaluate import eval_mass_bins

    pg = perturb_galaxies(gal["x_mpc_h"], gal["y_mpc_h"], gal["v_kms"], offsets, p,
                          stage_rng(s.seed, f"robustness/{p.key}"),
                          v_max_kms=s.window.v_max_kms, min_galaxies=min_gal)
    kept = pg["kept"]
    if kept.sum() < 10:
        raise CatalogueError(eval_predictions, "n_gal", f"{p.label} leaves only "
                             f"{int(kept.sum())} eval clusters with >= {min_gal} galaxies",
                             "lower the perturbation level or robustness.min_galaxies")
    pred = predict(pg, pg["offsets"], ids[kept])
    res = compare(pdf, truth[kept], ref[kept], pred, point=point, distance=distance[kept],
                  bins=eval_mass_bins(s, truth))
    return pg, pred, res


def _perturbation_rows(i, p, pg, ids, truth, ref, pred) -> dict:
    """Rows of ``robustness/predictions.h5`` (:data:`ROBUSTNESS_SCHEMA`) of perturbation
    ``i``."""
    kept = pg["kept"]
    return dict(perturbation=np.full(kept.sum(), i),
                kind=np.full(kept.sum(), 0 if p.kind == "incompleteness" else 1),
                level=np.full(kept.sum(), p.level), cluster_id=ids[kept],
                n_gal=pg["n_gal"][kept], log10_m200c_true=truth[kept],
                log10_m200c_pred_reference=ref[kept], log10_m200c_pred=pred)


def _log_perturbation(p, kept, res, v):
    log.info("%s: %d kept (%d lost), bias shift %+.3f +- %.3f dex, scatter %.3f -> %.3f "
             "dex, coverage 68%% %.3f -> %.3f, 95%% %.3f -> %.3f; retrain: %s",
             p.label, kept.sum(), (~kept).sum(), res["bias_shift_dex"],
             res["bias_shift_err_dex"], res["reference"]["scatter_dex"],
             res["perturbed"]["scatter_dex"], res["reference"]["coverage_68"],
             res["perturbed"]["coverage_68"], res["reference"]["coverage_95"],
             res["perturbed"]["coverage_95"], v["retraining_needed"])


def _verdict_text(flagged, perts, ref_v, max_shift) -> str:
    """The summary's verdict in words."""
    if flagged:
        text = ("Retraining (and recalibrating) with matching perturbations is needed for: "
                + ", ".join(flagged) + ".")
    elif perts:
        text = ("No retraining needed for the perturbations tested: the unchanged network "
                "and calibration keep the posteriors' coverage within the band and the bias "
                f"shift below {max_shift} dex.")
    else:
        text = "No perturbations configured."
    if ref_v["undercovered"]:
        text += (" Note: the unperturbed posteriors already under-cover "
                 f"({'; '.join(ref_v['reasons'])}): fix the calibration first.")
    return text


def perturbed_eval(*, config, model, normalisation, joint_pdf, clusters, eval_predictions,
                   summary_out, predictions_out, threads=1, progress=True):
    """Rule ``perturbed_eval``: the unchanged CNN3D + calibration on perturbed eval clusters
    (aggregate target ``robustness``)."""
    import numba
    from tqdm.auto import tqdm

    from ..calibration import load_calibration
    from ..evaluation.robustness import Perturbation, compare, perturbations, verdict
    from .evaluate import eval_mass_bins, observer_distances

    s = settings_of(config)
    r = s.robustness
    k = s.kde
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    net, norm = load_network(model, normalisation)
    pdf = load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
    ref_table, ids, gal, offsets, grid = _eval_clusters(s, clusters, eval_predictions,
                                                        normalisation, norm)
    dist = observer_distances(clusters, ids)
    truth = ref_table["log10_m200c_true"]
    bs = s.train.batch_size
    min_gal = int(r.min_galaxies or s.mock.min_galaxies)
    point = s.calibration.point_estimate
    csig = r.coverage_sigma
    max_shift = r.max_bias_shift_dex
    perts = perturbations(r.incompleteness, r.velocity_error_kms)
    checks = [Perturbation("incompleteness", 0.0), Perturbation("velocity_error", 0.0)]
    bar = tqdm(total=1 + len(checks) + len(perts), desc="robustness", unit="perturbation",
               disable=not progress)

    dist_of = dict(zip(ids.tolist(), dist))

    def predict(g, offs, cl_ids):
        d = np.array([dist_of[int(i)] for i in cl_ids], dtype=np.float64)
        return cubes_and_predict([(net, norm)], g, offs, cl_ids, grid, k, bs, d)[0]

    ref, max_diff_stored, zero = _reference_predictions(
        predict, s, ref_table, gal, offsets, ids, checks, eval_predictions, bar)
    rows = []
    results = []
    reference = compare(pdf, truth, ref, ref, point=point, distance=dist,
                        bins=eval_mass_bins(s, truth))
    for i, p in enumerate(perts):
        pg, pred, res = _perturbed(predict, pdf, s, p, gal, offsets, ids, truth, ref, min_gal,
                                   eval_predictions, point, dist)
        kept = pg["kept"]
        v = verdict(res, coverage_sigma=csig, max_bias_shift_dex=max_shift)
        results.append(dict(kind=p.kind, level=p.level, label=p.label, n_kept=int(kept.sum()),
                            n_lost=int((~kept).sum()),
                            mean_galaxies_left=float(pg["n_gal"][kept].mean()),
                            **res, verdict=v))
        rows.append(_perturbation_rows(i, p, pg, ids, truth, ref, pred))
        _log_perturbation(p, kept, res, v)
        bar.update(1)
    bar.close()
    flagged = [x["label"] for x in results if x["verdict"]["retraining_needed"]]
    ref_v = verdict(reference, coverage_sigma=csig, max_bias_shift_dex=max_shift)
    text = _verdict_text(flagged, perts, ref_v, max_shift)
    summary = dict(
        run=s.run, model=str(model), joint_pdf=str(joint_pdf), n_eval=int(len(ids)),
        point_estimate=point, min_galaxies=min_gal, coverage_sigma=csig,
        max_bias_shift_dex=max_shift,
        units={"incompleteness": "fraction of window galaxies lost",
               "velocity_error": "Gaussian sd, km/s"},
        zero_perturbation_identical=zero,
        max_abs_diff_vs_stored_predictions_dex=max_diff_stored,
        reference=dict(**reference["reference"], verdict=ref_v),
        perturbations=results, retraining_needed=bool(flagged), retraining_needed_for=flagged,
        verdict=text)
    io.write_json(summary_out, jsonable(summary))
    cols = {c: (np.concatenate([r_[c] for r_ in rows]) if rows
                else np.zeros(0, dtype=ROBUSTNESS_SCHEMA[c][0])) for c in ROBUSTNESS_SCHEMA}
    write_table(predictions_out, cols, group="predictions", schema=ROBUSTNESS_SCHEMA,
                attrs=dict(model=str(model), perturbations=[p.label for p in perts]))
    log.info("robustness: %s", text)


def robustness_plots(*, summary, png):
    """Rule ``robustness_plots``: bias shift, scatter and coverage against the level."""
    from ..plots.analyses import robustness_figure

    robustness_figure(read_json(summary, "perturbations", "rerun the robustness rule"), png)


# -- saliency ---------------------------------------------------------------------------------

def saliency_maps(*, config, model, normalisation, eval_cubes, out, summary_out,
                  progress=True):
    """Rule ``saliency_maps`` (aggregate target ``saliency``): mean input gradients of the
    CNN3D on eval clusters in mass bins."""
    import h5py
    from tqdm.auto import tqdm

    from ..io.cubes import CubeReader
    from ..kde import Grid3D
    from ..cnn.saliency import binned_saliency, projections, weighted_extent

    s = settings_of(config)
    cfg = s.saliency
    bins = np.asarray(cfg.mass_bins, dtype=float)
    max_cl = cfg.max_clusters
    net, norm = load_network(model, normalisation)
    with CubeReader(eval_cubes) as r:
        n_all = len(r)
        grid_shape = r.shape[1:]
        logm = r.column("log10_m200c").astype(np.float64)
        dist = r.column("distance_mpc_h").astype(np.float64)
    if n_all == 0:
        raise CatalogueError(eval_cubes, "cubes", "the eval cube file is empty",
                             "raise splits.fractions.eval")
    if tuple(norm["input"]["grid"]) != tuple(grid_shape):
        raise CatalogueError(eval_cubes, "cubes", f"grid {grid_shape} differs from the "
                             f"model's {tuple(norm['input']['grid'])}", "rerun the kde rules")
    n_use = n_all if not max_cl else min(n_all, int(max_cl))
    batch = 32
    bar = tqdm(total=n_use, desc="saliency", unit="cube", disable=not progress)

    def batches():
        with CubeReader(eval_cubes) as rr:
            for b0 in range(0, n_use, batch):
                b1 = min(b0 + batch, n_use)
                yield rr.cubes(b0, b1), logm[b0:b1], dist[b0:b1]
                bar.update(b1 - b0)

    sal = binned_saliency(net, norm, batches(), bins)
    bar.close()
    grid = Grid3D(n=int(grid_shape[0]), half_width_mpc_h=s.window.half_width_mpc_h,
                  v_max_kms=s.window.v_max_kms)
    xc, yc, vc = grid.centres()
    with atomic_output(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["units"] = "dex per unit voxel probability (d log10 M_pred / d cube)"
            f.attrs["axes"] = "x_proj_mpc_h, y_proj_mpc_h, v_los_kms"
            f.attrs["model"] = str(model)
            f.attrs["n_clusters"] = n_use
            f.attrs["n_outside_bins"] = sal["n_outside"]
            f["bin_edges"] = sal["bin_edges"]
            f["n"] = sal["n"]
            f["mean"] = sal["mean"].astype(np.float32)
            f["mean_abs"] = sal["mean_abs"].astype(np.float32)
            f["x_centres_mpc_h"], f["y_centres_mpc_h"], f["v_centres_kms"] = xc, yc, vc
            for key in ("mean", "mean_abs"):
                for b in range(len(sal["n"])):
                    for plane, arr in projections(np.nan_to_num(sal[key][b])).items():
                        f[f"projections/{key}/{plane}/{b}"] = arr.astype(np.float32)
    per_bin = []
    for b in range(len(sal["n"])):
        row = dict(log10_m_lo=float(bins[b]), log10_m_hi=float(bins[b + 1]), n=int(sal["n"][b]))
        if sal["n"][b]:
            m = sal["mean"][b]
            row.update(weighted_extent(sal["mean_abs"][b], xc, yc, vc),
                       sum_mean_dex=float(m.sum()),
                       positive_fraction_of_abs=float(np.clip(m, 0, None).sum()
                                                      / np.abs(m).sum()))
        per_bin.append(row)
    io.write_json(summary_out, jsonable(dict(
        run=s.run, n_clusters=n_use, n_outside_bins=sal["n_outside"], mass_bins=bins,
        units="dex per unit voxel probability", per_bin=per_bin,
        uniform_reference=weighted_extent(np.ones(grid.shape), xc, yc, vc),
        notes="mean_r_proj_mpc_h / mean_abs_v_kms / fraction_inner: where the mean |saliency| "
              "lies (uniform_reference: the same for a map flat over the window); "
              "sum_mean_dex: change of log10 M_pred for adding probability 1 uniformly "
              "to every voxel (cubes are normalised, so this direction is never taken)")))
    log.info("saliency: %d eval clusters in %d mass bins (%s per bin)", n_use, len(sal["n"]),
             list(map(int, sal["n"])))


def saliency_plots(*, saliency, mean_png, abs_png):
    """Rule ``saliency_plots``: projections of the mean signed and absolute saliency."""
    from ..plots.analyses import saliency_figure

    saliency_figure(saliency, mean_png, which="mean")
    saliency_figure(saliency, abs_png, which="mean_abs")
