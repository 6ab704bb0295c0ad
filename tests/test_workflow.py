"""The whole DAG on configs/tiny.yaml through Snakemake, and bad input through a rule."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmpipe import stages
from cmpipe.io.artefacts import UPSTREAM_ROOT, upstream_key
from cmpipe.io.cubes import CubeReader
from cmpipe.io.tables import CatalogueError, read_table
from cmpipe.settings import SPLIT_CODES, load_config

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_survey_workflow import tiny_survey_run  # noqa: E402


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
    """The whole default target of configs/tiny.yaml, in the session's shared tiny run
    (tests/test_survey_workflow.py), which these tests only read."""
    return tiny_survey_run(tmp_path_factory, everything=True)


def _upstream(wd, overlay=None):
    """The shared upstream directory (results/upstream/{key}/) of the tiny run, or of the
    config with ``overlay``."""
    cfg = load_config(wd / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml",
                      overlays=[overlay or wd / "configs/tiny.yaml"])
    return wd / UPSTREAM_ROOT / upstream_key(cfg)


def test_every_product_is_made(tiny_run):
    wd, res = tiny_run
    up = _upstream(wd)
    for p in ["catalogue/halos.h5", "catalogue/galaxies.h5", "mock/hosts.h5",
              "mock/sightlines.h5", "mock/projected.h5", "logs/catalogue.log",
              "logs/project.log", "benchmarks/catalogue.tsv"]:
        assert (up / p).is_file(), p
    assert not (res / "catalogue").exists()     # the run has no catalogue of its own
    for p in ["mock/fluxlimited.h5",
              "mock/clusters.h5", "mock/summary.json", "figures/mock_mass_function.png",
              "figures/mock_split_masses.png", "figures/mock_phase_space.png",
              "cubes/train.h5", "cubes/validation.h5", "cubes/test.h5", "cubes/eval.h5",
              "model/cnn3d.keras", "model/history.csv", "model/normalisation.json",
              "summaries/test.h5", "summaries/eval.h5", "calibration/joint_pdf.h5",
              "evaluation/metrics.json", "evaluation/posteriors.h5",
              "figures/loss_curve.png", "figures/joint_pdf.png", "figures/predictions.png",
              "figures/calibration.png", "figures/interlopers.png", "figures/baselines.png",
              "logs/train.log"]:
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


#: The mock stages of test_same_seed_gives_identical_mock, run as a Snakemake job runs
#: them: in their own process with one BLAS thread.
_MOCK_STAGES = """
import sys
from pathlib import Path
from cmpipe import stages
from cmpipe.settings import load_config
wd, schema, cat, out = (Path(a) for a in sys.argv[1:5])
cfg = load_config(wd / "config.yaml", schema, overlays=[wd / "configs/tiny.yaml"])
stages.select_halos(config=cfg, halos=cat / "halos.h5", tail_halos=cat / "tail_halos.h5",
                    out=out / "hosts.h5")
stages.sightlines(config=cfg, hosts=out / "hosts.h5", out=out / "sl.h5")
stages.project(config=cfg, halos=cat / "halos.h5", galaxies=cat / "galaxies.h5",
               tail_halos=cat / "tail_halos.h5", tail_galaxies=cat / "tail_galaxies.h5",
               hosts=out / "hosts.h5", sightlines=out / "sl.h5", out=out / "proj.h5",
               progress=False)
stages.flux_limit(config=cfg, projected=out / "proj.h5", out=out / "flux.h5")
stages.split(config=cfg, fluxlimited=out / "flux.h5", out=out / "clusters.h5")
"""


def test_same_seed_gives_identical_mock(tiny_run, tmp_path):
    """Rerunning the mock stages from the same catalogue reproduces every array.

    The stages run in a fresh process with one BLAS thread, as the Snakemake jobs do
    (threads: 1). The default sightline packings come from a table
    (cmpipe.mock.sightlines.PACKING_TABLE), so the thread count no longer matters there; before
    it, the optimiser's SLSQP polish chose another orientation of the 8-line packing with
    two threads. Integer columns are identical; floats agree to 1e-12."""
    import os

    wd, res = tiny_run
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _MOCK_STAGES, str(wd),
                           str(ROOT / "src/cmpipe/data/config.schema.yaml"),
                           str(_upstream(wd) / "catalogue"), str(tmp_path)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
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
    up = _upstream(wd, wd / "bad.yaml").relative_to(wd)
    proc = _snakemake(wd, str(up / "catalogue/halos.h5"), "--configfile", "bad.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "gal.csv" in out and "field 'y" in out and "Fix:" in out
    assert "Traceback" not in (wd / up / "logs/catalogue.log").read_text()
    assert not (wd / up / "catalogue/halos.h5").exists()
    assert not (wd / up / "catalogue/galaxies.h5").exists()


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
    # the distance thirds partition the eval clusters with a posterior
    rows = {k: v for k, v in m["by_observer_distance"].items() if k != "note"}
    assert len(rows) == 3
    assert sum(r["n"] for r in rows.values()) == int(np.isfinite(post["point"]).sum())
    mean = sum(r["n"] * r["mean_residual_dex"] for r in rows.values()) / sum(
        r["n"] for r in rows.values())
    assert mean == pytest.approx(m["mean_residual_dex"], abs=1e-9)


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
    for rule in ("ablation_inputs", "ablation_train", "ablation_evaluate", "ablation_summary",
                 "perturbed_eval", "saliency_maps"):                  # the analyses (issue 8)
        assert rule in counts, (rule, out[-2000:])
    # CNN1D, CNN2D at every seed and the CNN3D at seeds 1.. (seed 0: rule train)
    n_seeds = load_config(wd / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml",
                          overlays=[wd / "configs/paper.yaml"])["ablation"]["seeds"]
    assert counts["ablation_train"] == counts["ablation_evaluate"] == str(3 * n_seeds - 1)
    # without the MDPL2 files the run is refused up front, naming the missing input
    for p in ("data/mdpl2/hlist_0.90900.list",):
        (wd / p).unlink()
    proc = _snakemake(wd, "-n", "--configfile", "configs/paper.yaml")
    assert proc.returncode != 0
    assert "hlist_0.90900.list" in proc.stdout + proc.stderr


def _check_ablation_seeds(wd, res, ab, m3):
    """Every network retrained at seeds 1.. (ablation/{dim}/seeds/{k}/), the CNN3D with
    rule train's settings but the seed, and the summary's per-seed rows."""
    from cmpipe.evaluation.ablation import training_seed

    cfg = load_config(wd / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml",
                      overlays=[wd / "configs/tiny.yaml"])
    n_seeds = cfg["ablation"]["seeds"]
    assert ab["n_seeds"] == n_seeds
    main_norm = json.loads((res / "model/normalisation.json").read_text())
    main = main_norm["provenance"]
    # every network takes the distance (train.distance_input), standardised alike
    assert main["settings"]["distance_input"] is True
    for d in ("1d", "2d"):
        nd = json.loads((res / f"ablation/{d}/model/normalisation.json").read_text())
        for key in ("mean", "std"):          # the same training clusters
            assert nd["distance"][key] == pytest.approx(main_norm["distance"][key], rel=1e-12)
    for d in ("1d", "2d", "3d"):
        for k in range(1, n_seeds):
            sd = res / f"ablation/{d}/seeds/{k}"
            for f in (f"model/cnn{d}.keras", "model/history.csv", "model/normalisation.json",
                      "summaries/test.h5", "summaries/eval.h5", "joint_pdf.h5",
                      "metrics.json"):
                assert (sd / f).is_file(), sd / f
            m = json.loads((sd / "metrics.json").read_text())
            assert (m["seed"], m["dimensionality"], m["n_eval"]) == (k, d, m3["n_eval"])
            prov = json.loads((sd / "model/normalisation.json").read_text())["provenance"]
            assert prov["settings"]["seed"] == m["training_seed"] == \
                training_seed(cfg["seed"], d, k)
            if d == "3d":
                assert prov["train_cubes_digest"] == main["train_cubes_digest"]
                assert {**prov["settings"], "seed": 0} == {**main["settings"], "seed": 0}
        net = ab["methods"][f"cnn{d}"]
        assert [s["seed"] for s in net["seeds"]] == list(range(n_seeds))
        assert net["seeds"][0]["scatter_dex"] == net["scatter_dex"]
        # another seed is another network, not a copy
        assert len({s["scatter_dex"] for s in net["seeds"]}) == n_seeds
        # each seed's distance thirds (seed 0 of the CNN3D: evaluation/metrics.json)
        th = net["by_observer_distance_seeds"]
        assert len(th) == 3 and all(len(v["coverage_68_seeds"]) == n_seeds
                                    for v in th.values())
        if d == "3d":
            assert [v["coverage_68_seeds"][0] for v in th.values()] == [
                v["coverage_68"] for k, v in m3["by_observer_distance"].items()
                if k != "note"]
    po = ab["precision_order_seeds"]
    assert sorted(po["order"]) == ["cnn1d", "cnn2d", "cnn3d"] and len(po["steps"]) == 2
    assert po["monotonic"] is ab["matches_expectation_seeds"]


def _check_marginal_against_scipy(res, gal, cluster_id, l1, n):
    """The L1 distance between a cluster's 3D cube's v marginal and its 1D KDE equals
    scipy's (``gaussian_kde``, bandwidth factor ``kde.h0``, on the window's voxel
    centres, each grid normalised to sum 1) to 1e-5."""
    import yaml
    from scipy.stats import gaussian_kde

    from cmpipe.kde.grid import Grid3D, grid_points

    cfg = yaml.safe_load((res / "config.resolved.yaml").read_text())
    grid = Grid3D(n=n, half_width_mpc_h=cfg["window"]["half_width_mpc_h"],
                  v_max_kms=cfg["window"]["v_max_kms"])
    h0 = cfg["kde"]["h0"]
    s = gal["cluster_id"] == cluster_id
    pts = np.vstack([gal["x_proj_mpc_h"][s], gal["y_proj_mpc_h"][s], gal["v_los_kms"][s]])
    d3 = gaussian_kde(pts, bw_method=h0)(grid_points(grid)).reshape(grid.shape)
    d3 /= d3.sum()
    d1 = gaussian_kde(pts[2], bw_method=h0)(grid.v_centres)
    d1 /= d1.sum()
    assert np.abs(d3.sum(axis=(0, 1)) - d1).sum() == pytest.approx(l1, abs=1e-5)


def test_analyses_products(tiny_run):
    """Ablation, robustness and saliency products of the tiny run (configs/tiny.yaml)."""
    from cmpipe.kde import kde_1d, kde_2d

    _, res = tiny_run
    for p in ["ablation/summary.json", "ablation/scatter.png", "robustness/summary.json",
              "robustness/predictions.h5", "robustness/robustness.png",
              "saliency/saliency.h5", "saliency/summary.json", "saliency/mean.png",
              "saliency/abs.png", *[f"ablation/{d}/{f}" for d in ("1d", "2d") for f in (
                  "inputs/eval.h5", "model/normalisation.json", "metrics.json")]]:
        assert (res / p).is_file(), p
    m3 = json.loads((res / "evaluation/metrics.json").read_text())
    ab = json.loads((res / "ablation/summary.json").read_text())
    assert set(ab["methods"]) == {"cnn1d", "cnn2d", "cnn3d", "msigma_gapper",
                                  "msigma_biweight", "virial"}
    assert ab["methods"]["cnn3d"]["scatter_dex"] == pytest.approx(m3["scatter_dex"])
    assert ab["methods"]["virial"]["scatter_dex"] == pytest.approx(m3["virial_scatter_dex"])
    for name in ("cnn1d", "cnn2d", "cnn3d"):
        m = ab["methods"][name]
        assert m["n"] == m3["n_eval"] and 0 <= m["coverage_68"] <= m["coverage_95"] <= 1
    # the 1D/2D inputs are the KDEs of the same clusters' galaxies, in the cube files' order
    gal, _ = read_table(res / "mock/clusters.h5", group="galaxies")
    n = 24                                              # configs/tiny.yaml kde.n_grid
    with CubeReader(res / "cubes/eval.h5") as c3, \
            CubeReader(res / "ablation/1d/inputs/eval.h5") as c1, \
            CubeReader(res / "ablation/2d/inputs/eval.h5") as c2:
        ids = c3.column("cluster_id")
        np.testing.assert_array_equal(c1.column("cluster_id"), ids)
        np.testing.assert_array_equal(c2.column("cluster_id"), ids)
        assert c1.shape == (len(ids), n) and c2.shape == (len(ids), n, n)
        s = gal["cluster_id"] == ids[0]
        x, y, v = gal["x_proj_mpc_h"][s], gal["y_proj_mpc_h"][s], gal["v_los_kms"][s]
        np.testing.assert_array_equal(c1.cubes(0, 1)[0], kde_1d(v, n=n))
        np.testing.assert_array_equal(c2.cubes(0, 1)[0], kde_2d(x, y, v, n=n))
        # v marginals of the 3D cubes against the 1D inputs: edge losses and voxel sums of
        # narrow kernels only (median L1 0.009 measured on this run). A compact cluster whose
        # x/y kernels are narrower than a voxel differs more (the 3D KDE is point-sampled at
        # voxel centres, the paper's convention): the worst cluster's difference must be
        # exactly the one scipy's gaussian_kde gives for its galaxies (0.40 on this run).
        l1 = np.abs(c3.cubes(0, len(ids)).sum(axis=(1, 2)) - c1.cubes(0, len(ids))).sum(1)
        assert np.median(l1) < 0.05
        _check_marginal_against_scipy(res, gal, int(ids[np.argmax(l1)]), float(l1.max()), n)
    _check_ablation_seeds(*tiny_run, ab, m3)
    rb = json.loads((res / "robustness/summary.json").read_text())
    assert rb["zero_perturbation_identical"] == {"incompleteness_0": True,
                                                 "velocity_error_0": True}
    assert rb["max_abs_diff_vs_stored_predictions_dex"] == 0.0
    assert [(p["kind"], p["level"]) for p in rb["perturbations"]] == [
        ("incompleteness", 0.3), ("velocity_error", 60.0)]
    assert rb["retraining_needed"] == any(p["verdict"]["retraining_needed"]
                                          for p in rb["perturbations"])
    pr, _ = read_table(res / "robustness/predictions.h5", group="predictions")
    assert len(pr["cluster_id"]) == sum(p["n_kept"] for p in rb["perturbations"])
    sal = json.loads((res / "saliency/summary.json").read_text())
    assert sum(b["n"] for b in sal["per_bin"]) + sal["n_outside_bins"] == m3["n_eval"]
    _check_misspecification(res, m3)


def _check_misspecification(res, m3):
    """The misspecification matrix (issue 28) of the tiny run, whose model is marginalised
    (nuisance.sample: true, no fiducial-model run beside it): the eval row reproduces the
    stored eval predictions and evaluation/posteriors.h5's residual and coverage; every
    variant (fiducial, prior-drawn, each prior edge, each beyond value) is a row; the
    fiducial variant's row says whether its coverage is within +-0.03 / +-0.02 of nominal;
    the scatter per distance third is there; and fewer galaxies than the prior allows
    (completeness 0.5) move the unchanged model's medians down (mean residual up)."""
    import csv

    mm = json.loads((res / "robustness/misspecification.json").read_text())
    assert mm["nuisance_sample"] is True
    assert list(mm["models"]) == ["marginalised/cnn3d_sbi", "marginalised/flow_sbi",
                                  "marginalised/sets_sbi"]
    assert mm["reproduces_eval_predictions_dex"]["eval"] <= 1e-6
    assert "fiducial" not in mm["reproduces_eval_predictions_dex"]    # no fiducial model
    rows = {r["variant"]: r for r in mm["variants"] if r["estimator"] == "cnn3d_sbi"}
    flow = {r["variant"]: r for r in mm["variants"] if r["estimator"] == "flow_sbi"}
    assert set(flow) == set(rows) and {r["model"] for r in mm["variants"]} == {"marginalised"}
    # the flow on the same windows: the same clusters
    assert all(flow[v]["n"] == rows[v]["n"] for v in rows)
    moved = {"mag_shift_mag=-0.03", "mag_shift_mag=0.33", "completeness=0.7",
             "fibre_collision_loss=0.7", "velocity_bias=0.85", "velocity_bias=1.15",
             "central_velocity_frac=0.3", "field_scale=0.75", "field_scale=1.5",
             "infall_fraction=0.4", "infall_fraction=0.8",
             "completeness=0.5", "velocity_bias=1.3", "field_scale=2.5"}
    assert set(rows) == {"eval", "fiducial", "prior"} | moved | {m + "|prior" for m in moved}
    assert {rows[m + "|prior"]["others"] for m in moved} == {"prior"}
    assert mm["n_edge_variants"] == 11
    ev = rows["eval"]
    assert ev["n"] == m3["n_eval"] and ev["n_dropped"] == 0
    post, _ = read_table(res / "evaluation/posteriors.h5", group="posteriors")
    eps = post["log10_m200c_true"] - post["median"]
    assert ev["mean_residual_dex"] == pytest.approx(float(np.mean(eps)), abs=1e-9)
    inside = (post["lo68"] <= post["log10_m200c_true"]) & (post["log10_m200c_true"] <= post["hi68"])
    assert ev["coverage_68"] == pytest.approx(float(np.mean(inside)), abs=1e-9)
    # the flow's in-memory path (images, curves, recalibration) on the stored eval windows
    # gives flow_evaluate's posteriors exactly
    fp, _ = read_table(res / "flow/posteriors.h5", group="posteriors")
    feps = fp["log10_m200c_true"] - fp["median"]
    assert flow["eval"]["mean_residual_dex"] == pytest.approx(float(np.mean(feps)), abs=1e-9)
    fin = (fp["lo68"] <= fp["log10_m200c_true"]) & (fp["log10_m200c_true"] <= fp["hi68"])
    assert flow["eval"]["coverage_68"] == pytest.approx(float(np.mean(fin)), abs=1e-9)
    fid = rows["fiducial"]
    assert isinstance(fid["within_criteria"], bool)
    assert fid["within_criteria"] == (abs(fid["coverage_68"] - 0.6827) <= 0.03
                                      and abs(fid["coverage_95"] - 0.9545) <= 0.02)
    near, far = mm["distance_third_edges_mpc_h"]
    assert 0 < near < far
    for r in mm["variants"]:
        assert all(np.isfinite(r[f"scatter_dex_{t}"]) for t in ("near", "mid", "far")), r
    assert rows["completeness=0.5"]["mean_residual_dex"] > fid["mean_residual_dex"]
    with open(res / "robustness/misspecification.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["variant"], r["estimator"]) for r in table] == [
        (r["variant"], r["estimator"]) for r in mm["variants"]]
    assert (res / "robustness/misspecification.png").is_file()


def test_flow_products_are_consistent(tiny_run):
    """The neural flow's products (issue 9): images are the 2-D KDEs of the eval clusters,
    metrics count the eval split and match the stored intervals, the survey table has the
    CNN3D + SBI survey table's columns, and the comparison quotes both metrics files."""
    from astropy.table import Table

    from cmpipe.kde import kde_2d

    _, res = tiny_run
    for p in ["flow/images/train.h5", "flow/images/validation.h5", "flow/images/eval.h5",
              "flow/images/test.h5", "flow/joint_pdf.h5", "flow/images/survey.h5", "flow/model/flow.pt", "flow/model/flow.json",
              "flow/model/history.csv", "flow/metrics.json", "flow/posteriors.h5",
              "flow/survey_posteriors.ecsv", "flow/survey_posteriors.csv",
              "figures/flow_loss.png", "figures/flow_predictions.png",
              "figures/flow_calibration.png", "comparison/summary.json",
              "comparison/summary.csv", "figures/comparison.png", "logs/flow/train.log"]:
        assert (res / p).is_file(), p
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters")
    gal, _ = read_table(res / "mock/clusters.h5", group="galaxies")
    eval_ids = cl["cluster_id"][cl["split"] == SPLIT_CODES["eval"]]
    with CubeReader(res / "flow/images/eval.h5") as r:
        np.testing.assert_array_equal(r.column("cluster_id"), eval_ids)
        assert r.shape == (len(eval_ids), 24, 24)          # flow.n_grid null -> kde.n_grid
        for i in (0, len(eval_ids) - 1):
            s = gal["cluster_id"] == eval_ids[i]
            np.testing.assert_array_equal(r.cubes(i, i + 1)[0], kde_2d(
                gal["x_proj_mpc_h"][s], gal["y_proj_mpc_h"][s], gal["v_los_kms"][s], n=24))
    m = json.loads((res / "flow/metrics.json").read_text())
    cnn = json.loads((res / "evaluation/metrics.json").read_text())
    assert m["n_eval"] == len(eval_ids) == cnn["n_eval"]
    assert m["members"] == "all" and m["input"] == "2d"
    # the flow takes the distance (flow.distance_input), the images carry the observer's
    assert m["distance_input"] is True
    with CubeReader(res / "flow/images/eval.h5") as r:
        np.testing.assert_array_equal(r.column("distance_mpc_h"), cl["observer_distance_mpc_h"][
            cl["split"] == SPLIT_CODES["eval"]])
    assert 0.0 <= m["coverage_68"] <= m["coverage_95"] <= 1.0
    post, _ = read_table(res / "flow/posteriors.h5", group="posteriors")
    np.testing.assert_array_equal(post["cluster_id"], eval_ids)
    assert np.all(post["lo95"] <= post["lo68"]) and np.all(post["lo68"] <= post["median"])
    assert np.all(post["median"] <= post["hi68"]) and np.all(post["hi68"] <= post["hi95"])
    inside = (post["log10_m200c_true"] >= post["lo95"]) & \
        (post["log10_m200c_true"] <= post["hi95"])
    assert m["coverage_95"] == pytest.approx(inside.mean())
    eps = post["log10_m200c_true"] - post[m["point_estimate"]]
    assert m["scatter_dex"] == pytest.approx(eps.std(ddof=1), rel=1e-9)
    # recalibrated on the test split (calibration.recalibrate_flow): the flow's own point
    # estimate is the summary d~, and its own numbers stand beside
    assert "test-set prior" in m["prior"] and set(m["uncalibrated"]) >= {
        "scatter_dex", "coverage_68", "coverage_95"}
    assert 0.0 < m["test_cv_coverage_68"] < m["test_cv_coverage_95"] <= 1.0
    # the survey-range report counts the eval clusters inside calibration.survey_mass_range
    lo, hi = cnn["survey_range"]["log10_m_range"]
    t = post["log10_m200c_true"]
    for rep in (m["survey_range"], cnn["survey_range"]):
        assert rep["all"]["n"] == int(((t >= lo) & (t <= hi)).sum())
        assert rep["top"]["log10_m_range"] == pytest.approx([hi - 0.3, hi])
    from cmpipe.calibration import load_calibration
    fpdf = load_calibration(res / "flow/joint_pdf.h5")
    assert fpdf.n_pairs == int(np.sum(cl["split"] == SPLIT_CODES["test"]))
    flow_sv = Table.read(res / "flow/survey_posteriors.ecsv")
    cnn_sv = Table.read(res / "survey/posteriors.ecsv")
    assert flow_sv.colnames == cnn_sv.colnames
    np.testing.assert_array_equal(flow_sv["cluster_id"], cnn_sv["cluster_id"])
    ok = flow_sv["skipped"] == 0
    assert np.all(np.isfinite(flow_sv["flat_median"][ok]))
    assert np.all(flow_sv["flat_lo68"][ok] <= flow_sv["flat_hi68"][ok])
    comp = json.loads((res / "comparison/summary.json").read_text())
    assert comp["runs"] == {"contaminated": "tiny"}        # tiny.yaml: compare.pure_run null
    rows = {r["estimator"]: r for r in comp["rows"]}
    # the four estimators, then the CNN3D with the distance switched off (issue 16): the
    # same network under the distance-blind calibration, and the cube-only CNN3D
    # (ablation.cube_only, set by configs/tiny.yaml) under either calibration
    from cmpipe.evaluation.comparison import DISTANCE_VARIANTS
    assert [r["estimator"] for r in comp["rows"]] == [
        "cnn3d_sbi", "flow", "sets", "msigma_gapper", "virial", *DISTANCE_VARIANTS]
    assert rows["cnn3d_sbi_blind_calibration"]["scatter_dex"] == pytest.approx(
        cnn["distance_blind"]["scatter_dex"])
    cube = json.loads((res / "ablation/3dcube/metrics.json").read_text())
    assert cube["distance_input"] is False and cube["seed"] == 0
    nd = json.loads((res / "ablation/3dcube/model/normalisation.json").read_text())
    assert "distance" not in nd                         # the network sees the cube alone
    assert rows["cnn3d_cube_only_sbi"]["scatter_dex"] == pytest.approx(
        cube["network"]["overall"]["std"])
    assert rows["cnn3d_cube_only_sbi_blind_calibration"]["coverage_68"] == pytest.approx(
        cube["network_distance_blind"]["coverage"]["68"]["fraction"])
    # the calibration's outlier tail, chosen on the test split, and the distance-aware
    # cross-validated coverage per distance third
    from cmpipe.calibration import TAIL_WEIGHTS, TAIL_WIDTHS
    for met in (cnn, m):
        tail = met["calibration_tail"]
        assert tail["weight"] in TAIL_WEIGHTS and tail["width"] in TAIL_WIDTHS
        chosen = next(c for c in tail["candidates"]
                      if (c["weight"], c["width"]) == (tail["weight"], tail["width"]))
        assert tail["cv_log_score"] >= tail["cv_log_score_best"] - chosen["se_vs_best"]
        assert len(tail["candidates"]) == 1 + 2 * (len(TAIL_WEIGHTS) - 1)
    assert cnn["test_cv_calibration"].startswith("distance-aware")
    thirds = cnn["test_cv_by_observer_distance"]
    assert len(thirds) == 3 and sum(t["n"] for t in thirds.values()) == fpdf.n_pairs
    assert all(0 < t["coverage_68_err_halos"] < 0.2 for t in thirds.values())
    assert all("coverage_68_err_halos" in v for k, v in cnn["by_observer_distance"].items()
               if k != "note")
    # the flow's too: cross-validated thirds through flow_calibrate's joint PDF, eval thirds
    # of its posteriors
    assert len(m["test_cv_by_observer_distance"]) == 3
    assert all(0 < t["coverage_68"] < 1 for t in m["test_cv_by_observer_distance"].values())
    flow_thirds = {k: v for k, v in m["by_observer_distance"].items() if k != "note"}
    assert len(flow_thirds) == 3
    assert sum(v["n"] for v in flow_thirds.values()) == m["n_eval"]
    assert rows["flow"]["scatter_dex"] == pytest.approx(m["scatter_dex"])
    assert rows["cnn3d_sbi"]["coverage_68"] == pytest.approx(cnn["coverage_68"])
    assert rows["cnn3d_sbi"]["survey_top_mean_residual_dex"] == pytest.approx(
        cnn["survey_range"]["top"].get("mean_residual_dex"))
    assert rows["virial"]["survey_top_coverage_68"] is None
    assert rows["virial"]["scatter_dex"] == pytest.approx(cnn["virial_scatter_dex"])
    assert comp["ratios"]["contaminated"]["msigma_over_flow_scatter"] == pytest.approx(
        cnn["msigma_gapper_scatter_dex"] / m["scatter_dex"])


def test_set_products_are_consistent(tiny_run):
    """The set estimator's products (issue 29): its inputs are the eval clusters' window
    galaxies as the mock has them, its metrics count the eval split and match the stored
    intervals, its seeds are summarised, its survey table has the CNN3D + SBI table's
    columns, and the comparison and the misspecification matrix carry its rows."""
    from astropy.table import Table

    from cmpipe.flow.sets import read_set_file

    _, res = tiny_run
    for p in ["sets/inputs/train.h5", "sets/inputs/survey.h5", "sets/model/flow.pt",
              "sets/model/history.csv", "sets/joint_pdf.h5", "sets/metrics.json",
              "sets/posteriors.h5", "sets/seeds.json", "sets/seeds/1/metrics.json",
              "sets/survey_posteriors.ecsv", "figures/sets_loss.png",
              "figures/sets_predictions.png", "figures/sets_calibration.png",
              "logs/sets/train.log"]:
        assert (res / p).is_file(), p
    cl, _ = read_table(res / "mock/clusters.h5", group="clusters")
    gal, _ = read_table(res / "mock/clusters.h5", group="galaxies")
    ev = cl["split"] == SPLIT_CODES["eval"]
    cols, sets, attrs = read_set_file(res / "sets/inputs/eval.h5", ("x", "v"))
    np.testing.assert_array_equal(cols["cluster_id"], cl["cluster_id"][ev])
    np.testing.assert_array_equal(sets.counts, cl["n_gal"][ev])
    np.testing.assert_array_equal(cols["distance_mpc_h"], cl["observer_distance_mpc_h"][ev])
    for k in (0, len(sets) - 1):
        g = gal["cluster_id"] == cols["cluster_id"][k]
        one = sets[[k]].features
        np.testing.assert_allclose(one[:, 0], gal["x_proj_mpc_h"][g] / attrs["half_width_mpc_h"],
                                   rtol=1e-6)
        np.testing.assert_allclose(one[:, 1], gal["v_los_kms"][g] / attrs["v_max_kms"],
                                   rtol=1e-6)
    m = json.loads((res / "sets/metrics.json").read_text())
    assert m["estimator"] == "Deep Sets flow" and m["input"] == "set"
    assert m["n_eval"] == int(ev.sum()) and "test-set prior" in m["prior"]
    post, _ = read_table(res / "sets/posteriors.h5", group="posteriors")
    inside = (post["log10_m200c_true"] >= post["lo68"]) & (post["log10_m200c_true"]
                                                          <= post["hi68"])
    assert m["coverage_68"] == pytest.approx(inside.mean())
    eps = post["log10_m200c_true"] - post[m["point_estimate"]]
    assert m["scatter_dex"] == pytest.approx(eps.std(ddof=1), rel=1e-9)
    assert len([k for k in m["by_observer_distance"] if k != "note"]) == 3
    seeds = json.loads((res / "sets/seeds.json").read_text())
    s1 = json.loads((res / "sets/seeds/1/metrics.json").read_text())
    assert seeds["n_seeds"] == 2                          # configs/tiny.yaml ablation.seeds
    assert seeds["scatter_dex"]["values"] == pytest.approx([m["scatter_dex"],
                                                            s1["scatter_dex"]])
    assert seeds["scatter_dex"]["sd"] == pytest.approx(np.std(
        [m["scatter_dex"], s1["scatter_dex"]], ddof=1))
    assert s1["scatter_dex"] != m["scatter_dex"]          # another seed, another network
    sv = Table.read(res / "sets/survey_posteriors.ecsv")
    cnn_sv = Table.read(res / "survey/posteriors.ecsv")
    assert sv.colnames == cnn_sv.colnames and sv.meta["estimator"] == "Deep Sets flow + SBI"
    ok = sv["skipped"] == 0
    assert np.all(np.isfinite(sv["flat_median"][ok]))
    comp = json.loads((res / "comparison/summary.json").read_text())
    row = next(r for r in comp["rows"] if r["estimator"] == "sets")
    assert row["label"] == "Deep Sets flow + SBI"
    assert row["scatter_dex"] == pytest.approx(m["scatter_dex"])
    assert comp["ratios"]["contaminated"]["sets_seed_scatter_dex"]["values"] == \
        pytest.approx(seeds["scatter_dex"]["values"])
    mis = json.loads((res / "robustness/misspecification.json").read_text())
    eval_row = next(r for r in mis["variants"]
                    if r["variant"] == "eval" and r["estimator"] == "sets_sbi")
    # the matrix's eval row: the stored eval windows through the same set model and
    # calibration as rule set_evaluate
    assert eval_row["coverage_68"] == pytest.approx(m["coverage_68"], abs=1e-12)
    assert eval_row["mean_residual_dex"] == pytest.approx(m["mean_residual_dex"], abs=1e-9)


def test_pure_catalogue_keeps_bound_members_only(tiny_run, tmp_path):
    """mock.members: bound on the tiny run's projection: only is_member = 1 galaxies, the
    same observers, so a cluster survives iff its visible members pass the richness cut and
    its pure n_gal equals its contaminated n_members. In the fiducial universe (nuisance.sample
    false: the random completeness and the cloned interlopers of the marginalised mock draw
    differently once the interlopers are gone)."""
    wd, res = tiny_run
    cfg = load_config(wd / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml",
                      overlays=[wd / "configs/tiny.yaml"])
    cfg["nuisance"]["sample"] = False
    projected = _upstream(wd) / "mock/projected.h5"
    stages.flux_limit(config=cfg, projected=projected, out=tmp_path / "all.h5")
    cfg["mock"]["members"] = "bound"
    stages.flux_limit(config=cfg, projected=projected, out=tmp_path / "pure.h5")
    pc, pattrs = read_table(tmp_path / "pure.h5", group="clusters")
    pg, _ = read_table(tmp_path / "pure.h5", group="galaxies")
    cc, _ = read_table(tmp_path / "all.h5", group="clusters")
    assert pattrs["members"] == "bound"
    assert np.all(pg["is_member"] == 1) and len(pg["cluster_id"]) > 0
    np.testing.assert_array_equal(pc["n_gal"], pc["n_members"])
    counts = pattrs["flux_limit_counts"]
    assert counts["n_interlopers_dropped"] > 0
    # the pure clusters are those contaminated clusters with enough visible members
    min_gal = cfg["mock"]["min_galaxies"]
    want = cc["cluster_id"][cc["n_members"] >= min_gal]
    np.testing.assert_array_equal(pc["cluster_id"], want)
    row = np.searchsorted(cc["cluster_id"], pc["cluster_id"])
    np.testing.assert_array_equal(pc["n_gal"], cc["n_members"][row])
    np.testing.assert_allclose(pc["observer_distance_mpc_h"],
                               cc["observer_distance_mpc_h"][row], rtol=0, atol=0)


def test_misspecification_beside_the_fiducial_model(tiny_run, tmp_path):
    """compare.fiducial_run (issue 28): a fiducial-model run of the tiny config
    (configs/fiducial.yaml, target fiducial_inputs) beside the tiny run's marginalised
    model, built as the default run builds it (issue 31): by rule companion_run inside the
    tiny run's DAG (compare.fiducial_overlay), in its own directory, sharing the catalogue
    and the projection, which are made once. The matrix puts both models through the same
    variant windows: the fiducial variant reproduces the fiducial run's stored eval
    predictions (on the clusters both eval sets share) and both models have every variant
    on the same clusters. The comparison names each catalogue's model. Without the overlay
    a missing fiducial run stops the workflow before any job with the command that makes
    it."""
    wd, res = tiny_run
    fd = _workdir(tmp_path)
    (fd / "fid.yaml").write_text("compare:\n  fiducial_run: tiny-fiducial\n"
                                 "  fiducial_overlay: configs/fiducial.yaml\n")
    record = "results/tiny/companions/tiny-fiducial.json"
    proc = _snakemake(fd, record, "--configfile", "configs/tiny.yaml", "fid.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fres = fd / "results/tiny-fiducial"
    # the record holds the digests of what the tiny run reads from the companion
    from cmpipe.io.artefacts import file_digest
    rec = json.loads((fd / record).read_text())
    assert rec["run"] == "tiny-fiducial" and "configs/fiducial.yaml" in rec["command"]
    assert len(rec["products"]) == 9
    for p, digest in rec["products"].items():
        assert file_digest(fd / p) == digest, p
    # one catalogue and one projection, in the shared directory; the companion made none
    assert [p.parent.parent.name for p in (fd / UPSTREAM_ROOT).glob("*/logs/catalogue.log")] \
        == [_upstream(wd).name]
    assert not (fres / "catalogue").exists() and not (fres / "mock/projected.h5").exists()
    log = (fd / "results/tiny/logs/companion_run/tiny-fiducial.log").read_text()
    assert "rule train:" in log and "rule catalogue:" not in log and "rule project:" not in log
    # run directly, the companion is up to date: its products keep their own provenance
    proc = _snakemake(fd, "-n", "fiducial_inputs", "--configfile", "configs/tiny.yaml",
                      "configs/fiducial.yaml", "--config", "run=tiny-fiducial")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    cfg = load_config(wd / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml",
                      overlays=[wd / "configs/tiny.yaml"])
    cfg["compare"]["fiducial_run"] = "tiny-fiducial"
    fid = dict(model=fres / "model/cnn3d.keras", normalisation=fres / "model/normalisation.json",
               joint_pdf=fres / "calibration/joint_pdf.h5", eval=fres / "summaries/eval.h5",
               config=fres / "config.resolved.yaml", flow_model=fres / "flow/model/flow.pt",
               flow_joint_pdf=fres / "flow/joint_pdf.h5")
    # the matrix in one shard and in two: the same numbers (each variant has its own stream)
    for n in (1, 2):
        shards = [tmp_path / f"mm{n}-{k}.json" for k in range(n)]
        for k, out in enumerate(shards):
            stages.misspecification_shard(
                config=cfg, model=res / "model/cnn3d.keras",
                normalisation=res / "model/normalisation.json",
                joint_pdf=res / "calibration/joint_pdf.h5",
                projected=_upstream(wd) / "mock/projected.h5", clusters=res / "mock/clusters.h5",
                eval_predictions=res / "summaries/eval.h5",
                flow=dict(model=res / "flow/model/flow.pt", joint_pdf=res / "flow/joint_pdf.h5"),
                fiducial=fid, out=out, shard=k, n_shards=n, progress=False)
        stages.misspecification(config=cfg, shards=shards[::-1],
                                summary_out=tmp_path / f"mm{n}.json",
                                table_out=tmp_path / f"mm{n}.csv")
    assert {len(json.loads(p.read_text())["rows"]) for p in shards} != {0}
    assert (tmp_path / "mm1.csv").read_bytes() == (tmp_path / "mm2.csv").read_bytes()
    one, two = (json.loads((tmp_path / f"mm{n}.json").read_text()) for n in (1, 2))
    assert (one.pop("n_shards"), two.pop("n_shards")) == (1, 2) and one == two
    assert stages.recorded_shards(tmp_path / "mm2.json", 5) == 2
    assert stages.recorded_shards(tmp_path / "missing.json", 5) == 5
    with pytest.raises(CatalogueError, match="shard"):
        stages.misspecification(config=cfg, shards=shards[:1], summary_out=tmp_path / "x.json",
                                table_out=tmp_path / "x.csv")
    mm = json.loads((tmp_path / "mm2.json").read_text())
    assert [r["variant"] for r in mm["variants"]][0] == "eval"
    assert mm["reproduces_eval_predictions_dex"]["fiducial"] <= 1e-6
    assert list(mm["models"]) == ["marginalised/cnn3d_sbi", "marginalised/flow_sbi",
                                  "fiducial/cnn3d_sbi", "fiducial/flow_sbi"]
    by = {(r["model"], r["variant"]): r for r in mm["variants"]
          if r["estimator"] == "cnn3d_sbi"}
    names = {v for _, v in by}
    assert {("fiducial", v) for v in names - {"eval"}} <= set(by)
    assert ("fiducial", "eval") not in by
    # the same cluster windows for both models and both estimators
    for r in mm["variants"]:
        assert r["n"] == by[("marginalised", r["variant"])]["n"]
    fm = json.loads((fres / "evaluation/metrics.json").read_text())
    assert by[("marginalised", "fiducial")]["within_criteria"] in (True, False)
    assert by[("fiducial", "fiducial")]["within_criteria"] is None

    # comparison: this run's model is marginalised, the fiducial run's beside it
    summary = tmp_path / "cmp.json"
    stages.compare(config=cfg, metrics=res / "evaluation/metrics.json",
                   flow_metrics=res / "flow/metrics.json",
                   fiducial_metrics=fres / "evaluation/metrics.json",
                   fiducial_flow_metrics=fres / "flow/metrics.json",
                   fiducial_config=fres / "config.resolved.yaml", summary_out=summary,
                   csv_out=tmp_path / "cmp.csv", png=tmp_path / "cmp.png")
    cs = json.loads(summary.read_text())
    assert cs["models"] == {"contaminated": "marginalised", "contaminated_fiducial": "fiducial"}
    row = next(r for r in cs["rows"] if r["catalogue"] == "contaminated_fiducial"
               and r["estimator"] == "cnn3d_sbi")
    assert row["scatter_dex"] == pytest.approx(fm["scatter_dex"], abs=1e-12)

    # a fiducial run that is not there: stopped before any job, with the command
    (tmp_path / "other.yaml").write_text("compare:\n  fiducial_run: no-such-run\n"
                                         "  fiducial_overlay: null\n")
    proc = _snakemake(fd, "-n", "--configfile", "configs/tiny.yaml", str(tmp_path / "other.yaml"))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "no-such-run" in out and "fiducial_inputs" in out and "configs/fiducial.yaml" in out
