"""The 3-D ``(x_proj, y_proj, v_los)`` KDE cubes: one cluster, many (numba threads), and
the pipeline's one batching loop.

Conventions (units, bandwidth, grid, normalisation, error bounds) in :mod:`cmpipe.kde`.
:func:`kde_cube` runs on the calling thread and keeps a 1 MB (for 50^3) float64 workspace per
thread; :func:`kde_cubes` spreads clusters over threads with ``prange`` (set the count with
``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange

from .accumulate import accumulate_3d, normalise_into
from .bandwidth import kernel_cov_vox, params_3d, to_voxel_units
from .factored import accumulate_3d_factored
from .grid import (DEFAULT_H0, DEFAULT_TRUNCATION, Grid3D, as_columns, check_settings,
                   cluster_label, empty_error)

__all__ = ["kde_cube", "kde_cubes", "kde_cube_batches"]

logger = logging.getLogger(__name__)


@njit(cache=True, fastmath=False, nogil=True)
def _cube_one(x, y, v, c0, inv_d, h0, r_t, acc, out):
    """One cube into ``out`` (float32) using the all-zero float64 workspace ``acc`` (left
    all zero); returns (grid sum, regularised)."""
    data = np.empty((3, x.size))
    to_voxel_units(x, c0[0], inv_d[0], data[0])
    to_voxel_units(y, c0[1], inv_d[1], data[1])
    to_voxel_units(v, c0[2], inv_d[2], data[2])
    H, prec, regularised = kernel_cov_vox(data, h0)
    par = params_3d(H, prec)
    if not accumulate_3d_factored(data[0], data[1], data[2], H, prec, par, r_t, acc):
        accumulate_3d(data[0], data[1], data[2], par, r_t, acc)
    return normalise_into(acc, out), regularised


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _cubes_many(x, y, v, offsets, c0, inv_d, n, h0, r_t, n_chunks, out, totals, regularised):
    """Clusters ``k = j, j + n_chunks, ...`` go to chunk ``j``; one workspace per chunk."""
    n_clusters = offsets.size - 1
    for j in prange(n_chunks):
        acc = np.zeros((n, n, n))
        for k in range(j, n_clusters, n_chunks):
            a = offsets[k]
            b = offsets[k + 1]
            totals[k], regularised[k] = _cube_one(x[a:b], y[a:b], v[a:b], c0, inv_d, h0,
                                                  r_t, acc, out[k])


_WORKSPACES = threading.local()


def _workspace(shape) -> np.ndarray:
    """All-zero float64 accumulator of ``shape``, cached per thread (1 MB for 50^3) so that
    repeated calls skip allocating and page-faulting a fresh buffer."""
    cache = getattr(_WORKSPACES, "arrays", None)
    if cache is None:
        cache = _WORKSPACES.arrays = {}
    acc = cache.get(shape)
    if acc is None:
        acc = cache[shape] = np.zeros(shape)
    return acc


def _grid_arrays(grid: Grid3D):
    d = np.array(grid.spacing)
    c0 = np.array([-grid.half_width_mpc_h, -grid.half_width_mpc_h, -grid.v_max_kms]) + 0.5 * d
    return c0, 1.0 / d


def kde_cube(x_mpc_h, y_mpc_h, v_kms, *, grid: Grid3D = Grid3D(), h0: float = DEFAULT_H0,
             truncation: float = DEFAULT_TRUNCATION, min_galaxies: int = 3,
             cluster_id=None) -> np.ndarray:
    """Normalised 3-D Gaussian KDE cube of one cluster's ``(x_proj, y_proj, v_los)``.

    Runs on the calling thread (numba, GIL released); use :func:`kde_cubes` for many.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N,)
        Projected sky positions relative to the cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N,)
        Line-of-sight velocities relative to the cluster centre, km/s.
    grid : Grid3D
        Evaluation grid (voxel centres; default 50^3 over ``|x|, |y| <= 1.6`` h^-1 Mpc,
        ``|v| <= 2200`` km/s).
    h0 : float
        Bandwidth factor: kernel covariance ``h0**2 * np.cov(data)`` (scipy's ``bw_method``).
    truncation : float
        Mahalanobis radius ``r_t`` (dimensionless, at most 20) beyond which a kernel is
        neglected; error bound in :mod:`cmpipe.kde` (``exp(-r_t**2/2)`` of a kernel's peak
        per voxel).
    min_galaxies : int
        Fewer galaxies raise :class:`KDEInputError` (must be >= 2).
    cluster_id : object, optional
        Named in error messages.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, n, n)`` float32, axis order ``(x, y, v)``, summing to 1 (dimensionless
        voxel probabilities).

    Raises
    ------
    KDEInputError
        Non-finite values, mismatched lengths, fewer than ``min_galaxies`` galaxies, or no
        kernel mass on the grid; the message names ``cluster_id``.
    """
    check_settings(h0, truncation, min_galaxies)
    x, y, v = as_columns((x_mpc_h, y_mpc_h, v_kms), ("x_mpc_h", "y_mpc_h", "v_kms"),
                          min_galaxies, cluster_id)
    c0, inv_d = _grid_arrays(grid)
    out = np.empty(grid.shape, dtype=np.float32)
    acc = _workspace(grid.shape)
    try:
        total, regularised = _cube_one(x, y, v, c0, inv_d, float(h0), float(truncation), acc,
                                       out)
    except BaseException:
        acc[...] = 0.0                      # keep the cached workspace all zero
        raise
    if regularised:
        logger.debug("%s: degenerate covariance regularised", cluster_label(cluster_id))
    if not total > 0.0:
        raise empty_error(cluster_id, truncation)
    return out


def kde_cubes(x_mpc_h, y_mpc_h, v_kms, offsets, *, grid: Grid3D = Grid3D(),
              h0: float = DEFAULT_H0, truncation: float = DEFAULT_TRUNCATION,
              min_galaxies: int = 3, ids: Sequence | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Cubes of many clusters at once, clusters spread over numba threads (``prange``).

    Cluster ``k`` is rows ``offsets[k]:offsets[k+1]`` of the concatenated galaxy columns
    (``offsets = np.concatenate([[0], np.cumsum(counts)])``). Each cube is bit-identical to
    :func:`kde_cube` of that cluster with the same settings. The thread count is numba's
    (``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``).

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N_total,)
        Projected positions relative to each galaxy's cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N_total,)
        Line-of-sight velocities relative to each cluster centre, km/s.
    offsets : array_like of int, shape (n_clusters + 1,)
        Non-decreasing row offsets into the columns.
    grid, h0, truncation, min_galaxies
        As in :func:`kde_cube`.
    ids : sequence, optional
        Cluster ids (length ``n_clusters``) named in error messages; default the index ``k``.
    out : numpy.ndarray, optional
        C-contiguous float32 array of shape ``(n_clusters, n, n, n)`` to fill; 1e4 default
        cubes take 5 GB, so callers process large sets in chunks.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_clusters, n, n, n)`` float32 (``out`` if given); each cube sums to 1.

    Raises
    ------
    KDEInputError
        For the first bad cluster (message names its id). Input problems are found before
        any cube is computed.
    """
    check_settings(h0, truncation, min_galaxies)
    cols = [np.ascontiguousarray(np.asarray(c, dtype=np.float64))
            for c in (x_mpc_h, y_mpc_h, v_kms)]
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size < 1 or not (
            offsets.size == 1 or np.issubdtype(offsets.dtype, np.integer)):
        raise ValueError("offsets must be a 1-D integer array of length n_clusters + 1")
    offsets = offsets.astype(np.int64)
    n_clusters = offsets.size - 1
    if any(c.ndim != 1 or c.size != cols[0].size for c in cols):
        raise ValueError("x_mpc_h, y_mpc_h, v_kms must be 1-D arrays of equal length")
    if np.any(np.diff(offsets) < 0) or offsets[0] < 0 or offsets[-1] > cols[0].size:
        raise ValueError(f"offsets must be non-decreasing within [0, {cols[0].size}]")
    if ids is None:
        ids = range(n_clusters)
    elif len(ids) != n_clusters:
        raise ValueError(f"{len(ids)} ids for {n_clusters} clusters")
    # vectorised input checks; the first offending cluster raises through as_columns
    bad = []
    small = np.flatnonzero(np.diff(offsets) < min_galaxies)
    if small.size:
        bad.append(int(small[0]))
    lo, hi = int(offsets[0]), int(offsets[-1])
    finite = np.isfinite(cols[0][lo:hi]) & np.isfinite(cols[1][lo:hi]) & np.isfinite(
        cols[2][lo:hi])
    if not finite.all():
        row = lo + int(np.argmin(finite))
        bad.append(int(np.searchsorted(offsets, row, side="right")) - 1)
    if bad:
        k = min(bad)
        a, b = offsets[k], offsets[k + 1]
        as_columns([c[a:b] for c in cols], ("x_mpc_h", "y_mpc_h", "v_kms"), min_galaxies,
                    ids[k])
    shape = (n_clusters,) + grid.shape
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    totals = np.empty(n_clusters)
    regularised = np.zeros(n_clusters, dtype=np.bool_)
    c0, inv_d = _grid_arrays(grid)
    n_chunks = max(1, min(n_clusters, 4 * numba.get_num_threads()))
    _cubes_many(cols[0], cols[1], cols[2], offsets, c0, inv_d, grid.n, float(h0),
                float(truncation), n_chunks, out, totals, regularised)
    if regularised.any():
        logger.debug("%d of %d clusters had a degenerate covariance and were regularised",
                     int(regularised.sum()), n_clusters)
    empty = np.flatnonzero(~(totals > 0.0))
    if empty.size:
        raise empty_error(ids[int(empty[0])], truncation)
    return out


def kde_cube_batches(x_mpc_h, y_mpc_h, v_kms, offsets, *, grid: Grid3D = Grid3D(),
                     h0: float = DEFAULT_H0, truncation: float = DEFAULT_TRUNCATION,
                     batch_size: int = 64, min_galaxies: int = 3, ids: Sequence | None = None,
                     desc: str | None = None, progress: bool = False):
    """Cubes of many clusters, ``batch_size`` clusters at a time (bounded memory).

    The one batching loop of the pipeline: the cube, survey and robustness stages iterate
    over it and write or predict each batch. Cluster ``k`` is rows ``offsets[k]:offsets[k+1]``
    of the concatenated columns, as in :func:`kde_cubes`, and each cube is bit-identical to
    :func:`kde_cubes` of the whole set.

    Parameters
    ----------
    x_mpc_h, y_mpc_h, v_kms, offsets, grid, h0, truncation, min_galaxies
        As in :func:`kde_cubes`.
    batch_size : int
        Clusters per batch (one reused float32 buffer of ``batch_size * n^3`` values).
    ids : sequence, optional
        Cluster ids (length ``n_clusters``) named in error messages; default the index.
    desc : str, optional
        Label of the progress bar (tqdm, in cubes); ``progress=False`` hides it.

    Yields
    ------
    (b0, b1, cubes)
        Clusters ``b0:b1`` and their cubes, shape ``(b1 - b0, n, n, n)`` float32. The
        array is a view of the reused buffer: consume it before the next iteration.

    Raises
    ------
    KDEInputError
        For the first bad cluster of a batch (message names its id).
    """
    from tqdm.auto import tqdm

    offsets = np.asarray(offsets)
    n = offsets.size - 1
    if ids is None:
        ids = np.arange(n)
    if n <= 0:
        return
    batch_size = max(1, int(batch_size))
    buf = np.empty((min(batch_size, n),) + grid.shape, dtype=np.float32)
    with tqdm(total=n, desc=desc, unit="cube", disable=not progress) as bar:
        for b0 in range(0, n, batch_size):
            b1 = min(b0 + batch_size, n)
            o = offsets[b0:b1 + 1]
            r = slice(int(o[0]), int(o[-1]))
            cubes = kde_cubes(x_mpc_h[r], y_mpc_h[r], v_kms[r], o - o[0], grid=grid, h0=h0,
                              truncation=truncation, min_galaxies=min_galaxies,
                              ids=list(ids[b0:b1]), out=buf[:b1 - b0])
            yield b0, b1, cubes
            bar.update(b1 - b0)
