"""1-D ``v_los`` and 2-D ``(R_proj, v_los)`` KDE inputs of projected clusters.

The dimensionality ablation's CNN1D/CNN2D inputs (:mod:`cmpipe.evaluation.ablation`) and the neural
flow's images (:mod:`cmpipe.flow.training`, ``flow.input: 2d``). This module needs only NumPy and
:mod:`cmpipe.kde`, so the rules that make these inputs (``ablation_inputs``, ``flow_images``,
``flow_survey_images``) run in the KDE environment (``envs/kde.yaml``) without the
evaluation stack (astropy, scipy's statistics) that :mod:`cmpipe.evaluation.ablation` imports.

Inputs
------
Every input is a normalised Gaussian KDE of the *same* window galaxies with the *same*
bandwidth convention (:mod:`cmpipe.kde`: kernel covariance ``h0**2`` x data covariance,
voxel centres, sum 1):

* 1-D: :func:`cmpipe.kde.kde_1d` of ``v_los`` on ``n`` centres over ``[-V, V]`` km/s. The
  ``v`` marginal of a Gaussian of covariance ``h0**2 C`` has variance ``h0**2 C_vv``, so this
  is *exactly* the ``v`` marginal of the 3-D KDE; on the grid the two differ by the kernel
  mass the 3-D cube drops beyond the sky window ``|x|, |y| <= L`` and, for kernels
  narrower than a voxel in ``x, y``, by the voxel sum standing in for the integral over
  ``x, y`` (measured L1 distance 0.3-1.6% on demo clusters; the tests bound it by the
  dropped mass and check float32 agreement for kernels wider than a voxel).
* 2-D: :func:`cmpipe.kde.kde_2d` of ``(R_proj, v_los)``, ``R_proj`` on ``[0, sqrt(2) L]``:
  the paper's and Ho et al. (2019)'s 2-D input. Its ``v`` marginal is again the 1-D input
  (up to the kernel mass at ``R < 0``); in ``R`` it is a KDE of the galaxies' radii with
  bandwidth ``h0 sd(R)``, whereas the ring marginal of the 3-D KDE smooths radii with the
  ``(x, y)`` kernel (``h0 sd(x)``): the two agree to the bandwidth scale (L1 distance
  0.07-0.12 on demo clusters), which is the sense in which the 2-D input is the marginal
  of the 3-D one. The azimuthal position angle, which the paper argues separates
  interlopers from members, is what the 2-D input discards.
"""
from __future__ import annotations

import numpy as np

from . import DEFAULT_H0, DEFAULT_TRUNCATION, kde_1d, kde_2d

__all__ = ["DIMS", "AXES", "input_shape", "ablation_inputs"]

#: Ablation inputs built here; the 3-D cubes are the pipeline's own (``cubes/{split}.h5``).
DIMS = ("1d", "2d")

#: Axis description stored with each input file.
AXES = {"1d": "v_los_kms", "2d": "r_proj_mpc_h, v_los_kms"}


def input_shape(dim: str, n: int) -> tuple[int, ...]:
    """Grid shape of one ``dim`` input of ``n`` voxels per axis: ``(n,)`` or ``(n, n)``."""
    if dim not in DIMS:
        raise ValueError(f"dimensionality must be one of {DIMS}, got {dim!r}")
    return (int(n),) * (1 if dim == "1d" else 2)


def ablation_inputs(x_mpc_h, y_mpc_h, v_kms, offsets, dim: str, *, n: int,
                    half_width_mpc_h: float = 1.6, v_max_kms: float = 2200.0,
                    h0: float = DEFAULT_H0, truncation: float = DEFAULT_TRUNCATION,
                    min_galaxies: int = 3, ids=None, out: np.ndarray | None = None) -> np.ndarray:
    """1-D ``v_los`` or 2-D ``(R_proj, v_los)`` KDE inputs of many clusters.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N_total,)
        Projected positions relative to each cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N_total,)
        Line-of-sight velocities relative to each cluster centre, km/s.
    offsets : array_like of int, shape (n_clusters + 1,)
        Cluster ``k`` is rows ``offsets[k]:offsets[k+1]``.
    dim : {"1d", "2d"}
        Which input.
    n : int
        Voxels per axis.
    half_width_mpc_h : float
        Sky half-width ``L`` of the window, h^-1 Mpc (2-D: ``R_proj`` in ``[0, sqrt(2) L]``).
    v_max_kms : float
        Velocity half-width ``V``, km/s.
    h0, truncation, min_galaxies
        As in :func:`cmpipe.kde.kde_cube`.
    ids : sequence, optional
        Cluster ids named in error messages.
    out : numpy.ndarray, optional
        float32 array of shape ``(n_clusters, *input_shape(dim, n))`` to fill.

    Returns
    -------
    numpy.ndarray
        ``(n_clusters, n)`` or ``(n_clusters, n, n)`` float32; each input sums to 1.

    Raises
    ------
    cmpipe.kde.KDEInputError
        For a cluster with non-finite values or fewer than ``min_galaxies`` galaxies.
    """
    shape = input_shape(dim, n)
    cols = [np.asarray(c, dtype=np.float64) for c in (x_mpc_h, y_mpc_h, v_kms)]
    offsets = np.asarray(offsets, dtype=np.int64)
    n_clusters = offsets.size - 1
    if out is None:
        out = np.empty((n_clusters, *shape), dtype=np.float32)
    elif out.shape != (n_clusters, *shape) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(n_clusters, *shape)}")
    kw = dict(n=n, v_max_kms=v_max_kms, h0=h0, truncation=truncation,
              min_galaxies=min_galaxies)
    for k in range(n_clusters):
        r = slice(int(offsets[k]), int(offsets[k + 1]))
        cid = None if ids is None else ids[k]
        if dim == "1d":
            out[k] = kde_1d(cols[2][r], cluster_id=cid, **kw)
        else:
            out[k] = kde_2d(cols[0][r], cols[1][r], cols[2][r], cluster_id=cid,
                            half_width_mpc_h=half_width_mpc_h, **kw)
    return out
