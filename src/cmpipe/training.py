"""Train the CNN on KDE cubes, checkpoint every epoch, predict log10 M200c (pipeline step 6-7).

Data flow
---------
Cubes come from a cube file (:mod:`cmpipe.io.cubes`) through :class:`CubeDataset`: a split
whose uncompressed cubes fit ``TrainSettings.in_memory_max_mb`` (config
``train.in_memory_max_mb``) is read and transformed once and held in memory, so training runs
at the network's speed; a larger one is streamed a batch at a time with a background thread
reading the next batches (memory bounded by a few batches whatever the file size). Both give
the same batches bit for bit. Keras gets one ``tf.data`` stream of training batches over all
epochs (:meth:`CubeDataset.stream`) and an in-memory validation split as arrays, so no input
iterator is torn down and rebuilt between epochs (that stalled half the epochs by ~2 s). Two transforms are applied, identically at training and
prediction time, and both are stored in ``normalisation.json`` beside the model:

* input scaling: ``x = cube * scale`` with ``scale = n_voxels`` (e.g. 50^3). Every cube sums
  to 1, so after scaling the mean voxel is exactly 1 (dimensionless density contrast + 1),
  which keeps the first convolution in a well-conditioned range whatever the grid size;
  with ``input_transform = "log1p"`` then ``x = log(1 + x)``: compact clusters of few
  galaxies (the pure, members-only catalogue) reach ~1e4 in one voxel, a range the linear
  input trains badly on (:func:`transform_inputs`);
* target standardisation: ``z = (log10 M200c - mean) / std`` with ``mean`` and ``std``
  (ddof 0) of the TRAINING split; the network regresses ``z`` (MSE loss) and
  :func:`predict` returns ``z * std + mean`` in log10(h^-1 Msun).

Training (:func:`train`) follows Kodi Ramanah et al. 2020, section 3.4: Adam (lr 1e-4,
beta 0.9/0.999), batch 100, up to 50 epochs, early stopping with patience 5 on the VALIDATION
split only, best weights restored at the end.

Checkpoints and resuming
------------------------
After every epoch one HDF5 file ``checkpoint.h5`` is written atomically (temporary file, then
``os.replace``) holding the model variables, the optimizer variables (Adam moments, iteration
count, learning rate), the best weights so far and a JSON state (completed epochs, history,
best validation loss and epoch, early-stopping wait count, seed and a fingerprint of the
settings and data). The data part holds the ``content_digest`` of both cube files
(:func:`cmpipe.io.cubes.cube_digest`: a hash of every cube and mass), so cubes remade with
another KDE bandwidth, window or mock are other data even when their number and grid are the
same. Rerunning :func:`train` on the same ``out_dir`` resumes after the last completed
epoch; a checkpoint whose fingerprint does not match is ignored with a warning that names
what changed, and training starts afresh. ``normalisation.json`` records the fingerprint,
the cube digests and the settings under ``provenance``. The data order and augmentation of epoch
``e`` are drawn from ``numpy.random.default_rng((seed, e, ...))`` and the Keras/TF seeds are
reset from ``(seed, e)`` at the start of each epoch, so a resumed run replays exactly the
batches an uninterrupted run would have seen.

Determinism: on CPU, training is bit-reproducible for a fixed number of threads without any
special switch (oneDNN and Eigen split their reductions the same way every run; the resume
test checks this). ``TrainSettings.deterministic`` switches on TensorFlow op determinism
(process-wide, it cannot be switched off again): needed for bit-reproducible GPU runs
(cuDNN's backward convolutions use atomics otherwise), but it makes the CPU Conv3D kernels
about 2x slower, so it is off by default. XLA (``xla=True``) and mixed precision are GPU
performance options, ignored with a warning on CPU (XLA's CPU Conv3D is ~30x slower than
oneDNN); their numerics may differ slightly between runs and devices.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from .io.cubes import CubeReader, cube_digest  # noqa: E402
from .io.tables import CatalogueError, atomic_output, write_json  # noqa: E402
from .model import DEFAULT_LAYERS, build_cnn, parameter_count, validate_layers  # noqa: E402

__all__ = [
    "MODEL_FILE",
    "HISTORY_FILE",
    "NORMALISATION_FILE",
    "CHECKPOINT_FILE",
    "HISTORY_COLUMNS",
    "N_D4",
    "TrainSettings",
    "TrainResult",
    "CubeDataset",
    "d4_transform",
    "INPUT_TRANSFORMS",
    "transform_inputs",
    "train",
    "predict",
    "plot_history",
    "read_history",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "cnn3d.keras"
HISTORY_FILE = "history.csv"
NORMALISATION_FILE = "normalisation.json"
CHECKPOINT_FILE = "checkpoint.h5"
_CHECKPOINT_FORMAT = "cmpipe-train-checkpoint-1"
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr", "seconds")

#: Number of exact symmetries of the sky plane (dihedral group D4).
N_D4 = 8


def _seed32(*keys) -> int:
    """A 31-bit seed derived from integer ``keys`` (for Keras/TF/numpy global seeding)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    """How to train the network (defaults: the paper's, section 3.4).

    Parameters
    ----------
    layers : sequence of dict
        Hidden-layer specification (see :mod:`cmpipe.model`); default the authors' CNN3D.
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Cubes per batch.
    learning_rate, beta_1, beta_2 : float
        Adam step size and moment decay rates.
    patience : int
        Early stopping: stop after this many epochs without a lower validation loss.
    augment : bool
        Apply a random one of the 8 sky-plane symmetries (D4 on the x, y axes) to each
        training cube; validation cubes are never augmented.
    seed : int
        Seeds the weight initialisation, the per-epoch shuffling and the augmentation.
    mixed_precision : bool
        Use the ``mixed_float16`` policy with loss scaling; only when a GPU is present
        (ignored with a warning on CPU, where it is slower).
    xla : bool
        Compile the train step with XLA (``jit_compile``); only when a GPU is present
        (ignored with a warning on CPU).
    deterministic : bool
        Switch on TensorFlow op determinism (process-wide): bit-reproducible GPU runs, at
        some cost in speed (~2x on CPU, where runs are reproducible without it).
    in_memory_max_mb : float
        Hold the training cubes, then the validation cubes, in memory when their
        uncompressed size (4 bytes a voxel) fits this budget in MiB (together); otherwise
        stream them from the file with a background prefetch thread. Both give the same
        batches bit for bit, so this is a speed setting, not part of the checkpoint's
        fingerprint. 0 always streams.
    verbose : int
        Keras progress output: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
    """

    layers: tuple = DEFAULT_LAYERS
    epochs: int = 50
    batch_size: int = 100
    learning_rate: float = 1e-4
    beta_1: float = 0.9
    beta_2: float = 0.999
    patience: int = 5
    augment: bool = False
    input_transform: str = "linear"
    seed: int = 0
    mixed_precision: bool = False
    xla: bool = False
    deterministic: bool = False
    in_memory_max_mb: float = 6000.0
    verbose: int = 1

    def __post_init__(self):
        object.__setattr__(self, "layers", validate_layers(self.layers))
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainSettings.{name} must be a positive integer, got {v!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                or self.patience < 1:
            raise ValueError(f"TrainSettings.patience must be an integer >= 1, "
                             f"got {self.patience!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"TrainSettings.{name} must be in [0, 1), got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ValueError(f"TrainSettings.seed must be a non-negative integer, "
                             f"got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if isinstance(self.in_memory_max_mb, bool) or not self.in_memory_max_mb >= 0:
            raise ValueError(f"TrainSettings.in_memory_max_mb must be >= 0 (MiB), "
                             f"got {self.in_memory_max_mb!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        """Build from a (config) mapping; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-ready dict (layers as a list of dicts)."""
        d = dataclasses.asdict(self)
        d["layers"] = [dict(s) for s in self.layers]
        return d


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced (paths in ``out_dir``; epochs counted from 1)."""

    model_path: Path
    history_path: Path
    normalisation_path: Path
    checkpoint_path: Path
    n_params: int
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def d4_transform(a: np.ndarray, t: int, axes=(0, 1)) -> np.ndarray:
    """Apply element ``t`` (0-7) of the dihedral group D4 to the plane ``axes`` of ``a``.

    ``t = 0-3`` rotate by ``t`` x 90 degrees; ``t = 4-7`` first swap the two axes
    (x <-> y) and then rotate. Together these are the 8 maps (x, y) -> (+-x, +-y) and
    (+-y, +-x), the exact symmetries of a square sky window centred on the cluster; all
    other axes (the line-of-sight velocity) are untouched.

    Parameters
    ----------
    a : ndarray
        Array with at least two axes, e.g. a cube ``(x, y, v)``.
    t : int
        Group element, 0 <= t < 8; 0 is the identity.
    axes : tuple of int
        The two sky axes of ``a``.

    Returns
    -------
    ndarray
        A view of ``a`` (copy it before writing in place).
    """
    t = int(t)
    if not 0 <= t < N_D4:
        raise ValueError(f"D4 element must be in 0..7, got {t}")
    if t >= 4:
        a = np.swapaxes(a, *axes)
    return np.rot90(a, k=t % 4, axes=axes)


#: Input transforms after the scaling ``x = cube * scale`` (normalisation.json "function").
INPUT_TRANSFORMS = {
    "linear": "x = cube * scale; cubes sum to 1, so the mean voxel is 1",
    "log1p": "x = log(1 + cube * scale): the scaled density, its dynamic range compressed",
}


def transform_inputs(x: np.ndarray, scale: float, function: str = "linear") -> np.ndarray:
    """The network input of normalised KDE inputs ``x`` (float32, modified in place and
    returned): ``x * scale`` and, for ``function == "log1p"``, ``log(1 + x * scale)``.
    Training, :func:`predict` and the analyses all go through here."""
    x *= np.float32(scale)
    if function == "log1p":
        np.log1p(x, out=x)
    elif function != "linear":
        raise ValueError(f"unknown input transform {function!r}; one of "
                         f"{sorted(INPUT_TRANSFORMS)}")
    return x


class CubeDataset(keras.utils.PyDataset):
    """Batches ``(x, z)`` of a cube file, for ``keras.Model.fit``: in memory or streamed.

    ``x`` is the network input (:func:`transform_inputs` of the cubes, float32,
    ``(b, n, n, n)``), ``z`` the standardised ``(log10 M200c - target_mean) / target_std``
    (float32, ``(b, 1)``). The per-cube columns (a few numbers per cube) are always read once.

    Two ways to get the cubes, with identical batches (same cubes, same order, same
    augmentation, bit for bit):

    * **in memory** when the split's uncompressed cubes fit ``memory_mb``: the whole file is
      read and decompressed once, in one contiguous read, and transformed once; a batch is a
      fancy-indexed copy. Training then runs at the speed of the network.
    * **streamed** otherwise: each batch is read from the file (one HDF5 chunk per cube), and
      a background thread reads the next ``prefetch`` batches while the network trains on
      this one. Memory stays bounded by ``prefetch + 1`` batches whatever the file
      size.

    Parameters
    ----------
    path : path-like
        Cube file.
    batch_size : int
        Cubes per batch; the last batch may be smaller.
    target_mean, target_std : float
        Standardisation of log10 M200c (log10 h^-1 Msun); from the training split.
    input_scale : float, optional
        Multiplies every cube; default the number of voxels (mean voxel = 1).
    input_transform : {"linear", "log1p"}
        Applied after the scaling (:func:`transform_inputs`).
    shuffle : bool
        Draw a fresh permutation of the cubes each epoch from
        ``numpy.random.default_rng((seed, epoch))``; the indices of each batch are sorted
        (locality in the file, and the same order in memory).
    augment : bool
        Apply a random D4 sky-plane symmetry per cube (:func:`d4_transform`), drawn from
        ``default_rng((seed, epoch, batch, 0xD4))``, so a batch depends only on
        ``(seed, epoch, batch)``, never on the order Keras asks for batches.
    seed : int
        Seed for shuffling and augmentation.
    epoch : int
        First epoch (set on resume); :meth:`set_epoch` moves it on.
    memory_mb : float or None
        Hold the split in memory when its uncompressed cubes (4 bytes a voxel) take at most
        this many MiB; ``0`` or ``None`` always streams.
    prefetch : int
        Streamed mode: batches read ahead by the background thread (0: none).
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` for
        :class:`keras.utils.PyDataset`.
    """

    def __init__(self, path, batch_size: int = 100, *, target_mean: float = 0.0,
                 target_std: float = 1.0, input_scale: float | None = None,
                 input_transform: str = "linear", shuffle: bool = False,
                 augment: bool = False, seed: int = 0, epoch: int = 0,
                 memory_mb: float | None = 0.0, prefetch: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self._reader = None
        self._pid = None
        r = self._open()
        self.n_cubes = len(r)
        self.grid = tuple(r.shape[1:])
        self.input_scale = float(math.prod(self.grid)) if input_scale is None \
            else float(input_scale)
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {sorted(INPUT_TRANSFORMS)}, "
                             f"got {input_transform!r}")
        self.input_transform = input_transform
        self.log10_m200c = r.column("log10_m200c").astype(np.float64)
        self._epoch = int(epoch)
        self._perm_cache = (None, None)
        self.nbytes = 4 * self.n_cubes * math.prod(self.grid)
        self._data = None
        if memory_mb and self.nbytes <= float(memory_mb) * 2 ** 20:
            t0 = time.perf_counter()
            self._data = transform_inputs(np.ascontiguousarray(r.cubes(0, self.n_cubes),
                                                               dtype=np.float32),
                                          self.input_scale, self.input_transform)
            self.close()
            logger.info("%s: %d cubes held in memory (%.0f MiB, read in %.1f s)", self.path,
                        self.n_cubes, self.nbytes / 2 ** 20, time.perf_counter() - t0)
        self.prefetch = 0 if self._data is not None else max(0, int(prefetch))
        self._pool = None
        self._pending: dict = {}

    @property
    def in_memory(self) -> bool:
        """Whether the cubes are held in memory (else read from the file per batch)."""
        return self._data is not None

    # -- file handle (reopened in a forked worker process) --
    def _open(self) -> CubeReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = CubeReader(self.path)
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_pool"] = None
        state["_pending"] = {}
        return state

    def close(self):
        """Stop the prefetch thread and close the cube file (reopened on the next read)."""
        if getattr(self, "_pool", None) is not None:
            for fut in self._pending.values():
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
            self._pending = {}
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    # -- epochs --
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int):
        """Select the epoch whose permutation and augmentation the next batches use."""
        self._epoch = int(epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """Cube order of ``epoch`` (identity when not shuffling)."""
        if not self.shuffle:
            return np.arange(self.n_cubes)
        cached_epoch, perm = self._perm_cache
        if cached_epoch != epoch:
            perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.n_cubes)
            self._perm_cache = (epoch, perm)
        return perm

    def batch_indices(self, idx: int, epoch: int | None = None) -> np.ndarray:
        """Sorted cube indices of batch ``idx`` in ``epoch`` (default: the current one)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"batch {idx} out of range (0..{len(self) - 1})")
        epoch = self._epoch if epoch is None else epoch
        sl = slice(idx * self.batch_size, min((idx + 1) * self.batch_size, self.n_cubes))
        return np.sort(self.permutation(epoch)[sl])

    # -- PyDataset interface --
    def __len__(self) -> int:
        return -(-self.n_cubes // self.batch_size)

    def read_inputs(self, idx: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs (transformed and, if enabled, augmented cubes) of batch ``idx``
        and their indices; a pure function of ``(seed, epoch, idx)``."""
        epoch = self._epoch if epoch is None else epoch
        sel = self.batch_indices(idx, epoch)
        if self._data is not None:
            x = self._data[sel]
        else:
            r = self._open()
            if self.shuffle:
                x = r.take(sel)
            else:
                x = np.ascontiguousarray(r.cubes(int(sel[0]), int(sel[-1]) + 1),
                                         dtype=np.float32)
            transform_inputs(x, self.input_scale, self.input_transform)
        if self.augment:
            rng = np.random.default_rng([self.seed, int(epoch), int(idx), 0xD4])
            for j, t in enumerate(rng.integers(0, N_D4, size=len(x))):
                if t:
                    x[j] = d4_transform(x[j], t).copy()
        return x, sel

    def _fetch(self, idx: int, epoch: int):
        """Batch ``idx`` of ``epoch``: from the prefetch thread when it has it; then queue
        the next ``prefetch`` batches of the same epoch."""
        if not self.prefetch:
            return self.read_inputs(idx, epoch)
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cube-prefetch")
        for key in [k for k in self._pending if k[0] != epoch]:   # a finished epoch's
            self._pending.pop(key).cancel()
        fut = self._pending.pop((epoch, idx), None)
        out = fut.result() if fut is not None else self.read_inputs(idx, epoch)
        for j in range(idx + 1, min(idx + 1 + self.prefetch, len(self))):
            if (epoch, j) not in self._pending:
                self._pending[(epoch, j)] = self._pool.submit(self.read_inputs, j, epoch)
        return out

    def iter_inputs(self):
        """``(x, indices)`` of every batch of the current epoch in order (prefetched when
        streaming): for prediction."""
        for i in range(len(self)):
            yield self._fetch(i, self._epoch)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All network inputs and targets in file order (in-memory datasets only; not
        shuffled or augmented): the validation data Keras evaluates in batches."""
        if self._data is None:
            raise ValueError(f"{self.path}: arrays() needs the cubes in memory")
        return self._data, self.targets(np.arange(self.n_cubes))

    def targets(self, sel) -> np.ndarray:
        """Standardised targets ``(b, 1)`` float32 of the cubes ``sel``."""
        return ((self.log10_m200c[sel] - self.target_mean) / self.target_std) \
            .astype(np.float32)[:, None]

    def stream(self, first_epoch: int, prefetch: int = 2):
        """A ``tf.data.Dataset`` of the batches of epoch ``first_epoch``, then of the next
        epoch, and so on without end, for ``model.fit(..., steps_per_epoch=len(self))``.

        One iterator serves the whole fit: Keras restarts a :class:`keras.utils.PyDataset`'s
        ``tf.data`` iterator every epoch, which stalled the first step of an epoch by up to
        2.5 s on a 2-core machine (an epoch is ~2.7 s in memory for the demo). The batches
        are the same as ``self[i]`` in epoch ``e`` (a pure function of ``(seed, e, i)``), so
        reading ahead across an epoch boundary changes nothing. A second iterator over the
        stream (Keras restarting it) raises when the batches depend on the epoch (shuffled
        or augmented); a validation stream's batches do not, so it may restart.
        """
        import tensorflow as tf

        n = len(self)
        started = []

        def batches():
            if started and (self.shuffle or self.augment):
                raise RuntimeError(f"{self.path}: the training stream was restarted; the "
                                   "data order would not be reproducible (Keras changed?)")
            started.append(True)
            epoch = int(first_epoch)
            while True:
                for i in range(n):
                    x, sel = self._fetch(i, epoch)
                    yield x, self.targets(sel)
                epoch += 1

        sig = (tf.TensorSpec((None, *self.grid), tf.float32),
               tf.TensorSpec((None, 1), tf.float32))
        return tf.data.Dataset.from_generator(batches, output_signature=sig) \
            .prefetch(max(1, int(prefetch)))

    def __getitem__(self, idx):
        epoch = self._epoch
        x, sel = self._fetch(int(idx), epoch)
        return x, self.targets(sel)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def _write_checkpoint(path: Path, model, state: dict, best_weights):
    """Write model + optimizer variables, best weights and ``state`` in one atomic file."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = _CHECKPOINT_FORMAT
            f.attrs["state"] = json.dumps(state)
            for group, arrays in (("model", [v.numpy() for v in model.variables]),
                                  ("optimizer", [v.numpy() for v in model.optimizer.variables]),
                                  ("best", best_weights or [])):
                g = f.create_group(group)
                g.attrs["n"] = len(arrays)
                for i, a in enumerate(arrays):
                    g.create_dataset(f"{i:04d}", data=np.asarray(a))


def _read_checkpoint(path: Path):
    """``(state, model_arrays, optimizer_arrays, best_arrays)`` or None if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _CHECKPOINT_FORMAT:
                return None
            state = json.loads(f.attrs["state"])
            groups = [[f[g][f"{i:04d}"][()] for i in range(int(f[g].attrs["n"]))]
                      for g in ("model", "optimizer", "best")]
    except (OSError, KeyError, ValueError) as err:
        logger.warning("%s: unreadable checkpoint (%s); starting afresh", path, err)
        return None
    return (state, *groups)


def _assign(variables, arrays, what):
    if len(variables) != len(arrays):
        raise ValueError(f"checkpoint holds {len(arrays)} {what} variables, model has "
                         f"{len(variables)}")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != a.shape:
            raise ValueError(f"checkpoint {what} variable {v.path}: shape {a.shape} != "
                             f"{tuple(v.shape)}")
        v.assign(a)


def _fingerprint_settings(settings: TrainSettings) -> dict:
    d = settings.to_dict()
    # more epochs may continue a run; output and the memory budget do not change results
    for k in ("epochs", "verbose", "in_memory_max_mb"):
        d.pop(k)
    return d


def _fingerprint(settings: TrainSettings, data: dict) -> str:
    """Identity of a training run: its settings and its data (cube contents by digest)."""
    blob = json.dumps({"settings": _fingerprint_settings(settings), "data": data},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fingerprint_change(saved: dict, settings: TrainSettings, data: dict) -> str:
    """What differs between a checkpoint's state and this run, in words, for the log."""
    old_data = saved.get("data") or {}
    changed = [f"data {k}" for k in sorted(set(old_data) | set(data))
               if old_data.get(k) != data.get(k)] if old_data else ["data (unrecorded)"]
    old_set = saved.get("settings") or {}
    new_set = _fingerprint_settings(settings)
    changed += [f"setting {k}" for k in sorted(new_set)
                if k in old_set and old_set.get(k) != new_set.get(k)]
    return ", ".join(changed) or "settings or data"


class _EpochState(keras.callbacks.Callback):
    """Seeds, timing, history, early stopping and the per-epoch checkpoint."""

    def __init__(self, *, settings, checkpoint_path, history_path, state, best_weights):
        super().__init__()
        self.settings = settings
        self.checkpoint_path = checkpoint_path
        self.history_path = history_path
        self.state = state
        self.best_weights = best_weights
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        keras.utils.set_random_seed(_seed32(self.settings.seed, epoch, 1))
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
        _write_checkpoint(self.checkpoint_path, self.model, st, self.best_weights)
        _write_history(self.history_path, st["history"])
        logger.info("epoch %d: loss %.4g, val_loss %.4g (best %.4g at epoch %d, wait %d/%d), "
                    "%.1f s", epoch + 1, loss, val_loss, st["best_val_loss"] or np.nan,
                    st["best_epoch"] or 0, st["wait"], self.settings.patience, seconds)
        if st["stopped_early"]:
            logger.info("early stopping after epoch %d: no val_loss improvement in %d epochs",
                        epoch + 1, self.settings.patience)


def _write_history(path: Path, rows):
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (r[k] if k == "epoch" else repr(float(r[k])))
                            for k in HISTORY_COLUMNS})


def read_history(path) -> dict[str, np.ndarray]:
    """Columns of a ``history.csv`` (epoch from 1; losses in standardised log10 M units^2)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) if k != "epoch"
            else np.array([int(r[k]) for r in rows], dtype=int) for k in HISTORY_COLUMNS}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _check_cube_file(path, role: str, fix: str) -> tuple[int, tuple]:
    with CubeReader(path) as r:
        n, grid = len(r), tuple(r.shape[1:])
    if n == 0:
        raise CatalogueError(path, "cubes", f"the {role} cube file holds no cubes", fix)
    return n, grid


def _gpu_available() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def train(train_path, val_path, out_dir, settings: TrainSettings | None = None, *,
          callbacks=(),
          model_file: str = MODEL_FILE) -> TrainResult:
    """Train the CNN on a cube file, early-stopping on a validation cube file; resumable.

    Parameters
    ----------
    train_path : path-like
        Training cube file (targets: ``log10_m200c`` in log10 h^-1 Msun).
    val_path : path-like
        Validation cube file, used ONLY for early stopping (never the test/eval splits).
    out_dir : path-like
        Output directory: ``cnn3d.keras`` (best weights), ``history.csv``
        (epoch, loss, val_loss, lr, seconds; losses are MSE of the standardised target),
        ``normalisation.json`` (input scale, target mean/std) and ``checkpoint.h5``. An
        existing matching checkpoint there is resumed.
    settings : TrainSettings, optional
        Defaults: the paper's training set-up.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the checkpointing one.
    model_file : str
        File name of the saved model in ``out_dir`` (default ``cnn3d.keras``; the
        dimensionality ablation saves ``cnn1d.keras`` / ``cnn2d.keras``).

    Returns
    -------
    TrainResult

    Raises
    ------
    CatalogueError
        If a cube file is missing or empty, or the two files have different grids.

    Notes
    -----
    Reseeds the global Python, NumPy and TensorFlow generators
    (``keras.utils.set_random_seed``) from ``settings.seed`` at the start and at every epoch.
    Keep ``checkpoint.h5`` out of a Snakemake rule's declared outputs: Snakemake deletes the
    outputs of a failed job, which would throw the checkpoint away.
    """
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_train, grid = _check_cube_file(
        train_path, "training", "check the splits (more training halos) and rerun the kde rules")
    n_val, val_grid = _check_cube_file(
        val_path, "validation",
        "raise splits.validation_fraction in the config so that some training halos are "
        "held out for early stopping")
    if val_grid != grid:
        raise CatalogueError(val_path, "cubes", f"grid {val_grid} differs from the training "
                             f"grid {grid} of {train_path}", "rerun the kde rules with one config")

    if settings.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    gpu = _gpu_available()
    policy = None
    if settings.mixed_precision:
        if gpu:
            policy = "mixed_float16"
        else:
            logger.warning("mixed_precision requested but no GPU found: training in float32")
    xla = bool(settings.xla)
    if xla and not gpu:
        logger.warning("xla requested but no GPU found: XLA's CPU Conv3D is much slower than "
                       "oneDNN, training without it")
        xla = False
    keras.utils.set_random_seed(_seed32(settings.seed, 0, 0))

    with CubeReader(train_path) as r:
        logm = r.column("log10_m200c").astype(np.float64)
    mean, std = float(logm.mean()), float(logm.std())
    if not std > 0:
        logger.warning("%s: all training masses are equal; using target std 1", train_path)
        std = 1.0
    scale = float(math.prod(grid))
    normalisation = {
        "input": {"scale": scale, "grid": list(grid), "function": settings.input_transform,
                  "transform": INPUT_TRANSFORMS[settings.input_transform]},
        "target": {"column": "log10_m200c", "unit": "log10(h^-1 Msun)", "mean": mean,
                   "std": std, "transform": "z = (log10_m200c - mean) / std",
                   "from": str(train_path), "n_train": n_train},
    }
    ds_kw = dict(target_mean=mean, target_std=std, input_scale=scale,
                 input_transform=settings.input_transform, seed=settings.seed)
    budget = float(settings.in_memory_max_mb)
    train_ds = CubeDataset(train_path, settings.batch_size, shuffle=True,
                           augment=settings.augment, memory_mb=budget, **ds_kw)
    budget -= train_ds.nbytes / 2 ** 20 if train_ds.in_memory else 0.0
    val_ds = CubeDataset(val_path, settings.batch_size, shuffle=False, augment=False,
                         memory_mb=budget, **ds_kw)
    logger.info("input: training cubes %s, validation cubes %s (train.in_memory_max_mb %g)",
                "in memory" if train_ds.in_memory else "streamed with prefetch",
                "in memory" if val_ds.in_memory else "streamed with prefetch",
                settings.in_memory_max_mb)

    model = build_cnn(grid, settings.layers, dtype_policy=policy)
    n_params = parameter_count(model)
    opt = keras.optimizers.Adam(learning_rate=settings.learning_rate, beta_1=settings.beta_1,
                                beta_2=settings.beta_2)
    if policy:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    model.compile(optimizer=opt, loss="mse", jit_compile=xla)
    model.optimizer.build(model.trainable_variables)
    logger.info("training %s (%d parameters) on %d cubes of %s voxels, validating on %d; "
                "device %s%s%s", model.name, n_params, n_train, "x".join(map(str, grid)), n_val,
                "GPU" if gpu else "CPU", ", XLA" if xla else "",
                ", mixed precision" if policy else "")

    data_id = dict(n_train=n_train, n_val=n_val, grid=list(grid), target_mean=mean,
                   target_std=std, train_cubes_digest=cube_digest(train_path),
                   validation_cubes_digest=cube_digest(val_path))
    fingerprint = _fingerprint(settings, data_id)
    normalisation["provenance"] = {
        "fingerprint": fingerprint, "train_cubes": str(train_path),
        "train_cubes_digest": data_id["train_cubes_digest"],
        "validation_cubes": str(val_path),
        "validation_cubes_digest": data_id["validation_cubes_digest"],
        "settings": {k: v for k, v in settings.to_dict().items() if k != "verbose"}}
    ckpt_path = out_dir / CHECKPOINT_FILE
    state = dict(format=_CHECKPOINT_FORMAT, fingerprint=fingerprint, seed=settings.seed,
                 settings=settings.to_dict(), data=data_id, epochs_done=0, history=[], best_val_loss=None,
                 best_epoch=None, wait=0, stopped_early=False,
                 rng="epoch e: numpy default_rng((seed, e)) permutation, "
                     "default_rng((seed, e, batch, 0xD4)) augmentation, "
                     "keras.utils.set_random_seed(seed32(seed, e, 1))")
    best_weights = None
    resumed_from = 0
    if ckpt_path.exists():
        loaded = _read_checkpoint(ckpt_path)
        if loaded is not None and loaded[0].get("fingerprint") == fingerprint:
            saved, model_arrays, opt_arrays, best_arrays = loaded
            _assign(model.variables, model_arrays, "model")
            _assign(model.optimizer.variables, opt_arrays, "optimizer")
            state.update({k: saved[k] for k in ("epochs_done", "history", "best_val_loss",
                                                "best_epoch", "wait", "stopped_early")})
            best_weights = best_arrays or None
            resumed_from = state["epochs_done"]
            logger.info("resuming from %s after epoch %d (best val_loss %s at epoch %s)",
                        ckpt_path, resumed_from, state["best_val_loss"], state["best_epoch"])
        elif loaded is not None:
            logger.warning("%s was written with other %s; ignoring it and training from "
                           "scratch", ckpt_path, _fingerprint_change(loaded[0], settings,
                                                                     data_id))

    hist_path = out_dir / HISTORY_FILE
    cb = _EpochState(settings=settings, checkpoint_path=ckpt_path,
                     history_path=hist_path, state=state, best_weights=best_weights)
    finished = state["stopped_early"] or state["epochs_done"] >= settings.epochs
    if not finished:
        # one stream over all epochs (CubeDataset.stream): no iterator restart per epoch
        if val_ds.in_memory:     # arrays: no generator to tear down after each evaluation
            val = dict(validation_data=val_ds.arrays(), validation_batch_size=settings.batch_size)
        else:
            val = dict(validation_data=val_ds.stream(0), validation_steps=len(val_ds))
        model.fit(train_ds.stream(state["epochs_done"]), steps_per_epoch=len(train_ds),
                  **val, epochs=settings.epochs,
                  initial_epoch=state["epochs_done"], verbose=settings.verbose,
                  callbacks=[cb, *callbacks])
    train_ds.close()
    val_ds.close()

    if cb.best_weights is None:
        raise RuntimeError(f"validation loss was never finite in {state['epochs_done']} "
                           "epochs; lower the learning rate")
    _assign(model.variables, cb.best_weights, "best")
    model_path = out_dir / model_file
    tmp = model_path.with_name(f".{model_path.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, model_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    norm_path = out_dir / NORMALISATION_FILE
    write_json(norm_path, normalisation)
    _write_history(hist_path, state["history"])
    logger.info("wrote %s (best epoch %d of %d, val_loss %.4g)", model_path, state["best_epoch"],
                state["epochs_done"], state["best_val_loss"])
    return TrainResult(model_path=model_path, history_path=hist_path,
                       normalisation_path=norm_path, checkpoint_path=ckpt_path,
                       n_params=n_params, epochs_run=state["epochs_done"],
                       best_epoch=state["best_epoch"], best_val_loss=state["best_val_loss"],
                       stopped_early=state["stopped_early"], resumed_from_epoch=resumed_from)


# --------------------------------------------------------------------------------------------
# Prediction and plots
# --------------------------------------------------------------------------------------------

def predict(model_dir, cube_path, *, batch_size: int = 100,
            model_file: str = MODEL_FILE) -> dict[str, np.ndarray]:
    """Network point predictions (the summaries d~) for every cube of a cube file, in order.

    Parameters
    ----------
    model_dir : path-like
        A :func:`train` output directory (``cnn3d.keras`` and ``normalisation.json``).
    cube_path : path-like
        Cube file on the same grid.
    batch_size : int
        Cubes per forward pass (memory only; results do not depend on it beyond float
        round-off).
    model_file : str
        File name of the model in ``model_dir`` (default ``cnn3d.keras``).

    Returns
    -------
    dict of ndarray
        ``cluster_id`` (i8), ``log10_m200c_true`` and ``log10_m200c_pred`` (f8, log10
        h^-1 Msun; the prediction with the target standardisation undone), ``n_gal``,
        ``n_members`` (i8), one entry per cube in file order.
    """
    from .io.artefacts import load_keras_model, read_json_artefact

    model_dir = Path(model_dir)
    norm_path = model_dir / NORMALISATION_FILE
    if not norm_path.exists() or not (model_dir / model_file).exists():
        raise FileNotFoundError(f"{model_dir}: no trained model ({model_file} and "
                                f"{NORMALISATION_FILE}); run the train rule first")
    fix = "delete the model directory and rerun the train rule"
    norm = read_json_artefact(norm_path, fix)
    try:
        mean, std = float(norm["target"]["mean"]), float(norm["target"]["std"])
        scale, grid = float(norm["input"]["scale"]), list(norm["input"]["grid"])
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogueError(norm_path, "target/input", f"incomplete normalisation record "
                             f"({type(err).__name__}: {err})", fix) from err
    ds = CubeDataset(cube_path, batch_size, target_mean=mean, target_std=std,
                     input_scale=scale, input_transform=norm["input"].get("function", "linear"))
    if list(ds.grid) != grid and ds.n_cubes:
        ds.close()
        raise CatalogueError(cube_path, "cubes", f"grid {ds.grid} differs from the grid "
                             f"{tuple(grid)} the model was trained on",
                             "make the cubes with the training config")
    with CubeReader(cube_path) as r:
        out = {"cluster_id": r.column("cluster_id").astype(np.int64),
               "log10_m200c_true": r.column("log10_m200c").astype(np.float64),
               "log10_m200c_pred": np.full(len(r), np.nan),
               "n_gal": r.column("n_gal").astype(np.int64),
               "n_members": r.column("n_members").astype(np.int64)}
    if ds.n_cubes == 0:
        logger.warning("%s holds no cubes; nothing to predict", cube_path)
        return out
    model = load_keras_model(model_dir / model_file, fix, compile=False)
    for x, sel in ds.iter_inputs():
        z = np.asarray(model.predict_on_batch(x), dtype=np.float64)[:, 0]
        out["log10_m200c_pred"][sel] = z * std + mean
    ds.close()
    return out


def plot_history(history_csv, png) -> None:
    """Loss curves (training and validation MSE against epoch, best epoch marked) to ``png``
    (:func:`cmpipe.plots.loss_curve_figure`, written atomically with the Agg backend)."""
    from .plots import loss_curve_figure

    loss_curve_figure(history_csv, png)
