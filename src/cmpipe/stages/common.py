"""Shared by the stage modules: running a rule with logging, settings, JSON conversion.

One function per pipeline rule: read inputs, call the science modules, write outputs.

These are the edges where I/O happens. ``workflow/scripts/*.py`` call them in a line or two
through :func:`run_rule` (logging to the rule's log file, clean error messages), and the
tests and the ``cmpipe`` CLI call them directly, so the same code runs everywhere.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from .. import io
from ..devices import quiet_tensorflow_startup
from ..io.tables import CatalogueError
from ..settings import ConfigError, Settings

log = logging.getLogger("cmpipe")


def run_rule(func, log_path=None, **kwargs):
    """Run a stage with logging to ``log_path`` (and stderr); known errors exit 1 cleanly.

    Bad input (:class:`CatalogueError`, :class:`ConfigError`, ``ValueError`` raised by our
    checks) is reported as one clear message rather than a traceback.
    """
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's start-up lines (cuInit/CUDA-driver probing on CPU machines) stay off the
    # console; one log line says which device it uses (cmpipe.devices)
    quiet_tensorflow_startup()
    t0 = time.perf_counter()
    try:
        result = func(**kwargs)
    except (CatalogueError, ConfigError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
    log.info("%s finished in %.1f s", func.__name__, time.perf_counter() - t0)
    return result


def settings_of(config) -> Settings:
    return config if isinstance(config, Settings) else Settings.from_config(config)


def box_attrs(attrs):
    return {k: attrs[k] for k in io.catalogues.BOX_ATTRS}


def jsonable(obj):
    """Plain-Python copy of ``obj`` for JSON: numpy scalars/arrays converted, non-finite ->
    None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
