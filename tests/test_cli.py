"""The ``cmpipe`` command: ``infer`` on a tiny trained run (sky and phase-space input, each
estimator and the default one) and bad input (one message, exit status 1, no traceback);
``check-config``.

The tiny run is made by the helper of tests/test_survey_workflow.py (once per session).
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cmpipe.cli import main
from cmpipe.io.tables import read_table
from cmpipe.stages.infer import best_estimator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_survey_workflow import tiny_survey_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CMPIPE = str(Path(sys.executable).parent / "cmpipe")


def _cmpipe(*args, cwd=None, timeout=300):
    return subprocess.run([CMPIPE, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    _, res = tiny_survey_run(tmp_path_factory)
    return res


#: TensorFlow's and torch's start-up lines, which cmpipe infer keeps off the console.
STARTUP_NOISE = re.compile(r"cuInit|E0000|I0000|oneDNN")


def _no_startup_noise(stderr):
    noisy = [ln for ln in stderr.splitlines() if STARTUP_NOISE.search(ln)]
    assert not noisy, noisy


def _same_posteriors(a_path, b_path, skip=()):
    a, b = Table.read(a_path), Table.read(b_path)
    assert a.colnames == b.colnames and len(a) == len(b)
    for c in a.colnames:
        if c in skip:
            continue
        np.testing.assert_allclose(np.asarray(a[c], float), np.asarray(b[c], float),
                                   rtol=1e-9, equal_nan=True, err_msg=c)


def test_help_documents_units_and_columns():
    proc = _cmpipe("infer", "--help")
    assert proc.returncode == 0
    out = proc.stdout
    for s in ("--run-dir", "--clusters", "--galaxies", "--phase-space", "cluster_id",
              "ra_deg", "dec_deg", "degrees", "x_proj", "y_proj", "v_los", "h^-1 Mpc",
              "km/s", "flat_", "pop_", "log10(M200c / h^-1 Msun)", "config.resolved.yaml"):
        assert s in out, s


def test_check_config_still_works(capsys):
    assert main(["check-config", str(ROOT / "configs/tiny.yaml"), "--schema",
                 str(ROOT / "src/cmpipe/data/config.schema.yaml")]) == 0
    assert "survey:" in capsys.readouterr().out
    # without --schema: the schema shipped in the package
    assert main(["check-config", str(ROOT / "config.yaml"), str(ROOT / "configs/tiny.yaml")]) == 0
    assert "run: tiny" in capsys.readouterr().out


@pytest.mark.slow
def test_infer_reproduces_the_workflow_posteriors(run, tmp_path):
    out = tmp_path / "out.ecsv"
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--galaxies", run / "survey/galaxies.ecsv", "-o", out, "--keep",
                   tmp_path / "keep", "-q", "--estimator", "cnn3d")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _no_startup_noise(proc.stderr)
    _same_posteriors(out, run / "survey/posteriors.ecsv")
    assert Table.read(out).meta["estimator_choice"] == "cnn3d"
    assert (tmp_path / "keep/cubes.h5").exists() and (tmp_path / "keep/phase_space.h5").exists()


@pytest.mark.slow
def test_infer_flow_reproduces_the_workflow_flow_posteriors(run, tmp_path):
    """--estimator flow runs the workflow's flow_survey_images and flow_survey_posteriors
    (with the run's test-split recalibration, flow/joint_pdf.h5): the same clusters and
    galaxies give the posteriors of flow/survey_posteriors.ecsv (rtol 1e-9: the same code
    on the same inputs; round-off only). Without -q the console still shows no TensorFlow
    or torch start-up line."""
    out = tmp_path / "flow.ecsv"
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--galaxies", run / "survey/galaxies.ecsv", "-o", out,
                   "--estimator", "flow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_startup_noise(proc.stderr)
    assert "flow survey posteriors" in proc.stderr            # the INFO lines are shown
    _same_posteriors(out, run / "flow/survey_posteriors.ecsv")
    meta = Table.read(out).meta
    assert meta["estimator_choice"] == "flow" and meta["estimator"] == "neural flow + SBI"
    assert meta["estimator_reason"] == "--estimator flow"


def _metrics(path, cov68, cov95, scatter):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(coverage_68=cov68, coverage_95=cov95,
                                    scatter_dex=scatter)))


def _run_with_metrics(run, tmp_path, cnn3d, flow):
    """The tiny run's products (linked) with the given eval metrics of both estimators."""
    d = tmp_path / "run"
    (d / "flow").mkdir(parents=True)
    for rel in ("model", "calibration", "survey", "config.resolved.yaml", "flow/model",
                "flow/joint_pdf.h5"):
        (d / rel).symlink_to(run / rel)
    _metrics(d / "evaluation/metrics.json", *cnn3d)
    _metrics(d / "flow/metrics.json", *flow)
    return d


def test_default_estimator_is_the_best_calibrated(tmp_path):
    """Coverage closest to nominal (68.27%, 95.45%) wins; a tie goes to the smaller
    scatter; without metrics the CNN3D + SBI."""
    assert best_estimator(tmp_path)[0] == "cnn3d"
    _metrics(tmp_path / "evaluation/metrics.json", 0.60, 0.90, 0.10)
    _metrics(tmp_path / "flow/metrics.json", 0.67, 0.94, 0.30)
    name, reason = best_estimator(tmp_path)
    assert name == "flow" and "0.600" in reason and "0.940" in reason
    # |0.68 - 0.6827| + |0.95 - 0.9545| = 0.0072 = |0.6899 - 0.6827| + |0.9545 - 0.9545|
    _metrics(tmp_path / "evaluation/metrics.json", 0.68, 0.95, 0.12)
    _metrics(tmp_path / "flow/metrics.json", 0.6899, 0.9545, 0.11)
    assert best_estimator(tmp_path)[0] == "flow"
    _metrics(tmp_path / "flow/metrics.json", 0.6899, 0.9545, 0.13)
    assert best_estimator(tmp_path)[0] == "cnn3d"
    (tmp_path / "evaluation/metrics.json").unlink()
    assert best_estimator(tmp_path)[0] == "flow"
    _metrics(tmp_path / "sets/metrics.json", 0.685, 0.952, 0.2)      # the set estimator
    name, reason = best_estimator(tmp_path)
    assert name == "sets" and "sets coverage 68% 0.685" in reason


@pytest.mark.slow
@pytest.mark.parametrize("best", ["cnn3d", "flow"])
def test_infer_default_is_the_estimator_the_metrics_say(best, run, tmp_path):
    """No --estimator: the run's best-calibrated estimator (from its metrics files) makes
    the table, which names it (ECSV meta) and says why."""
    good, poor = (0.68, 0.95, 0.2), (0.55, 0.85, 0.1)
    d = _run_with_metrics(run, tmp_path, *((good, poor) if best == "cnn3d" else (poor, good)))
    out = tmp_path / "post.ecsv"
    proc = _cmpipe("infer", "--run-dir", d, "--clusters", run / "survey/clusters.ecsv",
                   "--galaxies", run / "survey/galaxies.ecsv", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = {"cnn3d": "survey/posteriors.ecsv", "flow": "flow/survey_posteriors.ecsv"}[best]
    _same_posteriors(out, run / ref)
    meta = Table.read(out).meta
    assert meta["estimator_choice"] == best
    assert "best-calibrated" in meta["estimator_reason"]
    assert "coverage 68% 0.550" in meta["estimator_reason"]
    assert f"estimator {best}" in proc.stderr.splitlines()[-1]


@pytest.mark.slow
def test_infer_all_writes_one_table_per_estimator(run, tmp_path):
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--galaxies", run / "survey/galaxies.ecsv", "-o", tmp_path / "post.csv",
                   "--estimator", "all", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "post.csv").exists()
    _same_posteriors(tmp_path / "post-cnn3d.csv", run / "survey/posteriors.ecsv")
    _same_posteriors(tmp_path / "post-flow.csv", run / "flow/survey_posteriors.ecsv")
    # the set estimator (issue 29): set_survey_inputs + its flow and calibration, as rule
    # set_survey_posteriors
    _same_posteriors(tmp_path / "post-sets.csv", run / "sets/survey_posteriors.ecsv")


@pytest.mark.slow
def test_infer_from_phase_space_input(run, tmp_path):
    g, _ = read_table(run / "survey/phase_space.h5", group="galaxies")
    Table(dict(cluster_id=g["cluster_id"], x_proj=g["x_proj_mpc_h"], y_proj=g["y_proj_mpc_h"],
               v_los=g["v_los_kms"])).write(tmp_path / "ps.csv", format="ascii.csv")
    out = tmp_path / "out.csv"
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--phase-space", tmp_path / "ps.csv", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same window galaxies give the same cubes and posteriors; membership is unknown
    _same_posteriors(out, run / "survey/posteriors.ecsv", skip=("n_members",))
    assert np.all(Table.read(out)["n_members"] == -1)


@pytest.mark.slow
def test_infer_with_cluster_names(run, tmp_path):
    """Clusters named (``SYN-<id>``), listed in reverse order, galaxies labelled with the
    names: every cluster gets the posterior the workflow gave it under its numeric id
    (matched by name), and the output keeps the names beside the row ids."""
    t = Table.read(run / "survey/clusters.ecsv")[::-1]
    names = np.array([f"SYN-{int(i):04d}" for i in t["cluster_id"]])
    t.remove_column("cluster_id")
    t.add_column(names, name="name", index=0)
    t.write(tmp_path / "named.ecsv")
    g = Table.read(run / "survey/galaxies.ecsv")
    lab = np.asarray(g["cluster_id"])
    g["cluster_id"] = np.where(lab >= 0, np.char.add("SYN-", np.char.zfill(
        lab.astype(str), 4)), "")
    g.write(tmp_path / "gal.ecsv")
    out = tmp_path / "out.ecsv"
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", tmp_path / "named.ecsv",
                   "--galaxies", tmp_path / "gal.ecsv", "-o", out, "-q", "--estimator",
                   "cnn3d")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = Table.read(out), Table.read(run / "survey/posteriors.ecsv")
    assert a.colnames[:2] == ["cluster_id", "cluster_name"]
    np.testing.assert_array_equal(a["cluster_id"], np.arange(len(t)))     # rows of the input
    np.testing.assert_array_equal(a["cluster_name"], names)
    ref = b[np.searchsorted(b["cluster_id"], [int(n[4:]) for n in a["cluster_name"]])]
    for c in b.colnames:
        if c != "cluster_id":
            np.testing.assert_allclose(np.asarray(a[c], float), np.asarray(ref[c], float),
                                       rtol=1e-9, equal_nan=True, err_msg=c)


def _bad_clusters(run, tmp_path, kind):
    t = Table.read(run / "survey/clusters.ecsv")
    if kind == "missing z":
        t.remove_column("z")
    elif kind == "radians":
        for c in ("ra_deg", "dec_deg"):
            t[c] = np.radians(np.asarray(t[c]))
    elif kind == "duplicated ids":
        t["cluster_id"][1] = t["cluster_id"][0]
    path = tmp_path / "clusters.csv"
    t.write(path, format="ascii.csv")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind, words", [
    ("missing z", ["'z'", "required column not found", "--cluster-column"]),
    ("radians", ["radians", "np.degrees"]),
    ("duplicated ids", ["'cluster_id'", "duplicated id"]),
])
def test_bad_clusters_are_one_clear_message(run, tmp_path, kind, words):
    path = _bad_clusters(run, tmp_path, kind)
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", path, "--galaxies",
                   run / "survey/galaxies.ecsv", "-o", tmp_path / "out.ecsv")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    msg = [ln for ln in proc.stderr.splitlines() if ln.startswith("cmpipe infer:")]
    assert len(msg) == 1 and "clusters.csv" in msg[0] and "Fix:" in msg[0]
    for w in words:
        assert w in msg[0], (w, msg[0])
    assert not (tmp_path / "out.ecsv").exists()


@pytest.mark.slow
def test_bad_phase_space_and_run_dir(run, tmp_path):
    g, _ = read_table(run / "survey/phase_space.h5", group="galaxies")
    Table(dict(cluster_id=g["cluster_id"], x_proj=1000 * g["x_proj_mpc_h"],
               y_proj=1000 * g["y_proj_mpc_h"], v_los=g["v_los_kms"])).write(
        tmp_path / "kpc.csv", format="ascii.csv")
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--phase-space", tmp_path / "kpc.csv", "-o", tmp_path / "o.ecsv")
    assert proc.returncode == 1 and "kpc" in proc.stderr and "Traceback" not in proc.stderr
    # a directory that is not a finished run
    shutil.copytree(run / "survey", tmp_path / "notarun")
    proc = _cmpipe("infer", "--run-dir", tmp_path / "notarun", "--clusters",
                   run / "survey/clusters.ecsv", "--galaxies", run / "survey/galaxies.ecsv",
                   "-o", tmp_path / "o.ecsv")
    assert proc.returncode == 1 and "config.resolved.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    # neither or both galaxy inputs: argparse usage error (exit 2), no traceback
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "-o", tmp_path / "o.ecsv")
    assert proc.returncode == 2 and "--galaxies" in proc.stderr
