"""Which device TensorFlow uses, said in one log line; its start-up noise kept off the console.

On a machine without a usable NVIDIA driver, ``import tensorflow`` and its first device query
write lines such as ``E0000 ... failed call to cuInit: ... (303)`` and ``Could not find cuda
drivers on your machine`` straight to file descriptor 2, before TensorFlow's own log
settings (``TF_CPP_MIN_LOG_LEVEL``) are in force. In a healthy CPU-only run these read as
failures in every TensorFlow job. :func:`quiet_tensorflow_startup` (called by
:func:`cmpipe.stages.run_rule` before a rule's code runs) arranges that, when TensorFlow is
first imported, the import and the first device query run with file descriptor 2 captured;
the known start-up lines (:data:`STARTUP_NOISE`) are dropped, everything else is written
back to stderr unchanged (Python warnings, real errors), and one ``INFO`` line says which
device TensorFlow uses. Its thread pools are sized to ``OMP_NUM_THREADS`` when that is set
(Snakemake sets it to a rule's ``threads`` in each job). Later C++ messages below ``ERROR``
are hidden by ``TF_CPP_MIN_LOG_LEVEL=2`` (set unless the environment sets it); errors still show.

``TF_CPP_MIN_LOG_LEVEL=0`` in the environment turns all of this off (everything is shown),
for debugging TensorFlow itself.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["STARTUP_NOISE", "quiet_tensorflow_startup", "is_startup_noise",
           "nvidia_driver_present"]

log = logging.getLogger(__name__)

#: Lines TensorFlow writes while it is imported and probes for CUDA that carry no news in a
#: healthy run (matched against each line; glog prefix ``I0000 00:00:... file.cc:N]``).
STARTUP_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^[IW]\d{4} [\d:. ]+\s*\d+ [\w./-]+:\d+\] ",  # INFO/WARNING records of the C++ runtime
    r"^E\d{4} [\d:. ]+\s*\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\] "
    r"(failed call to cuInit|.*CUDA_ERROR_NO_DEVICE|.*cuda drivers)",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate "
    r"compiler flags\.$",  # second line of cpu_feature_guard's INFO record
))


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` (without its newline) is one of TensorFlow's start-up messages."""
    return any(p.search(line) for p in STARTUP_NOISE)


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA kernel driver is loaded here (``/dev/nvidiactl`` exists)."""
    return Path("/dev/nvidiactl").exists()


def _report_device(tf, dropped: list[str]) -> None:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log.info("TensorFlow %s: using GPU (%s)", tf.__version__,
                 ", ".join(g.name for g in gpus))
    elif nvidia_driver_present():
        # a driver but no usable GPU is a real problem: show what CUDA said
        cuda = [ln for ln in dropped if "cuInit" in ln or "cuda" in ln.lower()]
        log.warning("TensorFlow %s: NVIDIA driver present but no GPU usable, running on the "
                    "CPU%s", tf.__version__, (": " + " | ".join(cuda)) if cuda else "")
    else:
        log.info("TensorFlow %s: no GPU (no NVIDIA driver on this machine), running on the "
                 "CPU", tf.__version__)


def _limit_threads(tf) -> None:
    """Size TensorFlow's thread pools to the job's threads. Snakemake sets
    ``OMP_NUM_THREADS`` to a rule's ``threads`` in its jobs' environment, which TensorFlow's
    own pools ignore: a one-thread training would run two threads and contend with the job
    beside it. Without the variable (``cmpipe infer``, tests) TensorFlow keeps its default
    (every core)."""
    n = os.environ.get("OMP_NUM_THREADS", "")
    if n.isdigit() and int(n) > 0:
        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        tf.config.threading.set_inter_op_parallelism_threads(int(n))


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with fd 2 captured, then filters what was written."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):  # get_filename, get_resource_reader, ...
        return getattr(self._loader, name)

    def exec_module(self, module):
        # the module keeps TensorFlow's own loader (importlib.resources and friends use it)
        module.__loader__ = module.__spec__.loader = self._loader
        sys.stderr.flush()
        saved = os.dup(2)
        dropped: list[str] = []
        with tempfile.TemporaryFile(mode="w+b") as cap:
            os.dup2(cap.fileno(), 2)
            try:
                self._loader.exec_module(module)
                try:
                    _limit_threads(module)
                except Exception as err:  # noqa: BLE001 - must not fail a rule
                    log.warning("TensorFlow thread pools not sized to OMP_NUM_THREADS: %s",
                                err)
                try:
                    _report_device(module, dropped)  # the first device query runs cuInit
                except Exception as err:  # noqa: BLE001 - a device query must not fail a rule
                    log.warning("TensorFlow device query failed: %s", err)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                cap.seek(0)
                kept = []
                for raw in cap.read().decode(errors="replace").splitlines(keepends=True):
                    (dropped if is_startup_noise(raw.rstrip("\n")) else kept).append(raw)
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


class _TensorFlowImportHook(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the usual way and hands it a :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports are cached anyway
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_startup() -> None:
    """Keep TensorFlow's start-up noise off stderr and log the device it uses (idempotent).

    Call before TensorFlow is imported; does nothing once it is, or when the environment sets
    ``TF_CPP_MIN_LOG_LEVEL=0``.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not any(isinstance(f, _TensorFlowImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowImportHook())
