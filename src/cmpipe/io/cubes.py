"""KDE cube files: ``results/{run}/cubes/{split}.h5`` and their shards.

Layout (one file per split; shards have the same layout):

- ``cubes``: float32, shape ``(N, n, n, n)``, axis order ``(x_proj, y_proj, v_los)``, one
  HDF5 chunk per cube, gzip level 1 with the shuffle filter. Each cube sums to 1.
- ``cluster_id`` (i8), ``log10_m200c`` (f8, log10(h^-1 Msun)), ``n_gal`` (i8),
  ``n_members`` (i8), ``distance_mpc_h`` (f8, comoving h^-1 Mpc from the observer: a mock
  cluster's observer distance, a survey cluster's from its redshift; the networks and
  their calibration are conditioned on it): one value per cube, same order.
- attributes: ``n_grid``, ``half_width_mpc_h``, ``v_max_kms``, ``h0``, ``truncation``,
  ``normalisation`` ("each cube sums to 1"), ``split``, and ``content_digest``.
- ``cube_sha256`` (u1, ``(N, 32)``): the SHA-256 of each float32 cube's bytes, computed
  while it is written. ``content_digest`` is the SHA-256 of these rows and of the per-cube
  columns (:func:`content_digest`), so it is the same however the split was sharded, and
  gathering shards costs no extra reading. A product made from a cube file (the trained
  model, its checkpoint) records the digest, so a changed cube file can never be mistaken
  for the one it was made from (:func:`cube_digest`).

:class:`CubeReader` reads any slice or set of cubes, a chunk at a time; whether a split is
held in memory is the reader's choice (:class:`cmpipe.cnn.training.CubeDataset`).
:func:`gather_shards` concatenates shards by copying the compressed chunks as they are (no
decompression), so the gather step costs disk bandwidth only.

Why gzip 1 + shuffle with one chunk per cube (``benchmarks/bench_cubes.py`` on the demo's
training split, docs/scaling.md): 0.55 of the raw size (lzf 0.60, none 1.0); a whole split
decompresses at ~1,900 cubes/s of 32^3 on one core, so loading it into memory once costs
under 1% of training; random batches read at ~1,700 cubes/s, while chunks of 16 cubes fall
to ~140 cubes/s because every cube read decompresses its whole chunk.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

from .tables import AtomicH5File, CatalogueError, atomic_output

__all__ = ["CUBE_COLUMNS", "DISTANCE_COLUMN", "distance_standardisation", "CubeWriter",
           "CubeReader", "gather_shards", "cube_digest"]

#: The per-cube comoving distance from the observer (h^-1 Mpc): the networks' second input.
DISTANCE_COLUMN = "distance_mpc_h"

def distance_standardisation(distance_mpc_h) -> tuple[float, float]:
    """Mean and sd (ddof 0; 1 when all are equal) of a training split's ``distance_mpc_h``
    (h^-1 Mpc): the networks' and the flow's distance input is (D - mean) / sd."""
    d = np.asarray(distance_mpc_h, dtype=np.float64)
    return float(d.mean()), (float(d.std()) if np.ptp(d) > 0 else 1.0)


#: Per-cube columns stored beside the cubes.
CUBE_COLUMNS = {"cluster_id": "i8", "log10_m200c": "f8", "n_gal": "i8", "n_members": "i8",
                DISTANCE_COLUMN: "f8"}


class CubeWriter(AtomicH5File):
    """Write ``n_cubes`` cubes to ``path`` in batches, atomically on close.

    Parameters
    ----------
    path : path-like
    n_cubes : int
        Number of cubes the file will hold (known up front for shards).
    n_grid : int or tuple of int
        Voxels per axis of a 3-D cube, or the full grid shape of one input (e.g. ``(n,)``
        or ``(n, n)`` for the 1-D/2-D inputs of the dimensionality ablation).
    attrs : dict
        File attributes (grid, bandwidth, split).
    """

    def __init__(self, path, n_cubes: int, n_grid: int | tuple, attrs: dict):
        super().__init__(path)
        grid = (int(n_grid),) * 3 if np.ndim(n_grid) == 0 else tuple(int(g) for g in n_grid)
        shape = (n_cubes, *grid)
        self._cubes = self._f.create_dataset(
            "cubes", shape=shape, maxshape=(None,) + shape[1:], dtype="f4",
            chunks=(1, *grid), compression="gzip", compression_opts=1, shuffle=True)
        for k, dt in CUBE_COLUMNS.items():
            self._f.create_dataset(k, shape=(n_cubes,), dtype=dt)
        for k, v in attrs.items():
            self._f.attrs[k] = v
        self._next = 0
        self._sha = self._f.create_dataset("cube_sha256", shape=(n_cubes, 32), dtype="u1")

    def write(self, cubes: np.ndarray, columns: dict):
        """Append a batch: ``cubes`` (b, n, n, n) and the per-cube columns."""
        b = len(cubes)
        s = slice(self._next, self._next + b)
        cubes = np.ascontiguousarray(cubes, dtype=np.float32)
        self._cubes[s] = cubes
        self._sha[s] = _cube_hashes(cubes)
        for k, dt in CUBE_COLUMNS.items():
            self._f[k][s] = np.asarray(columns[k], dtype=dt)
        self._next += b

    def close(self):
        expected = self._cubes.shape[0]
        if self._next != expected:
            self.abort()
            raise RuntimeError(f"{self.path}: wrote {self._next} of {expected} cubes")
        self._f.attrs["content_digest"] = content_digest(
            self._sha[...], {k: self._f[k][...] for k in CUBE_COLUMNS})
        super().close()


class CubeReader:
    """Read cubes and their columns from a cube file, a slice at a time.

    Use as a context manager; ``len(reader)`` cubes, ``reader.cubes(i0, i1)`` returns a
    float32 array of cubes ``i0:i1``, ``reader.column(name)`` a whole per-cube column.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise CatalogueError(path, "cubes", "cube file does not exist",
                                 "run the kde rules first (snakemake ... cubes/{split}.h5)")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            raise CatalogueError(path, "cubes", f"not a readable HDF5 file ({err})",
                                 "delete it and rerun the kde rules") from err
        for k in ("cubes", *CUBE_COLUMNS):
            if k not in self._f:
                self._f.close()
                raise CatalogueError(path, k, "dataset missing from cube file (a cube file "
                                     "from before that column existed?)",
                                     "delete it and rerun the kde rules")
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                      for k, v in self._f.attrs.items()}

    def __len__(self):
        return int(self._f["cubes"].shape[0])

    @property
    def shape(self):
        return tuple(self._f["cubes"].shape)

    def cubes(self, i0: int, i1: int) -> np.ndarray:
        return self._f["cubes"][i0:i1]

    def take(self, indices) -> np.ndarray:
        """Cubes at arbitrary ``indices`` (any order), read chunk by chunk."""
        ds = self._f["cubes"]
        out = np.empty((len(indices),) + ds.shape[1:], dtype=np.float32)
        for j, i in enumerate(indices):
            ds.read_direct(out, np.s_[int(i)], np.s_[j])
        return out

    def column(self, name: str) -> np.ndarray:
        return self._f[name][...]

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def gather_shards(shards, out, attrs: dict | None = None):
    """Concatenate shard files into ``out`` by copying compressed chunks verbatim.

    Parameters
    ----------
    shards : sequence of path-like
        Shard files in order.
    out : path-like
        The split's cube file, written atomically.
    attrs : dict, optional
        Extra attributes (merged over the first shard's).
    """
    metas = []
    for p in shards:
        with CubeReader(p) as r:
            metas.append((len(r), r.shape[1:], r.attrs))
    if not metas:
        raise ValueError("no shards to gather")
    n_total = sum(m[0] for m in metas)
    grid = metas[0][1]
    if any(m[1] != grid for m in metas):
        raise CatalogueError(shards[0], "cubes", "shards have different grids",
                             "rerun the kde rules with one config")
    base_attrs = dict(metas[0][2], **(attrs or {}))
    with atomic_output(out) as tmp:
        with h5py.File(tmp, "w") as fo:
            ds = fo.create_dataset("cubes", shape=(n_total,) + grid, dtype="f4",
                                   maxshape=(None,) + grid, chunks=(1,) + grid, compression="gzip",
                                   compression_opts=1, shuffle=True)
            cols = {k: fo.create_dataset(k, shape=(n_total,), dtype=dt)
                    for k, dt in CUBE_COLUMNS.items()}
            sha = fo.create_dataset("cube_sha256", shape=(n_total, 32), dtype="u1")
            for k, v in base_attrs.items():
                fo.attrs[k] = v
            i = 0
            for p, (n, _, _) in zip(shards, metas):
                with h5py.File(p, "r") as fi:
                    src = fi["cubes"]
                    same = (src.compression == "gzip" and src.compression_opts == 1
                            and src.shuffle and src.chunks == (1,) + grid)
                    for j in range(n):
                        if same:
                            mask, chunk = src.id.read_direct_chunk((j, 0, 0, 0))
                            ds.id.write_direct_chunk((i + j, 0, 0, 0), chunk, mask)
                        else:
                            ds[i + j] = src[j]
                    for k in CUBE_COLUMNS:
                        cols[k][i:i + n] = fi[k][...]
                    sha[i:i + n] = fi["cube_sha256"][...] if "cube_sha256" in fi \
                        else _cube_hashes(src[...])
                i += n
            fo.attrs["content_digest"] = content_digest(
                sha[...], {k: c[...] for k, c in cols.items()})



def _cube_hashes(cubes: np.ndarray) -> np.ndarray:
    """SHA-256 of each float32 cube's bytes, ``(b, 32)`` uint8."""
    cubes = np.ascontiguousarray(cubes, dtype=np.float32)
    out = np.empty((len(cubes), 32), dtype=np.uint8)
    for j, c in enumerate(cubes):
        out[j] = np.frombuffer(hashlib.sha256(c).digest(), np.uint8)
    return out


def content_digest(cube_sha256: np.ndarray, columns: dict) -> str:
    """SHA-256 (hex) of a cube file's content: the per-cube hashes in order, then each
    per-cube column (in :data:`CUBE_COLUMNS` order, at its stored dtype)."""
    h = hashlib.sha256(b"cmpipe-cubes-2")
    h.update(np.ascontiguousarray(cube_sha256, dtype=np.uint8))
    for k, dt in CUBE_COLUMNS.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(columns[k], dtype=dt))
    return h.hexdigest()


def cube_digest(path) -> str:
    """The ``content_digest`` of a cube file (see the module docstring); a file written
    without one (an older cube file) is read and hashed the same way, a cube at a time."""
    with CubeReader(path) as r:
        d = r.attrs.get("content_digest")
        if d:
            return str(d)
        sha = np.concatenate([_cube_hashes(r.cubes(i, i + 1)) for i in range(len(r))]) \
            if len(r) else np.empty((0, 32), np.uint8)
        return content_digest(sha, {k: r.column(k) for k in CUBE_COLUMNS})
