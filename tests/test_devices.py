"""TensorFlow's start-up noise stays off the console of a rule; real errors still show."""
import os
import re
import subprocess
import sys
from pathlib import Path

from cmpipe.devices import is_startup_noise

ROOT = Path(__file__).resolve().parents[1]

# What TensorFlow 2.21 printed for every job of a healthy CPU-only run before cmpipe.devices.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796349630.247302    7650 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796349630.247581    7650 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796349633.567395    7650 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
]
NOT_NOISE = [
    "E0000 00:00:1796349633.567395    7650 op_kernel.cc:1857] OP_REQUIRES failed at "
    "reshape_op.h:71 : INVALID_ARGUMENT: Input to reshape is a tensor with 3 values",
    "F0000 00:00:1796349633.567395    7650 bfc_allocator.cc:12] Check failed: out of memory",
    "Traceback (most recent call last):",
    "2026-12-04 02:10:06,394 WARNING cmpipe: something",
]

CHILD = r"""
import sys
from cmpipe.stages import run_rule

def healthy():
    import keras  # noqa: F401  (imports tensorflow, as cmpipe.cnn.training does)
    import tensorflow as tf
    print("sum", float(tf.reduce_sum(tf.constant([1.0, 2.0]))), file=sys.stderr)

def broken():
    import tensorflow as tf
    tf.reshape(tf.constant([1.0, 2.0, 3.0]), (2, 2))

run_rule(healthy, sys.argv[1])
run_rule(broken, sys.argv[2])
"""


def test_startup_lines_are_recognised_and_real_errors_are_not():
    assert all(is_startup_noise(line) for line in NOISE)
    assert not any(is_startup_noise(line) for line in NOT_NOISE)


def test_a_tensorflow_rule_logs_its_device_and_keeps_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env.update(PYTHONPATH=str(ROOT / "src"), KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ok.log"),
                           str(tmp_path / "bad.log")], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    err = proc.stderr
    # the healthy rule: its output, one device line, none of TensorFlow's start-up lines
    assert "sum 3.0" in err
    assert not re.search(r"^[IWE]\d{4} |cuInit|cuda drivers|absl::InitializeLog", err, re.M), err
    log = (tmp_path / "ok.log").read_text()
    device = re.findall(r"TensorFlow [\d.]+: (?:using GPU|no GPU|NVIDIA driver present)", log)
    assert len(device) == 1, log
    # the broken rule still fails, loudly, with TensorFlow's own message
    assert proc.returncode != 0
    assert "InvalidArgumentError" in err and "Traceback" in err
    assert "reshape" in err.lower()


THREADS_CHILD = """
from cmpipe.devices import quiet_tensorflow_startup
quiet_tensorflow_startup()
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def test_tensorflow_threads_follow_the_job_threads():
    """Snakemake gives a job OMP_NUM_THREADS = the rule's threads; TensorFlow's own pools
    ignore it, so a one-thread training ran two threads beside another job (issue 31).
    With the variable the pools are that size; without, TensorFlow's default (0: every
    core)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    for omp, want in (("1", "1 1"), ("3", "3 3"), (None, "0 0")):
        e = dict(env, **({"OMP_NUM_THREADS": omp} if omp else {}))
        proc = subprocess.run([sys.executable, "-c", THREADS_CHILD], capture_output=True,
                              text=True, env=e, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == want, (omp, proc.stdout)
