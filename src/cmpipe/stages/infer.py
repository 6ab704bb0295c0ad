"""``cmpipe infer``: a trained run applied to a user's catalogue, without Snakemake.

The run directory (``results/{run}``) supplies the resolved config
(:data:`RESOLVED_CONFIG`, written by rule ``resolved_config``), the model and the
calibration; the survey stages (:func:`.survey.survey_cubes`,
:func:`.survey.survey_posteriors`) do the work.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..io.tables import CatalogueError
from ..sections import SPEED_ONLY_KEYS
from ..settings import ConfigError, Settings, read_config_file
from .common import log
from .survey import survey_cubes, survey_posteriors

__all__ = ["RESOLVED_CONFIG", "load_run_config", "infer"]

#: File name of a run's resolved config, inside ``results/{run}``.
RESOLVED_CONFIG = "config.resolved.yaml"


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


def _check_run(run_dir: Path) -> tuple[Path, Path]:
    """The run's model and joint PDF, after checking that model, normalisation,
    calibration and config exist, are one run's (SHA-256 in the config's ``products``)
    and are readable, before any work."""

    from ..calibration import JointPDF
    from ..io.artefacts import (PRODUCTS_KEY, check_keras_file, check_run_consistency,
                                read_json_artefact)

    model = run_dir / "model" / "cnn3d.keras"
    norm = run_dir / "model" / "normalisation.json"
    joint = run_dir / "calibration" / "joint_pdf.h5"
    for p, what in ((model, "trained model"), (norm, "target normalisation"),
                    (joint, "calibration joint PDF")):
        if not p.exists():
            raise ConfigError(f"{p}: {what} missing; finish the run (snakemake --configfile "
                              "...) before cmpipe infer")
    # model, calibration and config must be one run's, and readable, before any work
    raw = read_config_file(run_dir / RESOLVED_CONFIG)
    check_run_consistency(run_dir, {k: v for k, v in raw.items() if k != PRODUCTS_KEY},
                          raw.get(PRODUCTS_KEY), ignore=SPEED_ONLY_KEYS)
    fix = ("rerun the rule that makes it (snakemake --cores N --configfile ... "
           "--forcerun train); the file is truncated or corrupt")
    check_keras_file(model, fix)
    read_json_artefact(norm, fix)
    JointPDF.load(joint)
    return model, joint


def infer(*, run_dir, clusters, out, galaxies=None, phase_space=None, cluster_columns=None,
          galaxy_columns=None, angle_unit="auto", min_galaxies=None, threads=1,
          keep_dir=None, schema=None, progress=False):
    """``cmpipe infer``: apply a trained run to a user's catalogue, without Snakemake.

    The run directory supplies the resolved config (window, KDE, cosmology), the model
    (``model/``) and the calibration (``calibration/joint_pdf.h5``); the same stage
    functions as the workflow (:func:`.survey.survey_cubes`, :func:`.survey.survey_posteriors`)
    make ``cubes.h5`` and ``phase_space.h5`` (in ``keep_dir``, or a temporary directory)
    and the posterior table ``out`` (.ecsv, .csv or .fits).
    """
    import tempfile

    from ..io.survey import table_format

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, schema)
    model, joint = _check_run(run_dir)
    out_dir = Path(out).resolve().parent
    if out_dir.exists() and not os.access(out_dir, os.W_OK):
        raise CatalogueError(out, "(file)", f"output directory {out_dir} is not writable",
                             "choose a writable -o path")
    if min_galaxies is not None:
        cfg.setdefault("survey", {})["min_galaxies"] = int(min_galaxies)
    try:
        s = Settings.from_config(cfg)
    except KeyError as err:
        raise ConfigError(f"{run_dir / RESOLVED_CONFIG}: {err.args[0]}; the run was made by "
                          "another cmpipe version. Fix: pass --schema "
                          "workflow/schemas/config.schema.yaml, or rerun the workflow to "
                          "rewrite it") from err
    table_format(out)                      # unknown output extension: fail before the work
    with tempfile.TemporaryDirectory(prefix="cmpipe-infer-") as tmp:
        work = Path(keep_dir) if keep_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        survey_cubes(config=s, clusters=clusters, galaxies=galaxies,
                     phase_space_in=phase_space, cubes_out=work / "cubes.h5",
                     phase_space_out=work / "phase_space.h5",
                     cluster_columns=cluster_columns, galaxy_columns=galaxy_columns,
                     angle_unit=angle_unit, threads=threads, progress=progress)
        survey_posteriors(config=s, model=model, joint_pdf=joint, cubes=work / "cubes.h5",
                          phase_space=work / "phase_space.h5", out=out)
    log.info("cmpipe infer: posteriors of %s written to %s (run %s)", clusters, out, s.run)
