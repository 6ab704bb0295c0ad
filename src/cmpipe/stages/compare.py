"""Rule ``compare``: the estimators side by side (CNN3D + SBI, neural flow, M-sigma, virial)
on this run's eval set and, with ``compare.pure_run``, on the pure run's.

Products under ``results/{run}/`` (docs/data-products.md, "Neural flow"):
``comparison/summary.json``, ``comparison/summary.csv``, ``figures/comparison.png``.
The numbers come from :func:`cmpipe.evaluation.comparison.comparison_summary`, the figure from
:func:`cmpipe.plots.flow.comparison_figure`; the rule runs in ``envs/plots.yaml`` (no torch,
no Keras).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import io
from ..evaluation.comparison import ROW_KEYS, SURVEY_RANGE_KEYS, comparison_summary
from ..io.tables import CatalogueError, write_csv
from ..settings import ConfigError
from .common import jsonable, settings_of, log


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CatalogueError(path, what, f"unreadable ({err})",
                             "rerun the run that makes it") from err


def write_comparison_csv(path, summary: dict) -> None:
    """The rows of :func:`cmpipe.evaluation.comparison.comparison_summary` as CSV (atomically): one
    row per catalogue and estimator, residuals in dex, empty cells for None, floats with 6
    significant digits."""
    cols = ("catalogue", "run", "estimator", "label") + ROW_KEYS + tuple(
        f"survey_{part}_{k}" for part in ("all", "top") for k in SURVEY_RANGE_KEYS)
    write_csv(path, cols, summary["rows"])


def check_fiducial_run(resolved_config, run) -> None:
    """The run named by ``compare.fiducial_run`` must be a fiducial-model run: its
    ``config.resolved.yaml`` says ``nuisance.sample: false``.

    Raises
    ------
    CatalogueError
        Naming the file, the key and the overlay that makes such a run.
    """
    import yaml

    other = yaml.safe_load(Path(resolved_config).read_text()) or {}
    if (other.get("nuisance") or {}).get("sample", True):
        raise CatalogueError(resolved_config, "nuisance.sample", f"run {run} is marginalised "
                             "too, not the fiducial model",
                             "rerun it with --configfile config.yaml configs/fiducial.yaml")


def _model_kind(config) -> str:
    """``marginalised`` (the run's mock draws every cluster's nuisances from their priors,
    ``nuisance.sample: true``) or ``fiducial`` (one universe)."""
    return "marginalised" if (config.get("nuisance") or {}).get("sample") else "fiducial"


def compare(*, config, metrics, flow_metrics, summary_out, csv_out, png,
            pure_metrics=None, pure_flow_metrics=None, pure_config=None,
            cube_only_metrics=None, fiducial_metrics=None, fiducial_flow_metrics=None,
            fiducial_config=None, set_metrics=None, pure_set_metrics=None, set_seeds=None):
    """Rule ``compare``: CNN3D + SBI, neural flow, M-sigma and virial side by side on this
    run's eval set and, with ``compare.pure_run``, on the pure run's.

    The pure run must be a finished run with ``mock.members: bound`` (its
    ``config.resolved.yaml`` is checked); settings that make the two runs' eval sets differ
    in more than their interlopers (seed, simulation, sightlines, window, splits) are
    reported as warnings. ``cube_only_metrics`` (``ablation/3dcube/metrics.json``, with
    ``ablation.cube_only``) adds the cube-only CNN3D's rows to this run's catalogue. With
    ``compare.fiducial_run`` (this run marginalised over the nuisances, ``nuisance.sample:
    true``) the fiducial-model run's metrics (its ``config.resolved.yaml`` must say
    ``nuisance.sample: false``) are the catalogue ``contaminated_fiducial``.
    ``set_metrics`` / ``pure_set_metrics`` (``sets/metrics.json``) add the set estimator's
    rows, ``set_seeds`` (``sets/seeds.json``) its spread over training seeds.
    """
    import yaml

    from ..plots.flow import comparison_figure

    s = settings_of(config)
    label = {"all": "contaminated", "bound": "pure"}
    cats = {label[s.mock.members]: dict(run=s.run, metrics=_read_json(metrics, "metrics"),
                                        flow=_read_json(flow_metrics, "flow metrics"),
                                        model=_model_kind(config))}
    if set_metrics is not None:
        cats[label[s.mock.members]]["sets"] = _read_json(set_metrics, "set metrics")
    if set_seeds is not None:
        cats[label[s.mock.members]]["set_seeds"] = _read_json(set_seeds, "set seeds")
    if cube_only_metrics is not None:
        cats[label[s.mock.members]]["cube_only"] = _read_json(cube_only_metrics, "network")
    pure_run = s.compare.pure_run
    if pure_run:
        if s.mock.members == "bound":
            raise ConfigError("compare.pure_run is set in a pure run (mock.members: bound). "
                              "Fix: set compare.pure_run: null in the pure overlay")
        if pure_run == s.run:
            raise ConfigError(f"compare.pure_run names this run itself ({s.run}). Fix: name "
                              "the run of configs/pure.yaml (e.g. demo-pure)")
        if None in (pure_metrics, pure_flow_metrics, pure_config):
            raise ConfigError("compare: the pure run's metrics, flow metrics and "
                              "config.resolved.yaml are all needed")
        other = yaml.safe_load(Path(pure_config).read_text()) or {}
        members = (other.get("mock") or {}).get("members", "all")
        if members != "bound":
            raise CatalogueError(pure_config, "mock.members", f"run {pure_run} has members: "
                                 f"{members}, not a pure catalogue",
                                 "rerun it with --configfile configs/pure.yaml")
        mine = dict(config)
        for key in ("seed", "simulation", "selection", "sightlines", "window", "splits",
                    "kde", "flow", "sets", "train"):
            if mine.get(key) != other.get(key):
                log.warning("compare: '%s' differs between run %s and the pure run %s: the "
                            "two eval sets differ in more than their interlopers", key, s.run,
                            pure_run)
        cats["pure"] = dict(run=pure_run, metrics=_read_json(pure_metrics, "metrics"),
                            flow=_read_json(pure_flow_metrics, "flow metrics"),
                            model=_model_kind(other))
        if pure_set_metrics is not None:
            cats["pure"]["sets"] = _read_json(pure_set_metrics, "set metrics")
    fid_run = s.compare.fiducial_run
    if fid_run:
        if None in (fiducial_metrics, fiducial_flow_metrics, fiducial_config):
            raise ConfigError("compare: the fiducial run's metrics, flow metrics and "
                              "config.resolved.yaml are all needed")
        check_fiducial_run(fiducial_config, fid_run)
        cats[f"{label[s.mock.members]}_fiducial"] = dict(
            run=fid_run, metrics=_read_json(fiducial_metrics, "metrics"),
            flow=_read_json(fiducial_flow_metrics, "flow metrics"), model="fiducial")
    summary = comparison_summary(cats)
    # which model each catalogue's rows come from: marginalised over the simulator's
    # nuisances (nuisance.sample: true) or trained on the one fiducial universe
    summary["models"] = {c: v.get("model", "fiducial") for c, v in cats.items()}
    io.write_json(summary_out, jsonable(summary))
    write_comparison_csv(csv_out, summary)
    comparison_figure(summary, png)
    for cat, r in summary["ratios"].items():
        log.info("compare (%s, run %s): scatter CNN3D+SBI %.3f, flow %.3f, sets %s, M-sigma "
                 "%.3f dex; M-sigma / flow scatter %.2f", cat, summary["runs"][cat],
                 r["cnn3d_sbi_scatter_dex"], r["flow_scatter_dex"],
                 "-" if r["sets_scatter_dex"] is None else f"{r['sets_scatter_dex']:.3f}",
                 r["msigma_scatter_dex"], r["msigma_over_flow_scatter"])


def companion_run(command, threads, run, products, out) -> dict:
    """Rule ``companion_run``: build a companion run that this run reads (the pure
    catalogue's ``compare.pure_run``, the fiducial model's ``compare.fiducial_run``) inside
    this run's DAG, so that its jobs share the machine with this run's own.

    ``command`` holds the arguments of the companion's Snakemake command
    (``workflow/rules/common.smk``: ``companion_command``: this run's config files and
    ``--config`` values, the overlay, the run name, no lock of its own); it runs with this
    job's Python's Snakemake on ``threads`` cores, its output going to this rule's log.
    ``out`` (JSON, atomically) records the run, the command and the SHA-256 of each product
    this run reads (``products``, paths): the rules reading them take this record as input
    and so rerun after this job does. A failing companion stops the rule with the command
    that reruns it alone.
    """
    import shlex
    import subprocess
    import sys

    words = [sys.executable, "-m", "snakemake", *command, "--cores", str(int(threads))]
    log.info("companion run %s: %s", run, shlex.join(words))
    with subprocess.Popen(words, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:             # streamed: the log shows its progress
            log.info("[%s] %s", run, line.rstrip())
    if proc.returncode != 0:
        raise ConfigError(
            f"companion run {run} failed (exit {proc.returncode}; its Snakemake output is "
            f"in this rule's log). Fix: run it alone to see the failing job: "
            f"{shlex.join(w for w in words if w not in ('--nolock', '--ignore-incomplete'))}")
    missing = [p for p in products if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"companion run {run} finished without {', '.join(missing)}. "
                          "Fix: check its overlay builds them (targets comparison_inputs / "
                          "fiducial_inputs)")
    record = dict(run=run, command=shlex.join(words),
                  products={str(p): io.artefacts.file_digest(p) for p in products})
    with io.tables.atomic_output(out) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    return record
