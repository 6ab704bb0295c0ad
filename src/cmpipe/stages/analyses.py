"""Rules of the paper's remaining analyses: dimensionality ablation, robustness, saliency.

Products under ``results/{run}/`` (``docs/data-products.md``, "Analyses"):

- ``ablation_inputs``   -> ``ablation/{dim}/inputs/{split}.h5`` (dim 1d | 2d)
- ``ablation_train``    -> ``ablation/{dim}/model/cnn{dim}.keras``, history, normalisation
- ``ablation_evaluate`` -> ``ablation/{dim}/summaries/{test,eval}.h5``,
  ``ablation/{dim}/joint_pdf.h5``, ``ablation/{dim}/metrics.json``
- ``ablation_summary``  -> ``ablation/summary.json``; ``ablation_plots`` -> ``ablation/scatter.png``
- ``perturbed_eval``    -> ``robustness/summary.json``, ``robustness/predictions.h5``;
  ``robustness_plots``  -> ``robustness/robustness.png``
- ``saliency_maps``     -> ``saliency/saliency.h5``, ``saliency/summary.json``;
  ``saliency_plots``    -> ``saliency/mean.png``, ``saliency/abs.png``
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import io
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, atomic_output, read_table, write_table
from ..settings import SPLIT_CODES, stage_rng, stage_seed
from .common import jsonable, settings_of, log
from .cubes import split_galaxies
from .train import PREDICTION_SCHEMA, train_settings

#: Classical estimators carried into the ablation table from ``evaluation/metrics.json``.
_BASELINE_LABELS = {"msigma_gapper": "M-sigma (gapper)",
                    "msigma_biweight": "M-sigma (biweight)", "virial": "virial"}


# -- helpers ------------------------------------------------------------------------------

def _ablation_grid(s) -> int:
    return int(s.ablation.n_grid or s.kde.n_grid)


def _read_json(path, what, fix):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CatalogueError(path, what, "file does not exist", fix) from None
    except json.JSONDecodeError as err:
        raise CatalogueError(path, what, f"not valid JSON ({err})", fix) from None


def _load_network(model, normalisation):
    """The trained Keras model and its ``normalisation.json``."""
    import keras

    if not Path(model).is_file():
        raise CatalogueError(model, "model", "trained model missing", "run the train rule")
    norm = _read_json(normalisation, "normalisation", "rerun the train rule")
    return keras.saving.load_model(model, compile=False), norm


def _split_rows(clusters, split_name):
    cl, attrs = read_table(clusters, group="clusters",
                           columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members"])
    sel = cl["split"] == SPLIT_CODES[split_name]
    return {c: cl[c][sel] for c in ("cluster_id", "log10_m200c", "n_gal", "n_members")}


# -- dimensionality ablation ----------------------------------------------------------------

def ablation_inputs(*, config, clusters, dim, outs, progress=True):
    """Rule ``ablation_inputs``: 1-D ``v_los`` or 2-D ``(R_proj, v_los)`` KDE inputs.

    One file per split (``outs``: split name -> path), same clusters, order and per-cube
    columns as ``cubes/{split}.h5``, same window, bandwidth and truncation.
    """
    from tqdm.auto import tqdm

    from ..images import AXES, ablation_inputs as make_inputs, input_shape
    from ..io.cubes import CubeWriter
    from ..kde import KDEInputError

    s = settings_of(config)
    n = _ablation_grid(s)
    shape = input_shape(dim, n)
    batch = 256
    for split_name, out in dict(outs).items():
        rows = _split_rows(clusters, split_name)
        n_cl = len(rows["cluster_id"])
        attrs = dict(n_grid=n, half_width_mpc_h=s.window.half_width_mpc_h,
                     v_max_kms=s.window.v_max_kms, h0=s.kde.h0, truncation=s.kde.truncation,
                     normalisation="each input sums to 1", split=split_name, axes=AXES[dim],
                     dimensionality=dim,
                     r_proj_range_mpc_h="[0, sqrt(2) half_width]" if dim == "2d" else "")
        with CubeWriter(out, n_cl, shape, attrs) as w:
            if n_cl:
                gal = split_galaxies(clusters, rows["cluster_id"])
                offsets = galaxy_offsets(rows["cluster_id"], gal["cluster_id"])
                bar = tqdm(total=n_cl, desc=f"ablation {dim} {split_name}", unit="input",
                           disable=not progress)
                for b0 in range(0, n_cl, batch):
                    b1 = min(b0 + batch, n_cl)
                    o = offsets[b0:b1 + 1]
                    r = slice(int(o[0]), int(o[-1]))
                    try:
                        x = make_inputs(gal["x_proj_mpc_h"][r], gal["y_proj_mpc_h"][r],
                                        gal["v_los_kms"][r], o - o[0], dim, n=n,
                                        half_width_mpc_h=s.window.half_width_mpc_h,
                                        v_max_kms=s.window.v_max_kms, h0=s.kde.h0,
                                        truncation=s.kde.truncation,
                                        ids=rows["cluster_id"][b0:b1].tolist())
                    except KDEInputError as err:
                        raise CatalogueError(clusters, "galaxies", str(err),
                                             "rebuild the mock (mock.min_galaxies >= 3)") \
                            from err
                    w.write(x, {c: v[b0:b1] for c, v in rows.items()})
                    bar.update(b1 - b0)
                bar.close()
        log.info("ablation %s %s: %d inputs of %s voxels", dim, split_name, n_cl,
                 "x".join(map(str, shape)))


def ablation_train_settings(s, dim):
    """The CNN3D training settings with this dimensionality's layers and its own seed."""
    from ..training import TrainSettings

    base = train_settings(s).to_dict()
    layers = getattr(s.ablation, f"layers_{dim}") or s.train.layers
    if layers:
        base["layers"] = layers
    else:
        base.pop("layers")                      # the default spec, in 1-D or 2-D
    if base.get("augment"):
        log.info("train.augment (D4 sky symmetries) does not apply to %s inputs; off", dim)
    base["augment"] = False
    base["seed"] = stage_seed(s.seed, f"ablation_train_{dim}") % (2 ** 31)
    return TrainSettings.from_dict(base)


def ablation_train(*, config, dim, train_inputs, validation_inputs, model_out):
    """Rule ``ablation_train``: CNN1D/CNN2D with the CNN3D's training code and settings."""
    from ..training import train

    s = settings_of(config)
    result = train(train_inputs, validation_inputs, Path(model_out).parent,
                   ablation_train_settings(s, dim), model_file=Path(model_out).name)
    log.info("ablation %s: %d parameters, best epoch %d of %d (val MSE %.4g), stopped "
             "early: %s", dim, result.n_params, result.best_epoch, result.epochs_run,
             result.best_val_loss, result.stopped_early)


def ablation_evaluate(*, config, dim, model, test_inputs, eval_inputs, clusters, test_out,
                      eval_out, joint_pdf_out, metrics_out):
    """Rule ``ablation_evaluate``: predictions, the network's own SBI calibration (joint
    PDF of its test-set predictions, as the ``calibrate`` rule), eval-set metrics."""
    from ..ablation import network_report
    from ..calibration import load_calibration
    from ..training import predict
    from .evaluate import calibrate, observer_distances

    s = settings_of(config)
    bs = s.train.batch_size
    preds = {}
    for split_name, cubes, out in (("test", test_inputs, test_out),
                                   ("eval", eval_inputs, eval_out)):
        preds[split_name] = predict(Path(model).parent, cubes, batch_size=bs,
                                    model_file=Path(model).name)
        write_table(out, preds[split_name], group="predictions", schema=PREDICTION_SCHEMA,
                    attrs=dict(split=split_name, model=str(model), dimensionality=dim))
    calibrate(config=s, test_predictions=test_out, clusters=clusters, out=joint_pdf_out)
    if len(preds["eval"]["cluster_id"]) == 0:
        raise CatalogueError(eval_out, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    point = s.calibration.point_estimate
    pdf = load_calibration(joint_pdf_out, distance_aware=s.calibration.distance_aware)
    rep = network_report(pdf, preds["eval"], point=point,
                         distance=observer_distances(clusters, preds["eval"]["cluster_id"]))
    metrics = dict(run=s.run, dimensionality=dim, point_estimate=point,
                   n_eval=rep["overall"]["n"], n_test_pairs=len(preds["test"]["cluster_id"]),
                   network=rep)
    io.write_json(metrics_out, jsonable(metrics))
    log.info("ablation %s eval: n=%d, mean residual %.3f dex, scatter %.3f dex, coverage "
             "68%% %.3f, 95%% %.3f", dim, rep["overall"]["n"], rep["overall"]["mean"],
             rep["overall"]["std"], rep["coverage"]["68"]["fraction"],
             rep["coverage"]["95"]["fraction"])


def ablation_summary(*, config, metrics_1d, metrics_2d, metrics_3d, out):
    """Rule ``ablation_summary``: one table of CNN1D/2D/3D (+ SBI) and the baselines."""
    from ..ablation import method_entry, precision_order

    s = settings_of(config)
    fix = "rerun the evaluate / ablation_evaluate rules"
    m3 = _read_json(metrics_3d, "network", fix)
    methods = {}
    n_eval = {}
    for name, path in (("cnn1d", metrics_1d), ("cnn2d", metrics_2d)):
        m = _read_json(path, "network", fix)
        methods[name] = method_entry(m["network"], label=f"CNN{name[3:].upper()} + SBI",
                                     kind="network")
        n_eval[name] = m["n_eval"]
    methods["cnn3d"] = method_entry(m3["network"], label="CNN3D + SBI", kind="network")
    n_eval["cnn3d"] = m3["n_eval"]
    if len(set(n_eval.values())) != 1:
        raise CatalogueError(metrics_3d, "n_eval", f"the networks were evaluated on "
                             f"different numbers of eval clusters {n_eval}",
                             "rerun the ablation and evaluate rules on one mock")
    for name, rep in m3.get("baselines", {}).items():
        methods[name] = method_entry(rep, label=_BASELINE_LABELS.get(name, name),
                                     kind="baseline")
    order = precision_order(methods)
    summary = dict(
        run=s.run, n_eval=n_eval["cnn3d"], point_estimate=m3.get("point_estimate", "map"),
        residual="eps = log10(M_true / M_pred), dex; networks: posterior point estimate of "
                 "their own test-set joint PDF; baselines: one offset fitted on the test set",
        inputs={"cnn1d": "KDE of v_los", "cnn2d": "KDE of (R_proj, v_los)",
                "cnn3d": "KDE of (x_proj, y_proj, v_los)"},
        methods=methods, precision_order=order,
        expectation="paper (Figs. 7, 8): scatter CNN1D > CNN2D > CNN3D",
        matches_expectation=order["monotonic"])
    io.write_json(out, jsonable(summary))
    log.info("ablation: scatter %s dex; falls with dimensionality: %s",
             ", ".join(f"{k} {v:.3f}" for k, v in order["scatter_dex"].items()),
             order["monotonic"])


def ablation_plots(*, summary, png):
    """Rule ``ablation_plots``: residual bias/scatter per mass bin and sigma_N/sigma_0."""
    from ..plots_analyses import ablation_figure

    ablation_figure(_read_json(summary, "methods", "rerun ablation_summary"), png)


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


def _cubes_and_predict(model, norm, gal, offsets, ids, grid, k, batch_size, chunk=256):
    """KDE cubes of the clusters in ``offsets`` (chunked) -> network predictions."""
    from ..kde import kde_cube_batches
    from ..robustness import predict_inputs

    pred = np.empty(offsets.size - 1)
    for b0, b1, cubes in kde_cube_batches(gal["x_mpc_h"], gal["y_mpc_h"], gal["v_kms"], offsets,
                                          grid=grid, h0=k.h0, truncation=k.truncation,
                                          batch_size=chunk, ids=ids):
        pred[b0:b1] = predict_inputs(model, norm, cubes, batch_size=batch_size)
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
    from ..robustness import perturb_galaxies

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
    from ..robustness import compare, perturb_galaxies

    pg = perturb_galaxies(gal["x_mpc_h"], gal["y_mpc_h"], gal["v_kms"], offsets, p,
                          stage_rng(s.seed, f"robustness/{p.key}"),
                          v_max_kms=s.window.v_max_kms, min_galaxies=min_gal)
    kept = pg["kept"]
    if kept.sum() < 10:
        raise CatalogueError(eval_predictions, "n_gal", f"{p.label} leaves only "
                             f"{int(kept.sum())} eval clusters with >= {min_gal} galaxies",
                             "lower the perturbation level or robustness.min_galaxies")
    pred = predict(pg, pg["offsets"], ids[kept])
    res = compare(pdf, truth[kept], ref[kept], pred, point=point, distance=distance[kept])
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
    from ..robustness import Perturbation, compare, perturbations, verdict
    from .evaluate import observer_distances

    s = settings_of(config)
    r = s.robustness
    k = s.kde
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    net, norm = _load_network(model, normalisation)
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

    def predict(g, offs, cl_ids):
        return _cubes_and_predict(net, norm, g, offs, cl_ids, grid, k, bs)

    ref, max_diff_stored, zero = _reference_predictions(
        predict, s, ref_table, gal, offsets, ids, checks, eval_predictions, bar)
    rows = []
    results = []
    reference = compare(pdf, truth, ref, ref, point=point, distance=dist)
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
    from ..plots_analyses import robustness_figure

    robustness_figure(_read_json(summary, "perturbations", "rerun the robustness rule"), png)


# -- saliency ---------------------------------------------------------------------------------

def saliency_maps(*, config, model, normalisation, eval_cubes, out, summary_out,
                  progress=True):
    """Rule ``saliency_maps`` (aggregate target ``saliency``): mean input gradients of the
    CNN3D on eval clusters in mass bins."""
    import h5py
    from tqdm.auto import tqdm

    from ..io.cubes import CubeReader
    from ..kde import Grid3D
    from ..saliency import binned_saliency, projections, weighted_extent

    s = settings_of(config)
    cfg = s.saliency
    bins = np.asarray(cfg.mass_bins, dtype=float)
    max_cl = cfg.max_clusters
    net, norm = _load_network(model, normalisation)
    with CubeReader(eval_cubes) as r:
        n_all = len(r)
        grid_shape = r.shape[1:]
        logm = r.column("log10_m200c").astype(np.float64)
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
                yield rr.cubes(b0, b1), logm[b0:b1]
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
              "lies (uniform_reference: the same for a map flat over the window); sum_mean_dex: change of log10 M_pred for adding probability 1 uniformly "
              "to every voxel (cubes are normalised, so this direction is never taken)")))
    log.info("saliency: %d eval clusters in %d mass bins (%s per bin)", n_use, len(sal["n"]),
             list(map(int, sal["n"])))


def saliency_plots(*, saliency, mean_png, abs_png):
    """Rule ``saliency_plots``: projections of the mean signed and absolute saliency."""
    from ..plots_analyses import saliency_figure

    saliency_figure(saliency, mean_png, which="mean")
    saliency_figure(saliency, abs_png, which="mean_abs")
