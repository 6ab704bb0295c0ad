"""Odd input to ``cmpipe infer`` (issue 30): no silent wrong answer, one clear line.

Each test failed on the code before the change (the refusals and warnings did not exist:
``-o`` onto an input, ``--threads 0``, z-difference velocities, radians labelled deg,
duplicated galaxies, cluster id -1, unmatched membership, no cluster left, ...). Unit level:
the readers and ``survey_cubes`` on small hand-made tables with the tiny config; the path
checks through ``cmpipe.cli.main`` with a run directory that need not exist (they come
first).
"""
import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cmpipe.cli import main
from cmpipe.io.survey import read_survey_clusters, read_survey_galaxies
from cmpipe.io.tables import CatalogueError, read_table
from cmpipe.settings import Settings, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src/cmpipe/data/config.schema.yaml"


def _one_line(msg: str) -> str:
    msg = msg.strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _csv(path, header, rows, sep=","):
    path.write_text(sep.join(header) + "\n"
                    + "".join(sep.join(str(v) for v in r) + "\n" for r in rows))
    return path


CL_HEAD = ["cluster_id", "ra_deg", "dec_deg", "z"]


@pytest.fixture(scope="module")
def tiny():
    return Settings.from_config(load_config(ROOT / "config.yaml", SCHEMA,
                                            overlays=[ROOT / "configs/tiny.yaml"]))


def _infer(tmp_path, capsys, *args):
    rc = main(["infer", "--run-dir", str(tmp_path / "no-run"), *map(str, args), "-q"])
    return rc, _one_line(capsys.readouterr().err)


# --------------------------------------------------------------- paths, before any work

@pytest.mark.parametrize("which", ["--clusters", "--galaxies"])
def test_output_onto_an_input_is_refused_and_the_input_survives(which, tmp_path, capsys):
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)])
    gal = _csv(tmp_path / "gal.csv", ["ra_deg", "dec_deg", "z"], [(150.0, 20.0, 0.05)])
    before = {p: p.read_bytes() for p in (cl, gal)}
    target = (cl if which == "--clusters" else gal)
    alias = tmp_path / "sub" / ".." / target.name          # same file, other spelling
    (tmp_path / "sub").mkdir()
    rc, err = _infer(tmp_path, capsys, "--clusters", cl, "--galaxies", gal, "-o", alias)
    assert rc == 1 and "-o" in err and which in err and "overwrite" in err and "Fix" in err
    assert {p: p.read_bytes() for p in (cl, gal)} == before


def test_output_and_keep_paths_are_checked_first(tmp_path, capsys):
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)])
    base = ["--clusters", cl, "--galaxies", cl]
    (tmp_path / "outdir").mkdir()
    rc, err = _infer(tmp_path, capsys, *base, "-o", tmp_path / "outdir")
    assert rc == 1 and "existing directory" in err and "posteriors.ecsv" in err
    rc, err = _infer(tmp_path, capsys, *base, "-o", tmp_path / "nodir/p.ecsv")
    assert rc == 1 and "does not exist" in err and "nodir" in err
    rc, err = _infer(tmp_path, capsys, *base, "-o", "/proc/p.ecsv")   # unwritable, even root
    assert rc == 1 and "not writable" in err and "/proc" in err
    rc, err = _infer(tmp_path, capsys, *base, "-o", tmp_path / "p.ecsv", "--keep", cl)
    assert rc == 1 and "--keep" in err and "existing file" in err
    assert not (tmp_path / "p.ecsv").exists()


def test_missing_or_directory_input_names_the_flag(tmp_path, capsys):
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)])
    rc, err = _infer(tmp_path, capsys, "--clusters", tmp_path / "nope.csv", "--galaxies",
                     cl, "-o", tmp_path / "p.ecsv")
    assert rc == 1 and "does not exist" in err and "--clusters" in err
    assert "survey.clusters" not in err                    # not the workflow's config key
    rc, err = _infer(tmp_path, capsys, "--clusters", tmp_path, "--phase-space", cl, "-o",
                     tmp_path / "p.ecsv")
    assert rc == 1 and "is a directory" in err and "--clusters" in err


@pytest.mark.parametrize("value", ["0", "-4", "two"])
def test_threads_must_be_a_positive_integer(value, tmp_path, capsys):
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)])
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--run-dir", str(tmp_path), "--clusters", str(cl), "--galaxies",
              str(cl), "-o", str(tmp_path / "p.ecsv"), "--threads", value])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


# ------------------------------------------------------------------------ table reading

def test_empty_and_semicolon_csv_say_so(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(CatalogueError) as exc:
        read_survey_clusters(empty)
    msg = _one_line(str(exc.value))
    assert str(empty) in msg and "empty" in msg and "column mapping" not in msg
    semi = _csv(tmp_path / "semi.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)], sep=";")
    with pytest.raises(CatalogueError) as exc:
        read_survey_clusters(semi)
    msg = _one_line(str(exc.value))
    assert str(semi) in msg and "only one column" in msg and "';'" in msg


def test_non_numeric_redshift_names_the_row(tmp_path):
    p = _csv(tmp_path / "gal.csv", ["ra_deg", "dec_deg", "z"],
             [(150.0, 20.0, 0.05), (150.1, 20.0, 0.051), (150.2, 20.1, "0.05x")])
    with pytest.raises(CatalogueError) as exc:
        read_survey_galaxies(p)
    msg = _one_line(str(exc.value))
    assert str(p) in msg and "'z'" in msg and "row 2" in msg and "'0.05x'" in msg


def test_sexagesimal_positions_are_read(tmp_path):
    from astropy.coordinates import SkyCoord

    rows = [(1, "12:30:49.42", "+12:23:28.0", 0.0043),
            (2, "11h44m30s", "-07d10m00s", 0.05), (3, "00:00:10.0", "-00:30:00", 0.08)]
    p = _csv(tmp_path / "cl.csv", CL_HEAD, rows)
    cl = read_survey_clusters(p)
    ref = SkyCoord([r[1] for r in rows], [r[2] for r in rows], unit=("hourangle", "deg"))
    np.testing.assert_allclose(cl["ra_deg"], ref.ra.deg, atol=1e-9)
    np.testing.assert_allclose(cl["dec_deg"], ref.dec.deg, atol=1e-9)
    np.testing.assert_allclose(cl["ra_deg"][0], 187.70592, atol=1e-5)   # M87


def test_duplicated_galaxy_rows_are_dropped_with_one_warning(tmp_path, caplog):
    rows = [(7, 150.0, 20.0, 0.05), (8, 150.01, 20.0, 0.051), (7, 150.0, 20.0, 0.05),
            (9, 150.02, 20.0, 0.052), (8, 150.01, 20.0, 0.051)]
    p = _csv(tmp_path / "gal.csv", ["galaxy_id", "ra_deg", "dec_deg", "z"], rows)
    caplog.set_level("WARNING")
    gal = read_survey_galaxies(p)
    np.testing.assert_array_equal(gal["galaxy_id"], [7, 8, 9])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "2 duplicated galaxy row(s)" in warned[0]
    noid = _csv(tmp_path / "noid.csv", ["ra_deg", "dec_deg", "z"], [r[1:] for r in rows])
    assert len(read_survey_galaxies(noid)["z"]) == 3
    clash = _csv(tmp_path / "clash.csv", ["galaxy_id", "ra_deg", "dec_deg", "z"],
                 [(7, 150.0, 20.0, 0.05), (7, 151.0, 20.0, 0.05)])
    with pytest.raises(CatalogueError, match="galaxy_id"):
        read_survey_galaxies(clash)


# --------------------------------------------------------------------- survey_cubes

def _sky_galaxies(rng, ra0, dec0, z0, n, sigma_v=600.0, spread_deg=0.3):
    c = 299792.458
    return (ra0 + rng.uniform(-spread_deg, spread_deg, n),
            dec0 + rng.uniform(-spread_deg, spread_deg, n),
            z0 + rng.normal(0.0, sigma_v, n) * (1 + z0) / c)


def _cubes(tiny, tmp_path, cl, gal, **kw):
    from cmpipe.stages import survey_cubes

    survey_cubes(config=tiny, clusters=cl, galaxies=gal, cubes_out=tmp_path / "cubes.h5",
                 phase_space_out=tmp_path / "ps.h5", **kw)
    return read_table(tmp_path / "ps.h5", group="clusters")[0]


def test_cluster_id_minus_one_counts_its_members(tiny, tmp_path):
    rng = np.random.default_rng(5)
    ra, dec, z = _sky_galaxies(rng, 150.0, 20.0, 0.05, 59)
    lab = ["-1"] * 39 + [""] * 20                 # 39 members, 20 unlabelled field galaxies
    gal = tmp_path / "gal.csv"
    Table(dict(ra_deg=ra, dec_deg=dec, z=z, cluster_id=lab)).write(gal, format="ascii.csv")
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(-1, 150.0, 20.0, 0.05)])
    ps = _cubes(tiny, tmp_path, cl, gal)
    assert ps["n_gal"][0] == 59 and ps["n_members"][0] == 39


def test_membership_matching_no_cluster_warns_once(tiny, tmp_path, caplog):
    rng = np.random.default_rng(6)
    ra, dec, z = _sky_galaxies(rng, 150.0, 20.0, 0.05, 30)
    gal = tmp_path / "gal.csv"
    Table(dict(ra_deg=ra, dec_deg=dec, z=z, cluster_id=np.full(30, 4242))).write(
        gal, format="ascii.csv")
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05)])
    caplog.set_level("WARNING")
    ps = _cubes(tiny, tmp_path, cl, gal)
    warned = [r.getMessage() for r in caplog.records if "membership" in r.getMessage()]
    assert len(warned) == 1 and str(gal) in warned[0] and "'cluster_id'" in warned[0]
    assert ps["n_members"][0] == -1                 # unknown, not 0


def test_skipped_cluster_warns_once(tiny, tmp_path, caplog):
    rng = np.random.default_rng(7)
    ra, dec, z = _sky_galaxies(rng, 150.0, 20.0, 0.05, 30)
    gal = tmp_path / "gal.csv"
    Table(dict(ra_deg=ra, dec_deg=dec, z=z)).write(gal, format="ascii.csv")
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05), (2, 200.0, 40.0, 0.05)])
    caplog.set_level("WARNING")
    _cubes(tiny, tmp_path, cl, gal)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1


@pytest.mark.parametrize("case", ["header_only", "z_times_100", "galaxy_z_over_1000",
                                  "min_galaxies", "outside"])
def test_no_cluster_left_says_why(case, tiny, tmp_path):
    rng = np.random.default_rng(8)
    ra, dec, z = _sky_galaxies(rng, 150.0, 20.0, 0.05, 40)
    rows = [(1, 150.0, 20.0, 0.05), (2, 150.5, 20.5, 0.06)]
    kw = {}
    if case == "header_only":
        rows = []
    elif case == "z_times_100":
        rows = [(i, r, d, zz * 100) for i, r, d, zz in rows]
    elif case == "galaxy_z_over_1000":
        z = z / 1000
    elif case == "min_galaxies":
        tiny = Settings.from_config(load_config(
            ROOT / "config.yaml", SCHEMA, overlays=[ROOT / "configs/tiny.yaml"]) | {
            "survey": dict(load_config(ROOT / "config.yaml", SCHEMA, overlays=[
                ROOT / "configs/tiny.yaml"])["survey"], min_galaxies=100000)})
    else:
        ra = ra + 90.0
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, rows)
    gal = tmp_path / "gal.csv"
    Table(dict(ra_deg=ra, dec_deg=dec, z=z)).write(gal, format="ascii.csv")
    with pytest.raises(CatalogueError) as exc:
        _cubes(tiny, tmp_path, cl, gal, **kw)
    msg = _one_line(str(exc.value))
    assert "Fix" in msg
    if case == "header_only":
        assert str(cl) in msg and "no cluster row" in msg
    else:
        assert str(gal) in msg and "no cluster is left" in msg and "of 2 cluster(s)" in msg
    if case == "min_galaxies":
        assert "0 have no galaxy" in msg and "2 fewer than 100000" in msg
    if case in ("outside", "galaxy_z_over_1000", "z_times_100"):
        assert "2 have no galaxy" in msg


def _deg_ecsv(path, cols):
    t = Table(cols)
    for c in ("ra_deg", "dec_deg"):
        t[c].unit = "deg"
    t.write(path, format="ascii.ecsv", overwrite=True)
    return path


def test_radians_labelled_deg_are_refused(tiny, tmp_path):
    """40 clusters over ~57 x 34 deg at z 0.02-0.1 written in radians with unit deg: read
    as degrees, 1.7e-2 clusters per (h^-1 Mpc)^3 (limit 1e-2); a radian reading, 5e-6."""
    rng = np.random.default_rng(9)
    n = 40
    ra, dec = rng.uniform(2.5, 3.5, n), rng.uniform(0.0, 0.6, n)
    z = rng.uniform(0.02, 0.1, n)
    cl = _deg_ecsv(tmp_path / "cl.ecsv", dict(cluster_id=np.arange(n), ra_deg=ra,
                                               dec_deg=dec, z=z))
    gal = _deg_ecsv(tmp_path / "gal.ecsv", dict(ra_deg=np.repeat(ra, 5), dec_deg=np.repeat(
        dec, 5), z=np.repeat(z, 5) + rng.normal(0, 0.001, 5 * n)))
    with pytest.raises(CatalogueError) as exc:
        _cubes(tiny, tmp_path, cl, gal)
    msg = _one_line(str(exc.value))
    assert str(cl) in msg and "ra_deg/dec_deg" in msg and "radians" in msg
    assert "np.degrees" in msg


def test_small_degree_field_near_the_origin_is_kept(tiny, tmp_path):
    """A cluster at RA 1 deg, Dec 0.5 deg with galaxies within 1 deg: degrees, kept."""
    rng = np.random.default_rng(10)
    ra, dec, z = _sky_galaxies(rng, 1.0, 0.5, 0.05, 40, spread_deg=0.9)
    cl = _deg_ecsv(tmp_path / "cl.ecsv", dict(cluster_id=[3], ra_deg=[1.0], dec_deg=[0.5],
                                               z=[0.05]))
    gal = _deg_ecsv(tmp_path / "gal.ecsv", dict(ra_deg=ra, dec_deg=dec, z=z))
    ps = _cubes(tiny, tmp_path, cl, gal)
    assert ps["skipped"][0] == 0 and ps["n_gal"][0] >= 5


def test_v_los_as_redshift_difference_is_refused(tiny, tmp_path):
    from cmpipe.stages import survey_cubes

    rng = np.random.default_rng(12)
    ps = tmp_path / "ps.csv"
    Table(dict(cluster_id=np.repeat([1, 2], 20), x_proj=rng.uniform(-1, 1, 40),
               y_proj=rng.uniform(-1, 1, 40), v_los=rng.normal(0, 0.002, 40))).write(
        ps, format="ascii.csv")
    cl = _csv(tmp_path / "cl.csv", CL_HEAD, [(1, 150.0, 20.0, 0.05), (2, 160.0, 25.0, 0.06)])
    with pytest.raises(CatalogueError) as exc:
        survey_cubes(config=tiny, clusters=cl, phase_space_in=ps,
                     cubes_out=tmp_path / "cubes.h5", phase_space_out=tmp_path / "o.h5")
    msg = _one_line(str(exc.value))
    assert str(ps) in msg and "'v_los'" in msg and "km/s" in msg and "c / (1 + z_cl)" in msg


# ------------------------------------------------------------------------ posteriors

def test_nearer_than_mock_flag(tiny, caplog):
    from cmpipe.calibration.distance import tabulate_by_distance
    from cmpipe.cosmology import make_cosmology
    from cmpipe.survey.posteriors import nearest_calibrated_distance, posterior_table_base

    rng = np.random.default_rng(13)
    m = rng.uniform(13.5, 15.0, 600)
    dist = 300.0 * rng.random(600) ** (1 / 3) + 20.0
    pdf = tabulate_by_distance(m + rng.normal(0, 0.15, 600), m, dist, n_nodes=3,
                               window=0.4)
    nearest = nearest_calibrated_distance(pdf)
    assert nearest == pytest.approx(dist.min())           # node 0 starts at the nearest
    cosmo = make_cosmology(tiny.cosmology)
    z = np.array([0.0003, 0.05])
    cl = dict(cluster_id=np.array([11, 12]), ra_deg=np.zeros(2), dec_deg=np.zeros(2), z=z,
              n_gal=np.array([5, 50]), n_members=np.full(2, -1), n_mem=np.full(2, -1),
              log10_m_cat=np.full(2, np.nan), log10_m_cat_err=np.full(2, np.nan),
              skipped=np.zeros(2, np.int8))
    caplog.set_level("WARNING")
    table = posterior_table_base(tiny, cosmo, cl, nearest)
    r = cosmo.comoving_distance_mpc_h(z)
    assert r[0] < nearest < r[1]
    np.testing.assert_array_equal(table["nearer_than_mock"], [1, 0])
    warned = [x.getMessage() for x in caplog.records if "nearer_than_mock" in x.getMessage()]
    assert len(warned) == 1 and "ids 11" in warned[0]


def test_population_range_cut_is_not_a_warning(tiny, caplog):
    from cmpipe.cosmology import make_cosmology
    from cmpipe.massfunction.priors import population_prior_posterior

    cosmo = make_cosmology(tiny.cosmology)
    g = np.linspace(13.0, 15.5, 251)
    flat = np.exp(-0.5 * ((g - 13.8) / 0.2) ** 2)       # ~16% below 13.6
    caplog.set_level("INFO")
    population_prior_posterior(g, flat, 0.05, cosmo, np.ones_like(g),
                               log10_m_range=(13.6, 15.5))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("outside the population's mass range" in r.getMessage()
               for r in caplog.records)
    prior = np.where((g > 13.7) & (g < 13.9), 0.0, 1.0)  # a gap of the test set inside
    caplog.clear()
    population_prior_posterior(g, flat, 0.05, cosmo, prior, log10_m_range=(13.6, 15.5))
    assert [r for r in caplog.records if r.levelno == logging.WARNING]


# ------------------------------------------------------------------ clusters by name

def test_cluster_names_are_read_as_rows_and_kept(tmp_path):
    """Real catalogues name clusters (A2029, Coma): the names are accepted, numbered by
    row (in file order, which need not be sorted), and kept as cluster_name."""
    p = _csv(tmp_path / "cl.csv", ["name", "ra_deg", "dec_deg", "z"],
             [("Coma", 194.95, 27.98, 0.0231), ("A2029", 227.73, 5.74, 0.0773),
              (" A1656 ", 194.9, 27.9, 0.0232)])
    cl = read_survey_clusters(p)
    np.testing.assert_array_equal(cl["cluster_id"], [0, 1, 2])
    assert list(cl["cluster_name"]) == ["Coma", "A2029", "A1656"]
    # integer ids stored as text (an ECSV string column) stay the ids, with no names
    q = tmp_path / "num.ecsv"
    Table(dict(cluster_id=np.array(["7", " 12"]), ra_deg=[10.0, 11.0], dec_deg=[5.0, 5.0],
               z=[0.05, 0.05])).write(q)
    num = read_survey_clusters(q)
    np.testing.assert_array_equal(num["cluster_id"], [7, 12])
    assert "cluster_name" not in num


def test_named_membership_and_phase_space_labels(tiny, tmp_path):
    """Galaxy labels that name clusters count the members of the named cluster; a name
    of no listed cluster is no membership; numeric labels beside named clusters, or a
    phase-space row naming an unlisted cluster, are refused with the fix."""
    from cmpipe.stages import survey_cubes

    rng = np.random.default_rng(11)
    ra1, dec1, z1 = _sky_galaxies(rng, 150.0, 20.0, 0.05, 40)
    ra2, dec2, z2 = _sky_galaxies(rng, 200.0, -5.0, 0.06, 35)
    lab = ["A2029"] * 25 + [""] * 15 + ["Coma"] * 30 + ["Virgo"] * 5
    gal = tmp_path / "gal.csv"
    Table(dict(ra=np.r_[ra1, ra2], dec=np.r_[dec1, dec2], z=np.r_[z1, z2],
               cluster=lab)).write(gal, format="ascii.csv")
    # Coma listed first: ids are rows (Coma 0, A2029 1); the output keeps the names
    cl = _csv(tmp_path / "cl.csv", ["name", "ra", "dec", "z"],
              [("Coma", 200.0, -5.0, 0.06), ("A2029", 150.0, 20.0, 0.05)])
    survey_cubes(config=tiny, clusters=cl, galaxies=gal, cubes_out=tmp_path / "c.h5",
                 phase_space_out=tmp_path / "ps.h5")
    ps, attrs = read_table(tmp_path / "ps.h5", group="clusters")
    np.testing.assert_array_equal(ps["cluster_id"], [0, 1])
    assert attrs["cluster_names"] == ["Coma", "A2029"]
    np.testing.assert_array_equal(ps["n_gal"], [35, 40])
    np.testing.assert_array_equal(ps["n_members"], [30, 25])       # Virgo: no cluster listed

    numeric = tmp_path / "numlab.csv"
    Table(dict(ra=ra1, dec=dec1, z=z1, cluster=np.ones(40, int))).write(numeric,
                                                                      format="ascii.csv")
    with pytest.raises(CatalogueError) as exc:
        survey_cubes(config=tiny, clusters=cl, galaxies=numeric, cubes_out=None,
                     phase_space_out=tmp_path / "ps2.h5")
    msg = _one_line(str(exc.value))
    assert str(numeric) in msg and "names" in msg and "Fix" in msg

    psin = tmp_path / "psin.csv"
    Table(dict(cluster_id=["Coma"] * 20 + ["Perseus"] * 20,
               x_proj=rng.uniform(-1, 1, 40), y_proj=rng.uniform(-1, 1, 40),
               v_los=rng.normal(0, 700, 40))).write(psin, format="ascii.csv")
    with pytest.raises(CatalogueError) as exc:
        survey_cubes(config=tiny, clusters=cl, phase_space_in=psin, cubes_out=None,
                     phase_space_out=tmp_path / "ps3.h5")
    msg = _one_line(str(exc.value))
    assert str(psin) in msg and "Perseus" in msg and "--clusters" in msg
