"""Run-directory artefacts: readers that name the file and the fix, and the run's identity.

A finished run ``results/{run}/`` holds a model (``model/cnn3d.keras``,
``model/normalisation.json``), its calibration (``calibration/joint_pdf.h5``) and the
resolved config (``config.resolved.yaml``). Two records tie them together:

``model/config.json`` (rule ``model_config``, written right after the model)
    The config sections that shaped the model (:data:`MODEL_CONFIG_SECTIONS`) and the
    SHA-256 of the model files.
``config.resolved.yaml`` (rule ``resolved_config``, written last, after the calibration)
    The whole config and, under ``products``, the SHA-256 of ``model/config.json``, the
    model files and the calibration it describes, of the neural flow's model and its
    calibration (:data:`FLOW_PRODUCTS`) and of the set estimator's (:data:`SET_PRODUCTS`)
    where the run has them, and of its own sections
    that shape a posterior after the model (:data:`POSTERIOR_CONFIG_SECTIONS`: the
    calibration and the survey), so an edit of those sections is detected too.

Speed-only keys (:data:`cmpipe.sections.SPEED_ONLY_KEYS`, passed as ``ignore`` by the
stages: ``io`` imports nothing above it) are no part of either record's comparison: they
change no product.

:func:`check_run_consistency` (``cmpipe infer``) refuses a run directory whose model,
calibration and config disagree, naming the files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .tables import CatalogueError, atomic_output

__all__ = [
    "MODEL_CONFIG_SECTIONS",
    "POSTERIOR_CONFIG_SECTIONS",
    "section_digest",
    "UPSTREAM_CONFIG_SECTIONS",
    "UPSTREAM_ROOT",
    "upstream_key",
    "stable_paths",
    "MODEL_CONFIG_FILE",
    "PRODUCTS_KEY",
    "FLOW_PRODUCTS",
    "SET_PRODUCTS",
    "file_digest",
    "read_json_artefact",
    "load_keras_model",
    "check_keras_file",
    "model_config_record",
    "write_model_config",
    "run_products",
    "check_run_consistency",
]

#: Config sections that shape the trained model (its cubes, their clusters and training).
MODEL_CONFIG_SECTIONS = ("simulation", "selection", "sightlines", "window", "mock", "splits",
                         "kde", "train", "seed", "cosmology")
#: Config sections that shape the posteriors after the model (the SBI calibration, the
#: survey's prior and selection): their digests are recorded in ``config.resolved.yaml``'s
#: ``products`` under ``config.resolved.yaml#SECTION``.
POSTERIOR_CONFIG_SECTIONS = ("calibration", "survey")
#: The model's config record, relative to the run directory.
MODEL_CONFIG_FILE = "model/config.json"
#: Top-level key of ``config.resolved.yaml`` holding the digests of the products it
#: describes (not a config key: dropped before the config is validated).
PRODUCTS_KEY = "products"
#: Run-directory files whose digests ``config.resolved.yaml`` records.
_RUN_PRODUCTS = (MODEL_CONFIG_FILE, "model/cnn3d.keras", "model/normalisation.json",
                 "calibration/joint_pdf.h5")
_MODEL_FILES = ("cnn3d.keras", "normalisation.json")
#: The neural flow's files recorded beside them when the run has them: its model (rule
#: ``flow_train``) and its test-split calibration (rule ``flow_calibrate``, made when
#: ``calibration.recalibrate_flow`` is set).
FLOW_PRODUCTS = ("flow/model/flow.pt", "flow/model/flow.json", "flow/joint_pdf.h5")
#: The set estimator's, likewise (rules ``set_train``, ``set_calibrate``).
SET_PRODUCTS = ("sets/model/flow.pt", "sets/model/flow.json", "sets/joint_pdf.h5")


def file_digest(path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _without(config: dict, ignore) -> dict:
    """``config`` without the keys ``ignore`` names (section -> keys)."""
    ignore = ignore or {}
    return {k: ({kk: vv for kk, vv in v.items() if kk not in ignore.get(k, ())}
                if isinstance(v, dict) else v) for k, v in config.items()}


def section_digest(config: dict, section: str, ignore=None) -> str:
    """SHA-256 (hex) of one config section as canonical JSON, without the keys ``ignore``
    names (section -> keys: :data:`cmpipe.sections.SPEED_ONLY_KEYS`)."""
    plain = _without(json.loads(json.dumps(dict(config), default=str)), ignore).get(section)
    return _json_digest(plain)


def _json_digest(obj) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys; non-JSON values as str)."""
    plain = json.loads(json.dumps(obj, default=str))
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


#: Config keys that define every product upstream of the flux limit: the catalogue, the
#: host halos, the sightlines and the projected windows (rules catalogue, select_halos,
#: sightlines, project). Runs that agree on them (the default run, its pure-catalogue and
#: fiducial-model companions) share those products under ``UPSTREAM_ROOT/{key}/``.
UPSTREAM_CONFIG_SECTIONS = ("simulation", "cosmology", "seed", "selection", "sightlines",
                            "window")
#: Where the shared upstream products live, relative to the working directory.
UPSTREAM_ROOT = "results/upstream"


def upstream_key(config: dict) -> str:
    """The name of a config's shared upstream directory (``results/upstream/{key}/``): the
    first 12 hex digits of the SHA-256 of :data:`UPSTREAM_CONFIG_SECTIONS` as canonical
    JSON. Two configs get the same key exactly when those keys agree, so a change of any
    of them (a new seed, box, selection or window) gets a directory of its own and the
    previous one stays valid for the runs that still use it."""
    return _json_digest({k: dict(config).get(k) for k in UPSTREAM_CONFIG_SECTIONS})[:12]


def stable_paths(paths, cwd=None) -> list[str]:
    """``paths`` spelt the same whichever way they were given: relative to ``cwd`` (default:
    the working directory) when inside it, else absolute, each once at its last place.

    For the config files of a Snakemake command (the Snakefile's ``configfile:`` and then
    the command line's, in the order Snakemake applies them; ``make run`` passes
    ``config.yaml`` again, as an absolute path): rule ``companion_run`` has the command as a
    param, so a new spelling of the same files would rerun the companion runs.
    """
    base = Path(cwd if cwd is not None else Path.cwd()).resolve()
    spelt = []
    for p in paths:
        full = (base / Path(p)).resolve()
        spelt.append(str(full.relative_to(base)) if full.is_relative_to(base) else str(full))
    return list(reversed(dict.fromkeys(reversed(spelt))))


def _section_key(section: str) -> str:
    return f"config.resolved.yaml#{section}"


def _missing(path, fix):
    return CatalogueError(path, "(file)", "file does not exist", fix)


def read_json_artefact(path, fix: str):
    """Read a JSON product (e.g. ``model/normalisation.json``), naming the file and ``fix``.

    Raises
    ------
    CatalogueError
        The file is missing, unreadable or not valid JSON (e.g. truncated).
    """
    path = Path(path)
    if not path.exists():
        raise _missing(path, fix)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogueError(path, "(file)", f"not valid JSON ({err})", fix) from err


def check_keras_file(path, fix: str) -> None:
    """Cheap test that ``path`` is a complete ``.keras`` archive (a zip with the model's
    ``config.json``), without importing keras.

    Raises
    ------
    CatalogueError
        Missing, truncated or not a Keras archive.
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise _missing(path, fix)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        raise CatalogueError(path, "(file)", f"not a readable Keras model archive ({err})",
                             fix) from err
    if bad is not None or "config.json" not in names:
        raise CatalogueError(path, "(file)", "corrupt Keras model archive"
                             + (f" (member {bad} damaged)" if bad else " (no config.json)"),
                             fix)


def load_keras_model(path, fix: str, **kwargs):
    """``keras.saving.load_model(path)`` with an error that names the file and ``fix``.

    Raises
    ------
    CatalogueError
        The file is missing, truncated or not a Keras model.
    """
    check_keras_file(path, fix)
    import keras

    try:
        return keras.saving.load_model(str(path), **kwargs)
    except Exception as err:  # keras raises ValueError, OSError, zipfile errors, ...
        raise CatalogueError(path, "(file)", f"cannot be loaded as a Keras model "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                             fix) from err


def model_config_record(config: dict, model_dir) -> dict:
    """The record of ``model/config.json``: the model-shaping config sections and the
    SHA-256 of the model files in ``model_dir``."""
    plain = json.loads(json.dumps(dict(config), default=str))
    model_dir = Path(model_dir)
    return {
        "description": "config sections that shaped this model and the SHA-256 of its "
                       "files; written by rule model_config, checked by cmpipe infer",
        "config": {k: plain.get(k) for k in MODEL_CONFIG_SECTIONS},
        "files": {name: file_digest(model_dir / name) for name in _MODEL_FILES},
    }


def write_model_config(config: dict, model_dir, out) -> dict:
    """Write :func:`model_config_record` to ``out`` atomically; returns the record."""
    rec = model_config_record(config, model_dir)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    return rec


def run_products(run_dir, config: dict | None = None, ignore=None) -> dict:
    """SHA-256 of the run-directory files ``config.resolved.yaml`` describes (the CNN3D's
    model, its config record and calibration, and the flow's and the set estimator's files
    that exist) and, given
    the ``config``, of its :data:`POSTERIOR_CONFIG_SECTIONS` (without the keys ``ignore``
    names, see :func:`section_digest`)."""
    run_dir = Path(run_dir)
    rels = [*_RUN_PRODUCTS, *(r for r in FLOW_PRODUCTS + SET_PRODUCTS
                              if (run_dir / r).exists())]
    out = {rel: file_digest(run_dir / rel) for rel in rels}
    if config is not None:
        out.update({_section_key(k): section_digest(config, k, ignore)
                    for k in POSTERIOR_CONFIG_SECTIONS})
    return out


_RERUN = ("rerun the workflow with the config this run directory was made with "
          "(snakemake --cores N --configfile ...), which retrains what changed and rewrites "
          "the records")


def check_run_consistency(run_dir, resolved: dict, products: dict | None,
                          required=(), ignore=None) -> None:
    """Refuse a run directory whose model, calibration and config disagree.

    Parameters
    ----------
    run_dir : path-like
        ``results/{run}``.
    resolved : dict
        ``config.resolved.yaml`` without its ``products`` key.
    products : dict or None
        Its ``products`` key (file -> SHA-256).
    required : sequence of str, optional
        Run-directory files (relative paths) the caller will read, which must have a
        recorded digest (e.g. the flow's :data:`FLOW_PRODUCTS` for ``cmpipe infer
        --estimator flow``). Every recorded file that exists is checked either way.
    ignore : mapping, optional
        Keys left out of every comparison (section -> keys: the speed-only keys,
        :data:`cmpipe.sections.SPEED_ONLY_KEYS`).

    Raises
    ------
    CatalogueError
        Naming the file that disagrees (a record missing, a model-shaping section that
        differs between ``config.resolved.yaml`` and ``model/config.json``, or a file whose
        content is not the one recorded) and the fix.
    """
    run_dir = Path(run_dir)
    resolved_path = run_dir / "config.resolved.yaml"
    record_path = run_dir / MODEL_CONFIG_FILE
    record = read_json_artefact(record_path, "the record of the model's config is written by "
                                "rule model_config; " + _RERUN)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CatalogueError(record_path, "config", "not a model config record", _RERUN)
    plain = _without(json.loads(json.dumps(dict(resolved), default=str)), ignore)
    recorded = _without(record["config"], ignore)
    differ = [k for k in MODEL_CONFIG_SECTIONS if recorded.get(k) != plain.get(k)]
    if differ:
        raise CatalogueError(record_path, differ[0], f"the model was trained with another "
                             f"config than {resolved_path} describes (sections differ: "
                             f"{', '.join(differ)})", _RERUN)
    for name, digest in (record.get("files") or {}).items():
        p = record_path.parent / name
        if p.exists() and file_digest(p) != digest:
            raise CatalogueError(p, "(file)", f"not the model recorded in {record_path} "
                                 "(content differs)", _RERUN)
    if not isinstance(products, dict):
        raise CatalogueError(resolved_path, PRODUCTS_KEY, "no record of the model and "
                             "calibration it describes (a run made by an older cmpipe?)",
                             _RERUN)
    for rel in required:
        if rel not in products:
            raise CatalogueError(resolved_path, PRODUCTS_KEY, f"no record of {rel} (the run "
                                 "was recorded before cmpipe recorded it, or without it)",
                                 _RERUN)
    lacking = [k for k in POSTERIOR_CONFIG_SECTIONS if _section_key(k) not in products]
    if lacking:
        raise CatalogueError(resolved_path, PRODUCTS_KEY, "no digest of its "
                             f"{', '.join(lacking)} section(s) (a run made by an older cmpipe)",
                             "rewrite the record: snakemake --cores N --configfile ... "
                             "--forcerun resolved_config")
    edited = [k for k in POSTERIOR_CONFIG_SECTIONS
              if section_digest(resolved, k, ignore) != products[_section_key(k)]]
    if edited:
        raise CatalogueError(resolved_path, edited[0], f"section(s) {', '.join(edited)} "
                             "differ from the ones the calibration and the survey products "
                             "were made with (edited after the run?)", _RERUN)
    for rel, digest in products.items():
        if rel.startswith("config.resolved.yaml#"):
            continue
        p = run_dir / rel
        if p.exists() and file_digest(p) != digest:
            raise CatalogueError(p, "(file)", f"not the file {resolved_path} was written "
                                 "with (content differs: the model or calibration changed "
                                 "after the run's config was recorded, e.g. a failed or "
                                 "interrupted rerun)", _RERUN)
