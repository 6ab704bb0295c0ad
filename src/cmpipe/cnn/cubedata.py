"""Network inputs from cube files: the input transforms, the sky-plane symmetries and the
batches Keras trains on (pipeline step 6).

Cubes come from a cube file (:mod:`cmpipe.io.cubes`) through :class:`CubeDataset`: a split
whose uncompressed cubes fit ``TrainSettings.in_memory_max_mb`` (config
``train.in_memory_max_mb``) is read and transformed once and held in memory, so training runs
at the network's speed; a larger one is streamed a batch at a time with a background thread
reading the next batches (memory bounded by a few batches whatever the file size). Both give
the same batches bit for bit. Keras gets one ``tf.data`` stream of training batches over all
epochs (:meth:`CubeDataset.stream`) and an in-memory validation split as arrays, so no input
iterator is torn down and rebuilt between epochs (that stalled half the epochs by ~2 s).

Input scaling (:func:`transform_inputs`, identical at training and prediction time and
stored in ``normalisation.json`` beside the model): ``x = cube * scale`` with
``scale = n_voxels`` (e.g. 50^3). Every cube sums to 1, so after scaling the mean voxel is
exactly 1 (dimensionless density contrast + 1), which keeps the first convolution in a
well-conditioned range whatever the grid size; with ``input_transform = "log1p"`` then
``x = log(1 + x)``: compact clusters of few galaxies (the pure, members-only catalogue)
reach ~1e4 in one voxel, a range the linear input trains badly on. The target
standardisation ``z = (log10 M200c - mean) / std`` is :mod:`cmpipe.cnn.training`'s; the
dataset applies the mean and std it is given.

The data order and augmentation of epoch ``e`` are drawn from
``numpy.random.default_rng((seed, e, ...))``, so a batch depends only on
``(seed, epoch, batch)`` and a resumed run replays exactly the batches an uninterrupted run
would have seen.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from ..io.cubes import DISTANCE_COLUMN, CubeReader  # noqa: E402

__all__ = ["N_D4", "d4_transform", "INPUT_TRANSFORMS", "transform_inputs", "DISTANCE_COLUMN",
           "standardised_distance", "network_inputs", "CubeDataset"]

logger = logging.getLogger(__name__)

#: Number of exact symmetries of the sky plane (dihedral group D4).
N_D4 = 8


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
    Training, :func:`cmpipe.cnn.training.predict` and the analyses all go through here."""
    x *= np.float32(scale)
    if function == "log1p":
        np.log1p(x, out=x)
    elif function != "linear":
        raise ValueError(f"unknown input transform {function!r}; one of "
                         f"{sorted(INPUT_TRANSFORMS)}")
    return x


def standardised_distance(distance_mpc_h, mean: float, std: float, *, source=None):
    """``(D - mean) / std`` as float32 ``(N, 1)``: the networks' distance input.

    ``mean`` and ``std`` are the training split's (``normalisation.json`` ``distance``).
    A non-finite distance raises :class:`~cmpipe.io.tables.CatalogueError` naming
    ``source`` (the cube file) when given, else :class:`ValueError`."""
    d = np.asarray(distance_mpc_h, dtype=np.float64)
    bad = ~np.isfinite(d)
    if bad.any():
        msg = (f"{int(bad.sum())} of {d.size} clusters have no finite distance from the "
               "observer, which the distance-input network needs")
        if source is not None:
            from ..io.tables import CatalogueError
            raise CatalogueError(source, DISTANCE_COLUMN, msg,
                                 "give every cluster a redshift (survey) or an observer "
                                 "distance (mock) and rebuild the cubes")
        raise ValueError(msg)
    return ((d - float(mean)) / float(std)).astype(np.float32)[:, None]


def network_inputs(x: np.ndarray, normalisation: dict, distance_mpc_h=None, *, source=None):
    """What the network is called with: the transformed cubes ``x`` alone, or, for a
    network trained with a distance input (``normalisation["distance"]``), the dict
    ``{"kde": x, "distance": (D - mean) / std}`` of :func:`cmpipe.cnn.model.build_cnn`."""
    dn = normalisation.get("distance")
    if not dn:
        return x
    if distance_mpc_h is None:
        raise ValueError("the network was trained with a distance input: give the "
                         "clusters' distances from the observer (h^-1 Mpc)")
    return {"kde": x, "distance": standardised_distance(distance_mpc_h, dn["mean"], dn["std"],
                                                        source=source)}


class CubeDataset(keras.utils.PyDataset):
    """Batches ``(x, z)`` of a cube file, for ``keras.Model.fit``: in memory or streamed.

    ``x`` is the network input (:func:`transform_inputs` of the cubes, float32,
    ``(b, n, n, n)``; with ``distance`` the dict ``{"kde": cubes, "distance": (D - mean) /
    std}``, :func:`network_inputs`), ``z`` the standardised ``(log10 M200c - target_mean) /
    target_std`` (float32, ``(b, 1)``). The per-cube columns (a few numbers per cube) are
    always read once.

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
    distance : dict, optional
        ``{"mean": ..., "std": ...}`` (h^-1 Mpc, the training split's): the network also
        takes the standardised ``distance_mpc_h`` column; ``None``: the cubes alone.
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
                 augment: bool = False, seed: int = 0, distance: dict | None = None,
                 epoch: int = 0, memory_mb: float | None = 0.0, prefetch: int = 2,
                 **kwargs):
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
        self.distance_mpc_h = r.column(DISTANCE_COLUMN).astype(np.float64)
        self._distance = None if not distance else standardised_distance(
            self.distance_mpc_h, distance["mean"], distance["std"], source=self.path)
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

    def model_inputs(self, x: np.ndarray, sel: np.ndarray):
        """The network's call argument for cubes ``x`` at indices ``sel``: ``x``, or with a
        distance input ``{"kde": x, "distance": ...}`` (:func:`network_inputs`)."""
        if self._distance is None:
            return x
        return {"kde": x, "distance": self._distance[sel]}

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
        every = np.arange(self.n_cubes)
        return self.model_inputs(self._data, every), self.targets(every)

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
                    yield self.model_inputs(x, sel), self.targets(sel)
                epoch += 1

        x_sig = tf.TensorSpec((None, *self.grid), tf.float32)
        if self._distance is not None:
            x_sig = {"kde": x_sig, "distance": tf.TensorSpec((None, 1), tf.float32)}
        sig = (x_sig, tf.TensorSpec((None, 1), tf.float32))
        return tf.data.Dataset.from_generator(batches, output_signature=sig) \
            .prefetch(max(1, int(prefetch)))

    def __getitem__(self, idx):
        epoch = self._epoch
        x, sel = self._fetch(int(idx), epoch)
        return self.model_inputs(x, sel), self.targets(sel)

