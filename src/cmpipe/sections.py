"""Typed, frozen config sections: one dataclass per section of the config.

The schema (``src/cmpipe/data/config.schema.yaml``) is the one place where a key's type,
range, default and meaning are written; the Snakefile and :func:`cmpipe.settings.load_config`
validate the config against it and fill every default. These classes declare the validated
sections' fields and types only (no defaults: ``tests/test_config.py`` checks that the fields
match the schema's properties), so stages read ``s.survey.mass_function.n_boot`` rather
than indexing raw dicts with literal fallbacks.

``TrainSection`` and ``FlowSection`` are named apart from
:class:`cmpipe.cnn.training.TrainSettings` and :class:`cmpipe.flow.training.FlowSettings`,
the science modules' own settings (library defaults
for callers without a config, plus derived values such as the stage seed), which the
stages build from these sections.

Arrays become tuples and open-ended column maps read-only mappings, so a section cannot be
changed after it is built. :meth:`Section.to_dict` gives the plain dict back (e.g. for
JSON records).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONFIG_SCHEMA",
    "SPEED_ONLY_KEYS",
    "without_speed_keys",
    "DEFAULT_LAYERS",
    "LAYER_KINDS",
    "LayerSpecError",
    "validate_layers",
    "Section", "SyntheticSettings", "MDPL2Settings", "WindowSettings", "SightlineSettings",
    "MockSettings", "NuisanceSettings", "SplitSettings", "KDESettings", "TrainSection",
    "CalibrationSettings",
    "BaselineSettings", "FlowHeadSection", "FlowSection", "SetsSection", "CompareSettings", "SurveySyntheticSettings",
    "CatalogueVolumeSettings", "PopulationPriorSettings", "MassFunctionSettings",
    "SurveySettings", "AblationSettings", "TailSection", "RobustnessSettings",
    "SaliencySettings",
]

#: The config's JSON schema (package data, so an installed cmpipe finds it): read by the
#: workflow (``workflow/rules/common.smk``), ``cmpipe check-config`` and ``cmpipe infer``.
CONFIG_SCHEMA = Path(__file__).resolve().parent / "data" / "config.schema.yaml"


#: Config keys that change how fast (or in how much memory) a product is made, never the
#: product: section -> keys. They are left out of every product's identity (the rules'
#: params, :func:`cmpipe.cnn.checkpoint.fingerprint`, the sections ``cmpipe infer``
#: compares), so changing one reruns nothing. The schema's descriptions say "speed only".
SPEED_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "mock": ("halo_batch_size",),
    "kde": ("shard_size", "batch_size"),
    "train": ("in_memory_max_mb",),
    "flow": ("max_memory_mb",),
    "robustness": ("misspecification_shards",),
}


def without_speed_keys(config: Mapping, section: str | None = None):
    """A copy of ``config`` (a whole config, or its ``section``) without
    :data:`SPEED_ONLY_KEYS`: what identifies the products it makes."""
    if section is not None:
        drop = SPEED_ONLY_KEYS.get(section, ())
        return {k: v for k, v in config.items() if k not in drop}
    return {k: (without_speed_keys(v, k) if isinstance(v, Mapping) else v)
            for k, v in config.items()}


def _freeze(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return types.MappingProxyType(dict(value))
    return value


def _thaw(value):
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


class Section:
    """Base of the config sections: built from a validated dict, frozen, typed."""

    @classmethod
    def from_dict(cls, d: Mapping):
        """The section from its validated (defaults filled) dict; nested sections too.

        Raises
        ------
        KeyError
            A field is missing: the dict was not validated against the schema (which fills
            every default) - validate it with :func:`cmpipe.settings.validate_config`.
        """
        hints = typing.get_type_hints(cls)
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                raise KeyError(f"config section {cls.__name__}: key {f.name!r} missing (validate "
                               "the config against src/cmpipe/data/config.schema.yaml, which "
                               "fills defaults)")
            sub = hints[f.name]
            if isinstance(sub, type) and issubclass(sub, Section):
                kw[f.name] = sub.from_dict(d[f.name])
            else:
                kw[f.name] = _freeze(d[f.name])
        return cls(**kw)

    def to_dict(self) -> dict:
        """Plain dict (lists, dicts) of the section, fields in declaration order."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class SyntheticSettings(Section):
    """``simulation.synthetic``: the embedded stand-in universe."""

    box_size_mpc_h: float
    log10_m_min: float
    log10_m_max: float
    grid_cells: int
    mag_r_faint: float
    halo_velocity_sigma_kms: float
    concentration_model: str


@dataclass(frozen=True)
class TailSection(Section):
    """``simulation.tail``: training-only massive halos (:mod:`cmpipe.mock.tail`)."""

    enabled: bool
    log10_m_min: float
    log10_m_max: float
    halos_per_dex: float


@dataclass(frozen=True)
class MDPL2Settings(Section):
    """``simulation.mdpl2``: real ROCKSTAR hlist and galaxy files."""

    halo_file: str
    galaxy_file: str
    galaxy_hdf5_path: str | None
    box_size_mpc_h: float
    halo_columns: Mapping[str, str]
    galaxy_columns: Mapping[str, str]


@dataclass(frozen=True)
class WindowSettings(Section):
    """``window``: |x_proj|, |y_proj| <= ``half_width_mpc_h`` (proper h^-1 Mpc, paper 1.6),
    |v_los| <= ``v_max_kms`` (km/s, paper 2200)."""

    half_width_mpc_h: float
    v_max_kms: float


@dataclass(frozen=True)
class SightlineSettings(Section):
    """``sightlines``: lines of sight per selected halo (flattening in log M)."""

    max_per_halo: int
    target_per_bin: int
    bin_width_dex: float


@dataclass(frozen=True)
class MockSettings(Section):
    """``mock``: observer placement, magnitude limit, richness cut.

    ``members`` is ``all`` (the contaminated catalogue: every galaxy in the window) or
    ``bound`` (the pure catalogue: interlopers, ``is_member == 0``, dropped at the flux
    limit, before the richness cut, so every later stage sees members only: the satellites
    and, with the infall nuisance, the infall galaxies).
    """

    observer_radius_mpc_h: float | None
    mag_r_limit: float
    min_galaxies: int
    halo_batch_size: int
    members: str


@dataclass(frozen=True)
class NuisanceSettings(Section):
    """``nuisance``: the simulator's nuisance parameters that act on each projected cluster
    after the projection (:mod:`cmpipe.mock.nuisance`): their prior ranges (uniform),
    whether every cluster draws them (``sample``: the marginalised mock) and values held
    fixed (``fixed``: a variant universe; name -> value)."""

    sample: bool
    mag_shift_mag: tuple
    completeness: tuple
    fibre_collision_loss: tuple
    fibre_collision_arcsec: float
    velocity_bias: tuple
    central_velocity_frac: tuple
    field_scale: tuple
    infall_fraction: tuple
    infall_radius_r200c: float
    fixed: Mapping[str, float]


@dataclass(frozen=True)
class SplitSettings(Section):
    """``splits``: train/validation/test/eval by halo, stratified in log M (``fractions``
    flattened into ``train``, ``test``, ``eval``)."""

    train: float
    test: float
    eval: float
    validation_fraction: float
    bin_width_dex: float

    @classmethod
    def from_dict(cls, d: Mapping):
        d = dict(d)
        return super().from_dict({**d.pop("fractions", {}), **d})


@dataclass(frozen=True)
class KDESettings(Section):
    """``kde``: cubes of ``n_grid``^3 voxels; kernel covariance = ``h0``^2 x the data
    covariance (paper 0.175); kernels cut at Mahalanobis radius ``truncation``;
    ``shard_size`` clusters a shard job, ``batch_size`` cubes computed at once."""

    n_grid: int
    h0: float
    truncation: float
    shard_size: int
    batch_size: int


@dataclass(frozen=True)
class TrainSection(Section):
    """``train``: the CNN's layers (None: the paper's), optimiser and early stopping."""

    layers: tuple | None
    epochs: int
    batch_size: int
    learning_rate: float
    beta_1: float
    beta_2: float
    patience: int
    augment: bool
    distance_input: bool
    input_transform: str
    mixed_precision: bool
    xla: bool
    in_memory_max_mb: float


@dataclass(frozen=True)
class CalibrationSettings(Section):
    """``calibration``: the joint-PDF kernel bandwidth, grids and point estimate, the
    distance conditioning (nodes, window) and the outlier tail (weight, width: a number or
    ``"auto"``)."""

    bandwidth: float
    shrink: bool
    n_grid_pred: int
    n_grid_mass: int
    point_estimate: str
    distance_aware: bool
    distance_nodes: int
    distance_window: float
    tail_weight: float | str
    tail_width: float | str
    recalibrate_flow: bool
    recalibrate_sets: bool
    survey_mass_range: tuple


@dataclass(frozen=True)
class BaselineSettings(Section):
    """``baselines``: the classical estimators' interloper handling and richness cut."""

    interlopers: str
    min_galaxies: int


@dataclass(frozen=True)
class FlowHeadSection(Section):
    """The keys the neural flow (``flow``) and the set estimator (``sets``) share: the
    conditional flow, the size of the summary it is conditioned on, and the training."""

    model: str
    transforms: int
    bins: int
    hidden_features: int
    embedding_units: int
    embedding_features: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    patience: int
    clip_grad_norm: float
    augment: bool
    distance_input: bool
    n_grid_mass: int
    mass_margin_dex: float
    prior_bandwidth: float


@dataclass(frozen=True)
class FlowSection(FlowHeadSection):
    """``flow``: the neural posterior estimator (input, architecture, training, grid)."""

    input: str
    n_grid: int | None
    embedding_channels: tuple
    embedding_kernel: int
    max_memory_mb: float
    input_transform: str


@dataclass(frozen=True)
class SetsSection(FlowHeadSection):
    """``sets``: the set-based estimator (Deep Sets embedding of the window galaxies and a
    conditional flow; :mod:`cmpipe.flow.sets`)."""

    enabled: bool
    features: tuple
    pooling: str
    phi_units: tuple
    richness_input: bool
    dispersion_input: bool


@dataclass(frozen=True)
class CompareSettings(Section):
    """``compare``: the pure-catalogue run and the fiducial-model run compared with this
    one (None: none)."""

    pure_run: str | None
    fiducial_run: str | None
    pure_overlay: str | None
    fiducial_overlay: str | None


@dataclass(frozen=True)
class SurveySyntheticSettings(Section):
    """``survey.synthetic``: the embedded mock survey (a light cone of the synthetic box)."""

    radius_mpc_h: float
    area_deg2: float
    log10_m_min: float
    mag_r_limit: float
    pole_ra_deg: float
    pole_dec_deg: float
    galaxy_margin_mpc_h: float
    mag_shift_mag: float
    completeness: float
    fibre_collision_loss: float
    infall_fraction: float


@dataclass(frozen=True)
class CatalogueVolumeSettings(Section):
    """``survey.catalogue_volume``: sky area (deg^2) and redshift range of the catalogue."""

    area_deg2: float
    z_min: float
    z_max: float


@dataclass(frozen=True)
class PopulationPriorSettings(Section):
    """``survey.population_prior``: the prior's mass range (None: from the calibration)."""

    log10_m_min: float | None
    log10_m_max: float | None


@dataclass(frozen=True)
class MassFunctionSettings(Section):
    """``survey.mass_function``: estimator, bootstrap, forward models and null tests."""

    prior: str
    estimate: str
    bandwidth_dex: str | float
    n_boot: int
    bootstrap: str
    forward_scale: float
    null_surveys: int
    log10_m_lo: float
    log10_m_hi: float
    n_grid: int
    log10_m_complete: float | None


@dataclass(frozen=True)
class SurveySettings(Section):
    """``survey``: the catalogue measured (synthetic or GalWeight/SDSS files) and its
    mass function."""

    source: str
    min_galaxies: int | None
    pair_by_cluster_id: bool
    synthetic: SurveySyntheticSettings
    clusters: str
    galaxies: str
    cluster_columns: Mapping[str, str]
    galaxy_columns: Mapping[str, str]
    angle_unit: str
    catalogue_volume: CatalogueVolumeSettings
    population_prior: PopulationPriorSettings
    mass_function: MassFunctionSettings


@dataclass(frozen=True)
class AblationSettings(Section):
    """``ablation``: the CNN1D/CNN2D comparison (None: the CNN3D's grid, the default
    layers)."""

    enabled: bool
    n_grid: int | None
    seeds: int
    cube_only: bool
    layers_1d: tuple | None
    layers_2d: tuple | None


@dataclass(frozen=True)
class RobustnessSettings(Section):
    """``robustness``: perturbation levels and the verdict's thresholds; the
    misspecification matrix (variant universes at the nuisance priors' edges and at the
    ``misspecification_beyond`` values)."""

    enabled: bool
    incompleteness: tuple
    velocity_error_kms: tuple
    min_galaxies: int | None
    coverage_sigma: float
    max_bias_shift_dex: float
    misspecification: bool
    misspecification_beyond: Mapping[str, float]
    misspecification_shards: int


@dataclass(frozen=True)
class SaliencySettings(Section):
    """``saliency``: mass bins (log10 h^-1 Msun edges) and clusters per bin."""

    enabled: bool
    mass_bins: tuple
    max_clusters: int | None


#: The authors' public CNN3D hidden layers (the output Dense(1) is implicit).
DEFAULT_LAYERS: tuple[dict, ...] = (
    {"conv": 12, "kernel": 5},
    {"pool": 2},
    {"conv": 8, "kernel": 3},
    {"pool": 2},
    {"conv": 4, "kernel": 1},
    {"pool": 2},
    {"dense": 128},
    {"dense": 64},
)


LAYER_KINDS = {
    "conv": {"kernel": 3, "activation": "relu", "padding": "valid", "stride": 1},
    "pool": {"type": "max"},
    "dense": {"activation": "linear"},
    "dropout": {},
}


LAYER_ACTIVATIONS = ("linear", "relu", "elu", "gelu", "selu", "tanh", "sigmoid", "softplus",
                "swish", "leaky_relu")


class LayerSpecError(ValueError):
    """A layer specification is malformed; the message names the entry and the fix."""


def _positive_int(value, where, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayerSpecError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return int(value)


def validate_layers(layers) -> tuple[dict, ...]:
    """Check a hidden-layer specification (``train.layers``, ``ablation.layers_1d/2d``)
    and fill in defaults.

    The hidden layers are a sequence of small dicts, each naming exactly one layer kind:

    ``{"conv": filters, "kernel": 3, "activation": "relu", "padding": "valid", "stride": 1}``
        Convolution over all spatial axes (1, 2 or 3 of them); ``kernel`` and ``stride`` are
        one int used on every axis.
    ``{"pool": size, "type": "max"}``
        Pooling with window = stride = ``size`` (``type`` "max" or "average"); odd sizes are
        floored, as in Keras.
    ``{"dense": units, "activation": "linear"}``
        Fully connected layer; a ``Flatten`` is inserted before the first one.
    ``{"dropout": rate}``
        Dropout with ``0 <= rate < 1`` (only active in training).

    Keys other than the ones above are errors; convolution and pooling entries must come before
    every dense entry. The scalar output ``Dense(1, linear)`` is always appended and is not part
    of the specification. The network is built by :func:`cmpipe.cnn.model.build_cnn`.

    Parameters
    ----------
    layers : sequence of mapping
        Layer entries in the format above.

    Returns
    -------
    tuple of dict
        One complete dict per entry, e.g. ``{"conv": 12, "kernel": 5, "activation": "relu",
        "padding": "valid", "stride": 1}``.

    Raises
    ------
    LayerSpecError
        If an entry is not a mapping, names no or several kinds, has an unknown key or a bad
        value, or a convolution/pooling entry follows a dense entry.
    """
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise LayerSpecError(f"layers must be a list of dicts, got {type(layers).__name__}")
    out = []
    seen_dense = False
    for i, entry in enumerate(layers):
        where = f"layers[{i}]"
        if not isinstance(entry, Mapping):
            raise LayerSpecError(f"{where}: expected a dict such as {{'conv': 12, 'kernel': 5}}, "
                                 f"got {entry!r}")
        kinds = [k for k in entry if k in LAYER_KINDS]
        if len(kinds) != 1:
            raise LayerSpecError(f"{where}: {dict(entry)!r} must name exactly one of "
                                 f"{sorted(LAYER_KINDS)} (found {kinds or 'none'})")
        kind = kinds[0]
        allowed = LAYER_KINDS[kind]
        unknown = sorted(set(entry) - {kind} - set(allowed))
        if unknown:
            raise LayerSpecError(f"{where}: unknown key(s) {unknown} for a '{kind}' layer; "
                                 f"allowed: {sorted(allowed)}")
        spec = {kind: entry[kind], **allowed, **{k: v for k, v in entry.items() if k != kind}}
        if kind == "dropout":
            rate = spec["dropout"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise LayerSpecError(f"{where}: 'dropout' must be a rate in [0, 1), got {rate!r}")
            spec["dropout"] = float(rate)
        else:
            spec[kind] = _positive_int(spec[kind], where, kind)
        if kind == "conv":
            spec["kernel"] = _positive_int(spec["kernel"], where, "kernel")
            spec["stride"] = _positive_int(spec["stride"], where, "stride")
            if spec["padding"] not in ("valid", "same"):
                raise LayerSpecError(f"{where}: 'padding' must be 'valid' or 'same', "
                                     f"got {spec['padding']!r}")
        if kind == "pool" and spec["type"] not in ("max", "average"):
            raise LayerSpecError(f"{where}: pool 'type' must be 'max' or 'average', "
                                 f"got {spec['type']!r}")
        if "activation" in spec and spec["activation"] not in LAYER_ACTIVATIONS:
            raise LayerSpecError(f"{where}: unknown activation {spec['activation']!r}; "
                                 f"use one of {list(LAYER_ACTIVATIONS)}")
        if kind in ("conv", "pool") and seen_dense:
            raise LayerSpecError(f"{where}: a '{kind}' layer cannot follow a dense layer "
                                 "(the grid is flattened before the first dense layer)")
        seen_dense = seen_dense or kind == "dense"
        out.append(spec)
    return tuple(out)
