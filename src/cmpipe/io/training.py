"""Files a network writes while and after it trains: the per-epoch checkpoint, the loss
histories and the atomic saves of the trained model.

- ``checkpoint.h5`` (:func:`write_checkpoint`, :func:`read_checkpoint`): one HDF5 file
  holding the JSON training state (attribute ``state``) and groups ``model``, ``optimizer``
  and ``best`` of numbered arrays (the model variables, the optimizer variables, the best
  weights so far), written atomically after every epoch (:mod:`cmpipe.cnn.training`).
- ``history.csv`` of the CNN (:func:`write_history`, :func:`read_history`): ``epoch, loss,
  val_loss, lr, seconds``; losses are the MSE of the standardised log10 M200c, values
  written with ``repr`` (full precision).
- ``history.csv`` of the neural flow (:func:`write_flow_history`,
  :func:`read_flow_history`): ``epoch, loss, val_loss, seconds``; losses are the NLL per
  cluster in nats of the log10 M density, written with 6 significant digits.
- :func:`save_keras_model`, :func:`save_torch_state`: a trained model written so that an
  interrupted save never leaves a half-written file under the final name.

Only NumPy, h5py and the standard library are imported at module level: the plotting rules
read the histories without Keras or torch.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from .tables import CatalogueError, atomic_output

__all__ = ["CHECKPOINT_FORMAT", "HISTORY_COLUMNS", "FLOW_HISTORY_COLUMNS", "write_checkpoint",
           "read_checkpoint", "write_history", "read_history", "write_flow_history",
           "read_flow_history", "save_keras_model", "save_torch_state"]

logger = logging.getLogger(__name__)

#: ``format`` attribute of a checkpoint file; a file without it is not resumed.
CHECKPOINT_FORMAT = "cmpipe-train-checkpoint-1"
#: Columns of the CNN's ``history.csv``.
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr", "seconds")
#: Columns of the flow's ``history.csv``.
FLOW_HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "seconds")

_CHECKPOINT_GROUPS = ("model", "optimizer", "best")


def write_checkpoint(path, state: dict, groups: dict) -> None:
    """Write a training checkpoint in one atomic HDF5 file.

    Parameters
    ----------
    path : path-like
        The checkpoint file (replaced atomically).
    state : dict
        JSON-serialisable training state (epochs done, history, best loss, fingerprint...).
    groups : dict of list of ndarray
        ``model``, ``optimizer`` and ``best`` variable arrays, in the model's variable order
        (``best`` may be empty).
    """
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["state"] = json.dumps(state)
            for group in _CHECKPOINT_GROUPS:
                arrays = groups[group]
                g = f.create_group(group)
                g.attrs["n"] = len(arrays)
                for i, a in enumerate(arrays):
                    g.create_dataset(f"{i:04d}", data=np.asarray(a))


def read_checkpoint(path):
    """``(state, model_arrays, optimizer_arrays, best_arrays)`` of a checkpoint file, or None
    (with a warning) when it is unreadable or of another format."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                return None
            state = json.loads(f.attrs["state"])
            groups = [[f[g][f"{i:04d}"][()] for i in range(int(f[g].attrs["n"]))]
                      for g in _CHECKPOINT_GROUPS]
    except (OSError, KeyError, ValueError) as err:
        logger.warning("%s: unreadable checkpoint (%s); starting afresh", path, err)
        return None
    return (state, *groups)


def write_history(path, rows) -> None:
    """The CNN's per-epoch history (dicts with :data:`HISTORY_COLUMNS`) as CSV, atomically;
    floats written with ``repr`` (round-trip exact)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (r[k] if k == "epoch" else repr(float(r[k])))
                            for k in HISTORY_COLUMNS})


def read_history(path) -> dict[str, np.ndarray]:
    """Columns of a CNN ``history.csv`` (epoch from 1; losses in standardised log10 M
    units^2, lr the Adam step size, seconds the epoch's wall time)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) if k != "epoch"
            else np.array([int(r[k]) for r in rows], dtype=int) for k in HISTORY_COLUMNS}


def write_flow_history(path, rows) -> None:
    """The flow's per-epoch history (dicts with :data:`FLOW_HISTORY_COLUMNS`, in that
    order) as CSV, atomically; floats with 6 significant digits."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(FLOW_HISTORY_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                            for k, v in r.items()})


def read_flow_history(path) -> dict[str, np.ndarray]:
    """Columns of the flow's ``history.csv``: epoch, loss and val_loss (NLL per cluster,
    nats, of the log10 M density), seconds."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {k: np.array([float(r[k]) for r in rows]) for k in FLOW_HISTORY_COLUMNS}
    except (OSError, KeyError, ValueError) as err:
        raise CatalogueError(path, "history", f"unreadable training history ({err})",
                             "rerun the flow_train rule") from err


def save_keras_model(model, path) -> None:
    """``model.save`` to ``path`` through a temporary ``.{stem}.tmp-{pid}.keras`` beside it,
    then an atomic rename (Keras wants the ``.keras`` suffix on the file it writes)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_torch_state(state_dict, path) -> None:
    """``torch.save`` of a module's ``state_dict`` to ``path``, atomically."""
    import torch

    with atomic_output(path) as tmp:
        torch.save(state_dict, tmp)
