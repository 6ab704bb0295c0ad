"""Tests of cmpipe.io.mdpl2 (readers in cmpipe.io.rockstar and cmpipe.io.galaxy_tables)
against the MDPL2-format fixtures in tests/fixtures/mdpl2.

Expected values are computed here independently of the reader: the hlist is parsed with
plain string splitting, R200c from astropy's critical density, and the galaxy CSV with the
standard-library csv module.
"""
import csv
import gzip
import logging
import re
import shutil
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest

from cmpipe.cosmology import make_cosmology
from cmpipe.io import mdpl2
from cmpipe.io.catalogues import (GALAXY_SCHEMA, HALO_SCHEMA, read_galaxies, read_halos,
                                  write_galaxies, write_halos)
from cmpipe.io.mdpl2 import (DEFAULT_GALAXY_COLUMNS, DEFAULT_HLIST_COLUMNS, attach_hosts,
                             load_mdpl2, read_galaxy_table, read_hlist_halos)
from cmpipe.io.tables import CatalogueError

FIX = Path(__file__).parent / "fixtures" / "mdpl2"
HLIST = FIX / "hlist_0.90900.list"
CSV = FIX / "sag_galaxies.csv"
HDF5 = FIX / "sag_galaxies.hdf5"
Z = 1.0 / 0.909 - 1.0
BOX = 1000.0


@pytest.fixture(scope="module")
def mdpl2_cosmo():
    """The MDPL2 simulation's cosmology (the shared ``mdpl2_cosmo`` fixture is Planck 2018)."""
    return make_cosmology("multidark-planck")


def _match(path, field):
    """Regex for a CatalogueError message naming ``path`` and a field starting ``field``."""
    return re.escape(f"{path}: field '{field}")


def _hlist_lines():
    return HLIST.read_text().splitlines(keepends=True)


def _raw_hlist():
    """Independent parse of the fixture hlist: {header name: array of strings}."""
    lines = _hlist_lines()
    names = [tok.rsplit("(", 1)[0] for tok in lines[0][1:].split()]
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    return {n: np.array([r[i] for r in rows]) for i, n in enumerate(names)}


def _write_modified(tmp_path, edit, name="hlist_0.90900.list"):
    """Copy the fixture hlist with ``edit(fields, row_index)`` applied to each data row."""
    out, row = [], 0
    for ln in _hlist_lines():
        if ln.startswith("#"):
            out.append(ln)
            continue
        fields = ln.split()
        edit(fields, row)
        out.append(" ".join(fields) + "\n")
        row += 1
    path = tmp_path / name
    path.write_text("".join(out))
    return path


def _read(path, cosmo, **kw):
    kw = {"redshift": Z, "box_size_mpc_h": BOX, "cosmology": cosmo, **kw}
    return read_hlist_halos(path, **kw)


def _r200c_astropy_mpc_h(m200c_msun_h, z, cosmo):
    """Proper R200c (h^-1 Mpc) from astropy's rho_crit(z): (3M / (4 pi 200 rho_c))^(1/3)."""
    h = cosmo.h
    rho_c = cosmo.astropy.critical_density(z).to_value(u.Msun / u.Mpc**3)
    r_mpc = (3.0 * (m200c_msun_h / h) / (4.0 * np.pi * 200.0 * rho_c)) ** (1.0 / 3.0)
    return r_mpc * h


# ----------------------------------------------------------------------------------------
# halos
# ----------------------------------------------------------------------------------------

def test_default_columns_match_fixture_header():
    names = [tok.rsplit("(", 1)[0] for tok in _hlist_lines()[0][1:].split()]
    assert len(names) == 73
    expect = {"scale": "scale", "halo_id": "id", "upid": "upid", "rvir": "rvir", "rs": "rs",
              "x": "x", "y": "y", "z": "z", "vx": "vx", "vy": "vy", "vz": "vz",
              "m200c": "M200c"}
    for key, idx in DEFAULT_HLIST_COLUMNS.items():
        assert names[idx] == expect[key]
    with pytest.raises(TypeError):
        DEFAULT_HLIST_COLUMNS["m200c"] = 40  # read-only


def test_read_hlist_values(mdpl2_cosmo, caplog):
    raw = _raw_hlist()
    keep = raw["M200c"].astype(float) > 0
    m = raw["M200c"].astype(float)[keep]
    with caplog.at_level(logging.INFO, logger="cmpipe.io"):
        halos = _read(HLIST, mdpl2_cosmo)
    assert list(halos) == list(HALO_SCHEMA)
    assert len(halos["halo_id"]) == 12 == keep.sum()
    np.testing.assert_array_equal(halos["halo_id"], raw["id"][keep].astype(np.int64))
    np.testing.assert_array_equal(halos["upid"], raw["upid"][keep].astype(np.int64))
    assert (halos["upid"] != -1).sum() == 6
    np.testing.assert_allclose(halos["log10_m200c"], np.log10(m), rtol=0, atol=1e-12)
    r200c = _r200c_astropy_mpc_h(m, Z, mdpl2_cosmo)
    np.testing.assert_allclose(halos["r200c_mpc_h"], r200c, rtol=1e-4)
    rs_proper = raw["rs"].astype(float)[keep] / (1.0 + Z) / 1000.0
    c = np.clip(r200c / rs_proper, 1.0, 50.0)
    np.testing.assert_allclose(halos["c200c"], c, rtol=1e-4)
    assert (halos["c200c"] == 50.0).sum() == 1 and (halos["c200c"] == 1.0).sum() == 1
    for k in "xyz":
        expect = np.mod(raw[k].astype(float)[keep], BOX)
        np.testing.assert_allclose(halos[f"{k}_mpc_h"], expect, rtol=0, atol=1e-9)
        assert halos[f"{k}_mpc_h"].min() >= 0 and halos[f"{k}_mpc_h"].max() < BOX
        np.testing.assert_array_equal(halos[f"v{k}_kms"], raw[f"v{k}"].astype(float)[keep])
    assert "dropped 1 halos with M200c = 0" in caplog.text
    assert "c200c clipped to [1, 50] for 1 halos below and 1 above" in caplog.text


def test_r200c_is_not_rvir(mdpl2_cosmo):
    """Rvir (comoving, Bryan & Norman) is larger than the proper R200c the reader returns."""
    raw = _raw_hlist()
    keep = raw["M200c"].astype(float) > 0
    halos = _read(HLIST, mdpl2_cosmo)
    rvir_proper = raw["rvir"].astype(float)[keep] / (1.0 + Z) / 1000.0
    assert np.all(halos["r200c_mpc_h"] < rvir_proper)


def test_hosts_only_and_mass_cut(mdpl2_cosmo):
    hosts = _read(HLIST, mdpl2_cosmo, hosts_only=True)
    assert np.all(hosts["upid"] == -1) and len(hosts["upid"]) == 6
    massive = _read(HLIST, mdpl2_cosmo, log10_m_min=14.0)
    np.testing.assert_array_equal(massive["halo_id"], [1001, 1002, 1003])
    both = _read(HLIST, mdpl2_cosmo, log10_m_min=12.0, hosts_only=True)
    np.testing.assert_array_equal(both["halo_id"], [1001, 1002, 1003, 1004, 1005, 1006])
    assert np.all(both["log10_m200c"] > 12.0)


def test_halo_write_read_round_trip(tmp_path, mdpl2_cosmo):
    halos = _read(HLIST, mdpl2_cosmo)
    path = tmp_path / "halos.h5"
    write_halos(path, halos, box_size_mpc_h=BOX, redshift=Z, cosmology=mdpl2_cosmo.as_dict(),
                source="mdpl2")
    back, attrs = read_halos(path)
    for k in HALO_SCHEMA:
        np.testing.assert_array_equal(back[k], halos[k])
    assert attrs["source"] == "mdpl2" and attrs["cosmology"]["name"] == "multidark-planck"


def test_failed_write_leaves_no_partial_file(tmp_path, mdpl2_cosmo):
    halos = _read(HLIST, mdpl2_cosmo)
    path = tmp_path / "halos.h5"
    bad_meta = dict(box_size_mpc_h=BOX, redshift=Z, cosmology={1, 2}, source="mdpl2")
    with pytest.raises(TypeError):
        write_halos(path, halos, **bad_meta)
    assert list(tmp_path.iterdir()) == []
    write_halos(path, halos, box_size_mpc_h=BOX, redshift=Z, cosmology={"n": 1},
                source="old")
    with pytest.raises(TypeError):
        write_halos(path, halos, **bad_meta)
    assert [p.name for p in tmp_path.iterdir()] == ["halos.h5"]
    assert read_halos(path)[1]["source"] == "old"


def test_other_consistent_trees_layout(tmp_path, mdpl2_cosmo):
    """A Bolshoi-Planck-style hlist (Tidal_Force(35) Tidal_ID(36) inserted) moves M200c to
    40: the default mapping is refused with the right index, which then works."""
    lines = _hlist_lines()
    toks = lines[0][1:].split()
    names = [t.rsplit("(", 1)[0] for t in toks]
    names = names[:35] + ["Tidal_Force", "Tidal_ID"] + names[35:]
    out = ["#" + " ".join(f"{n}({i})" for i, n in enumerate(names)) + "\n"]
    for ln in lines[1:]:
        if ln.startswith("#"):
            out.append(ln)
        else:
            f = ln.split()
            out.append(" ".join(f[:35] + ["0.12345", "-1"] + f[35:]) + "\n")
    path = tmp_path / "hlist_bolshoip_layout.list"
    path.write_text("".join(out))
    with pytest.raises(CatalogueError, match=_match(path, "halo_columns.m200c")
                       + ".*column 38 is 'Mmvir_all'.*not 'M200c'.*set halo_columns.m200c: 40"):
        _read(path, mdpl2_cosmo)
    cols = {**DEFAULT_HLIST_COLUMNS, "m200c": 40}
    halos = _read(path, mdpl2_cosmo, columns=cols)
    np.testing.assert_allclose(halos["log10_m200c"], _read(HLIST, mdpl2_cosmo)["log10_m200c"])


# -------------------------------------------------------------- bad hlist inputs

def test_missing_file(tmp_path, mdpl2_cosmo):
    path = tmp_path / "hlist_missing.list"
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*does not exist"):
        _read(path, mdpl2_cosmo)


@pytest.mark.parametrize("key, index, problem", [
    ("m200c", 500, "beyond the 73 columns"),
    ("m200c", 37, "column 37 is 'M200b'.*set halo_columns.m200c: 38"),
    ("x", 16, "column 16 is 'vmax'.*not 'x'.*set halo_columns.x: 17"),
    ("upid", None, "required column not mapped"),
    ("rs", "12", "not a non-negative integer"),
])
def test_bad_column_mapping(mdpl2_cosmo, key, index, problem):
    cols = {**DEFAULT_HLIST_COLUMNS, key: index}
    with pytest.raises(CatalogueError, match=_match(HLIST, f"halo_columns.{key}") + ".*"
                       + problem):
        _read(HLIST, mdpl2_cosmo, columns=cols)


def test_duplicate_and_unknown_mapping(mdpl2_cosmo):
    with pytest.raises(CatalogueError, match=_match(HLIST, "halo_columns.rvir")
                       + ".*index 11 is also mapped to 'm200c'"):
        _read(HLIST, mdpl2_cosmo, columns={**DEFAULT_HLIST_COLUMNS, "m200c": 11})
    with pytest.raises(CatalogueError, match=_match(HLIST, "halo_columns.mvir")
                       + ".*unknown"):
        _read(HLIST, mdpl2_cosmo, columns={**DEFAULT_HLIST_COLUMNS, "mvir": 10})


def test_optional_columns_can_be_skipped(mdpl2_cosmo):
    cols = {**DEFAULT_HLIST_COLUMNS, "rvir": None, "scale": None}
    a, b = _read(HLIST, mdpl2_cosmo, columns=cols), _read(HLIST, mdpl2_cosmo)
    for k in HALO_SCHEMA:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("col, index, field", [
    ("x", 17, "x (column 17 'x')"),
    ("vz", 22, "vz (column 22 'vz')"),
    ("M200c", 38, "m200c (column 38 'M200c')"),
])
def test_nan_values(tmp_path, mdpl2_cosmo, col, index, field):
    def edit(f, row):
        if row == 3:
            f[index] = "nan"
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, field) + ".*1 non-finite.*1004"):
        _read(path, mdpl2_cosmo)


def test_log_masses(tmp_path, mdpl2_cosmo):
    def edit(f, row):
        m = float(f[38])
        f[38] = "%.5f" % (np.log10(m) if m > 0 else 0.0)
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, "m200c") + ".*look like log10"):
        _read(path, mdpl2_cosmo)


def test_positions_in_kpc(tmp_path, mdpl2_cosmo):
    def edit(f, row):
        for i in (17, 18, 19):
            f[i] = "%.3f" % (1000.0 * float(f[i]))
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, "x (column 17")
                       + ".*outside the periodic box.*h\\^-1 kpc"):
        _read(path, mdpl2_cosmo)


def test_radii_in_mpc(tmp_path, mdpl2_cosmo):
    def edit(f, row):
        f[12] = "%.6f" % (float(f[12]) / 1000.0)
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, "rs (column 12") + ".*h\\^-1 kpc"):
        _read(path, mdpl2_cosmo, columns={**DEFAULT_HLIST_COLUMNS, "rvir": None})


def test_non_integer_id(tmp_path, mdpl2_cosmo):
    def edit(f, row):
        if row == 5:
            f[1] = "10x6"
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, "halo_id (column 1)")
                       + ".*'10x6' is not an integer"):
        _read(path, mdpl2_cosmo)


def test_empty_file(tmp_path, mdpl2_cosmo):
    path = tmp_path / "hlist_empty.list"
    path.write_bytes(b"")
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*empty"):
        _read(path, mdpl2_cosmo)


def test_header_only(tmp_path, mdpl2_cosmo):
    path = tmp_path / "hlist_header.list"
    path.write_text("".join(ln for ln in _hlist_lines() if ln.startswith("#")))
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*no data rows"):
        _read(path, mdpl2_cosmo)


def test_missing_header(tmp_path, mdpl2_cosmo):
    path = tmp_path / "hlist_noheader.list"
    path.write_text("".join(ln for ln in _hlist_lines() if not ln.startswith("#")))
    with pytest.raises(CatalogueError, match=_match(path, "header") + ".*column header"):
        _read(path, mdpl2_cosmo)


@pytest.mark.parametrize("cut", [0.5, 0.97, -3])
def test_truncated_file(tmp_path, mdpl2_cosmo, cut):
    data = HLIST.read_bytes()
    n = int(len(data) * cut) if cut > 0 else len(data) + cut
    path = tmp_path / "hlist_truncated.list"
    path.write_bytes(data[:n])
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*truncated"):
        _read(path, mdpl2_cosmo)


def test_short_row_in_the_middle(tmp_path, mdpl2_cosmo):
    def edit(f, row):
        if row == 4:
            del f[30:]
    path = _write_modified(tmp_path, edit)
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*30 of 73 fields"):
        _read(path, mdpl2_cosmo)


@pytest.mark.parametrize("kind", ["random", "hdf5", "gzip"])
def test_unknown_format(tmp_path, mdpl2_cosmo, kind):
    path = tmp_path / "hlist_0.90900.list"
    if kind == "random":
        path.write_bytes(np.random.default_rng(2).bytes(5000))
    elif kind == "hdf5":
        shutil.copy(HDF5, path)
    else:
        path.write_bytes(gzip.compress(HLIST.read_bytes()))
    with pytest.raises(CatalogueError, match=_match(path, "format")):
        _read(path, mdpl2_cosmo)


def test_box_and_redshift_must_match_file(mdpl2_cosmo):
    with pytest.raises(CatalogueError, match=_match(HLIST, "box_size_mpc_h")
                       + ".*1000.*250"):
        _read(HLIST, mdpl2_cosmo, box_size_mpc_h=250.0)
    with pytest.raises(CatalogueError, match=_match(HLIST, "redshift")
                       + ".*z = 0.1001.*set redshift to 0.1001"):
        _read(HLIST, mdpl2_cosmo, redshift=0.5)
    _read(HLIST, mdpl2_cosmo, redshift=0.1)  # a rounded redshift of the same snapshot is fine


def test_log10_m_min_must_be_log(mdpl2_cosmo):
    with pytest.raises(CatalogueError, match=_match(HLIST, "log10_m_min")):
        _read(HLIST, mdpl2_cosmo, log10_m_min=1e13)


def test_cosmology_mismatch_warns():
    other = make_cosmology("planck18")
    with pytest.warns(UserWarning, match=re.escape(f"{HLIST}: field 'cosmology'")):
        _read(HLIST, other)
    make_cosmology("multidark-planck")  # restore colossus' current cosmology


# ----------------------------------------------------------------------------------------
# galaxies
# ----------------------------------------------------------------------------------------

def _raw_csv():
    with open(CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_galaxy_csv_values():
    raw = _raw_csv()
    g = read_galaxy_table(CSV, box_size_mpc_h=BOX)
    assert list(g) == list(GALAXY_SCHEMA)
    np.testing.assert_array_equal(g["galaxy_id"], raw["galaxystaticid"].astype(np.int64))
    np.testing.assert_array_equal(g["halo_id"], raw["mainhaloid"].astype(np.int64))
    np.testing.assert_array_equal(g["is_central"], raw["galaxytype"].astype(int) == 0)
    for k in "xyz":
        expect = np.mod(raw[k].astype(float), BOX)
        np.testing.assert_allclose(g[f"{k}_mpc_h"], expect, rtol=0, atol=1e-9)
        assert g[f"{k}_mpc_h"].min() >= 0 and g[f"{k}_mpc_h"].max() < BOX
        np.testing.assert_array_equal(g[f"v{k}_kms"], raw[f"v{k}"].astype(float))
    np.testing.assert_array_equal(g["mag_r"], raw["magstarsdssr"].astype(float))
    assert g["x_mpc_h"][8] == pytest.approx(999.98, abs=1e-9)  # was x = -0.02


def test_galaxy_hdf5_same_as_csv():
    a = read_galaxy_table(CSV, box_size_mpc_h=BOX)
    b = read_galaxy_table(HDF5, box_size_mpc_h=BOX)
    for k in ("galaxy_id", "halo_id", "is_central"):
        np.testing.assert_array_equal(a[k], b[k])
    for k in ("x_mpc_h", "y_mpc_h", "z_mpc_h", "vx_kms", "vy_kms", "vz_kms", "mag_r"):
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-3)  # HDF5 stores float32


def test_galaxy_astropy_hdf5_table(tmp_path):
    from astropy.table import Table

    path = tmp_path / "sag_table.hdf5"
    Table.read(CSV, format="ascii.csv").write(path, path="sag/galaxies")
    a = read_galaxy_table(CSV, box_size_mpc_h=BOX)
    b = read_galaxy_table(path, box_size_mpc_h=BOX, hdf5_path="sag/galaxies")
    c = read_galaxy_table(path, box_size_mpc_h=BOX, hdf5_path="sag")  # the one table in it
    for k in GALAXY_SCHEMA:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])


def test_galaxy_id_optional():
    cols = {**DEFAULT_GALAXY_COLUMNS, "galaxy_id": None}
    g = read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)
    np.testing.assert_array_equal(g["galaxy_id"], np.arange(18))


def test_derived_is_central_is_brightest_per_halo():
    raw = _raw_csv()
    cols = {**DEFAULT_GALAXY_COLUMNS, "galaxy_type": None}
    g = read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)
    halo, mag = raw["mainhaloid"].astype(int), raw["magstarsdssr"].astype(float)
    expect = np.array([mag[i] == mag[halo == halo[i]].min() for i in range(len(halo))])
    np.testing.assert_array_equal(g["is_central"], expect)
    np.testing.assert_array_equal(g["is_central"], raw["galaxytype"].astype(int) == 0)


def test_is_central_column():
    cols = {**DEFAULT_GALAXY_COLUMNS, "galaxy_type": None, "is_central": "GalaxyType"}
    g = read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)
    np.testing.assert_array_equal(g["is_central"], _raw_csv()["galaxytype"].astype(int) != 0)


def test_load_mdpl2_default_mapping(tmp_path, mdpl2_cosmo, caplog):
    with caplog.at_level(logging.INFO, logger="cmpipe.io"):
        halos, gals = load_mdpl2(HLIST, CSV, redshift=Z, box_size_mpc_h=BOX, cosmology=mdpl2_cosmo)
    assert len(halos["halo_id"]) == 12
    assert len(gals["galaxy_id"]) == 17  # the galaxy of halo 5555 (not in the hlist) dropped
    assert "dropped 1 of 18 galaxies" in caplog.text
    assert 5555 not in gals["halo_id"]
    host_ids = halos["halo_id"][halos["upid"] == -1]
    assert np.isin(gals["halo_id"], host_ids).all()
    hosts, n_central = np.unique(gals["halo_id"][gals["is_central"] == 1], return_counts=True)
    np.testing.assert_array_equal(hosts, np.sort(host_ids))
    assert np.all(n_central == 1)
    gpath = tmp_path / "galaxies.h5"
    meta = dict(box_size_mpc_h=BOX, redshift=Z, cosmology=mdpl2_cosmo.as_dict(), source="mdpl2")
    write_galaxies(gpath, gals, **meta)
    back, _ = read_galaxies(gpath)
    for k in GALAXY_SCHEMA:
        np.testing.assert_array_equal(back[k], np.asarray(gals[k]).astype(back[k].dtype))


def test_attach_hosts_maps_subhalos_to_upid(mdpl2_cosmo, caplog):
    raw = _raw_csv()
    halos = _read(HLIST, mdpl2_cosmo)
    cols = {**DEFAULT_GALAXY_COLUMNS, "halo_id": "HostHaloID"}
    g = read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)
    with caplog.at_level(logging.INFO, logger="cmpipe.io"):
        out = attach_hosts(g, halos)
    upid = dict(zip(halos["halo_id"], halos["upid"]))
    host_of = {h: (h if upid[h] == -1 else upid[h]) for h in upid}
    host_raw = raw["hosthaloid"].astype(int)
    kept = np.array([h in host_of for h in host_raw])
    # dropped: 4 orphans of disrupted subhalos, 1 in the M200c = 0 subhalo, 1 of halo 5555
    assert kept.sum() == 12
    assert "dropped 6 of 18 galaxies" in caplog.text
    np.testing.assert_array_equal(out["galaxy_id"], g["galaxy_id"][kept])
    np.testing.assert_array_equal(out["halo_id"], [host_of[h] for h in host_raw[kept]])
    # the galaxy of subhalo 2003 (pid 2001, upid 1001) goes to the top host 1001
    assert out["halo_id"][list(out["galaxy_id"]).index(int(raw["galaxystaticid"][3]))] == 1001
    in_sub = np.array([upid[h] != -1 for h in host_raw[kept]])
    assert not out["is_central"][in_sub].any()
    np.testing.assert_array_equal(out["is_central"] == 1, ~in_sub)


def test_attach_hosts_derived_centrals_and_duplicates(mdpl2_cosmo, caplog):
    halos = _read(HLIST, mdpl2_cosmo)
    cols = {**DEFAULT_GALAXY_COLUMNS, "halo_id": "HostHaloID", "galaxy_type": None}
    g = read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)
    assert g["is_central"].sum() == 18  # each galaxy is alone in its (sub)halo id
    out = attach_hosts(g, halos)
    hosts, counts = np.unique(out["halo_id"][out["is_central"] == 1], return_counts=True)
    assert np.all(counts == 1) and len(hosts) == 6
    # keyed by the main (host) halo, every galaxy claiming to be central: the brightest of
    # each host stays central, which here is the GalaxyType 0 galaxy
    g2 = read_galaxy_table(CSV, box_size_mpc_h=BOX)
    expect = attach_hosts(g2, halos)["is_central"]
    g2["is_central"] = np.ones_like(g2["is_central"])
    with caplog.at_level(logging.WARNING, logger="cmpipe.io"):
        out2 = attach_hosts(g2, halos)
    # hosts 1001, 1002, 1003, 1004 hold 6 + 4 + 3 + 2 galaxies
    assert "4 host halos had several centrals (15 galaxies); kept the brightest" in caplog.text
    np.testing.assert_array_equal(out2["is_central"], expect)


def test_attach_hosts_rejects_duplicate_halo_ids(mdpl2_cosmo):
    halos = _read(HLIST, mdpl2_cosmo)
    dup = {k: np.concatenate([v, v[:1]]) for k, v in halos.items()}
    g = read_galaxy_table(CSV, box_size_mpc_h=BOX)
    with pytest.raises(ValueError, match="duplicate halo ids"):
        attach_hosts(g, dup)


def test_load_mdpl2_no_match_is_an_error(mdpl2_cosmo):
    cols = {**DEFAULT_GALAXY_COLUMNS, "halo_id": "GalaxyType"}
    with pytest.raises(CatalogueError, match=_match(CSV, "GalaxyType (galaxy_columns.halo_id)")
                       + ".*none of the 18 galaxies"):
        load_mdpl2(HLIST, CSV, redshift=Z, box_size_mpc_h=BOX, cosmology=mdpl2_cosmo,
                   galaxy_columns=cols)


# -------------------------------------------------------------- bad galaxy inputs

def _csv_text():
    return CSV.read_text()


def _write_csv(tmp_path, text, name="galaxies.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("src", [CSV, HDF5])
def test_galaxy_missing_column(src):
    cols = {**DEFAULT_GALAXY_COLUMNS, "mag_r": "MagStarSDSSq"}
    with pytest.raises(CatalogueError, match=_match(src, "MagStarSDSSq (galaxy_columns.mag_r)")
                       + ".*missing.*have:.*set galaxy_columns.mag_r"):
        read_galaxy_table(src, columns=cols, box_size_mpc_h=BOX)


def test_galaxy_required_key_unmapped():
    cols = {**DEFAULT_GALAXY_COLUMNS, "vx": None}
    with pytest.raises(CatalogueError, match=_match(CSV, "galaxy_columns.vx")):
        read_galaxy_table(CSV, columns=cols, box_size_mpc_h=BOX)


@pytest.mark.parametrize("value, problem", [("nan", "1 non-finite"), ("", "1 empty")])
def test_galaxy_nan_position(tmp_path, value, problem):
    lines = _csv_text().splitlines(keepends=True)
    f = lines[3].split(",")
    f[5] = value  # x of the third galaxy
    lines[3] = ",".join(f)
    path = _write_csv(tmp_path, "".join(lines))
    with pytest.raises(CatalogueError, match=_match(path, "x (galaxy_columns.x)")
                       + f".*{problem}.*row 2"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_nan_in_hdf5(tmp_path):
    path = tmp_path / "galaxies.hdf5"
    shutil.copy(HDF5, path)
    with h5py.File(path, "r+") as f:
        f["Vy"][4] = np.nan
    with pytest.raises(CatalogueError, match=_match(path, "Vy (galaxy_columns.vy)")):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_positions_in_kpc(tmp_path):
    from astropy.table import Table

    t = Table.read(CSV, format="ascii.csv")
    for k in "xyz":
        t[k] = t[k] * 1000.0
    path = tmp_path / "galaxies_kpc.csv"
    t.write(path, format="ascii.csv")
    with pytest.raises(CatalogueError, match=_match(path, "x (galaxy_columns.x)")
                       + ".*outside the periodic box.*h\\^-1 kpc"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_non_numeric(tmp_path):
    text = _csv_text().replace(",-21.0035\n", ",\\N\n")
    path = _write_csv(tmp_path, text)
    with pytest.raises(CatalogueError, match=_match(path, "magstarsdssr (galaxy_columns.mag_r)")
                       + ".*non-numeric"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_duplicate_ids(tmp_path):
    lines = _csv_text().splitlines(keepends=True)
    path = _write_csv(tmp_path, "".join(lines + [lines[1]]))
    with pytest.raises(CatalogueError, match=_match(path, "galaxystaticid") + ".*not unique"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_empty_and_header_only(tmp_path):
    empty = _write_csv(tmp_path, "", "empty.csv")
    with pytest.raises(CatalogueError, match=_match(empty, "file") + ".*empty"):
        read_galaxy_table(empty, box_size_mpc_h=BOX)
    header = _write_csv(tmp_path, _csv_text().splitlines(keepends=True)[0], "header.csv")
    with pytest.raises(CatalogueError, match=_match(header, "file") + ".*no galaxy rows"):
        read_galaxy_table(header, box_size_mpc_h=BOX)


@pytest.mark.parametrize("cut", [0.5, -3])
def test_galaxy_truncated_csv(tmp_path, cut):
    data = CSV.read_bytes()
    n = int(len(data) * cut) if cut > 0 else len(data) + cut
    path = tmp_path / "galaxies.csv"
    path.write_bytes(data[:n])
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*truncated"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_ragged_csv(tmp_path):
    lines = _csv_text().splitlines(keepends=True)
    lines[5] = ",".join(lines[5].split(",")[:6]) + "\n"
    path = _write_csv(tmp_path, "".join(lines))
    with pytest.raises(CatalogueError, match=_match(path, "y (galaxy_columns.y)")
                       + ".*missing value.*row 4.*corrupt"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_truncated_hdf5(tmp_path):
    data = HDF5.read_bytes()
    path = tmp_path / "galaxies.hdf5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*not a readable HDF5"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


@pytest.mark.parametrize("name", ["galaxies.fits", "galaxies.txt"])
def test_galaxy_unknown_format(tmp_path, name):
    path = tmp_path / name
    path.write_text(_csv_text())
    with pytest.raises(CatalogueError, match=_match(path, "format") + ".*HDF5.*CSV"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_galaxy_hdf5_without_suffix_is_detected(tmp_path):
    path = tmp_path / "galaxies.dat"
    shutil.copy(HDF5, path)
    g = read_galaxy_table(path, box_size_mpc_h=BOX)
    assert len(g["galaxy_id"]) == 18


def test_galaxy_missing_hdf5_path():
    with pytest.raises(CatalogueError, match=_match(HDF5, "hdf5_path 'galaxies'")
                       + ".*top level has:.*GalaxyType"):
        read_galaxy_table(HDF5, box_size_mpc_h=BOX, hdf5_path="galaxies")


def test_galaxy_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(CatalogueError, match=_match(path, "file") + ".*does not exist"):
        read_galaxy_table(path, box_size_mpc_h=BOX)


def test_mdpl2_module_exports():
    assert set(mdpl2.__all__) >= {"DEFAULT_HLIST_COLUMNS", "DEFAULT_GALAXY_COLUMNS",
                                  "read_hlist_halos", "read_galaxy_table", "attach_hosts",
                                  "load_mdpl2"}
