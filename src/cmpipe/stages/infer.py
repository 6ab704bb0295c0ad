"""``cmpipe infer``: a trained run applied to a user's catalogue, without Snakemake.

The run directory (``results/{run}``) supplies the resolved config
(:data:`RESOLVED_CONFIG`, written by rule ``resolved_config``), the models and their
calibrations; the workflow's own stage functions do the work: :func:`.survey.survey_cubes`
(window galaxies, KDE cubes), then per estimator (:data:`ESTIMATORS`)
:func:`.survey.survey_posteriors` (``cnn3d``: CNN3D + SBI, as rule ``survey_posteriors``)
or :func:`.flow.flow_survey_images` and :func:`.flow.flow_survey_posteriors` (``flow``: the
neural flow, recalibrated on the test split with ``calibration.recalibrate_flow``, as rule
``flow_survey_posteriors``) or :func:`.sets.set_survey_inputs` and the same
:func:`.flow.flow_survey_posteriors` (``sets``: the set estimator, recalibrated with
``calibration.recalibrate_sets``, as rule ``set_survey_posteriors``). Without an estimator,
:func:`best_estimator` picks the run's best-calibrated one from its metrics files.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io.tables import CatalogueError
from ..sections import SPEED_ONLY_KEYS
from ..settings import ConfigError, Settings, read_config_file
from .common import log
from .flow_survey import flow_survey_images, flow_survey_posteriors
from .sets import SET_ESTIMATOR, set_survey_inputs
from .survey import survey_cubes, survey_posteriors

__all__ = ["RESOLVED_CONFIG", "ESTIMATORS", "NOMINAL_COVERAGE", "load_run_config",
           "best_estimator", "estimator_output", "check_infer_paths", "infer"]

#: File name of a run's resolved config, inside ``results/{run}``.
RESOLVED_CONFIG = "config.resolved.yaml"
#: Estimators ``cmpipe infer --estimator`` applies, and each one's eval metrics file.
ESTIMATORS = {"cnn3d": "evaluation/metrics.json", "flow": "flow/metrics.json",
              "sets": "sets/metrics.json"}
#: The flow-type estimators: directory in the run, the config switch of its test-split
#: calibration, the rule that trains it.
_FLOWS = {"flow": ("flow", "recalibrate_flow", "flow_train", "neural flow"),
          "sets": ("sets", "recalibrate_sets", "set_train", "set estimator")}
#: Nominal coverage of the central 68% and 95% intervals (1 and 2 sigma of a Gaussian).
NOMINAL_COVERAGE = {"coverage_68": 0.6827, "coverage_95": 0.9545}


def load_run_config(run_dir, schema=None) -> dict:
    """The resolved config of a run (``results/{run}/config.resolved.yaml``).

    Validated against ``schema`` when given (fills defaults of sections added later).

    Raises
    ------
    ConfigError
        The file is missing, not valid YAML, holds a key twice or is not a mapping.
    """
    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: no resolved config; the run directory must be a "
                          "finished run (snakemake ... makes results/{run}/"
                          f"{RESOLVED_CONFIG} with the model)")
    # the strict loader: a duplicated key is an error, not "the last wins"
    cfg = read_config_file(path)
    from ..io.artefacts import PRODUCTS_KEY
    cfg.pop(PRODUCTS_KEY, None)
    # a run made before the distance-aware calibration has a distance-blind joint PDF
    cal = cfg.get("calibration")
    if isinstance(cal, dict):
        cal.setdefault("distance_aware", False)
    if schema is not None and Path(schema).exists():
        import copy

        from ..settings import validate_config
        try:
            cfg = validate_config(copy.deepcopy(cfg), schema)
        except ConfigError as err:
            log.warning("%s does not validate against the current schema (a run made by "
                        "another cmpipe version?); using it as written: %s", path, err)
    return cfg


def best_estimator(run_dir) -> tuple[str, str]:
    """The run's best-calibrated estimator and why (the default of ``cmpipe infer``).

    Of the estimators whose eval metrics exist (:data:`ESTIMATORS`: ``evaluation/
    metrics.json``, ``flow/metrics.json``, ``sets/metrics.json``), the one whose eval-set coverage of the 68% and
    95% intervals is closest to nominal (smallest ``|coverage_68 - 0.6827| +
    |coverage_95 - 0.9545|``); a tie (equal to 1e-6) goes to the smaller ``scatter_dex``.
    Without any metrics file: ``cnn3d``.

    Returns
    -------
    name : str
        ``"cnn3d"``, ``"flow"`` or ``"sets"``.
    reason : str
        One line naming the metrics compared (written to the output's metadata).
    """
    run_dir = Path(run_dir)
    scores = {}
    for name, rel in ESTIMATORS.items():
        path = run_dir / rel
        try:
            m = json.loads(path.read_text())
            dev = sum(abs(float(m[k]) - v) for k, v in NOMINAL_COVERAGE.items())
            scores[name] = (round(dev, 6), float(m["scatter_dex"]), m)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.info("%s: no usable eval metrics (%s); %s is not a candidate for the default "
                     "estimator", path, type(err).__name__, name)
    if not scores:
        files = ", ".join(ESTIMATORS.values())
        return "cnn3d", f"default: no eval metrics in {run_dir} ({files}); the CNN3D + SBI"
    best = min(scores, key=lambda k: scores[k][:2])
    said = "; ".join(f"{k} coverage 68% {s[2]['coverage_68']:.3f}, 95% {s[2]['coverage_95']:.3f}"
                     f", scatter {s[1]:.3f} dex" for k, s in scores.items())
    return best, (f"default: the run's best-calibrated estimator (eval coverage closest to "
                  f"nominal 0.683/0.954, ties to the smaller scatter): {said}")


def estimator_output(out, estimator) -> Path:
    """``--estimator all``: ``out`` with ``-{estimator}`` before its extension
    (``post.ecsv`` -> ``post-flow.ecsv``; ``post.fits.gz`` -> ``post-flow.fits.gz``)."""
    out = Path(out)
    name = out.name
    ext = next((e for e in (".fits.gz", ".ecsv", ".csv", ".fits", ".fit")
                if name.lower().endswith(e)), out.suffix)
    stem = name[:len(name) - len(ext)] if ext else name
    return out.with_name(f"{stem}-{estimator}{ext}")


_FIX = ("rerun the rule that makes it (snakemake --cores N --configfile ... --forcerun {rule}); "
        "the file is truncated or corrupt")


def _check_run(run_dir: Path, cfg: dict, estimator: str) -> dict:
    """The files of ``estimator`` in the run, after checking that they, the config and its
    ``products`` record exist, are one run's (SHA-256) and are readable, before any work."""

    from ..calibration import JointPDF
    from ..io.artefacts import (PRODUCTS_KEY, check_keras_file, check_run_consistency,
                                read_json_artefact)

    if estimator == "cnn3d":
        files = dict(model=run_dir / "model" / "cnn3d.keras",
                     norm=run_dir / "model" / "normalisation.json",
                     joint_pdf=run_dir / "calibration" / "joint_pdf.h5")
        what = ("trained model", "target normalisation", "calibration joint PDF")
    else:
        sub, switch, _, label = _FLOWS[estimator]
        files = dict(model=run_dir / sub / "model" / "flow.pt",
                     meta=run_dir / sub / "model" / "flow.json")
        what = (f"trained {label}", f"{label} metadata")
        if (cfg.get("calibration") or {}).get(switch):
            files["joint_pdf"] = run_dir / sub / "joint_pdf.h5"
            what += (f"{label} calibration joint PDF (calibration.{switch}: true)",)
    for p, w in zip(files.values(), what):
        if not p.exists():
            raise ConfigError(f"{p}: {w} missing; finish the run (snakemake --configfile "
                              f"...) before cmpipe infer --estimator {estimator}")
    # model, calibration and config must be one run's, and readable, before any work
    raw = read_config_file(run_dir / RESOLVED_CONFIG)
    check_run_consistency(run_dir, {k: v for k, v in raw.items() if k != PRODUCTS_KEY},
                          raw.get(PRODUCTS_KEY), ignore=SPEED_ONLY_KEYS,
                          required=[str(p.relative_to(run_dir)) for p in files.values()])
    if estimator == "cnn3d":
        check_keras_file(files["model"], _FIX.format(rule="train"))
        read_json_artefact(files["norm"], _FIX.format(rule="train"))
    else:
        from ..flow.model import FlowModel

        read_json_artefact(files["meta"], _FIX.format(rule=_FLOWS[estimator][2]))
        FlowModel.load(files["model"].parent)
    if "joint_pdf" in files:
        JointPDF.load(files["joint_pdf"])
    return files


def _run_settings(run_dir, cfg, min_galaxies):
    if min_galaxies is not None:
        cfg.setdefault("survey", {})["min_galaxies"] = int(min_galaxies)
    try:
        return Settings.from_config(cfg)
    except KeyError as err:
        raise ConfigError(f"{run_dir / RESOLVED_CONFIG}: {err.args[0]}; the run was made by "
                          "another cmpipe version. Fix: rerun the workflow with this cmpipe "
                          "to rewrite it") from err


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_infer_paths(*, clusters, out, galaxies=None, phase_space=None,
                      keep_dir=None) -> None:
    """The files of ``cmpipe infer``, checked before any work: each input exists and is a
    file, the output ``-o`` is none of them, not a directory, and its directory exists
    and is writable; ``--keep`` is not an existing file.

    Raises
    ------
    CatalogueError
        Naming the file, the command-line flag and the fix.
    """
    import tempfile

    inputs = [(Path(p), flag) for p, flag in ((clusters, "--clusters"),
                                               (galaxies, "--galaxies"),
                                               (phase_space, "--phase-space"))
              if p is not None]
    for path, flag in inputs:
        if not path.exists():
            raise CatalogueError(path, flag, "file does not exist",
                                 f"check the path given to {flag}")
        if path.is_dir():
            raise CatalogueError(path, flag, "is a directory, not a table",
                                 f"give {flag} a .fits, .csv or .ecsv file")
    out = Path(out)
    for path, flag in inputs:
        if _same_file(out, path):
            raise CatalogueError(out, "-o", f"the output is the input table of {flag}; "
                                 "writing it would overwrite your catalogue",
                                 "give -o a new file name")
    if out.is_dir():
        raise CatalogueError(out, "-o", "is an existing directory",
                             "give -o a file name (.ecsv, .csv or .fits), e.g. "
                             f"{out / 'posteriors.ecsv'}")
    out_dir = out.resolve().parent
    if not out_dir.is_dir():
        raise CatalogueError(out, "-o", f"output directory {out_dir} does not exist",
                             "create it first or choose another -o path")
    try:                                     # os.access says yes to root on read-only mounts
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise CatalogueError(out, "-o", f"output directory {out_dir} is not writable "
                             f"({err.strerror})", "choose a writable -o path") from err
    if keep_dir is not None and Path(keep_dir).exists() and not Path(keep_dir).is_dir():
        raise CatalogueError(keep_dir, "--keep", "is an existing file, not a directory",
                             "give --keep a directory (it is made if missing)")


def infer(*, run_dir, clusters, out, galaxies=None, phase_space=None, cluster_columns=None,
          galaxy_columns=None, angle_unit="auto", min_galaxies=None, threads=1,
          keep_dir=None, schema=None, progress=False, estimator=None) -> dict:
    """``cmpipe infer``: apply a trained run to a user's catalogue, without Snakemake.

    The run directory supplies the resolved config (window, KDE, cosmology), the models and
    their calibrations; the same stage functions as the workflow make ``cubes.h5`` and
    ``phase_space.h5`` (in ``keep_dir``, or a temporary directory) and the posterior table
    ``out`` (.ecsv, .csv or .fits) of the estimator.

    Parameters
    ----------
    estimator : {"cnn3d", "flow", "sets", "all"} or None
        ``cnn3d``: CNN3D + SBI (rule ``survey_posteriors``); ``flow``: the neural flow and
        its test-split recalibration when the run has ``calibration.recalibrate_flow``
        (rule ``flow_survey_posteriors``); ``sets``: the set estimator (Deep Sets flow) and
        its recalibration with ``calibration.recalibrate_sets`` (rule
        ``set_survey_posteriors``); ``all``: one table per estimator,
        :func:`estimator_output`; None: :func:`best_estimator`. The table's metadata
        (ECSV meta, FITS header) names it: ``estimator_choice`` and ``estimator_reason``.

    Returns
    -------
    dict
        Estimator -> (output path, reason).
    """
    import tempfile

    from ..io.survey import table_format

    check_infer_paths(clusters=clusters, galaxies=galaxies, phase_space=phase_space,
                      out=out, keep_dir=keep_dir)
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, schema)
    if estimator is None:
        estimator, reason = best_estimator(run_dir)
    elif estimator == "all":
        reason = "--estimator all: one table per estimator"
    elif estimator in ESTIMATORS:
        reason = f"--estimator {estimator}"
    else:
        raise ConfigError(f"--estimator {estimator!r}: not an estimator; use one of "
                          f"{', '.join(ESTIMATORS)} or all")
    names = tuple(ESTIMATORS) if estimator == "all" else (estimator,)
    files = {e: _check_run(run_dir, cfg, e) for e in names}
    outs = {e: (estimator_output(out, e) if estimator == "all" else Path(out)) for e in names}
    for o in outs.values():                # -o PREFIX-{estimator}.EXT: checked as -o is
        check_infer_paths(clusters=clusters, galaxies=galaxies, phase_space=phase_space,
                          out=o, keep_dir=keep_dir)
    s = _run_settings(run_dir, cfg, min_galaxies)
    for o in outs.values():
        table_format(o)                    # unknown output extension: fail before the work
    need_cubes = "cnn3d" in names or s.flow.input == "3d"
    with tempfile.TemporaryDirectory(prefix="cmpipe-infer-") as tmp:
        work = Path(keep_dir) if keep_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cubes, ps = work / "cubes.h5", work / "phase_space.h5"
        survey_cubes(config=s, clusters=clusters, galaxies=galaxies,
                     phase_space_in=phase_space, cubes_out=cubes if need_cubes else None,
                     phase_space_out=ps, cluster_columns=cluster_columns,
                     galaxy_columns=galaxy_columns, angle_unit=angle_unit, threads=threads,
                     progress=progress)
        for e in names:
            meta = dict(estimator_choice=e, estimator_reason=reason)
            if e == "cnn3d":
                survey_posteriors(config=s, model=files[e]["model"],
                                  joint_pdf=files[e]["joint_pdf"], cubes=cubes,
                                  phase_space=ps, out=outs[e], extra_meta=meta)
                continue
            if e == "sets":
                images = work / "set_inputs.h5"
                set_survey_inputs(config=s, phase_space=ps, out=images)
            else:
                images = cubes if s.flow.input == "3d" else work / "flow_images.h5"
                if s.flow.input != "3d":
                    flow_survey_images(config=s, phase_space=ps, out=images,
                                       progress=progress)
            flow_survey_posteriors(config=s, model=files[e]["model"], images=images,
                                   phase_space=ps, out=outs[e],
                                   joint_pdf=files[e].get("joint_pdf"), threads=threads,
                                   extra_meta=meta,
                                   estimator=SET_ESTIMATOR if e == "sets" else "neural flow")
    for e in names:
        log.info("cmpipe infer: %s posteriors of %s written to %s (run %s; %s)", e, clusters,
                 outs[e], s.run, reason)
    return {e: (outs[e], reason) for e in names}
