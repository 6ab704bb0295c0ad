"""The 2-D ``(R_proj, v_los)`` and 1-D ``v_los`` KDEs of a cluster (the ablation's and the
flow's inputs, :mod:`cmpipe.kde.images`), on the same conventions as the cubes
(:mod:`cmpipe.kde`).
"""
from __future__ import annotations

import math

import numpy as np

from .accumulate import accumulate_1d, accumulate_2d, normalise_into
from .bandwidth import kernel_cov_vox, params_2d, to_voxel_units
from .grid import (DEFAULT_H0, DEFAULT_TRUNCATION, as_columns, check_axes, check_settings,
                   empty_error)

__all__ = ["kde_2d", "kde_1d"]


def kde_2d(x_mpc_h, y_mpc_h, v_kms, *, n: int = 50, half_width_mpc_h: float = 1.6,
           v_max_kms: float = 2200.0, h0: float = DEFAULT_H0,
           truncation: float = DEFAULT_TRUNCATION, min_galaxies: int = 3,
           cluster_id=None) -> np.ndarray:
    """Normalised 2-D Gaussian KDE of ``(R_proj, v_los)``, ``R_proj = sqrt(x**2 + y**2)``.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N,)
        Projected positions relative to the cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N,)
        Line-of-sight velocities relative to the cluster centre, km/s.
    n : int
        Voxels per axis.
    half_width_mpc_h : float
        Half-width ``L`` of the square sky window, h^-1 Mpc; the ``R_proj`` axis spans
        ``[0, sqrt(2) L]`` (voxel centres ``axis_centres(0, sqrt(2) L, n)``), so the window's
        corners are on the grid.
    v_max_kms : float
        The ``v`` axis spans ``[-V, V]``, km/s (centres ``axis_centres(-V, V, n)``).
    h0, truncation, min_galaxies, cluster_id
        As in :func:`kde_cube`; the bandwidth is ``gaussian_kde`` of the 2-D ``(R, v)`` data
        with ``bw_method=h0``. Kernel mass at ``R < 0`` is dropped (no reflection), as in
        scipy evaluated on this grid.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, n)`` float32, axis order ``(R_proj, v)``, summing to 1.
    """
    check_settings(h0, truncation, min_galaxies)
    check_axes("kde_2d", n, half_width_mpc_h=half_width_mpc_h, v_max_kms=v_max_kms)
    n = int(n)
    x, y, v = as_columns((x_mpc_h, y_mpc_h, v_kms), ("x_mpc_h", "y_mpc_h", "v_kms"),
                          min_galaxies, cluster_id)
    d_r = math.sqrt(2.0) * half_width_mpc_h / n
    d_v = 2.0 * v_max_kms / n
    data = np.empty((2, x.size))
    to_voxel_units(np.hypot(x, y), 0.5 * d_r, 1.0 / d_r, data[0])
    to_voxel_units(v, -v_max_kms + 0.5 * d_v, 1.0 / d_v, data[1])
    H, _, _ = kernel_cov_vox(data, float(h0))
    acc = np.zeros((n, n))
    accumulate_2d(data[0], data[1], params_2d(H), float(truncation), acc)
    out = np.empty((n, n), dtype=np.float32)
    if not normalise_into(acc, out) > 0.0:
        raise empty_error(cluster_id, truncation)
    return out


def kde_1d(v_kms, *, n: int = 50, v_max_kms: float = 2200.0, h0: float = DEFAULT_H0,
           truncation: float = DEFAULT_TRUNCATION, min_galaxies: int = 3,
           cluster_id=None) -> np.ndarray:
    """Normalised 1-D Gaussian KDE of ``v_los`` on ``n`` voxel centres over ``[-V, V]``.

    Parameters
    ----------
    v_kms : array_like, shape (N,)
        Line-of-sight velocities relative to the cluster centre, km/s.
    n : int
        Number of voxels (centres ``axis_centres(-V, V, n)``).
    v_max_kms : float
        Half-width ``V`` of the velocity window, km/s.
    h0, truncation, min_galaxies, cluster_id
        As in :func:`kde_cube` (bandwidth: ``gaussian_kde(v, bw_method=h0)``).

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)`` float32, summing to 1.
    """
    check_settings(h0, truncation, min_galaxies)
    check_axes("kde_1d", n, v_max_kms=v_max_kms)
    n = int(n)
    (v,) = as_columns((v_kms,), ("v_kms",), min_galaxies, cluster_id)
    d_v = 2.0 * v_max_kms / n
    data = np.empty((1, v.size))
    to_voxel_units(v, -v_max_kms + 0.5 * d_v, 1.0 / d_v, data[0])
    H, _, _ = kernel_cov_vox(data, float(h0))
    acc = np.zeros(n)
    accumulate_1d(data[0], H[0, 0], float(truncation), acc)
    out = np.empty(n, dtype=np.float32)
    if not normalise_into(acc, out) > 0.0:
        raise empty_error(cluster_id, truncation)
    return out
