"""Tests of cmpipe.io.tables (atomic HDF5 column tables) and cmpipe.io.catalogues."""
import re

import h5py
import numpy as np
import pytest

from cmpipe.io.catalogues import (GALAXY_SCHEMA, HALO_SCHEMA, positions, read_galaxies,
                                  read_halos, velocities, write_galaxies, write_halos)
from cmpipe.io.tables import (CatalogueError, Schema, append_rows, atomic_output,
                              check_columns, read_table, write_json, write_table)

SCHEMA = Schema({
    "a": ("i8", "", "an integer"),
    "b": ("f4", "km/s", "a float"),
    "flag": ("i1", "", "a flag"),
})
ATTRS = {
    "box_size_mpc_h": 1000.0,
    "redshift": 0.1,
    "source": "test",
    "cosmology": {"name": "planck18", "H0": 67.66, "flat": True},
    "bins": [1, 2, 3],
    "n": 7,
}


def _columns(n=5):
    return {"a": np.arange(n), "b": np.linspace(0.0, 1.0, n),
            "flag": np.arange(n) % 2 == 0}


def _match(path, field):
    """Regex matching a CatalogueError message that names ``path`` and ``field``."""
    return re.escape(f"{path}: field '{field}'")


def _only_files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_write_read_round_trip_dtypes_units_attrs(tmp_path):
    path = tmp_path / "t.h5"
    cols = _columns()
    write_table(path, cols, group="g", attrs=ATTRS, schema=SCHEMA)
    out, attrs = read_table(path, group="g")
    assert out["a"].dtype == np.int64
    assert out["b"].dtype == np.float32
    assert out["flag"].dtype == np.int8
    np.testing.assert_array_equal(out["a"], cols["a"])
    np.testing.assert_allclose(out["b"], cols["b"], rtol=1e-7)
    np.testing.assert_array_equal(out["flag"], cols["flag"].astype(np.int8))
    assert attrs == ATTRS
    assert isinstance(attrs["cosmology"], dict) and isinstance(attrs["n"], int)
    with h5py.File(path, "r") as f:
        assert f["g/b"].attrs["unit"] == "km/s"
        assert f["g/b"].attrs["description"] == "a float"
        assert f["g/a"].attrs["unit"] == ""


def test_read_subset_of_columns_and_rows(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, _columns(10), schema=SCHEMA)
    out, _ = read_table(path, columns=["a"], rows=slice(2, 5))
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"], [2, 3, 4])


def test_empty_table_round_trip(tmp_path):
    path = tmp_path / "empty.h5"
    write_table(path, {k: np.zeros(0) for k in SCHEMA}, schema=SCHEMA)
    out, _ = read_table(path)
    assert all(len(v) == 0 for v in out.values())
    assert out["a"].dtype == np.int64


def test_atomic_output_success_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert not path.exists()
    assert path.read_text() == "new"
    assert _only_files(tmp_path) == ["out.txt"]


def test_atomic_output_keeps_old_file_on_exception(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(path) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _only_files(tmp_path) == ["out.txt"]


def test_write_table_failure_keeps_old_table_and_no_temp(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, _columns(), schema=SCHEMA)
    with pytest.raises(TypeError):
        write_table(path, _columns(3), schema=SCHEMA, attrs={"bad": {1, 2}})
    out, _ = read_table(path)
    assert len(out["a"]) == 5
    assert _only_files(tmp_path) == ["t.h5"]


def test_write_table_rejects_unequal_lengths(tmp_path):
    path = tmp_path / "t.h5"
    cols = _columns()
    cols["b"] = cols["b"][:3]
    with pytest.raises(ValueError, match="differ in length"):
        write_table(path, cols, schema=SCHEMA)
    assert not path.exists()


def test_write_table_rejects_missing_schema_column_and_2d(tmp_path):
    path = tmp_path / "t.h5"
    cols = _columns()
    del cols["flag"]
    with pytest.raises(ValueError, match="flag"):
        write_table(path, cols, schema=SCHEMA)
    with pytest.raises(ValueError, match="1-D"):
        write_table(path, {"a": np.zeros((2, 2))})
    assert _only_files(tmp_path) == []


def test_read_table_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(CatalogueError, match=_match(path, "table")) as info:
        read_table(path)
    assert info.value.path == str(path) and info.value.field == "table"
    assert "Fix:" in str(info.value)


def test_read_table_missing_group(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, _columns(), group="halos", schema=SCHEMA)
    with pytest.raises(CatalogueError, match=_match(path, "galaxies") + ".*group missing"):
        read_table(path, group="galaxies")


def test_read_table_missing_column(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, _columns(), schema=SCHEMA)
    with pytest.raises(CatalogueError, match=_match(path, "c") + ".*missing"):
        read_table(path, required=["a", "c"])
    with pytest.raises(CatalogueError, match=_match(path, "zz")):
        read_table(path, columns=["a", "zz"])


def test_read_table_nan_column(tmp_path):
    path = tmp_path / "t.h5"
    cols = _columns()
    cols["b"][3] = np.nan
    write_table(path, cols, schema=SCHEMA)
    with pytest.raises(CatalogueError, match=_match(path, "b") + ".*1 non-finite.*row 3"):
        read_table(path, finite=["a", "b"])
    out, _ = read_table(path)  # NaN is allowed where not required finite
    assert np.isnan(out["b"][3])


def test_read_table_truncated_file(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, _columns(5000), schema=SCHEMA, compression=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CatalogueError, match=_match(path, "table") + ".*not a readable HDF5"):
        read_table(path)


def test_read_table_random_bytes(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CatalogueError, match=_match(path, "halos") + ".*not a readable HDF5"):
        read_table(path, group="halos")


def test_check_columns_direct():
    cols = {"a": np.array([1.0, np.inf]), "i": np.array([1, 2])}
    check_columns(cols, "mem", ["a", "i"], finite=["i"])
    with pytest.raises(CatalogueError, match="mem: field 'a'.*non-finite"):
        check_columns(cols, "mem", ["a"], finite=["a"])
    with pytest.raises(CatalogueError, match="mem: field 'b'.*have: a, i"):
        check_columns(cols, "mem", ["b"])


def test_append_rows_and_write_json(tmp_path):
    parts = [{"a": np.arange(2)}, {"a": np.arange(3)}]
    np.testing.assert_array_equal(append_rows(parts)["a"], [0, 1, 0, 1, 2])
    assert append_rows([]) == {}
    path = tmp_path / "x.json"
    write_json(path, {"v": np.float64(1.5), "arr": np.arange(3)})
    assert path.read_text() == '{\n  "v": 1.5,\n  "arr": [\n    0,\n    1,\n    2\n  ]\n}\n'
    assert _only_files(tmp_path) == ["x.json"]


# ----------------------------------------------------------------------------------------
# catalogues: halo and galaxy tables
# ----------------------------------------------------------------------------------------

BOX = 100.0
META = dict(box_size_mpc_h=BOX, redshift=0.1, cosmology={"name": "planck18"}, source="test")


def _halos(n=4):
    rng = np.random.default_rng(3)
    return {
        "halo_id": np.arange(n) + 10, "upid": np.full(n, -1),
        "log10_m200c": rng.uniform(13, 15, n), "r200c_mpc_h": rng.uniform(0.3, 1.5, n),
        "c200c": rng.uniform(3, 8, n),
        "x_mpc_h": rng.uniform(0, BOX, n), "y_mpc_h": rng.uniform(0, BOX, n),
        "z_mpc_h": rng.uniform(0, BOX, n),
        "vx_kms": rng.normal(0, 300, n), "vy_kms": rng.normal(0, 300, n),
        "vz_kms": rng.normal(0, 300, n),
    }


def _galaxies(n=6):
    rng = np.random.default_rng(4)
    return {
        "galaxy_id": np.arange(n), "halo_id": np.full(n, 10),
        "is_central": (np.arange(n) == 0), "mag_r": rng.uniform(-23, -19, n),
        "x_mpc_h": rng.uniform(0, BOX, n), "y_mpc_h": rng.uniform(0, BOX, n),
        "z_mpc_h": rng.uniform(0, BOX, n),
        "vx_kms": rng.normal(0, 300, n), "vy_kms": rng.normal(0, 300, n),
        "vz_kms": rng.normal(0, 300, n),
    }


def test_halo_and_galaxy_round_trip(tmp_path):
    hp, gp = tmp_path / "halos.h5", tmp_path / "galaxies.h5"
    halos, gals = _halos(), _galaxies()
    write_halos(hp, halos, **META)
    write_galaxies(gp, gals, **META)
    h, hattrs = read_halos(hp)
    g, gattrs = read_galaxies(gp)
    assert set(h) == set(HALO_SCHEMA) and set(g) == set(GALAXY_SCHEMA)
    for k in HALO_SCHEMA:
        np.testing.assert_array_equal(h[k], halos[k])
    for k in GALAXY_SCHEMA:
        np.testing.assert_array_equal(g[k], gals[k])
    assert g["is_central"].dtype == bool
    assert hattrs == gattrs == {**META}
    assert positions(h).shape == velocities(h).shape == (4, 3)


def test_read_halos_rejects_linear_masses(tmp_path):
    path = tmp_path / "halos.h5"
    halos = _halos()
    halos["log10_m200c"] = np.full(4, 1e14)
    write_halos(path, halos, **META)
    with pytest.raises(CatalogueError, match=_match(path, "log10_m200c") + ".*linear"):
        read_halos(path)


def test_read_halos_rejects_positions_outside_box(tmp_path):
    path = tmp_path / "halos.h5"
    halos = _halos()
    halos["x_mpc_h"] = halos["x_mpc_h"] * 1000.0  # h^-1 kpc
    write_halos(path, halos, **META)
    with pytest.raises(CatalogueError, match=_match(path, "x_mpc_h") + ".*outside the "
                       "periodic box.*kpc/h"):
        read_halos(path)


def test_read_galaxies_rejects_negative_positions_and_nan(tmp_path):
    path = tmp_path / "galaxies.h5"
    gals = _galaxies()
    gals["z_mpc_h"][2] = -0.5
    write_galaxies(path, gals, **META)
    with pytest.raises(CatalogueError, match=_match(path, "z_mpc_h")):
        read_galaxies(path)
    gals = _galaxies()
    gals["vy_kms"][1] = np.nan
    write_galaxies(path, gals, **META)
    with pytest.raises(CatalogueError, match=_match(path, "vy_kms") + ".*non-finite"):
        read_galaxies(path)


def test_read_halos_requires_box_attributes(tmp_path):
    path = tmp_path / "halos.h5"
    write_table(path, _halos(), group="halos", schema=HALO_SCHEMA)
    with pytest.raises(CatalogueError, match=_match(path, "box_size_mpc_h")):
        read_halos(path)
