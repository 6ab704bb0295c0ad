"""The package's shape (issue 17): module and function sizes, no private names imported
across modules, no import that runs up a layer, one name per stage (rule = script = stage
function). The counting lives in ``benchmarks/code_size.py``, which prints the largest."""
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
    assert {"cmpipe.kde", "cmpipe.stages.survey", "cmpipe.io.tables"} <= names
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


def test_every_import_resolves():
    assert code_size.unresolved_imports() == []


def test_one_name_per_stage():
    assert len(code_size.rule_scripts()) > 30
    assert code_size.name_mismatches() == []


@pytest.mark.parametrize("layer_of, expected", [
    ("cmpipe.io.tables", 0), ("cmpipe.kde", 1), ("cmpipe.massfunction.theory", 1),
    ("cmpipe.plots", 2), ("cmpipe.stages.survey", 3), ("cmpipe.cli", 4)])
def test_layers(layer_of, expected):
    assert code_size.layer(layer_of) == expected
