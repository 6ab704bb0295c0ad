"""The package's shape (issues 17 and 27): module and function sizes, no private names
imported across modules, no import cycle, no import that runs up a layer or against the
DAG's order of the science packages, at most 8 modules at the top of the package, one name
per stage (rule = script = stage function). The counting lives in
``benchmarks/code_size.py``, which prints the largest."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("code_size", ROOT / "benchmarks/code_size.py")
code_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_size)

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def test_counter_sees_the_package():
    mods, funcs = code_size.sizes()
    names = {m for _, m in mods}
    assert {"cmpipe.kde", "cmpipe.stages.survey", "cmpipe.io.tables", "cmpipe.mock.universe",
            "cmpipe.cnn.training", "cmpipe.flow.model"} <= names
    assert len(funcs) > 300


def test_no_module_over_limit():
    mods, _ = code_size.sizes()
    assert [f"{m}: {n}" for n, m in mods if n > MAX_MODULE_LINES] == []


def test_no_function_over_limit():
    _, funcs = code_size.sizes()
    assert [f"{f}: {n}" for n, f in funcs if n > MAX_FUNCTION_LINES] == []


def test_no_private_names_across_modules():
    assert code_size.private_imports() == []


def test_no_upward_imports():
    assert code_size.upward_imports() == []


def test_no_import_cycles():
    assert code_size.import_cycles() == []


def test_cycle_detector_finds_a_cycle(monkeypatch):
    """The detector itself: a three-module ring and a pair are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}}
    monkeypatch.setattr(code_size, "import_graph", lambda: graph)
    assert code_size.import_cycles() == [["a", "b", "c"], ["d", "e"]]


def test_graph_sees_function_level_imports():
    """``cmpipe.stages.mock`` imports the mock modules inside its functions."""
    graph = code_size.import_graph()
    assert {"cmpipe.mock.selection", "cmpipe.mock.fluxlimit"} <= graph["cmpipe.stages.mock"]


def test_top_of_package_holds_foundations_only():
    top = code_size.top_level_modules()
    assert len(top) <= 8
    assert set(top) <= set(code_size.FOUNDATIONS) | {"cli"}


def test_science_packages_exist_in_dag_order():
    pkg = code_size.PACKAGE
    assert all((pkg / sub / "__init__.py").is_file() for sub in code_size.SCIENCE_ORDER)
    assert code_size.science_rank("cmpipe.mock.universe") < code_size.science_rank(
        "cmpipe.cnn.training") < code_size.science_rank("cmpipe.survey.posteriors")


def test_every_import_resolves():
    assert code_size.unresolved_imports() == []


def test_one_name_per_stage():
    assert len(code_size.rule_scripts()) > 30
    assert code_size.name_mismatches() == []


@pytest.mark.parametrize("layer_of, expected", [
    ("cmpipe.io.tables", 0), ("cmpipe.settings", 1), ("cmpipe.cosmology", 1),
    ("cmpipe.kde", 2), ("cmpipe.mock.universe", 2), ("cmpipe.massfunction.theory", 2),
    ("cmpipe.plots.pipeline", 3), ("cmpipe.stages.survey", 4), ("cmpipe.cli", 5)])
def test_layers(layer_of, expected):
    assert code_size.layer(layer_of) == expected
