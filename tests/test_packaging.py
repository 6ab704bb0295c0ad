"""cmpipe as an installed package: the wheel, in a fresh virtual environment, outside the
repository.

The wheel is built from a copy of the project (nothing is written into the checkout) and
installed with ``--no-deps`` into a new venv that sees the project environment's
dependencies through a ``.pth`` file but not its editable cmpipe (directories listed in a
``.pth`` file are not scanned for further ``.pth`` files, so the editable finder stays
out). From a directory outside the repository, ``cmpipe check-config`` must find the
schema shipped as package data (issue 30: it looked for ``./workflow/schemas/...``) and
``cmpipe infer`` must reproduce the tiny run's posteriors.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_survey_workflow import tiny_survey_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)            # the checkout's src must not be on the path
    return env


def _sh(*args, cwd=None, timeout=600):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the cmpipe wheel of this checkout installed; returns its bin/."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "project"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", base / "dist", src)
    wheel, = (base / "dist").glob("cmpipe-*.whl")
    venv = base / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    site = _sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
               ).stdout.strip()
    deps = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(site, "project-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _sh(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
        wheel)
    where = _sh(py, "-c", "import cmpipe; print(cmpipe.__file__)", cwd=base).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    return venv / "bin"


def test_installed_check_config_outside_the_repository(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    shutil.copy(ROOT / "configs/tiny.yaml", work / "tiny.yaml")
    proc = _sh(installed / "cmpipe", "check-config", "config.yaml", "tiny.yaml", cwd=work)
    assert "run: tiny" in proc.stdout and "window:" in proc.stdout
    # the schema is the package's: a bad value is still refused
    (work / "bad.yaml").write_text("kde:\n  n_grid: -3\n")
    proc = subprocess.run([str(installed / "cmpipe"), "check-config", "config.yaml",
                           "bad.yaml"], capture_output=True, text=True, cwd=work, env=_env())
    assert proc.returncode == 1 and "n_grid" in proc.stderr, proc.stderr
    assert "No such file" not in proc.stderr
    proc = _sh(installed / "cmpipe", "infer", "--help", cwd=work)
    assert "--estimator" in proc.stdout


def test_installed_infer_outside_the_repository(installed, tmp_path, tmp_path_factory):
    _, run = tiny_survey_run(tmp_path_factory)
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _sh(installed / "cmpipe", "infer", "--run-dir", run, "--clusters",
               run / "survey/clusters.ecsv", "--galaxies", run / "survey/galaxies.ecsv",
               "-o", "post.ecsv", "--estimator", "cnn3d", cwd=work)
    assert not [ln for ln in proc.stderr.splitlines()
                if any(w in ln for w in ("cuInit", "E0000", "I0000", "oneDNN"))], proc.stderr
    a, b = Table.read(work / "post.ecsv"), Table.read(run / "survey/posteriors.ecsv")
    assert a.colnames == b.colnames and len(a) == len(b)
    for c in a.colnames:
        np.testing.assert_allclose(np.asarray(a[c], float), np.asarray(b[c], float),
                                   rtol=1e-9, equal_nan=True, err_msg=c)
