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
import yaml

from .sections import (AblationSettings, BaselineSettings, CalibrationSettings, CompareSettings,
                       FlowSection, KDESettings, LayerSpecError, MDPL2Settings, MockSettings,
                       NuisanceSettings, RobustnessSettings, SaliencySettings, SetsSection,
                       SightlineSettings, SplitSettings, SurveySettings, SyntheticSettings,
                       TailSection, TrainSection, WindowSettings, validate_layers)

__all__ = [
    "ConfigError", "WindowSettings", "SightlineSettings", "MockSettings", "SplitSettings",
    "KDESettings",
    "Settings",
    "load_config",
    "merge_config",
    "read_config_file",
    "strict_yaml_load",
    "StrictLoader",
    "input_file_errors",
    "RANGE_PAIRS",
    "config_error_sources",
    "validate_workflow_config",
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
    """The config is invalid; the message names the key and the fix (``problems``: one
    line per problem, when the config was checked)."""

    def __init__(self, message: str, problems=None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


def _config_error(problems, header: str = "invalid config") -> ConfigError:
    """One line for one problem, else a header and one indented line each."""
    if len(problems) == 1:
        return ConfigError(problems[0], problems)
    return ConfigError(header + ":\n  " + "\n  ".join(problems), problems)


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
    sets: SetsSection
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
            sets=SetsSection.from_dict(config["sets"]),
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


def _form(schema: dict) -> str:
    """One allowed form of a value, in words (``a number in [0, 0.3]``, ``'auto'``)."""
    if "enum" in schema:
        return " or ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "value")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is None and hi is None:
        return f"a {kind}"
    left = "(" if "exclusiveMinimum" in schema else "["
    right = ")" if "exclusiveMaximum" in schema else "]"
    return (f"a {kind} in {left}{'-inf' if lo is None else lo}, "
            f"{'inf' if hi is None else hi}{right}")


def _schema_message(e) -> str:
    """A jsonschema error in words; ``anyOf``/``oneOf`` errors list the allowed forms and
    ranges (from the error's sub-schemas) instead of "not valid under any of the given
    schemas"."""
    if e.validator in ("anyOf", "oneOf") and isinstance(e.validator_value, list):
        forms = "; or ".join(_form(sub) for sub in e.validator_value if isinstance(sub, dict))
        return f"{e.instance!r} is not allowed. Fix: give {forms}"
    return e.message


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
                lines.append(f"{where}: {_schema_message(e)}")
        raise _config_error(lines, f"invalid config (schema {schema_path})")
    lines = semantic_errors(config)
    if lines:
        raise _config_error(lines)
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
    (:func:`cmpipe.sections.validate_layers`), every lower/upper pair (:data:`RANGE_PAIRS`)
    and cross-key constraints. (Input files are not checked here: a config is valid before
    its data arrive; :func:`input_file_errors` checks them.) Returns one line per
    problem, each naming the dotted key and the fix (empty: the config is fine)."""
    out = []
    cmp = config.get("compare") or {}
    for key, value in (("run", config.get("run")),
                       ("compare.pure_run", cmp.get("pure_run")),
                       ("compare.fiducial_run", cmp.get("fiducial_run"))):
        if key == "run" or value is not None:
            err = _safe_name_error(key, value)
            if err:
                out.append(err)
    pure, fid = cmp.get("pure_run"), cmp.get("fiducial_run")
    if pure is not None and pure == config.get("run"):
        out.append(f"compare.pure_run: names this run itself ({pure}). Fix: name the run of "
                   "configs/pure.yaml (e.g. demo-pure) or set compare.pure_run: null")
    if fid is not None and (fid in (config.get("run"), pure)
                            or not _get(config, "nuisance.sample")):
        out.append(f"compare.fiducial_run: {fid} must be another run (nuisance.sample: false) "
                   "and this run must have nuisance.sample: true. Fix: name the run of "
                   "configs/fiducial.yaml (e.g. demo-fiducial), or null")
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
            out.append(f"{key}: {err}. Fix: see the layer format in "
                       "cmpipe.sections.validate_layers (e.g. "
                       "[{conv: 12, kernel: 5}, {pool: 2}, {dense: 128}])")
    out += _range_errors(config)
    return out


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


#: Every (lower, upper) pair of the schema: lower must be below upper (dotted keys; a
#: ``[i]`` suffix names an element of a 2-element range).
RANGE_PAIRS = (
    ("simulation.synthetic.log10_m_min", "simulation.synthetic.log10_m_max"),
    ("simulation.tail.log10_m_min", "simulation.tail.log10_m_max"),
    ("survey.catalogue_volume.z_min", "survey.catalogue_volume.z_max"),
    ("survey.population_prior.log10_m_min", "survey.population_prior.log10_m_max"),
    ("survey.mass_function.log10_m_lo", "survey.mass_function.log10_m_hi"),
    ("calibration.survey_mass_range[0]", "calibration.survey_mass_range[1]"),
    *((f"nuisance.{k}[0]", f"nuisance.{k}[1]") for k in (   # priors; one value: nuisance.fixed
        "mag_shift_mag", "completeness", "fibre_collision_loss", "velocity_bias",
        "central_velocity_frac", "field_scale", "infall_fraction")),
)


def _value(config, key):
    if key.endswith("]"):
        base, i = key[:-1].split("[")
        seq = _get(config, base)
        return seq[int(i)] if isinstance(seq, list) and len(seq) > int(i) else None
    return _get(config, key)


def _range_errors(config: dict) -> list[str]:
    """One line per inverted or empty range of :data:`RANGE_PAIRS` (and the increasing
    edges of ``saliency.mass_bins``)."""
    out = []
    for lo_key, hi_key in RANGE_PAIRS:
        if lo_key.startswith("simulation.tail") and not _get(config, "simulation.tail.enabled"):
            continue
        lo, hi = _value(config, lo_key), _value(config, hi_key)
        if lo is None or hi is None or isinstance(lo, str) or isinstance(hi, str):
            continue
        if not float(hi) > float(lo):
            if lo_key.endswith("]"):
                key = lo_key.split("[")[0]
                out.append(f"{key}: [{lo}, {hi}] is not an increasing range (lower {lo} must "
                           f"be below upper {hi}). Fix: give [lower, upper], e.g. swap them")
            else:
                out.append(f"{lo_key} ({lo}) must be below {hi_key} ({hi}). Fix: swap or "
                           "correct them")
    bins = _get(config, "saliency.mass_bins")
    if isinstance(bins, list) and any(not float(b) > float(a) for a, b in zip(bins, bins[1:])):
        out.append(f"saliency.mass_bins: {bins} are not increasing bin edges. Fix: sort them "
                   "and drop repeated edges")
    return out


def input_file_errors(config: dict) -> list[str]:
    """The input files a config names that do not exist (``simulation.source: mdpl2``,
    ``survey.source: catalogue``), one line each naming the key, the path and the fix.

    Run at parse time by the workflow (``workflow/rules/common.smk``), before any job:
    Snakemake itself runs nothing and reports success when a rule's outputs exist from an
    earlier run and its input file is missing (no rule makes it), so a missing catalogue
    would silently reuse the previous source's products. Relative paths are relative to
    the working directory."""
    out = []
    sim = config.get("simulation") or {}
    if sim.get("source") == "mdpl2":
        for key in ("halo_file", "galaxy_file"):
            path = (sim.get("mdpl2") or {}).get(key)
            if not path or not Path(path).is_file():
                out.append(f"simulation.mdpl2.{key}: {path!r} does not exist (simulation."
                           "source is mdpl2). Fix: give the path of the file (relative to "
                           "the working directory), or set simulation.source: synthetic")
    sv = config.get("survey") or {}
    if sv.get("source") == "catalogue":
        for key in ("clusters", "galaxies"):
            path = sv.get(key)
            if not path or not Path(path).is_file():
                out.append(f"survey.{key}: {path!r} does not exist (survey.source is "
                           "catalogue). Fix: give the path of your table (relative to the "
                           "working directory), or set survey.source: synthetic")
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


class StrictLoader(yaml.SafeLoader):
    """YAML ``SafeLoader`` for config files: a key given twice in one mapping is an error
    (PyYAML keeps the last silently), and numbers in exponent notation without a dot or a
    signed exponent (``1e7``, ``1.0e7``, YAML 1.1 strings) are floats, so a number-like
    string never reaches the schema."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:                    # an unhashable key: PyYAML reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicated key {key!r} (first given on line {first + 1}); "
                "Fix: keep one of them", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


def _setup_strict_loader():
    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)
    # YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: 1e7, 1.0e7, 2E-3, .5e3
    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))


_setup_strict_loader()


def strict_yaml_load(text: str, name: str = "<config>"):
    """Parse YAML ``text`` with :class:`StrictLoader` (``name``: the file, for messages).

    Raises
    ------
    yaml.YAMLError
        Not valid YAML, or a duplicated key (the mark names the line).
    """
    loader = StrictLoader(text)
    loader.name = str(name)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_config_file(path) -> dict:
    """Read one config file with the strict loader (:class:`StrictLoader`).

    Raises
    ------
    ConfigError
        Missing, unreadable, not valid YAML, a key given twice (naming the line and the
        key), or not a mapping.
    """

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist. Fix: check the path (relative "
                          "to the working directory), e.g. configs/tiny.yaml")
    try:
        data = strict_yaml_load(path.read_text(), path)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}, line {mark.line + 1}: {err.problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}). Fix: check the file") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys (e.g. 'run: "
                          f"tiny'), got a {type(data).__name__}")
    return data



def _has_key(data, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_error_sources(problem: str, files: dict) -> str | None:
    """The file a config problem is about: ``files`` maps each config file to its parsed
    content (in merge order); of the dotted keys ``problem`` names (``a.b.c``, or a
    top-level ``key:`` at its start), the last file that sets one is the source (None:
    none sets it, a default)."""
    lead = _KEY_AT.match(problem)
    keys = [lead.group(1)] if lead else _DOTTED.findall(problem)
    for f in reversed(list(files)):
        if any(_has_key(files[f], k) for k in keys):
            return f
    return None


def _attributed(err: ConfigError, files: dict) -> ConfigError:
    """``err`` with each problem prefixed by the file that sets its key (the first file
    when the value is a default)."""
    first = next(iter(files), "config")
    return _config_error([f"{config_error_sources(p, files) or first}: {p}"
                          for p in err.problems])


_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")
_KEY_AT = re.compile(r"^([A-Za-z_][\w.]*)(?:\[\d+\])?:")


def load_config(config_path, schema_path, overlays=()) -> dict:
    """Read a YAML config file (updated by any ``overlays``), validate it, fill defaults.

    Raises
    ------
    ConfigError
        Naming the file that sets each bad value (the last of ``config_path`` and
        ``overlays`` that sets the key, as ``snakemake --configfile`` merges them).
    """
    import copy

    config_path = Path(config_path)
    files = {str(config_path): read_config_file(config_path)}
    for extra in overlays:
        files[str(extra)] = read_config_file(extra)
    config = {}
    for data in files.values():
        merge_config(config, copy.deepcopy(data))
    try:
        return validate_config(config, schema_path)
    except ConfigError as err:
        raise _attributed(err, files) from err


def validate_workflow_config(config: dict, schema_path, files=(), overrides=None) -> dict:
    """The workflow's config check (``workflow/rules/common.smk``), before any job.

    Snakemake reads its config files with a plain YAML loader; they are read again here
    with :class:`StrictLoader` (a duplicated key stops the run, ``1.0e7`` is a number) and
    merged in Snakemake's order, ``overrides`` (``--config KEY=VALUE``) last; ``config`` is
    replaced in place by the result, validated (schema, :func:`semantic_errors`) and its
    input files checked (:func:`input_file_errors`).

    Parameters
    ----------
    config : dict
        Snakemake's config (updated in place).
    schema_path : path-like
        The config schema.
    files : sequence of path-like
        The config files in merge order (the Snakefile's ``configfile:``, then each
        ``--configfile``).
    overrides : dict, optional
        ``--config`` values.

    Raises
    ------
    ConfigError
        One line per problem, naming the file that sets the bad value, the key and the fix.
    """
    import copy

    read = {str(f): read_config_file(f) for f in files}
    if read:
        merged = {}
        for data in read.values():
            merge_config(merged, copy.deepcopy(data))
        merge_config(merged, copy.deepcopy(dict(overrides or {})))
        config.clear()
        config.update(merged)
    try:
        validate_config(config, schema_path)
        missing = input_file_errors(config)
        if missing:
            raise _config_error(missing)
    except ConfigError as err:
        raise (_attributed(err, read) if read else err) from err
    return config
