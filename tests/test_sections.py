"""Typed, frozen config sections (cmpipe.sections) agree with the schema: the same keys, a
type the schema allows, and no defaults of their own (defaults live once, in the schema)."""
import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from cmpipe import sections
from cmpipe.settings import Settings, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "src/cmpipe/data/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())

#: Section class -> its path in the schema.
PATHS = {
    sections.SyntheticSettings: "simulation.synthetic", sections.MDPL2Settings: "simulation.mdpl2",
    sections.TailSection: "simulation.tail",
    sections.WindowSettings: "window", sections.SightlineSettings: "sightlines",
    sections.MockSettings: "mock", sections.KDESettings: "kde", sections.TrainSection: "train",
    sections.CalibrationSettings: "calibration", sections.BaselineSettings: "baselines",
    sections.FlowSection: "flow", sections.SetsSection: "sets",
    sections.CompareSettings: "compare",
    sections.SurveySettings: "survey", sections.SurveySyntheticSettings: "survey.synthetic",
    sections.CatalogueVolumeSettings: "survey.catalogue_volume",
    sections.PopulationPriorSettings: "survey.population_prior",
    sections.MassFunctionSettings: "survey.mass_function",
    sections.AblationSettings: "ablation", sections.RobustnessSettings: "robustness",
    sections.SaliencySettings: "saliency",
}
JSON_TYPES = {"integer": {int}, "number": {float, int}, "string": {str}, "boolean": {bool},
              "null": {type(None)}, "array": {tuple}, "object": {typing.Mapping}}


def _node(path):
    node = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
    return node


def _allowed(annotation) -> set:
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_allowed(a) for a in args))
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Mapping or getattr(origin, "__name__", "") == "Mapping":
        return {typing.Mapping}
    if isinstance(origin, type) and issubclass(origin, sections.Section):
        return {typing.Mapping}
    return {origin}


@pytest.mark.parametrize("cls", list(PATHS), ids=lambda c: c.__name__)
def test_section_fields_match_schema(cls):
    node = _node(PATHS[cls])
    props = node["properties"]
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == list(props)
    hints = typing.get_type_hints(cls)
    for f in fields:
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        p = props[f.name]
        kinds = p.get("type") or [t.get("type") for t in p.get("anyOf", p.get("oneOf", []))]
        kinds = [kinds] if isinstance(kinds, str) else kinds
        want = set().union(*(JSON_TYPES[k] for k in kinds))
        have = _allowed(hints[f.name])
        if "number" in kinds:
            have |= {int} if float in have else set()
        assert have == want, f"{cls.__name__}.{f.name}: {have} vs schema {kinds}"


def test_split_fields_match_schema():
    node = _node("splits")
    want = list(node["properties"]["fractions"]["properties"]) + [
        k for k in node["properties"] if k != "fractions"]
    assert [f.name for f in dataclasses.fields(sections.SplitSettings)] == want


def test_settings_are_frozen_and_typed():
    cfg = load_config(ROOT / "config.yaml", SCHEMA_PATH)
    s = Settings.from_config(cfg)
    mf = s.survey.mass_function
    assert isinstance(mf, sections.MassFunctionSettings)
    assert mf.n_boot == cfg["survey"]["mass_function"]["n_boot"]
    assert s.robustness.incompleteness == tuple(cfg["robustness"]["incompleteness"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        mf.n_boot = 3
    with pytest.raises(TypeError):
        s.survey.cluster_columns["ra"] = "x"
    assert s.survey.to_dict() == cfg["survey"] | {}


def test_unvalidated_dict_is_refused():
    with pytest.raises(KeyError, match="validate the config"):
        sections.KDESettings.from_dict({"n_grid": 50})
