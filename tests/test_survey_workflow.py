"""Survey inference through Snakemake on configs/tiny.yaml, and the survey stages directly.

The tiny run (a 150 h^-1 Mpc synthetic box, a 150 h^-1 Mpc deep synthetic survey of ~130
clusters, a 3-epoch network) is made once per session up to the survey targets; the
products are checked for consistency, a mock cluster placed on the sky in RA/Dec/z and read
back must give the cube the mock path made, and the catalogue source (user files with
their own column names and catalogue masses) runs through the same stage functions.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cmpipe import stages
from cmpipe.calibration import JointPDF
from cmpipe.cosmology import make_cosmology
from cmpipe.io.cubes import CubeReader
from cmpipe.io.survey import (SURVEY_CLUSTER_SCHEMA, SURVEY_GALAXY_SCHEMA, read_survey_clusters,
                              read_survey_galaxies, read_survey_truth, write_survey_clusters,
                              write_survey_galaxies)
from cmpipe.io.tables import CatalogueError, read_table
from cmpipe.settings import SPLIT_CODES, load_config
from cmpipe.survey.sky import phase_space_to_sky

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SCHEMA = ROOT / "src/cmpipe/data/config.schema.yaml"
SURVEY_TARGETS = ["survey/posteriors.ecsv", "survey/posteriors.csv", "survey/mass_function.csv",
                  "survey/pulls.json", "figures/mass_function.png", "figures/survey_pulls.png",
                  "config.resolved.yaml", "flow/survey_posteriors.ecsv",
                  "sets/survey_posteriors.ecsv"]

pytestmark = pytest.mark.slow


def _snakemake(workdir, *args, timeout=1500):
    return subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "2", *args, "--configfile",
                           "configs/tiny.yaml"], capture_output=True, text=True,
                          timeout=timeout, cwd=workdir)


def tiny_survey_run(tmp_path_factory, *, everything=False):
    """The tiny workflow up to the survey targets (``everything``: the whole default
    target), made once per session in one directory of the session's base temporary
    directory: tests/test_cli.py and tests/test_workflow.py read the same run, and the
    whole run only adds the jobs the survey targets did not need. Tests only read it (what
    they write goes to their own tmp_path)."""
    wd = tmp_path_factory.getbasetemp() / "tiny-run"
    done = wd / (".done-all" if everything else ".done-survey")
    if not done.exists():
        wd.mkdir(exist_ok=True)
        if not (wd / "config.yaml").exists():
            shutil.copy(ROOT / "config.yaml", wd / "config.yaml")
            shutil.copytree(ROOT / "configs", wd / "configs", dirs_exist_ok=True)
        targets = [] if everything else [f"results/tiny/{t}" for t in SURVEY_TARGETS]
        proc = _snakemake(wd, *targets)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        done.touch()
        if everything:
            (wd / ".done-survey").touch()
    return wd, wd / "results" / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_survey_run(tmp_path_factory)


@pytest.fixture(scope="module")
def cfg(tiny):
    wd, _ = tiny
    return load_config(wd / "config.yaml", SCHEMA, overlays=[wd / "configs/tiny.yaml"])


def _table(path):
    t = Table.read(path)
    return t, {c: np.asarray(t[c]) for c in t.colnames}


def test_survey_tables_have_the_real_data_schema(tiny):
    _, res = tiny
    meta = json.loads((res / "survey/meta.json").read_text())
    assert meta["source"] == "synthetic" and meta["has_truth"] is True
    assert meta["radius_mpc_h"] == 150.0 and meta["area_deg2"] == 8250.0
    omega = 8250.0 * (np.pi / 180) ** 2
    assert meta["volume_mpc_h3"] == pytest.approx(omega * 150.0 ** 3 / 3, rel=1e-12)
    assert len(meta["observer_mpc_h"]) == 3
    cl = read_survey_clusters(res / "survey/clusters.ecsv")
    gal = read_survey_galaxies(res / "survey/galaxies.ecsv")
    truth = read_survey_truth(res / "survey/truth.ecsv")
    assert set(Table.read(res / "survey/clusters.ecsv").colnames) == set(SURVEY_CLUSTER_SCHEMA)
    assert set(Table.read(res / "survey/galaxies.ecsv").colnames) == set(SURVEY_GALAXY_SCHEMA)
    n = len(cl["cluster_id"])
    assert n == meta["n_clusters"] > 20
    # true masses live only in the truth table
    assert np.all(np.isnan(cl["log10_m_cat"]))
    np.testing.assert_array_equal(truth["cluster_id"], cl["cluster_id"])
    assert np.all(truth["log10_m200c"] >= 13.7)
    assert gal["mag_r"].max() < 18.0 and len(gal["ra_deg"]) == meta["n_galaxies"]


def test_cubes_phase_space_and_posteriors_are_consistent(tiny):
    _, res = tiny
    ps, attrs = read_table(res / "survey/phase_space.h5", group="clusters")
    g, _ = read_table(res / "survey/phase_space.h5", group="galaxies")
    assert attrs["half_width_mpc_h"] == 1.6 and attrs["v_max_kms"] == 2200.0
    assert np.all(np.abs(g["x_proj_mpc_h"]) <= 1.6) and np.all(np.abs(g["v_los_kms"]) <= 2200)
    kept = ps["skipped"] == 0
    assert attrs["counts"]["n_skipped"] == int((~kept).sum())
    assert np.all(ps["n_gal"][~kept] < attrs["min_galaxies"])
    with CubeReader(res / "survey/cubes.h5") as r:
        np.testing.assert_array_equal(r.column("cluster_id"), ps["cluster_id"][kept])
        np.testing.assert_array_equal(r.column("n_gal"), ps["n_gal"][kept])
        assert np.all(np.isnan(r.column("log10_m200c")))           # unknown at ingestion
        assert np.all(r.column("n_members") >= 0)          # the synthetic table has labels
        assert r.attrs["n_grid"] == 24 and r.attrs["split"] == "survey"
        np.testing.assert_allclose(r.cubes(0, 5).sum(axis=(1, 2, 3)), 1.0, rtol=1e-4)
    # every window galaxy is counted once for its cluster
    np.testing.assert_array_equal(
        np.bincount(np.searchsorted(ps["cluster_id"], g["cluster_id"]),
                    minlength=len(ps["cluster_id"]))[kept], ps["n_gal"][kept])
    t, post = _table(res / "survey/posteriors.ecsv")
    np.testing.assert_array_equal(post["cluster_id"], ps["cluster_id"])
    # distances from the redshifts (astropy, independently); the mock's observers reach the
    # tiny survey's depth (mock.observer_radius_mpc_h: null -> 150 h^-1 Mpc), and clusters
    # whose observed redshift (peculiar velocity) puts them beyond it are flagged
    cosmo = make_cosmology("planck18")
    ref = cosmo.astropy.comoving_distance(post["z"]).to_value("Mpc") * cosmo.h
    np.testing.assert_allclose(post["comoving_distance_mpc_h"], ref, rtol=1e-4)
    np.testing.assert_array_equal(post["beyond_mock_depth"], (ref > 150.0).astype(np.int8))
    assert post["beyond_mock_depth"].sum() < 0.1 * len(ref)
    assert t.meta["n_beyond_mock_depth"] == int(post["beyond_mock_depth"].sum())
    assert "flat_*" in " ".join(t.meta["comments"]) and "pop_*" in " ".join(t.meta["comments"])
    for p in ("flat", "pop"):
        ok = np.isfinite(post[f"{p}_median"])
        assert ok.sum() >= 0.9 * kept.sum()
        chain = [post[f"{p}_{k}"][ok] for k in ("lo95", "lo68", "median", "hi68", "hi95")]
        for a, b in zip(chain[:-1], chain[1:]):
            assert np.all(a <= b + 1e-12)
        assert np.all(post[f"{p}_sd"][ok] > 0)
    # the population prior pulls masses down the steep mass function, but never below
    # the sample's true-mass threshold (survey.synthetic.log10_m_min = 13.7)
    both = np.isfinite(post["flat_median"]) & np.isfinite(post["pop_median"])
    assert np.median(post["pop_median"][both] - post["flat_median"][both]) < 0
    lo, hi = t.meta["population_log10_m_range"]
    assert 13.7 <= lo < 13.72 and hi > 14.5      # the threshold, or the lowest test mass
    assert np.all(post["pop_lo95"][both] >= lo - 1e-9)
    assert np.all(post["pop_hi95"][both] <= hi + 1e-9)
    _, csv = _table(res / "survey/posteriors.csv")
    for k in post:
        np.testing.assert_allclose(np.asarray(csv[k], float), np.asarray(post[k], float),
                                   rtol=1e-12, equal_nan=True, err_msg=k)


def test_mass_function_and_pulls(tiny):
    _, res = tiny
    mf = Table.read(res / "survey/mass_function.csv", format="ascii.csv")
    for c in ("log10_m", "dn_dlog10m", "lo68", "hi68", "boot_sd", "tinker08",
              "tinker08_forward", "tinker08_forward_gaussian", "compared", "forward_in_band"):
        assert c in mf.colnames
    assert np.all(mf["lo68"] <= mf["hi68"]) and np.all(mf["tinker08"] > 0)
    pulls = json.loads((res / "survey/pulls.json").read_text())
    assert pulls["reference"] == "truth" and pulls["n_matched"] > 20
    for p in ("flat", "population"):
        for st in (pulls[p]["all"], pulls[p]["median_half68"]["all"]):
            assert np.isfinite(st["pull_mean"]) and st["pull_sd"] > 0
    assert 13.7 <= pulls["population_log10_m_range"][0] < 13.72
    # the forward model goes through the calibration: its expected count is the Tinker
    # count of the survey volume above the threshold
    fw = pulls["mass_function"]["forward"]
    assert fw["method"] == "calibrated" and 13.7 <= fw["log10_m_true_range"][0] < 13.72
    assert fw["n_simulated"] == pytest.approx(20 * fw["n_expected"], rel=0.01)
    e = pulls["eddington"]
    assert e["alpha_per_dex"] < 0 and e["shift_dex"] > 0
    m = pulls["mass_function"]
    assert m["n_bins_compared"] == int(np.sum(mf["compared"]))
    assert m["fraction_forward_in_band"] == pytest.approx(
        np.sum(mf["forward_in_band"]) / m["n_bins_compared"])
    # the band: Poisson bootstrap; its null distribution from mock surveys measured alike
    assert m["bootstrap"] == "poisson"
    null = m["band_count_null"]
    assert null["n_surveys"] == 200
    assert null["fraction_in_band"]["observed"] == pytest.approx(m["fraction_forward_in_band"])
    for key in ("fraction_in_band", "fraction_in_band_with_sample_variance"):
        st = null[key]
        assert 0 <= st["null_lo68"] <= st["null_median"] <= st["null_hi68"] <= 1
        assert 0 <= st["p_value"] <= 1 and 0 <= st["null_prob_at_least_two_thirds"] <= 1
    assert m["chi2"]["dof"] >= 1 and 0 <= m["chi2"]["p_value"] <= 1
    # the sample variance of the survey's own window in the periodic box
    assert "periodic" in m["sample_variance_window"] and 0 < m["sample_variance_sigma_lin"] < 0.2
    assert np.all(mf["sample_variance_sd"][mf["compared"] == 1] > 0)
    # the survey's predictions against the test set's likelihood at the true masses
    lc = pulls["likelihood_check"]
    assert lc["all"]["n"] == m["n_clusters"] and 0 < lc["all"]["mean"] < 1
    matched = lc["matched_to_test_set"]["all"]
    assert matched["n"] > 0.9 * lc["all"]["n"] and np.isfinite(matched["difference"])
    # the estimator integrates to N / V (weights only redistribute)
    dm = mf["log10_m"][1] - mf["log10_m"][0]
    assert np.trapezoid(mf["dn_dlog10m"], dx=dm) == pytest.approx(
        m["n_clusters"] / m["volume_mpc_h3"], rel=0.02)
    for f in ("figures/mass_function.png", "figures/survey_pulls.png"):
        assert (res / f).stat().st_size > 10_000
    for log in ("survey_catalogue", "survey_cubes", "survey_posteriors", "mass_function"):
        assert "Traceback" not in (res / f"logs/{log}.log").read_text()


def test_rerun_is_a_no_op(tiny):
    wd, _ = tiny
    proc = _snakemake(wd, "-n", *[f"results/tiny/{t}" for t in SURVEY_TARGETS])
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_mock_cluster_on_the_sky_gives_the_same_cube(tiny, cfg, tmp_path):
    """Mock clusters -> RA/Dec/z tables -> the survey ingestion: the mock's own cubes."""
    _, res = tiny
    cosmo = make_cosmology("planck18")
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters")
    gal, _ = read_table(res / "mock/clusters.h5", group="galaxies")
    with CubeReader(res / "cubes/test.h5") as r:
        ids = r.column("cluster_id")[:3]
        direct = r.take([0, 1, 2])
    assert np.all(cl["split"][np.searchsorted(cl["cluster_id"], ids)] == SPLIT_CODES["test"])
    centres = [(30.0, 10.0, 0.05), (150.0, -20.0, 0.08), (270.0, 45.0, 0.03)]
    c_rows, g_rows = [], []
    for cid, (ra0, dec0, z0) in zip(ids, centres):
        g = {k: v[gal["cluster_id"] == cid] for k, v in gal.items()}
        ra, dec, z = phase_space_to_sky(ra0, dec0, z0, g["x_proj_mpc_h"], g["y_proj_mpc_h"],
                                        g["v_los_kms"], cosmo)
        c_rows.append((int(cid), ra0, dec0, z0))
        g_rows += [(int(cid), a, d, zz) for a, d, zz in zip(ra, dec, z)]
    c_rows.append((999, 200.0, 60.0, 0.04))                    # no galaxy: skipped
    c = np.array(c_rows)
    gg = np.array(g_rows)
    n_c, n_g = len(c), len(gg)
    write_survey_clusters(tmp_path / "c.ecsv", dict(
        cluster_id=c[:, 0].astype(int), ra_deg=c[:, 1], dec_deg=c[:, 2], z=c[:, 3],
        log10_m_cat=np.full(n_c, np.nan), log10_m_cat_err=np.full(n_c, np.nan),
        n_mem=np.full(n_c, -1)))
    write_survey_galaxies(tmp_path / "g.ecsv", dict(
        galaxy_id=np.arange(n_g), ra_deg=gg[:, 1], dec_deg=gg[:, 2], z=gg[:, 3],
        cluster_id=np.full(n_g, -1), mag_r=np.full(n_g, np.nan)))
    stages.survey_cubes(config=cfg, clusters=tmp_path / "c.ecsv", galaxies=tmp_path / "g.ecsv",
                        cubes_out=tmp_path / "cubes.h5", phase_space_out=tmp_path / "ps.h5")
    ps, attrs = read_table(tmp_path / "ps.h5", group="clusters")
    assert attrs["skipped_ids"] == [999] and attrs["counts"]["n_skipped"] == 1
    with CubeReader(tmp_path / "cubes.h5") as r:
        np.testing.assert_array_equal(r.column("cluster_id"), np.sort(ids))
        assert np.all(r.column("n_members") == -1)          # no membership labels given
        order = np.argsort(ids)
        sky = r.cubes(0, 3)
    np.testing.assert_allclose(sky, direct[order], rtol=1e-5, atol=1e-6 * direct.max())


def test_catalogue_source_runs_the_same_code_path(tiny, cfg, tmp_path):
    """User tables with their own column names and catalogue masses (source: catalogue)."""
    _, res = tiny
    c = Table.read(res / "survey/clusters.ecsv")
    truth = Table.read(res / "survey/truth.ecsv")
    g = Table.read(res / "survey/galaxies.ecsv")
    user_c = Table(dict(GalWCat19=c["cluster_id"], RAdeg=np.asarray(c["ra_deg"]),
                        DEdeg=np.asarray(c["dec_deg"]), zcl=c["z"],
                        logM200=truth["log10_m200c"], e_logM200=np.full(len(c), 0.1)))
    user_c.write(tmp_path / "galweight.fits")
    user_g = Table(dict(objID=g["galaxy_id"], ra=np.asarray(g["ra_deg"]),
                        dec=np.asarray(g["dec_deg"]), z=g["z"]))
    user_g.write(tmp_path / "sdss.csv", format="ascii.csv")
    conf = json.loads(json.dumps(cfg))
    conf["survey"].update(source="catalogue", clusters=str(tmp_path / "galweight.fits"),
                          galaxies=str(tmp_path / "sdss.csv"),
                          cluster_columns={"cluster_id": "GalWCat19", "z": "zcl"})
    conf["survey"]["catalogue_volume"].update(z_min=0.0, z_max=0.06, area_deg2=8250.0)
    out = {k: tmp_path / f"{k}.ecsv" for k in ("clusters", "galaxies", "truth")}
    stages.survey_catalogue(config=conf, clusters_out=out["clusters"],
                            galaxies_out=out["galaxies"], truth_out=out["truth"],
                            meta_out=tmp_path / "meta.json")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["has_truth"] is False and len(Table.read(out["truth"])) == 0
    d = make_cosmology("planck18").comoving_distance_mpc_h(0.06)
    assert meta["volume_mpc_h3"] == pytest.approx(
        8250.0 * (np.pi / 180) ** 2 * d ** 3 / 3, rel=1e-9)
    norm = read_survey_clusters(out["clusters"])
    np.testing.assert_allclose(norm["log10_m_cat"], truth["log10_m200c"])
    stages.survey_cubes(config=conf, clusters=out["clusters"], galaxies=out["galaxies"],
                        cubes_out=tmp_path / "cubes.h5", phase_space_out=tmp_path / "ps.h5")
    stages.survey_posteriors(config=conf, model=res / "model/cnn3d.keras",
                             joint_pdf=res / "calibration/joint_pdf.h5",
                             cubes=tmp_path / "cubes.h5", phase_space=tmp_path / "ps.h5",
                             out=tmp_path / "post.ecsv")
    # same galaxies, same windows and model: the workflow's posteriors (synthetic source)
    a = Table.read(tmp_path / "post.ecsv")
    b = Table.read(res / "survey/posteriors.ecsv")
    np.testing.assert_allclose(np.asarray(a["flat_median"], float),
                               np.asarray(b["flat_median"], float), equal_nan=True)
    assert np.all(a["n_members"] == -1)                    # no membership column given
    stages.mass_function(config=conf, posteriors=tmp_path / "post.ecsv",
                         meta=tmp_path / "meta.json", truth=out["truth"],
                         out=tmp_path / "mf.csv", pulls_out=tmp_path / "pulls.json",
                         mass_function_png=tmp_path / "mf.png", pulls_png=tmp_path / "pulls.png",
                         joint_pdf=res / "calibration/joint_pdf.h5")
    pulls = json.loads((tmp_path / "pulls.json").read_text())
    assert pulls["reference"] == "catalogue"
    # a catalogue's population prior and forward model span the calibrated range
    cal = JointPDF.load(res / "calibration/joint_pdf.h5").calibrated_mass_range
    assert pulls["mass_function"]["forward"]["log10_m_true_range"] == pytest.approx(list(cal))
    assert Table.read(tmp_path / "post.ecsv").meta["population_log10_m_range"] == \
        pytest.approx(list(cal))
    z_ok = np.sum(np.isfinite(np.asarray(a["flat_median"], float)) & (a["z"] <= 0.06))
    assert pulls["mass_function"]["n_clusters"] == z_ok
    assert "Tinker (2008) averaged over the shell" in pulls["mass_function"]["theory"]
    # sample variance of a cap-shaped shell of the catalogue volume (zero-padded box); no
    # likelihood check without true masses
    assert "zero-padded" in pulls["mass_function"]["sample_variance_window"]
    assert 0 < pulls["mass_function"]["sample_variance_sigma_lin"] < 0.2
    assert pulls["likelihood_check"] is None


def test_missing_user_file_is_one_clear_error(cfg, tmp_path):
    conf = json.loads(json.dumps(cfg))
    conf["survey"].update(source="catalogue", clusters=str(tmp_path / "none.fits"))
    with pytest.raises(CatalogueError, match="none.fits.*does not exist"):
        stages.survey_catalogue(config=conf, clusters_out=tmp_path / "c.ecsv",
                                galaxies_out=tmp_path / "g.ecsv",
                                truth_out=tmp_path / "t.ecsv", meta_out=tmp_path / "m.json")
    assert not (tmp_path / "c.ecsv").exists()
