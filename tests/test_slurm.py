"""The workflow on a real one-node SLURM cluster, through profiles/slurm.

tests/slurm/start_cluster.sh installs (Debian packages, once) and starts slurmctld, slurmd,
slurmdbd with MariaDB and munge on this machine: one node with all its CPUs and one fake GPU.
The tiny config's core chain (SLURM_TARGETS: mock, KDE shards through the checkpoint,
training on the GPU, calibration, evaluation, survey and mass function; the analyses, the
neural flow and the comparison are the same kind of job and are left to tests/test_workflow.py,
which keeps this test to a few minutes) is then run twice from one snapshot of the workflow and
of src/cmpipe taken into tmp_path at the start (so edits to the working tree during the test
cannot make the runs differ): submitted to SLURM with `--profile profiles/slurm`, and locally
with `--cores 2` (in the background, while the SLURM run mostly waits). The test checks that

* every job of the workflow ran as a SLURM job and finished COMPLETED (sacct),
* every rule that requests `gpu=1` (the training rule `train`) got a GPU allocation,
* the products of both runs agree: HDF5 arrays and attributes, JSON files numerically
  (figures only exist; wall-clock durations are not compared).

Needs root (CI runs as root). It is skipped only where it cannot run at all (not root, or
SLURM missing and no apt-get to install it); a cluster that fails to start is a failure.
Set CMPIPE_KEEP_SLURM=1 to leave the cluster running after the tests (faster reruns).
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPTS = REPO / "tests" / "slurm"
CONFIG = "configs/tiny.yaml"
RUN = "tiny"  # `run:` of configs/tiny.yaml, outputs under results/tiny/
# What both runs build: every rule of the core chain, CPU and GPU (`train`), a checkpoint
# (kde_shard -> kde_gather), plots and the survey.
SLURM_TARGETS = [f"results/{RUN}/{p}" for p in (
    "mock/summary.json", "figures/mock_mass_function.png", "figures/loss_curve.png",
    "evaluation/metrics.json", "figures/predictions.png", "config.resolved.yaml",
    "survey/pulls.json", "figures/mass_function.png")]
# What a run of the workflow needs besides the cmpipe package.
WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "configs", "profiles", "envs"]
VENV_BIN = Path(sys.executable).parent
# The executor starts every job with the Python that runs snakemake: this one.
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SACCT_FIELDS = "JobID,JobName,Comment,Partition,NodeList,AllocCPUS,ReqMem,AllocTRES,State,ExitCode,Elapsed"
RULE_COMMENT = re.compile(r"^rule_(?P<rule>.+?)(?:_wildcards_.*)?$")
FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: (?P<rule>\w+)\)")
# JSON keys holding wall-clock durations (e.g. per-epoch "seconds" in the training
# checkpoint's state); they differ between any two runs and are not compared.
WALL_CLOCK_KEYS = {"seconds"}
#: model/config.json records the SHA-256 of the model files; a ``.keras`` archive stores the
#: time it was saved, so the digest of the same weights differs between two runs (the
#: weights themselves are compared through checkpoint.h5 and every prediction).
SAVE_TIME_KEYS = {"cnn3d.keras"}
TIMINGS = {}


def _env(snapshot):
    """Environment of the runs: this Python environment first on PATH, cmpipe from snapshot.

    The SLURM executor submits with `sbatch --export=ALL` and starts each job with the
    Python that runs snakemake (sys.executable), so jobs inherit this environment.
    PYTHONPATH puts the snapshot's cmpipe ahead of the (editable) installed one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")])
    code = str(snapshot / "code")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code, env.get("PYTHONPATH")) if p)
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def _run(cmd, log, timeout, **kwargs):
    """Run cmd, output to the file log; return (CompletedProcess, seconds)."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, timeout=timeout, **kwargs,
        )
    return proc, time.monotonic() - t0


def _tail(path, n=60):
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """The workflow (snapshot/workflow) and cmpipe (snapshot/code), copied once for all runs."""
    dest = tmp_path_factory.mktemp("snapshot")
    ignore = shutil.ignore_patterns("__pycache__")
    (dest / "workflow").mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / "workflow" / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / "workflow" / name)
    shutil.copytree(REPO / "src" / "cmpipe", dest / "code" / "cmpipe", ignore=ignore)
    return dest


def _copy_workflow(snapshot, dest):
    shutil.copytree(snapshot / "workflow", dest)
    return dest


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """The one-node cluster of tests/slurm/start_cluster.sh, stopped again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test starts system daemons and needs root (CI runs as root)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    log = tmp_path_factory.mktemp("cluster") / "start_cluster.log"

    def stop():
        if os.environ.get("CMPIPE_KEEP_SLURM") != "1":
            subprocess.run(["bash", str(CLUSTER_SCRIPTS / "stop_cluster.sh")], timeout=300, check=False)

    try:
        proc, seconds = _run(["bash", str(CLUSTER_SCRIPTS / "start_cluster.sh")], log, timeout=900)
    except subprocess.TimeoutExpired:
        stop()
        pytest.fail(f"start_cluster.sh did not finish in 900 s:\n{_tail(log)}")
    TIMINGS["install + start cluster"] = seconds
    print(f"\n[slurm] start_cluster.sh: {seconds:.1f} s\n{_tail(log, 20)}")
    if proc.returncode != 0:
        stop()
        pytest.fail(f"start_cluster.sh failed (exit {proc.returncode}):\n{_tail(log)}")
    yield
    stop()
    print("\n[slurm] timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))


def _snakemake_on_slurm(workdir, snapshot, *args, timeout=1200):
    """Run snakemake with the SLURM profile in workdir; the log and this run's sacct rows."""
    log = workdir.parent / "snakemake.log"
    cmd = [
        *SNAKEMAKE,
        "--executor", "slurm",
        "--profile", "profiles/slurm",
        "--workflow-profile", "none",  # profiles/default would override the SLURM settings
        "--directory", str(workdir),
        # A one-node test cluster answers at once; poll sooner than the 40 s default
        # (polls come 3, 16, 39, ... s after the last job finished).
        "--slurm-init-seconds-before-status-checks", "3",
        "--slurm-keep-successful-logs",
        *args,
    ]
    print("\n[slurm] " + " ".join(cmd))
    try:
        proc, seconds = _run(cmd, log, timeout=timeout, cwd=workdir, env=_env(snapshot))
    except subprocess.TimeoutExpired:
        run_id = re.search(r"SLURM run ID: (\S+)", log.read_text(errors="replace"))
        if run_id:
            subprocess.run(["scancel", "--name", run_id[1]], check=False)
        pytest.fail(f"snakemake on SLURM did not finish in {timeout} s:\n{_tail(log)}")
    text = log.read_text(errors="replace")
    run_id = re.search(r"SLURM run ID: (\S+)", text)
    rows, table = _sacct(run_id[1]) if run_id else ([], "")
    (workdir.parent / "sacct.txt").write_text(table)
    print(f"[slurm] snakemake on SLURM: {seconds:.1f} s, exit {proc.returncode}")
    print(f"[slurm] sacct of run {run_id[1] if run_id else '?'}:\n{table}")
    if proc.returncode != 0:
        pytest.fail(
            f"snakemake on SLURM failed (exit {proc.returncode}); log {log}, last lines:\n"
            f"{_tail(log)}\nsacct:\n{table}"
        )
    assert run_id, f"no 'SLURM run ID' in the snakemake log {log}"
    return {"workdir": workdir, "log": text, "sacct": rows, "sacct_text": table, "seconds": seconds}


@pytest.fixture(scope="module")
def local_process(snapshot, tmp_path_factory):
    """The reference: the same config run locally with --cores 2, started in the background.

    It runs while the SLURM run waits on its jobs; `local_run` collects it.
    """
    workdir = _copy_workflow(snapshot, tmp_path_factory.mktemp("local") / "workflow")
    log = workdir.parent / "snakemake.log"
    cmd = [*SNAKEMAKE, *SLURM_TARGETS, "--cores", "2", "--configfile", CONFIG,
           "--directory", str(workdir)]
    print("\n[slurm] local reference run, in the background: " + " ".join(cmd))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir, env=_env(snapshot), start_new_session=True,
        )
    yield {"proc": proc, "workdir": workdir, "log": log, "t0": time.time()}
    if proc.poll() is None:  # a failed test left it running: end it and its jobs
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, local_process, snapshot, tmp_path_factory):
    """The tiny config submitted to SLURM: workdir, snakemake log and the sacct rows."""
    workdir = _copy_workflow(snapshot, tmp_path_factory.mktemp("slurm") / "workflow")
    run = _snakemake_on_slurm(workdir, snapshot, *SLURM_TARGETS, "--configfile", CONFIG)
    TIMINGS["SLURM run"] = run["seconds"]
    return run


def _sacct(run_id):
    """sacct rows (dicts) of the jobs named run_id, and the same as a readable table."""
    base = ["sacct", "--allusers", "--allocations", "--name", run_id, "--starttime", "now-1days"]
    rows = subprocess.run(
        [*base, "--parsable2", "--noheader", f"--format={SACCT_FIELDS}"],
        capture_output=True, text=True, check=True,
    ).stdout
    keys = SACCT_FIELDS.split(",")
    parsed = [dict(zip(keys, line.split("|"))) for line in rows.splitlines() if line.strip()]
    table = subprocess.run(
        [*base, "--format=JobID,Comment%40,NodeList%10,AllocCPUS,ReqMem,AllocTRES%45,State,ExitCode,Elapsed"],
        capture_output=True, text=True, check=True,
    ).stdout
    return parsed, table


@pytest.fixture(scope="module")
def local_run(local_process):
    """The finished local reference run: workdir and snakemake log."""
    proc, log = local_process["proc"], local_process["log"]
    try:
        proc.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the local run did not finish in 1200 s:\n{_tail(log)}")
    seconds = log.stat().st_mtime - local_process["t0"]  # its last output: when it ended
    TIMINGS["local run (concurrent)"] = seconds
    print(f"\n[slurm] local reference run: {seconds:.1f} s, exit {proc.returncode}")
    if proc.returncode != 0:
        pytest.fail(f"the local run failed (exit {proc.returncode}):\n{_tail(log)}")
    return {"workdir": local_process["workdir"], "log": log.read_text(errors="replace")}


def _rules_finished(log):
    """Rule of every job a snakemake log reports as finished, as a Counter."""
    return Counter(m["rule"] for m in FINISHED.finditer(log))


def _gpu_rules(log):
    """Rules whose jobs request a GPU (`gpu=N` among the resources a snakemake log lists)."""
    rules, rule = set(), None
    for line in log.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m[1]
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            if re.search(r"\bgpu=[1-9]", m[1]):
                rules.add(rule)
            rule = None
    return rules


def _job_rule(row):
    m = RULE_COMMENT.match(row["Comment"])
    assert m, f"SLURM job {row['JobID']} has no rule_<name> comment: {row}"
    return m["rule"]


def test_every_job_ran_as_a_completed_slurm_job(slurm_run, local_run):
    rows = slurm_run["sacct"]
    assert rows, "sacct shows no job of this run"
    not_completed = [r for r in rows if r["State"] != "COMPLETED" or r["ExitCode"] != "0:0"]
    assert not not_completed, f"jobs not COMPLETED:\n{slurm_run['sacct_text']}"

    on_slurm = Counter(_job_rule(r) for r in rows)
    # Every job of the workflow, except those of local rules (`all`, `localrules:`), which
    # Snakemake runs itself and announces as "localrule <name>:".
    local_rules = set(re.findall(r"^localrule (\w+):$", slurm_run["log"], re.M))
    assert "train" in _rules_finished(slurm_run["log"])
    expected = Counter(
        {rule: n for rule, n in _rules_finished(local_run["log"]).items() if rule not in local_rules}
    )
    assert on_slurm == expected, (
        f"SLURM jobs per rule {dict(on_slurm)} differ from the jobs of the local run "
        f"{dict(expected)} (local rules: {sorted(local_rules)})\n{slurm_run['sacct_text']}"
    )


def test_gpu_rules_get_a_gpu(slurm_run):
    gpu_rules = _gpu_rules(slurm_run["log"])
    ran = {_job_rule(r) for r in slurm_run["sacct"]}
    if "train" in ran:
        assert "train" in gpu_rules, "rule train must declare resources: gpu=1"
    if not gpu_rules:
        pytest.skip(f"no rule of this DAG requests a GPU yet (rules: {sorted(ran)})")
    for row in slurm_run["sacct"]:
        has_gpu = "gres/gpu=1" in row["AllocTRES"].split(",")
        if _job_rule(row) in gpu_rules:
            assert has_gpu, f"GPU job without a GPU allocation: {row}"
        else:
            assert "gres/gpu" not in row["AllocTRES"], f"CPU job holds a GPU: {row}"


def _h5_items(path):
    """{name: (attrs, array or None)} of every group and dataset of an HDF5 file."""
    items = {}
    with h5py.File(path, "r") as f:
        items["/"] = (dict(f.attrs), None)
        f.visititems(
            lambda name, obj: items.__setitem__(
                name, (dict(obj.attrs), obj[()] if isinstance(obj, h5py.Dataset) else None)
            )
        )
    return items


def _is_json(s):
    try:
        json.loads(s)
    except ValueError:
        return False                               # e.g. "[0, sqrt(2) half_width]"
    return True


def _assert_same_value(a, b, where):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if np.issubdtype(a.dtype, np.floating):
            rtol = 1e-5 if a.dtype == np.float32 else 1e-10
            atol = rtol * float(np.nanmax(np.abs(a), initial=0.0))
            np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
        else:
            np.testing.assert_array_equal(b, a, err_msg=where)
    elif isinstance(a, str) and a.startswith(("{", "[")) and _is_json(a):
        _assert_same_json(json.loads(a), json.loads(b), where)   # e.g. a checkpoint's state
    elif isinstance(a, (float, np.floating)):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-300) or (math.isnan(a) and math.isnan(b)), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_json(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for k in a.keys() - WALL_CLOCK_KEYS - SAVE_TIME_KEYS:
            _assert_same_json(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-12) or (
            math.isnan(a) and math.isnan(b)
        ), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _products(workdir):
    root = workdir / "results" / RUN
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in {".h5", ".json", ".png"}
    }


def test_products_match_the_local_run(slurm_run, local_run):
    on_slurm, local = _products(slurm_run["workdir"]), _products(local_run["workdir"])
    assert sorted(on_slurm) == sorted(local)
    assert any(name.endswith(".h5") for name in local)
    for name, ref in sorted(local.items()):
        got = on_slurm[name]
        if name.endswith(".h5"):
            a, b = _h5_items(ref), _h5_items(got)
            assert a.keys() == b.keys(), f"{name}: groups/datasets differ"
            for key, (attrs, data) in a.items():
                assert attrs.keys() == b[key][0].keys(), f"{name}:{key}: attributes differ"
                for attr, value in attrs.items():
                    _assert_same_value(value, b[key][0][attr], f"{name}:{key}@{attr}")
                if data is not None:
                    _assert_same_value(data, b[key][1], f"{name}:{key}")
        elif name.endswith(".json"):
            _assert_same_json(json.loads(ref.read_text()), json.loads(got.read_text()), name)
        else:  # figures: drawn from the compared data; bytes may differ (metadata)
            assert got.stat().st_size > 0, f"{name} is empty"
