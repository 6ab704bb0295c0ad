"""The per-epoch state of a CNN training run: seeds, history, early stopping, the checkpoint
and its fingerprint, and resuming from it (used by :func:`cmpipe.cnn.training.train`).

After every epoch one HDF5 file ``checkpoint.h5`` is written atomically
(:func:`cmpipe.io.training.write_checkpoint`) holding the model variables, the optimizer
variables (Adam moments, iteration count, learning rate), the best weights so far and a
JSON state (:func:`initial_state`: completed epochs, history, best validation loss and
epoch, early-stopping wait count, seed and a :func:`fingerprint` of the settings and data).
The data part holds the ``content_digest`` of both cube files
(:func:`cmpipe.io.cubes.cube_digest`: a hash of every cube and mass), so cubes remade with
another KDE bandwidth, window or mock are other data even when their number and grid are
the same. :func:`resume` restores a checkpoint whose fingerprint matches; one that does not
is ignored with a warning that names what changed (:func:`fingerprint_change`).

Seeds: the Keras/TF/NumPy/Python global generators are reset from
``seed32(seed, e, 1)`` at the start of epoch ``e`` (:class:`EpochState`), so a resumed run
replays exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from ..sections import SPEED_ONLY_KEYS  # noqa: E402
from ..io.training import (CHECKPOINT_FORMAT, read_checkpoint,  # noqa: E402
                           write_checkpoint, write_history)

__all__ = ["seed32", "assign_variables", "fingerprint", "fingerprint_change",
           "initial_state", "resume", "EpochState"]

logger = logging.getLogger(__name__)


def seed32(*keys) -> int:
    """A 31-bit seed derived from integer ``keys`` (for Keras/TF/numpy global seeding)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def assign_variables(variables, arrays, what: str) -> None:
    """Assign checkpoint ``arrays`` to model/optimizer ``variables`` (same count and shapes,
    else ``ValueError`` naming ``what``)."""
    if len(variables) != len(arrays):
        raise ValueError(f"checkpoint holds {len(arrays)} {what} variables, model has "
                         f"{len(variables)}")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != a.shape:
            raise ValueError(f"checkpoint {what} variable {v.path}: shape {a.shape} != "
                             f"{tuple(v.shape)}")
        v.assign(a)


def _fingerprint_settings(settings) -> dict:
    d = settings.to_dict()
    # more epochs may continue a run; output and the speed-only keys (the memory budget)
    # do not change results
    for k in ("epochs", "verbose", *SPEED_ONLY_KEYS["train"]):
        d.pop(k, None)
    return d


def fingerprint(settings, data: dict) -> str:
    """Identity of a training run: its settings (a :class:`cmpipe.cnn.training.TrainSettings`)
    and its data (cube contents by digest), 16 hex digits."""
    blob = json.dumps({"settings": _fingerprint_settings(settings), "data": data},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint_change(saved: dict, settings, data: dict) -> str:
    """What differs between a checkpoint's state and this run, in words, for the log."""
    old_data = saved.get("data") or {}
    changed = [f"data {k}" for k in sorted(set(old_data) | set(data))
               if old_data.get(k) != data.get(k)] if old_data else ["data (unrecorded)"]
    old_set = saved.get("settings") or {}
    new_set = _fingerprint_settings(settings)
    changed += [f"setting {k}" for k in sorted(new_set)
                if k in old_set and old_set.get(k) != new_set.get(k)]
    return ", ".join(changed) or "settings or data"


def initial_state(settings, data_id: dict, fp: str) -> dict:
    """The JSON state of a run before its first epoch (stored in every checkpoint)."""
    return dict(format=CHECKPOINT_FORMAT, fingerprint=fp, seed=settings.seed,
                settings=settings.to_dict(), data=data_id, epochs_done=0, history=[],
                best_val_loss=None, best_epoch=None, wait=0, stopped_early=False,
                rng="epoch e: numpy default_rng((seed, e)) permutation, "
                    "default_rng((seed, e, batch, 0xD4)) augmentation, "
                    "keras.utils.set_random_seed(seed32(seed, e, 1))")


def resume(ckpt_path, model, state: dict, settings, data_id: dict, fp: str):
    """Restore ``model`` (and its optimizer) and ``state`` from a checkpoint file whose
    fingerprint is ``fp``; a missing, unreadable or other run's checkpoint is ignored.

    Returns
    -------
    best_weights : list of ndarray or None
        The best weights so far (None when starting afresh).
    resumed_from : int
        Completed epochs restored (0 when starting afresh).
    """
    best_weights = None
    resumed_from = 0
    if ckpt_path.exists():
        loaded = read_checkpoint(ckpt_path)
        if loaded is not None and loaded[0].get("fingerprint") == fp:
            saved, model_arrays, opt_arrays, best_arrays = loaded
            assign_variables(model.variables, model_arrays, "model")
            assign_variables(model.optimizer.variables, opt_arrays, "optimizer")
            state.update({k: saved[k] for k in ("epochs_done", "history", "best_val_loss",
                                                "best_epoch", "wait", "stopped_early")})
            best_weights = best_arrays or None
            resumed_from = state["epochs_done"]
            logger.info("resuming from %s after epoch %d (best val_loss %s at epoch %s)",
                        ckpt_path, resumed_from, state["best_val_loss"], state["best_epoch"])
        elif loaded is not None:
            logger.warning("%s was written with other %s; ignoring it and training from "
                           "scratch", ckpt_path, fingerprint_change(loaded[0], settings,
                                                                    data_id))
    return best_weights, resumed_from


class EpochState(keras.callbacks.Callback):
    """Seeds, timing, history, early stopping and the per-epoch checkpoint.

    Parameters
    ----------
    settings : cmpipe.cnn.training.TrainSettings
    checkpoint_path, history_path : pathlib.Path
        ``checkpoint.h5`` and ``history.csv``, both rewritten after every epoch.
    state : dict
        The run's state (:func:`initial_state`, or restored by :func:`resume`), updated in
        place.
    best_weights : list of ndarray or None
        The best weights so far; :attr:`best_weights` holds them after training.
    """

    def __init__(self, *, settings, checkpoint_path, history_path, state, best_weights):
        super().__init__()
        self.settings = settings
        self.checkpoint_path = checkpoint_path
        self.history_path = history_path
        self.state = state
        self.best_weights = best_weights
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        keras.utils.set_random_seed(seed32(self.settings.seed, epoch, 1))
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        logs = logs or {}
        if "val_loss" not in logs:
            raise RuntimeError("no val_loss after the epoch: validation did not run")
        loss, val_loss = float(logs["loss"]), float(logs["val_loss"])
        lr = float(self.model.optimizer.learning_rate.numpy())
        st = self.state
        st["history"].append(dict(epoch=epoch + 1, loss=loss, val_loss=val_loss, lr=lr,
                                  seconds=seconds))
        if np.isfinite(val_loss) and (st["best_val_loss"] is None
                                      or val_loss < st["best_val_loss"]):
            st["best_val_loss"], st["best_epoch"], st["wait"] = val_loss, epoch + 1, 0
            self.best_weights = [v.numpy() for v in self.model.variables]
        else:
            st["wait"] += 1
        st["epochs_done"] = epoch + 1
        if st["wait"] >= self.settings.patience:
            st["stopped_early"] = True
            self.model.stop_training = True
        write_checkpoint(self.checkpoint_path, st, {
            "model": [v.numpy() for v in self.model.variables],
            "optimizer": [v.numpy() for v in self.model.optimizer.variables],
            "best": self.best_weights or []})
        write_history(self.history_path, st["history"])
        logger.info("epoch %d: loss %.4g, val_loss %.4g (best %.4g at epoch %d, wait %d/%d), "
                    "%.1f s", epoch + 1, loss, val_loss, st["best_val_loss"] or np.nan,
                    st["best_epoch"] or 0, st["wait"], self.settings.patience, seconds)
        if st["stopped_early"]:
            logger.info("early stopping after epoch %d: no val_loss improvement in %d epochs",
                        epoch + 1, self.settings.patience)
