"""Typed, frozen settings built from the validated config.

The Snakefile validates ``config.yaml`` against ``src/cmpipe/data/config.schema.yaml``
(which also fills defaults); :func:`Settings.from_config` turns the resulting dict into
frozen dataclasses so library code never indexes raw dicts. :func:`load_config` does the
same validation for code that runs without Snakemake (tests, ``cmpipe`` CLI).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sections import (AblationSettings, BaselineSettings, CalibrationSettings, CompareSettings,
                       FlowSection, KDESettings, LayerSpecError, MDPL2Settings, MockSettings,
                       NuisanceSettings,
                       RobustnessSettings, SaliencySettings, SightlineSettings, SplitSettings,
                       SurveySettings, SyntheticSettings, TailSection, TrainSection,
                       WindowSettings, validate_layers)

__all__ = [
    "ConfigError",
    "WindowSettings",
    "SightlineSettings",
    "MockSettings",
    "SplitSettings",
    "KDESettings",
    "Settings",
    "load_config",
    "merge_config",
    "prepend_pythonpath",
    "validate_config",
    "semantic_errors",
    "check_output_dir",
    "stage_rng",
    "stage_seed",
    "SPLIT_CODES",
]

#: Integer codes of the ``split`` column of the cluster table.
SPLIT_CODES = {"unused": -1, "train": 0, "validation": 1, "test": 2, "eval": 3}


class ConfigError(ValueError):
    """The config is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Settings:
    """Everything a stage needs, from the validated config: typed, frozen sections
    (:mod:`cmpipe.sections`) whose defaults live in the schema only."""

    run: str
    seed: int
    cosmology: str
    source: str
    redshift: float
    synthetic: SyntheticSettings
    tail: TailSection
    mdpl2: MDPL2Settings
    log10_m200c_min: float
    window: WindowSettings
    sightlines: SightlineSettings
    mock: MockSettings
    nuisance: NuisanceSettings
    splits: SplitSettings
    kde: KDESettings
    train: TrainSection
    calibration: CalibrationSettings
    baselines: BaselineSettings
    survey: SurveySettings
    ablation: AblationSettings
    robustness: RobustnessSettings
    saliency: SaliencySettings
    flow: FlowSection
    compare: CompareSettings

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        """Build settings from a validated config dict (defaults already filled)."""
        sim = config["simulation"]
        return cls(
            run=config["run"],
            seed=int(config["seed"]),
            cosmology=config["cosmology"]["name"],
            source=sim["source"],
            redshift=float(sim["redshift"]),
            synthetic=SyntheticSettings.from_dict(sim["synthetic"]),
            tail=TailSection.from_dict(sim["tail"]),
            mdpl2=MDPL2Settings.from_dict(sim["mdpl2"]),
            log10_m200c_min=float(config["selection"]["log10_m200c_min"]),
            window=WindowSettings.from_dict(config["window"]),
            sightlines=SightlineSettings.from_dict(config["sightlines"]),
            mock=MockSettings.from_dict(config["mock"]),
            nuisance=NuisanceSettings.from_dict(config["nuisance"]),
            splits=SplitSettings.from_dict(config["splits"]),
            kde=KDESettings.from_dict(config["kde"]),
            train=TrainSection.from_dict(config["train"]),
            calibration=CalibrationSettings.from_dict(config["calibration"]),
            baselines=BaselineSettings.from_dict(config["baselines"]),
            survey=SurveySettings.from_dict(config["survey"]),
            ablation=AblationSettings.from_dict(config["ablation"]),
            robustness=RobustnessSettings.from_dict(config["robustness"]),
            saliency=SaliencySettings.from_dict(config["saliency"]),
            flow=FlowSection.from_dict(config["flow"]),
            compare=CompareSettings.from_dict(config["compare"]),
        )


def stage_seed(seed: int, stage: str) -> int:
    """A stable 63-bit seed for ``stage`` derived from the master ``seed``."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(stage.encode())])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """The random generator of ``stage`` (independent streams per stage, reproducible)."""
    return np.random.default_rng(stage_seed(seed, stage))


def _schema_errors(config: dict, schema_path: Path):
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    extended = jsonschema.validators.extend(validator_cls, {"properties": _fill_defaults(
        validator_cls.VALIDATORS["properties"])})
    return sorted(extended(schema).iter_errors(config), key=lambda e: list(e.path))


def _fill_defaults(validate_properties):
    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = sub["default"]
        yield from validate_properties(validator, properties, instance, schema)
    return set_defaults


def validate_config(config: dict, schema_path) -> dict:
    """Validate ``config`` in place against the JSON schema, filling defaults.

    Raises
    ------
    ConfigError
        Listing every problem with its dotted key path (e.g. ``mock.mag_r_limt: unknown
        key``) and the fix.
    """
    errors = _schema_errors(config, schema_path)
    if errors:
        lines = []
        for e in errors:
            where = ".".join(str(p) for p in e.path) or "(top level)"
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                for k in extra:
                    key = f"{where}.{k}" if e.path else k
                    lines.append(f"{key}: unknown config key. Fix: remove it or correct the "
                                 f"spelling (allowed here: "
                                 f"{', '.join(sorted(e.schema.get('properties', {})))})")
            else:
                lines.append(f"{where}: {e.message}")
        raise ConfigError("invalid config (" + str(schema_path) + "):\n  "
                          + "\n  ".join(lines))
    lines = semantic_errors(config)
    if len(lines) == 1:
        raise ConfigError("invalid config: " + lines[0])
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    return config


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _safe_name_error(key, value):
    if isinstance(value, str) and _SAFE_NAME.match(value) and ".." not in value:
        return None
    return (f"{key}: {value!r} is not a safe run name (outputs go to results/{{run}}/). Fix: "
            "letters, digits, '_', '-' and '.', not starting with '.', no '..' or '/'")


def semantic_errors(config: dict) -> list[str]:
    """Checks the schema cannot express, on a schema-valid config with defaults filled:
    run names, split fractions summing to 1, layer specifications
    (:func:`cmpipe.sections.validate_layers`) and cross-key constraints. (Input files are not
    checked here: a config is valid before its data arrive; Snakemake names missing inputs.) Returns one line per
    problem, each naming the dotted key and the fix (empty: the config is fine)."""
    out = []
    for key, value in (("run", config.get("run")),
                       ("compare.pure_run", (config.get("compare") or {}).get("pure_run"))):
        if key == "run" or value is not None:
            err = _safe_name_error(key, value)
            if err:
                out.append(err)
    pure = (config.get("compare") or {}).get("pure_run")
    if pure is not None and pure == config.get("run"):
        out.append(f"compare.pure_run: names this run itself ({pure}). Fix: name the run of "
                   "configs/pure.yaml (e.g. demo-pure) or set compare.pure_run: null")
    fr = (config.get("splits") or {}).get("fractions") or {}
    if fr:
        total = sum(float(v) for v in fr.values())
        if abs(total - 1.0) > 1e-6:
            out.append("splits.fractions: " + " + ".join(f"{k} {v:g}" for k, v in fr.items())
                       + f" = {total:g}, must sum to 1. Fix: rescale them")
        for k in ("train", "test"):
            if k in fr and float(fr[k]) <= 0.0:
                out.append(f"splits.fractions.{k}: is 0; the {k} set cannot be empty "
                           f"({'training' if k == 'train' else 'calibration'} needs it). Fix: "
                           "give it a positive share")
    nu = config.get("nuisance") or {}
    for key in ("mag_shift_mag", "completeness", "fibre_collision_loss", "velocity_bias",
                "central_velocity_frac", "field_scale"):
        lo_hi = nu.get(key)
        if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2 and lo_hi[0] > lo_hi[1]:
            out.append(f"nuisance.{key}: [{lo_hi[0]:g}, {lo_hi[1]:g}] is not a range (lo > "
                       f"hi). Fix: give [lo, hi] with lo <= hi")
    layer_keys = [("train.layers", (config.get("train") or {}).get("layers"))]
    abl = config.get("ablation") or {}
    layer_keys += [(f"ablation.{k}", abl.get(k)) for k in ("layers_1d", "layers_2d")]
    for key, layers in layer_keys:
        if layers is None:
            continue
        if not layers:
            out.append(f"{key}: empty list. Fix: give at least one layer or null for the "
                       "default network")
            continue
        try:
            validate_layers(layers)
        except LayerSpecError as err:
            out.append(f"{key}: {err}. Fix: see the layer format in cmpipe.sections.validate_layers (e.g. "
                       "[{conv: 12, kernel: 5}, {pool: 2}, {dense: 128}])")
    sv = config.get("survey") or {}
    if sv.get("source") == "catalogue":
        cat = sv.get("catalogue_volume") or {}
        z_min, z_max = cat.get("z_min"), cat.get("z_max")
        if z_min is not None and z_max is not None and not float(z_max) > float(z_min):
            out.append(f"survey.catalogue_volume: z_max ({z_max}) must exceed z_min "
                       f"({z_min}). Fix: swap or correct them")
    return out


def check_output_dir(path) -> None:
    """Fail up front when the output directory ``path`` (or, if it does not exist yet, its
    nearest existing parent) is not writable.

    Raises
    ------
    ConfigError
        Naming the directory and the fix.
    """
    import os

    p = Path(path).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{probe}: output path is a file, not a directory. Fix: remove it "
                          f"or choose another run name")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{probe}: output directory is not writable (outputs go to {p}). "
                          "Fix: run from a writable working directory or fix its permissions")


def prepend_pythonpath(path) -> None:
    """Put ``path`` first on PYTHONPATH for child processes (Snakemake jobs in conda envs
    that do not have cmpipe installed import it from the checkout's ``src``)."""
    import os

    parts = [str(path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                           if p and p != str(path)]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def merge_config(base: dict, overlay: dict) -> dict:
    """Update ``base`` recursively with ``overlay`` (what ``snakemake --configfile`` does)."""
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_config(base[k], v)
        else:
            base[k] = v
    return base


def _read_yaml(path: Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist. Fix: check the path (relative "
                          "to the working directory), e.g. configs/tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}). Fix: check the file") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys (e.g. 'run: "
                          f"tiny'), got a {type(data).__name__}")
    return data


def load_config(config_path, schema_path, overlays=()) -> dict:
    """Read a YAML config file (updated by any ``overlays``), validate it, fill defaults."""
    config_path = Path(config_path)
    config = _read_yaml(config_path)
    for extra in overlays:
        merge_config(config, _read_yaml(extra))
    try:
        return validate_config(config, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from err
