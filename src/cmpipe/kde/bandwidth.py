"""The kernel covariance (bandwidth matrix) of a cluster's KDE, with the degeneracy rule.

``H = h0**2 * cov(data)`` exactly as :class:`scipy.stats.gaussian_kde` with
``bw_method=h0``, measured in voxel units, and raised to one voxel along the principal
directions of degenerate clusters (the rule in :mod:`cmpipe.kde`); plus the constants of
the completed-square quadratic forms the accumulators walk. The compiled functions work in
voxel units: ``X = (x - first centre) / voxel width``, so the voxel centres sit at
``X = 0, 1, ..., n - 1``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .grid import DEFAULT_H0

__all__ = [
    "kernel_covariance",
    "to_voxel_units",
    "sym_eig",
    "kernel_cov_vox",
    "params_3d",
    "params_2d",
]

# Degeneracy test (voxel^2 units): absolute floor (0.01 voxel)^2 and relative floor.
_DEGENERATE_ABS = 1e-4
_DEGENERATE_REL = 1e-10


def kernel_covariance(data, voxel_widths, h0: float = DEFAULT_H0):
    """Kernel covariance ``h0**2 * cov(data)``, with the module's degeneracy rule applied.

    This is the bandwidth matrix the cube functions use (they compute it in voxel units).

    Parameters
    ----------
    data : array_like, shape (d, N)
        One row per coordinate (units of the axis, e.g. h^-1 Mpc or km/s), one column per
        galaxy; ``N >= 2`` and all finite.
    voxel_widths : array_like, shape (d,)
        Voxel width along each axis, same units as the rows of ``data``.
    h0 : float
        Bandwidth factor (scipy ``bw_method``), dimensionless.

    Returns
    -------
    H : numpy.ndarray, shape (d, d)
        Kernel covariance (units: products of the axis units). Equal (to rounding) to scipy's
        ``gaussian_kde(data, bw_method=h0).covariance`` unless the cluster is degenerate.
    regularised : bool
        True when the degeneracy rule (:mod:`cmpipe.kde`) was applied: the data covariance
        ``S`` in voxel units had an eigenvalue below ``max(1e-4, 1e-10 lambda_max)`` voxel^2,
        and every eigenvalue below ``1 / h0**2`` was raised to ``1 / h0**2``.
    """
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    widths = np.asarray(voxel_widths, dtype=np.float64).reshape(-1)
    if widths.size != data.shape[0]:
        raise ValueError(f"{data.shape[0]} coordinate rows but {widths.size} voxel widths")
    if data.shape[1] < 2 or not np.all(np.isfinite(data)):
        raise ValueError("data needs >= 2 columns (galaxies), all finite")
    H_vox, _, regularised = kernel_cov_vox(np.ascontiguousarray(data / widths[:, None]),
                                         float(h0))
    return H_vox * np.outer(widths, widths), bool(regularised)


@njit(cache=True, fastmath=False, nogil=True)
def to_voxel_units(x, c0, inv_d, out):
    """``out[:] = (x - c0) * inv_d``: coordinates in voxel units."""
    for i in range(x.size):
        out[i] = (x[i] - c0) * inv_d
    return out


@njit(cache=True, fastmath=False, nogil=True)
def sym_eig(a):
    """Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations.

    Returns ``(lam, vec)``, eigenvalues ascending and eigenvectors as columns, accurate to
    rounding (Jacobi is as accurate as LAPACK here and far quicker to compile for d <= 3).
    """
    dim = a.shape[0]
    m = a.copy()
    vec = np.eye(dim)
    for _ in range(100):
        off = 0.0
        scale = 0.0
        for p in range(dim):
            scale += m[p, p] * m[p, p]
            for q in range(p + 1, dim):
                off += m[p, q] * m[p, q]
        if off <= 1e-36 * scale or off == 0.0:
            break
        for p in range(dim - 1):
            for q in range(p + 1, dim):
                if m[p, q] == 0.0:
                    continue
                theta = (m[q, q] - m[p, p]) / (2.0 * m[p, q])
                t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                if theta < 0.0:
                    t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(dim):                # columns: m <- m J
                    mkp = m[k, p]
                    mkq = m[k, q]
                    m[k, p] = c * mkp - s * mkq
                    m[k, q] = s * mkp + c * mkq
                for k in range(dim):                # rows: m <- J^T m
                    mpk = m[p, k]
                    mqk = m[q, k]
                    m[p, k] = c * mpk - s * mqk
                    m[q, k] = s * mpk + c * mqk
                for k in range(dim):                # vec <- vec J
                    vkp = vec[k, p]
                    vkq = vec[k, q]
                    vec[k, p] = c * vkp - s * vkq
                    vec[k, q] = s * vkp + c * vkq
    lam = np.empty(dim)
    for p in range(dim):
        lam[p] = m[p, p]
    for p in range(dim - 1):                        # selection sort, ascending
        j = p
        for q in range(p + 1, dim):
            if lam[q] < lam[j]:
                j = q
        if j != p:
            lam[p], lam[j] = lam[j], lam[p]
            for k in range(dim):
                vec[k, p], vec[k, j] = vec[k, j], vec[k, p]
    return lam, vec


@njit(cache=True, fastmath=False, nogil=True)
def kernel_cov_vox(data, h0):
    """Kernel covariance and its inverse (voxel units) of ``data`` (d, N) in voxel units.

    Returns ``(H, H^-1, regularised)``; ``regularised`` tells whether the degeneracy rule
    (:mod:`cmpipe.kde`) was applied. Without it ``H = h0**2 * cov(data, ddof=1)`` exactly.
    """
    dim, n_gal = data.shape
    mean = np.zeros(dim)
    for j in range(dim):
        s = 0.0
        for i in range(n_gal):
            s += data[j, i]
        mean[j] = s / n_gal
    cov = np.zeros((dim, dim))
    for j in range(dim):
        for k in range(j, dim):
            s = 0.0
            for i in range(n_gal):
                s += (data[j, i] - mean[j]) * (data[k, i] - mean[k])
            cov[j, k] = s / (n_gal - 1)
            cov[k, j] = cov[j, k]
    lam, vec = sym_eig(cov)
    regularised = lam[0] < max(_DEGENERATE_ABS, _DEGENERATE_REL * lam[dim - 1])
    if regularised:
        floor = 1.0 / (h0 * h0)
        for j in range(dim):
            lam[j] = max(lam[j], floor)
    prec = np.empty((dim, dim))
    for j in range(dim):
        for k in range(j, dim):
            s = 0.0
            r = 0.0
            for m in range(dim):
                s += vec[j, m] * vec[k, m] / lam[m]
                r += vec[j, m] * lam[m] * vec[k, m]
            prec[j, k] = prec[k, j] = s / (h0 * h0)
            if regularised:
                cov[j, k] = cov[k, j] = r
    return (h0 * h0) * cov, prec, regularised


@njit(cache=True, fastmath=False, nogil=True)
def params_3d(H, prec):
    """Constants of :func:`cmpipe.kde.accumulate.accumulate_3d` from the kernel covariance
    ``H`` and its inverse ``prec`` (voxel units).

    ``Q = dX**2 / Hxx + cy (dY + byx dX)**2 + pvv (dW + avx dX + avy dY)**2``: the
    quadratic form with its squares completed (x marginal, y given x, v given x and y).
    """
    det2 = H[0, 0] * H[1, 1] - H[0, 1] * H[0, 1]
    pvv = prec[2, 2]
    cy = H[0, 0] / det2
    par = np.empty(9)
    par[0] = 1.0 / H[0, 0]                  # precision of the x marginal
    par[1] = -H[0, 1] / H[0, 0]             # y | x: centre Y - byx dX
    par[2] = cy                             # conditional precision of y | x
    par[3] = 1.0 / cy
    par[4] = prec[0, 2] / pvv               # v | x, y: centre W - avx dX - avy dY
    par[5] = prec[1, 2] / pvv
    par[6] = pvv                            # conditional precision of v | x, y
    par[7] = 1.0 / pvv
    par[8] = math.sqrt(H[0, 0])             # marginal sigma of x
    return par


@njit(cache=True, fastmath=False, nogil=True)
def params_2d(H):
    """Constants of :func:`cmpipe.kde.accumulate.accumulate_2d` (same meaning as in
    :func:`params_3d`)."""
    det = H[0, 0] * H[1, 1] - H[0, 1] * H[0, 1]
    pvv = H[0, 0] / det
    par = np.empty(5)
    par[0] = 1.0 / H[0, 0]
    par[1] = -H[0, 1] / H[0, 0]             # v | R: centre W - avr dR
    par[2] = pvv
    par[3] = 1.0 / pvv
    par[4] = math.sqrt(H[0, 0])
    return par
