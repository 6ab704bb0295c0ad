"""Does D4 sky-plane augmentation (``train.augment``) lower the CNN3D + SBI eval scatter?

Usage: ``python benchmarks/bench_augment.py [--run-dir results/demo] [--seeds 1 2 3]
[--augment off on] [--epochs N] [--tmpdir DIR] [--skip-reference]``

Prints one JSON object to stdout (progress goes to stderr through ``logging``).

For each augment setting (``train.augment`` false / true: a random one of the 8 sky-plane
symmetries, D4 on the x, y axes, per training cube per epoch, :mod:`cmpipe.cnn.cubedata`) and
each seed, the CNN3D is trained as the pipeline's ``train`` rule trains it, on the run's own
``cubes/train.h5`` early-stopped on ``cubes/validation.h5``:
:func:`cmpipe.stages.train.train_settings` of the run's resolved config
(``config.resolved.yaml``, read by :func:`cmpipe.stages.infer.load_run_config` and
validated against ``src/cmpipe/data/config.schema.yaml``), with ``seed`` and ``augment``
replaced (``dataclasses.replace``) and, with ``--epochs``, the maximum number of epochs
(a quick check). The model goes to a temporary directory (``--tmpdir``, default the
system's), deleted afterwards. Then, as rules ``summaries``, ``calibrate`` and ``evaluate``
do:

* :func:`cmpipe.cnn.training.predict` on ``cubes/test.h5`` and ``cubes/eval.h5`` (batch size of
  the run's ``train.batch_size``);
* the joint PDF of the finite test pairs, :func:`cmpipe.calibration.tabulate_joint_pdf`,
  and with ``calibration.distance_aware`` its distance nodes,
  :func:`cmpipe.calibration.tabulate_by_distance` (observer distances from
  ``mock/clusters.h5`` by :func:`cmpipe.stages.evaluate.observer_distances`), with the run's
  ``calibration`` settings; saved and read back with
  :func:`cmpipe.calibration.load_calibration` (the file round trip of the pipeline);
* eval posteriors :func:`cmpipe.calibration.summarise` at each eval cluster's prediction
  and observer distance; the point estimate is the run's ``calibration.point_estimate``
  (``median`` in the default run); rows with a non-finite point estimate are left out, as
  in ``evaluation/metrics.json``.

Per run (``runs``): ``scatter_dex`` (standard deviation, ``ddof=1``, of
``log10 M_true - point``), ``mean_residual_dex`` (its mean), ``coverage_68`` /
``coverage_95`` (fraction of eval clusters whose true mass lies in the 68.27% / 95% central
posterior interval), ``raw_scatter_dex`` (of the network's own predictions, before
calibration), ``best_epoch``, ``epochs_run``, ``best_val_loss`` (standardised MSE),
``stopped_early``, ``train_seconds`` (sum of the epoch times in ``history.csv``) and
``train_wall_s`` (the whole :func:`cmpipe.cnn.training.train` call, graph tracing and model
saving included).

Per augment setting (``summary``): mean and standard deviation (``ddof=1``, over seeds) of
each number above. ``difference_on_minus_off``: the difference of the mean scatters and
its standard error ``sqrt(sd_on^2 / n_on + sd_off^2 / n_off)`` (seed-to-seed spread only;
the eval set is the same for every run, so its sampling noise is common to both settings).

``reference`` (unless ``--skip-reference``): the same calibration and summaries applied to
the run's own predictions (``summaries/test.h5``, ``summaries/eval.h5``), to be compared with
``evaluation/metrics.json``: the check that this script computes what the pipeline does.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

logger = logging.getLogger("bench_augment")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "cmpipe" / "data" / "config.schema.yaml"
METRIC_KEYS = ("scatter_dex", "mean_residual_dex", "coverage_68", "coverage_95",
               "raw_scatter_dex", "best_epoch", "epochs_run", "best_val_loss",
               "train_seconds", "train_wall_s")


def run_settings(run_dir):
    """Settings of a finished run, from its ``config.resolved.yaml``.

    Parameters
    ----------
    run_dir : path-like
        The run directory (``results/{run}``).

    Returns
    -------
    cmpipe.settings.Settings
    """
    from cmpipe.settings import Settings
    from cmpipe.stages.infer import load_run_config

    return Settings.from_config(load_run_config(run_dir, SCHEMA))


def calibrate(s, test_pred, clusters, workdir):
    """The calibration of the ``calibrate`` rule, read back as the ``evaluate`` rule reads it.

    Parameters
    ----------
    s : cmpipe.settings.Settings
        The run's settings (``calibration`` section).
    test_pred : dict of numpy.ndarray
        Test-split predictions (``cluster_id``, ``log10_m200c_pred``, ``log10_m200c_true``).
    clusters : path-like
        The run's cluster table (``mock/clusters.h5``), for the observer distances.
    workdir : path-like
        Where the joint-PDF file is written (the pipeline's file round trip).

    Returns
    -------
    cmpipe.calibration.JointPDF or cmpipe.calibration.DistanceJointPDF
    """
    from cmpipe.calibration import load_calibration, tabulate_by_distance, tabulate_joint_pdf
    from cmpipe.stages.evaluate import observer_distances

    c = s.calibration
    fin = np.isfinite(test_pred["log10_m200c_true"]) & np.isfinite(test_pred["log10_m200c_pred"])
    d, m, ids = (test_pred[k][fin] for k in ("log10_m200c_pred", "log10_m200c_true",
                                             "cluster_id"))
    pdf = tabulate_joint_pdf(d, m, bandwidth=c.bandwidth, n_d=c.n_grid_pred,
                             n_m=c.n_grid_mass, shrink=c.shrink,
                             meta=dict(source="bench_augment"))
    if c.distance_aware:
        pdf = tabulate_by_distance(d, m, observer_distances(clusters, ids),
                                   n_nodes=c.distance_nodes, window=c.distance_window,
                                   blind=pdf, bandwidth=c.bandwidth, shrink=c.shrink,
                                   meta=dict(source="bench_augment"))
    path = Path(workdir) / "joint_pdf.h5"
    pdf.save(path)
    return load_calibration(path, distance_aware=c.distance_aware)


def eval_metrics(s, test_pred, eval_pred, clusters, workdir):
    """Eval-set residuals and coverage of the calibrated posteriors.

    Parameters
    ----------
    s : cmpipe.settings.Settings
    test_pred, eval_pred : dict of numpy.ndarray
        :func:`cmpipe.cnn.training.predict` of the test and eval cube files.
    clusters : path-like
        The run's cluster table.
    workdir : path-like
        Scratch directory for the joint-PDF file.

    Returns
    -------
    dict
        ``n_eval``, ``scatter_dex``, ``mean_residual_dex``, ``coverage_68``,
        ``coverage_95``, ``raw_scatter_dex``, ``point_estimate``.
    """
    from cmpipe.calibration import summarise
    from cmpipe.stages.evaluate import observer_distances

    pdf = calibrate(s, test_pred, clusters, workdir)
    dist = observer_distances(clusters, eval_pred["cluster_id"]) \
        if s.calibration.distance_aware else None
    summ = summarise(pdf, eval_pred["log10_m200c_pred"], dist)
    point = summ[s.calibration.point_estimate]
    t = np.asarray(eval_pred["log10_m200c_true"], dtype=np.float64)
    ok = np.isfinite(point)
    eps = t[ok] - point[ok]
    tt = t[ok]
    raw = t - np.asarray(eval_pred["log10_m200c_pred"], dtype=np.float64)
    return {"n_eval": int(ok.sum()), "n_test_pairs": int(pdf.n_pairs),
            "point_estimate": s.calibration.point_estimate,
            "scatter_dex": float(np.std(eps, ddof=1)),
            "mean_residual_dex": float(eps.mean()),
            "coverage_68": float(np.mean((tt >= summ["lo68"][ok]) & (tt <= summ["hi68"][ok]))),
            "coverage_95": float(np.mean((tt >= summ["lo95"][ok]) & (tt <= summ["hi95"][ok]))),
            "raw_scatter_dex": float(np.std(raw[np.isfinite(raw)], ddof=1))}


def one_run(s, run_dir, base, augment, seed, tmpdir):
    """Train one CNN3D (seed, augment), predict test and eval, calibrate and evaluate.

    Parameters
    ----------
    s : cmpipe.settings.Settings
    run_dir : pathlib.Path
    base : cmpipe.cnn.training.TrainSettings
        The ``train`` rule's settings (``--epochs`` already applied).
    augment : bool
    seed : int
    tmpdir : str or None
        Parent of the temporary model directory.

    Returns
    -------
    dict
        The run's entry of ``runs`` (see the module docstring).
    """
    from cmpipe.cnn.training import predict, read_history, train

    cubes = run_dir / "cubes"
    settings = dataclasses.replace(base, seed=seed, augment=augment)
    with tempfile.TemporaryDirectory(prefix=f"cmpipe-bench-augment-{int(augment)}-{seed}-",
                                     dir=tmpdir) as d:
        t0 = time.perf_counter()
        res = train(cubes / "train.h5", cubes / "validation.h5", d, settings)
        wall = time.perf_counter() - t0
        h = read_history(res.history_path)
        test_pred = predict(d, cubes / "test.h5", batch_size=s.train.batch_size)
        eval_pred = predict(d, cubes / "eval.h5", batch_size=s.train.batch_size)
        m = eval_metrics(s, test_pred, eval_pred, run_dir / "mock" / "clusters.h5", d)
    entry = {"augment": augment, "seed": seed, **m,
             "best_epoch": int(res.best_epoch), "epochs_run": int(res.epochs_run),
             "best_val_loss": float(res.best_val_loss),
             "stopped_early": bool(res.stopped_early),
             "train_seconds": round(float(np.sum(h["seconds"])), 1),
             "train_wall_s": round(wall, 1)}
    logger.info("augment=%s seed=%d: scatter %.4f dex, mean %.4f, cov68 %.3f, cov95 %.3f, "
                "best epoch %d of %d, %.0f s", augment, seed, entry["scatter_dex"],
                entry["mean_residual_dex"], entry["coverage_68"], entry["coverage_95"],
                entry["best_epoch"], entry["epochs_run"], wall)
    return entry


def aggregate(runs):
    """Mean and standard deviation over seeds of each number in :data:`METRIC_KEYS`.

    Parameters
    ----------
    runs : list of dict
        Entries of one augment setting.

    Returns
    -------
    dict
        ``n_seeds``, ``seeds`` and ``{key: {"mean": .., "sd": ..}}`` (``sd`` with
        ``ddof=1``; None for one seed).
    """
    out = {"n_seeds": len(runs), "seeds": [r["seed"] for r in runs]}
    for k in METRIC_KEYS:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = {"mean": float(v.mean()),
                  "sd": float(v.std(ddof=1)) if v.size > 1 else None}
    return out


def reference(s, run_dir, tmpdir):
    """This script's calibration on the run's own predictions, beside its metrics.json."""
    from cmpipe.io.tables import read_table

    preds = {}
    for split in ("test", "eval"):
        preds[split], _ = read_table(run_dir / "summaries" / f"{split}.h5", group="predictions")
    with tempfile.TemporaryDirectory(prefix="cmpipe-bench-augment-ref-", dir=tmpdir) as d:
        m = eval_metrics(s, preds["test"], preds["eval"], run_dir / "mock" / "clusters.h5", d)
    out = {"source": str(run_dir / "summaries"), **m}
    mpath = run_dir / "evaluation" / "metrics.json"
    if mpath.exists():
        run_m = json.loads(mpath.read_text())
        out["metrics_json"] = {k: run_m.get(k) for k in
                               ("n_eval", "scatter_dex", "mean_residual_dex", "coverage_68",
                                "coverage_95", "point_estimate")}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="results/demo", help="a finished run directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                   help="training seeds (TrainSettings.seed)")
    p.add_argument("--augment", nargs="+", choices=("off", "on"), default=["off", "on"],
                   help="augment settings to run")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: the run's train.epochs)")
    p.add_argument("--tmpdir", default=None, help="parent of the temporary model directories")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the calibration check on the run's own predictions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from cmpipe.devices import quiet_tensorflow_startup
    quiet_tensorflow_startup()

    t_start = time.perf_counter()
    run_dir = Path(args.run_dir)
    if Path(args.tmpdir or tempfile.gettempdir()).resolve().is_relative_to(
            (ROOT / "results").resolve()):
        p.error("--tmpdir must not be under results/")
    s = run_settings(run_dir)
    from cmpipe.stages.train import train_settings
    base = train_settings(s)
    if args.epochs is not None:
        base = dataclasses.replace(base, epochs=args.epochs)

    import keras
    import tensorflow as tf
    result = {"benchmark": "train.augment (D4 sky-plane symmetries) vs CNN3D + SBI eval scatter",
              "run_dir": str(run_dir), "seeds": args.seeds,
              "train_settings": {k: v for k, v in base.to_dict().items()
                                 if k not in ("layers", "seed", "augment")},
              "pipeline_train_seed": base.seed,
              "calibration": dataclasses.asdict(s.calibration)
              if dataclasses.is_dataclass(s.calibration) else str(s.calibration),
              "tensorflow": tf.__version__, "keras": keras.__version__,
              "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "gpu": bool(tf.config.list_physical_devices("GPU")),
              "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    if not args.skip_reference:
        result["reference"] = reference(s, run_dir, args.tmpdir)
        logger.info("reference (run's own predictions): scatter %.4f dex (metrics.json %s)",
                    result["reference"]["scatter_dex"],
                    result["reference"].get("metrics_json", {}).get("scatter_dex"))

    runs = []
    for aug in args.augment:
        for seed in args.seeds:
            runs.append(one_run(s, run_dir, base, aug == "on", seed, args.tmpdir))
    result["runs"] = runs
    summary = {}
    for aug in args.augment:
        sel = [r for r in runs if r["augment"] == (aug == "on")]
        summary[f"augment_{aug}"] = aggregate(sel)
    result["summary"] = summary
    if {"off", "on"} <= set(args.augment):
        on, off = summary["augment_on"]["scatter_dex"], summary["augment_off"]["scatter_dex"]
        diff = {"scatter_dex": on["mean"] - off["mean"]}
        if on["sd"] is not None and off["sd"] is not None:
            se = float(np.sqrt(on["sd"] ** 2 / summary["augment_on"]["n_seeds"]
                               + off["sd"] ** 2 / summary["augment_off"]["n_seeds"]))
            diff["stderr_dex"] = se
            diff["z"] = diff["scatter_dex"] / se if se > 0 else None
        result["difference_on_minus_off"] = diff
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
