"""Rules of the dimensionality ablation (paper Figs. 7, 8): the CNN1D/CNN2D inputs, every
network trained and evaluated at every seed, the summary table and its figure.

Products under ``results/{run}/`` (``docs/data-products.md``, "Analyses"); ``{seeddir}`` is
empty for seed 0 and ``seeds/{k}/`` for seeds k = 1 .. ``ablation.seeds`` - 1:

- ``ablation_inputs``   -> ``ablation/{dim}/inputs/{split}.h5`` (dim 1d | 2d)
- ``ablation_train``    -> ``ablation/{dim}/{seeddir}model/cnn{dim}.keras``, ``history.csv``,
  ``normalisation.json`` (dim 1d | 2d; 3d for k >= 1 only, on ``cubes/``: seed 0 of the
  CNN3D is rule ``train``'s ``model/``; 3dcube, seed 0 only: the CNN3D without the distance
  input, ``ablation.cube_only``)
- ``ablation_evaluate`` -> ``ablation/{dim}/{seeddir}summaries/{test,eval}.h5``,
  ``joint_pdf.h5``, ``metrics.json`` (3d seed 0: rule ``evaluate``'s
  ``evaluation/metrics.json``)
- ``ablation_summary``  -> ``ablation/summary.json``;
  ``ablation_plots`` -> ``ablation/scatter.png``

The science (reports, seed statistics, rankings) is in :mod:`cmpipe.evaluation.ablation`, imported
inside the functions: ``ablation_inputs`` runs in ``envs/kde.yaml``, without the evaluation
stack.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from ..io.artefacts import read_json_artefact
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, read_table, write_table
from ..settings import SPLIT_CODES
from .common import jsonable, settings_of, log
from .cubes import cube_rows, split_galaxies
from .evaluate import eval_mass_bins
from .train import PREDICTION_SCHEMA, train_settings

#: Classical estimators carried into the ablation table from ``evaluation/metrics.json``.
_BASELINE_LABELS = {"msigma_gapper": "M-sigma (gapper)",
                    "msigma_biweight": "M-sigma (biweight)", "virial": "virial"}

#: Display names of the networks (keys: :data:`cmpipe.evaluation.ablation.NETWORKS`).
_NETWORK_LABELS = {"cnn1d": "CNN1D + SBI", "cnn2d": "CNN2D + SBI", "cnn3d": "CNN3D + SBI"}


# -- helpers ------------------------------------------------------------------------------

def _ablation_grid(s) -> int:
    return int(s.ablation.n_grid or s.kde.n_grid)


def _split_rows(clusters, split_name):
    cl, attrs = read_table(clusters, group="clusters",
                           columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members",
                                    "observer_distance_mpc_h"])
    return cube_rows(cl, cl["split"] == SPLIT_CODES[split_name])


# -- inputs -------------------------------------------------------------------------------------

def ablation_inputs(*, config, clusters, dim, outs, progress=True):
    """Rule ``ablation_inputs``: 1-D ``v_los`` or 2-D ``(R_proj, v_los)`` KDE inputs.

    One file per split (``outs``: split name -> path), same clusters, order and per-cube
    columns as ``cubes/{split}.h5``, same window, bandwidth and truncation.
    """
    from tqdm.auto import tqdm

    from ..kde.images import AXES, ablation_inputs as make_inputs, input_shape
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


# -- training and evaluation, every seed ----------------------------------------------------

#: The cube-only CNN3D (``ablation.cube_only``): the main CNN3D without the distance input.
CUBE_ONLY = "3dcube"


def _check_network(dim, seed):
    if dim not in ("1d", "2d", "3d", CUBE_ONLY):
        raise ValueError("ablation network must be 1d, 2d, 3d or 3dcube (the cube-only "
                         f"CNN3D), got {dim!r}")
    if dim == "3d" and seed == 0:
        raise ValueError("seed 0 of the CNN3D is the main model (rule train, "
                         "model/cnn3d.keras): the ablation retrains it for seeds >= 1 only")
    if dim == CUBE_ONLY and seed != 0:
        raise ValueError("the cube-only CNN3D (ablation/3dcube/) has seed 0 only")


def ablation_train_settings(s, dim, seed=0):
    """The training settings of network ``dim`` (1d, 2d, 3d) at seed number ``seed``.

    Those of rule ``train`` (:func:`cmpipe.stages.train.train_settings`) with the seed of
    :func:`cmpipe.evaluation.ablation.training_seed`; for 1d/2d also the dimensionality's layers
    (``ablation.layers_{dim}``, else ``train.layers``, else the default pattern) and no D4
    augmentation (it acts on the sky-plane axes of the 3D cubes only). ``3dcube`` is the
    main CNN3D (its training seed too) without the distance input, so the two networks
    differ in that alone.
    """
    from ..evaluation.ablation import training_seed
    from ..cnn.training import TrainSettings

    base = train_settings(s).to_dict()
    if dim == CUBE_ONLY:
        base["distance_input"] = False
        base["seed"] = training_seed(s.seed, "3d", 0)
        return TrainSettings.from_dict(base)
    if dim != "3d":
        layers = getattr(s.ablation, f"layers_{dim}") or s.train.layers
        if layers:
            base["layers"] = layers
        else:
            base.pop("layers")                  # the default spec, in 1-D or 2-D
        if base.get("augment"):
            log.info("train.augment (D4 sky symmetries) does not apply to %s inputs; off", dim)
        base["augment"] = False
    base["seed"] = training_seed(s.seed, dim, seed)
    return TrainSettings.from_dict(base)


def ablation_train(*, config, dim, train_inputs, validation_inputs, model_out, seed=0):
    """Rule ``ablation_train``: one network of the ablation at one seed, with the CNN3D's
    training code: CNN1D/CNN2D on ``ablation/{dim}/inputs/`` (seeds 0, 1, ...) or the CNN3D
    retrained on ``cubes/`` (seeds 1, 2, ...; exactly rule ``train`` but for the seed)."""
    from ..cnn.training import train

    _check_network(dim, seed)
    s = settings_of(config)
    settings = ablation_train_settings(s, dim, seed)
    result = train(train_inputs, validation_inputs, Path(model_out).parent, settings,
                   model_file=Path(model_out).name)
    log.info("ablation %s seed %d (training seed %d): %d parameters, best epoch %d of %d "
             "(val MSE %.4g), stopped early: %s, resumed from epoch %d", dim, seed,
             settings.seed, result.n_params, result.best_epoch, result.epochs_run,
             result.best_val_loss, result.stopped_early, result.resumed_from_epoch)


def ablation_evaluate(*, config, dim, model, test_inputs, eval_inputs, clusters, test_out,
                      eval_out, joint_pdf_out, metrics_out, seed=0):
    """Rule ``ablation_evaluate``: predictions of one network at one seed, its own SBI
    calibration (joint PDF of its test-set predictions, as the ``calibrate`` rule) and its
    eval-set metrics (``metrics.json``: ``network`` as in ``evaluation/metrics.json``)."""
    from ..evaluation.ablation import network_report
    from ..calibration import load_calibration
    from ..cnn.training import predict
    from .evaluate import bootstrap_seed, calibrate, cluster_columns

    _check_network(dim, seed)
    s = settings_of(config)
    bs = s.train.batch_size
    preds = {}
    for split_name, cubes, out in (("test", test_inputs, test_out),
                                   ("eval", eval_inputs, eval_out)):
        preds[split_name] = predict(Path(model).parent, cubes, batch_size=bs,
                                    model_file=Path(model).name)
        write_table(out, preds[split_name], group="predictions", schema=PREDICTION_SCHEMA,
                    attrs=dict(split=split_name, model=str(model), dimensionality=dim,
                               seed=seed))
    calibrate(config=s, test_predictions=test_out, clusters=clusters, out=joint_pdf_out)
    if len(preds["eval"]["cluster_id"]) == 0:
        raise CatalogueError(eval_out, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    point = s.calibration.point_estimate
    pdf = load_calibration(joint_pdf_out, distance_aware=s.calibration.distance_aware)
    bins = eval_mass_bins(s, preds["eval"]["log10_m200c_true"])
    rows = cluster_columns(clusters, preds["eval"]["cluster_id"],
                           ["observer_distance_mpc_h", "halo_id"])
    rep = network_report(pdf, preds["eval"], point=point, bins=bins,
                         distance=np.asarray(rows["observer_distance_mpc_h"], dtype=float),
                         halos=rows["halo_id"],
                         seed=bootstrap_seed(s))
    trained = ablation_train_settings(s, dim, seed)
    metrics = dict(run=s.run, dimensionality=dim, seed=seed, training_seed=trained.seed,
                   distance_input=trained.distance_input,
                   calibration=("distance-aware" if s.calibration.distance_aware else
                                "distance-blind"),
                   point_estimate=point, n_eval=rep["overall"]["n"],
                   n_test_pairs=len(preds["test"]["cluster_id"]),
                   by_observer_distance=rep.pop("by_observer_distance"), network=rep)
    if s.calibration.distance_aware:       # the same network, the paper's calibration
        metrics["network_distance_blind"] = network_report(pdf.blind, preds["eval"],
                                                           point=point, bins=bins)
    io.write_json(metrics_out, jsonable(metrics))
    log.info("ablation %s seed %d eval: n=%d, mean residual %.3f dex, scatter %.3f dex, "
             "coverage 68%% %.3f, 95%% %.3f", dim, seed, rep["overall"]["n"],
             rep["overall"]["mean"], rep["overall"]["std"],
             rep["coverage"]["68"]["fraction"], rep["coverage"]["95"]["fraction"])


# -- summary and figure -----------------------------------------------------------------------

def _network_rows(files: dict, fix: str):
    """Ablation rows (:func:`cmpipe.evaluation.ablation.method_entry`) of every network at
    every seed (``files``: network -> metrics files, seed 0 first) and the common eval-set
    size."""
    from ..evaluation.ablation import method_entry

    rows, n_eval = {}, {}
    for name, paths in files.items():
        rows[name] = []
        for k, path in enumerate(paths):
            m = read_json_artefact(path, fix)
            if "network" not in m or "n_eval" not in m:
                raise CatalogueError(path, "network", "no network report", fix)
            if m.get("seed", k) != k:
                raise CatalogueError(path, "seed", f"holds seed {m['seed']} but is listed "
                                     f"as seed {k} of {name}",
                                     "pass the seeds' metrics files in order 1, 2, ...")
            rows[name].append(method_entry(m["network"], label=_NETWORK_LABELS[name],
                                           kind="network"))
            n_eval[str(path)] = m["n_eval"]
    if len(set(n_eval.values())) != 1:
        raise CatalogueError(files["cnn3d"][0], "n_eval", f"the networks were evaluated on "
                             f"different numbers of eval clusters {n_eval}",
                             "rerun the ablation and evaluate rules on one mock")
    return rows, next(iter(n_eval.values()))


def ablation_summary(*, config, metrics_1d, metrics_2d, metrics_3d, out, seeds_1d=(),
                     seeds_2d=(), seeds_3d=()):
    """Rule ``ablation_summary``: one table of CNN1D/2D/3D (+ SBI) and the baselines, each
    network's metrics at every seed and the ranking on the mean scatter over seeds.

    ``metrics_{dim}`` are seed 0 (``metrics_3d``: the main ``evaluation/metrics.json``, which
    also holds the baselines), ``seeds_{dim}`` the metrics files of seeds 1, 2, ... (the same
    number for every network)."""
    from ..evaluation.ablation import (method_entry, network_seeds, precision_order,
                                       precision_order_seeds, thirds_over_seeds)

    s = settings_of(config)
    fix = "rerun the evaluate / ablation_evaluate rules"
    files = {"cnn1d": [metrics_1d, *seeds_1d], "cnn2d": [metrics_2d, *seeds_2d],
             "cnn3d": [metrics_3d, *seeds_3d]}
    if len({len(v) for v in files.values()}) != 1:
        raise ValueError("every network needs the metrics of the same seeds, got "
                         f"{ {k: len(v) for k, v in files.items()} } files")
    rows, n_eval = _network_rows(files, fix)
    methods = {name: dict(r[0], **network_seeds(r)) for name, r in rows.items()}
    for name, paths in files.items():       # seed 0 of the CNN3D: evaluation/metrics.json
        methods[name]["by_observer_distance_seeds"] = thirds_over_seeds(
            [read_json_artefact(p, fix).get("by_observer_distance") for p in paths])
    m3 = read_json_artefact(metrics_3d, fix)
    for name, rep in m3.get("baselines", {}).items():
        methods[name] = method_entry(rep, label=_BASELINE_LABELS.get(name, name),
                                     kind="baseline")
    order = precision_order(methods)
    by_seeds = precision_order_seeds(methods)
    summary = dict(
        run=s.run, n_eval=n_eval, point_estimate=m3.get("point_estimate", "map"),
        residual="eps = log10(M_true / M_pred), dex; networks: posterior point estimate of "
                 "their own test-set joint PDF; baselines: one offset fitted on the test set",
        inputs={"cnn1d": "KDE of v_los", "cnn2d": "KDE of (R_proj, v_los)",
                "cnn3d": "KDE of (x_proj, y_proj, v_los)"},
        methods=methods, precision_order=order,
        expectation="paper (Figs. 7, 8): scatter CNN1D > CNN2D > CNN3D",
        matches_expectation=order["monotonic"],
        n_seeds=len(files["cnn3d"]),
        seeds_note="a network's own keys and precision_order are seed 0 (ablation/{dim}/, "
                   "the main CNN3D); seeds 1.. retrain it with another seed "
                   "(ablation/{dim}/seeds/{k}/); precision_order_seeds ranks on the mean "
                   "scatter over seeds, steps in units of the combined standard error of the "
                   "means (training noise only: every seed sees the same eval clusters); "
                   "by_observer_distance_seeds: each seed's residual and 68% coverage in "
                   "thirds of the observer distance, with the mean and s.d. over seeds",
        precision_order_seeds=by_seeds, matches_expectation_seeds=by_seeds["monotonic"])
    io.write_json(out, jsonable(summary))
    log.info("ablation (seed 0): scatter %s dex; falls with dimensionality: %s",
             ", ".join(f"{k} {v:.3f}" for k, v in order["scatter_dex"].items()),
             order["monotonic"])
    log.info("ablation (%d seeds): %s", summary["n_seeds"], by_seeds["statement"])


def ablation_plots(*, summary, png):
    """Rule ``ablation_plots``: residual bias/scatter per mass bin, sigma_N/sigma_0 and the
    scatter of every network at every seed."""
    from ..plots.analyses import ablation_figure

    ablation_figure(read_json_artefact(summary, "rerun ablation_summary"), png)
