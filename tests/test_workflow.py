"""The whole DAG on configs/tiny.yaml through Snakemake, and bad input through a rule."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmpipe import stages
from cmpipe.io.cubes import CubeReader
from cmpipe.io.tables import read_table
from cmpipe.settings import SPLIT_CODES, load_config

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _workdir(tmp):
    for name in ("config.yaml",):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "configs", tmp / "configs")
    return tmp


def _snakemake(workdir, *args, timeout=1500):
    return subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "2", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=workdir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = _workdir(tmp_path_factory.mktemp("tiny"))
    proc = _snakemake(wd, "--configfile", "configs/tiny.yaml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return wd, wd / "results" / "tiny"


def test_every_product_is_made(tiny_run):
    _, res = tiny_run
    for p in ["catalogue/halos.h5", "catalogue/galaxies.h5", "mock/hosts.h5",
              "mock/sightlines.h5", "mock/projected.h5", "mock/fluxlimited.h5",
              "mock/clusters.h5", "mock/summary.json", "figures/mock_mass_function.png",
              "figures/mock_split_masses.png", "figures/mock_phase_space.png",
              "cubes/train.h5", "cubes/validation.h5", "cubes/test.h5", "cubes/eval.h5",
              "model/cnn3d.keras", "model/history.csv", "model/normalisation.json",
              "summaries/test.h5", "summaries/eval.h5", "calibration/joint_pdf.h5",
              "evaluation/metrics.json", "evaluation/posteriors.h5",
              "figures/loss_curve.png", "figures/joint_pdf.png", "figures/predictions.png",
              "figures/calibration.png", "figures/interlopers.png", "figures/baselines.png",
              "logs/catalogue.log", "logs/project.log", "logs/train.log"]:
        assert (res / p).is_file(), p
    # shards are temporary and removed once gathered; no temp files left anywhere
    assert not list((res / "cubes").glob("*/shard-*.h5"))
    assert not list(res.rglob(".*.tmp-*"))


def test_summary_is_consistent_with_the_cluster_table(tiny_run):
    _, res = tiny_run
    s = json.loads((res / "mock/summary.json").read_text())
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters")
    assert s["n_clusters"] == len(cl["cluster_id"]) > 100
    assert s["halos_in_two_splits"] == 0
    for name, code in SPLIT_CODES.items():
        assert s["clusters_per_split"][name] == int((cl["split"] == code).sum())
    for name in ("train", "test", "eval"):
        assert s["clusters_per_split"][name] > 0
    assert 0.0 < s["interloper_fraction"] < 1.0
    # interlopers matter more for low-mass clusters (fewer members in the same window)
    frac = [f for f in s["interloper_fraction_per_bin"] if f is not None]
    assert frac[0] > frac[-1]
    assert sum(s["flux_limit"][k] for k in ("n_clusters_kept", "n_dropped_too_few")) == \
        s["flux_limit"]["n_clusters_in"]


def test_no_halo_in_two_splits(tiny_run):
    _, res = tiny_run
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters",
                       columns=["halo_id", "split"])
    for h in np.unique(cl["halo_id"]):
        assert len(np.unique(cl["split"][cl["halo_id"] == h])) == 1


def test_cubes_match_the_split_tables(tiny_run):
    _, res = tiny_run
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters")
    for name in ("train", "validation", "test", "eval"):
        sel = cl["split"] == SPLIT_CODES[name]
        with CubeReader(res / f"cubes/{name}.h5") as r:
            assert len(r) == int(sel.sum())
            np.testing.assert_array_equal(r.column("cluster_id"), cl["cluster_id"][sel])
            np.testing.assert_array_equal(r.column("log10_m200c"), cl["log10_m200c"][sel])
            np.testing.assert_array_equal(r.column("n_gal"), cl["n_gal"][sel])
            if len(r):
                c = r.cubes(0, min(len(r), 5))
                assert c.shape[1:] == (24, 24, 24)      # configs/tiny.yaml kde.n_grid
                np.testing.assert_allclose(c.sum(axis=(1, 2, 3)), 1.0, rtol=1e-4)
                assert r.attrs["h0"] == pytest.approx(0.175)


def test_same_seed_gives_identical_mock(tiny_run, tmp_path):
    """Rerunning the mock stages from the same catalogue reproduces every array.

    Integer columns (ids, counts, splits) are identical; floats agree to 1e-12 relative:
    the Snakemake job runs with one BLAS thread and this process with several, and the
    sightline optimiser's scipy/BLAS calls round differently in the last bit."""
    wd, res = tiny_run
    # tiny.yaml is an overlay on config.yaml, merged as snakemake does
    cfg = load_config(wd / "config.yaml", ROOT / "workflow/schemas/config.schema.yaml",
                      overlays=[wd / "configs/tiny.yaml"])
    cat = res / "catalogue"
    stages.select_halos(config=cfg, halos=cat / "halos.h5", out=tmp_path / "hosts.h5")
    stages.make_sightlines(config=cfg, hosts=tmp_path / "hosts.h5", out=tmp_path / "sl.h5")
    stages.project(config=cfg, halos=cat / "halos.h5", galaxies=cat / "galaxies.h5",
                   hosts=tmp_path / "hosts.h5", sightlines=tmp_path / "sl.h5",
                   out=tmp_path / "proj.h5", progress=False)
    stages.apply_flux_limit(config=cfg, projected=tmp_path / "proj.h5",
                            out=tmp_path / "flux.h5")
    stages.split(config=cfg, fluxlimited=tmp_path / "flux.h5", out=tmp_path / "clusters.h5")
    for group in ("clusters", "galaxies"):
        a, _ = read_table(res / "mock/clusters.h5", group=group)
        b, _ = read_table(tmp_path / "clusters.h5", group=group)
        assert a.keys() == b.keys()
        for k in a:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-12,
                                           err_msg=f"{group}.{k}")
            else:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}.{k}")


def test_rerun_is_a_no_op(tiny_run):
    wd, _ = tiny_run
    proc = _snakemake(wd, "--configfile", "configs/tiny.yaml", "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_bad_galaxy_file_stops_the_rule_cleanly(tmp_path):
    """NaN positions in a user's galaxy table: one clear message, exit 1, no output."""
    wd = _workdir(tmp_path)
    fix = ROOT / "tests/fixtures/mdpl2"
    lines = (fix / "sag_galaxies.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[2].split(",")
    row[header.index("y")] = "nan"
    lines[2] = ",".join(row)
    (wd / "gal.csv").write_text("\n".join(lines) + "\n")
    (wd / "bad.yaml").write_text(
        "run: bad\nsimulation:\n  source: mdpl2\n  mdpl2:\n"
        f"    halo_file: {fix / 'hlist_0.90900.list'}\n    galaxy_file: gal.csv\n")
    proc = _snakemake(wd, "results/bad/catalogue/halos.h5", "--configfile", "bad.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "gal.csv" in out and "field 'y" in out and "Fix:" in out
    assert "Traceback" not in (wd / "results/bad/logs/catalogue.log").read_text()
    assert not (wd / "results/bad/catalogue/halos.h5").exists()
    assert not (wd / "results/bad/catalogue/galaxies.h5").exists()


def test_evaluation_products_are_consistent(tiny_run):
    """metrics.json counts the eval split; posteriors are ordered intervals on the grid."""
    _, res = tiny_run
    m = json.loads((res / "evaluation/metrics.json").read_text())
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters", columns=["split"])
    assert m["n_eval"] == int((cl["split"] == SPLIT_CODES["eval"]).sum())
    for k in ("mean_residual_dex", "scatter_dex", "coverage_68", "coverage_95",
              "sigma_N_dex", "sigma_0_dex", "msigma_gapper_scatter_dex",
              "virial_scatter_dex", "mean_predictor_scatter_dex"):
        assert k in m
    assert 0.0 <= m["coverage_68"] <= m["coverage_95"] <= 1.0
    post, _ = read_table(res / "evaluation/posteriors.h5", group="posteriors")
    assert np.all(post["lo95"] <= post["lo68"]) and np.all(post["lo68"] <= post["median"])
    assert np.all(post["median"] <= post["hi68"]) and np.all(post["hi68"] <= post["hi95"])
    assert np.all((post["pit"] >= 0) & (post["pit"] <= 1))
    # coverage in the JSON is the fraction of truths inside the stored intervals
    inside = (post["log10_m200c_true"] >= post["lo68"]) & \
        (post["log10_m200c_true"] <= post["hi68"])
    assert m["coverage_68"] == pytest.approx(inside.mean())


def test_paper_config_dry_run_job_graph(tmp_path):
    """configs/paper.yaml plans the whole chain on MDPL2 inputs (placeholders here)."""
    import re
    wd = _workdir(tmp_path)
    import yaml
    survey = yaml.safe_load((wd / "configs/paper.yaml").read_text())["survey"]
    for p in ("data/mdpl2/hlist_0.90900.list", "data/mdpl2/sag_galaxies.h5",
              survey["clusters"], survey["galaxies"]):
        (wd / p).parent.mkdir(parents=True, exist_ok=True)
        (wd / p).write_text("placeholder: a dry run only checks that inputs exist\n")
    proc = _snakemake(wd, "-n", "--configfile", "configs/paper.yaml", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    for rule in ("catalogue", "select_halos", "sightlines", "project", "flux_limit", "split",
                 "kde_gather", "train", "summaries", "calibrate", "evaluate",
                 "survey_catalogue", "survey_cubes", "survey_posteriors", "mass_function"):
        assert rule in counts, (rule, out[-2000:])
    assert counts["kde_gather"] == "4" and counts["summaries"] == "2"
    # without the MDPL2 files the run is refused up front, naming the missing input
    for p in ("data/mdpl2/hlist_0.90900.list",):
        (wd / p).unlink()
    proc = _snakemake(wd, "-n", "--configfile", "configs/paper.yaml")
    assert proc.returncode != 0
    assert "hlist_0.90900.list" in proc.stdout + proc.stderr
