"""The ``cmpipe`` command: ``infer`` on a tiny trained run (sky and phase-space input) and
bad input (one message, exit status 1, no traceback); ``check-config``.

The tiny run is made by the helper of tests/test_survey_workflow.py (once per session).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cmpipe.cli import main
from cmpipe.io.tables import read_table

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


@pytest.mark.slow
def test_infer_reproduces_the_workflow_posteriors(run, tmp_path):
    out = tmp_path / "out.ecsv"
    proc = _cmpipe("infer", "--run-dir", run, "--clusters", run / "survey/clusters.ecsv",
                   "--galaxies", run / "survey/galaxies.ecsv", "-o", out, "--keep",
                   tmp_path / "keep", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _same_posteriors(out, run / "survey/posteriors.ecsv")
    assert (tmp_path / "keep/cubes.h5").exists() and (tmp_path / "keep/phase_space.h5").exists()


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
