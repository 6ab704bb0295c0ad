"""benchmarks/compare_products.py (issue 17): products compared value by value, where only
metadata holding a time may differ; a changed value is reported."""
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_products",
                                               ROOT / "benchmarks/compare_products.py")
cp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp)


def _run(d: Path, *, value=1.0, seconds=3.2, extra_attr=None):
    (d / "logs").mkdir(parents=True)
    (d / "logs/x.log").write_text(f"took {seconds} s\n")
    with h5py.File(d / "c.h5", "w") as f:
        ds = f.create_dataset("g/x", data=np.array([0.5, np.nan, value]))
        ds.attrs["unit"] = "dex"
        f.attrs["state"] = json.dumps({"history": [{"loss": 0.1, "seconds": seconds}]})
        if extra_attr:
            f.attrs[extra_attr] = 1
    (d / "m.json").write_text(json.dumps({"scatter": value, "elapsed_s": seconds}))
    (d / "h.csv").write_text(f"epoch,loss,seconds\n1,0.25,{seconds}\n")


def test_identical_and_time_only_differences(tmp_path):
    _run(tmp_path / "a")
    _run(tmp_path / "b", seconds=9.9)
    res = cp.compare_runs(tmp_path / "a", tmp_path / "b")
    assert res["same"] and res["different"] == {} and res["skipped"] == 1
    assert set(res["numerically_identical"]) == {"c.h5", "m.json", "h.csv"}
    assert res["numerically_identical"]["m.json"] == ["elapsed_s"]


def test_changed_value_and_attribute_are_reported(tmp_path):
    _run(tmp_path / "a")
    _run(tmp_path / "b", value=1.0 + 1e-15, extra_attr="new")
    res = cp.compare_runs(tmp_path / "a", tmp_path / "b")
    assert not res["same"]
    assert set(res["different"]) == {"c.h5", "m.json"}
    assert any("attribute names" in d for d in res["different"]["c.h5"])


def test_missing_product_fails(tmp_path):
    _run(tmp_path / "a")
    _run(tmp_path / "b")
    (tmp_path / "b/h.csv").unlink()
    res = cp.compare_runs(tmp_path / "a", tmp_path / "b")
    assert not res["same"] and res["missing"] == ["h.csv"]
    assert cp.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
