"""Gaussian kernel density estimates of a cluster's projected phase space on fixed grids.

Pipeline step 5 (``docs/science.md``): every projected cluster becomes a normalised cube
holding the 3-D Gaussian KDE of its galaxies' ``(x_proj, y_proj, v_los)``; the 2-D
``(R_proj, v_los)`` and 1-D ``v_los`` variants feed the dimensionality ablation.

Conventions
-----------
Units
    ``x_proj``, ``y_proj`` and ``R_proj = sqrt(x^2 + y^2)`` in proper h^-1 Mpc relative to the
    cluster centre; ``v_los`` in km/s.
Bandwidth
    Exactly :class:`scipy.stats.gaussian_kde` with ``bw_method=h0``: the kernel covariance is
    ``H = h0**2 * np.cov(data)`` (data covariance with ``ddof=1``), the same ``h0`` whatever
    the dimension; every galaxy has weight 1.
Grid
    Voxel *centres*. An axis spanning ``[lo, hi]`` with ``n`` voxels has edges
    ``np.linspace(lo, hi, n + 1)`` and is evaluated at the midpoints of consecutive edges
    (:func:`axis_centres`), so no centre sits on the window boundary and the cube is symmetric
    about the cluster centre. 3-D: ``x, y`` in ``[-L, L]``, ``v`` in ``[-V, V]`` (:class:`Grid3D`,
    default ``L = 1.6`` h^-1 Mpc, ``V = 2200`` km/s, ``n = 50``), axis order ``cube[ix, iy, iv]``.
    2-D: ``R_proj`` in ``[0, sqrt(2) L]`` (the corner of the square window, so no galaxy of the
    window falls off the grid) and ``v`` in ``[-V, V]``, order ``(iR, iv)``. 1-D: ``v`` in
    ``[-V, V]``.
Normalisation
    Each cube is divided by its own sum (in float64), so it sums to 1 over its voxels: kernel
    mass falling outside the grid (galaxies near the window edge, ``R < 0`` in 2-D, which is not
    reflected) is dropped *before* normalising, exactly as ``kde.evaluate(points) /
    kde.evaluate(points).sum()`` would do. No other scaling is applied (values are voxel
    probabilities, not densities; multiply by ``n_voxels`` for unit mean). Cubes are returned as
    float32.
Exact evaluation with truncation
    Nothing is binned: each galaxy adds its full-covariance Gaussian ``K_i = K0 exp(-Q / 2)``,
    ``Q = d^T H^-1 d``, at every voxel centre inside its truncation ellipsoid
    ``Q <= r_t**2`` (Mahalanobis radius ``r_t``, default 6.5). Loops run exactly over that
    ellipsoid (completing the square: x marginal, y given x, v given x and y); along ``v``,
    and from one ``v`` line to the next, the Gaussian is advanced by exact multiplicative
    recurrences instead of calling ``exp`` per voxel (rounding ~1e-13 relative).
    Error bound: a neglected kernel value is at most ``exp(-r_t**2 / 2) K0``
    (``exp(-21.125) = 6.7e-10`` for ``r_t = 6.5``), so every voxel of the unnormalised KDE
    (the mean of the ``N`` kernels) is low by at most ``6.7e-10 K0``. Relative to the cube
    maximum ``f_max`` that is ``6.7e-10 K0 / f_max``; for kernels at least one voxel wide
    ``f_max >= exp(-3/8) K0 / N`` (some voxel centre lies within half a voxel diagonal of a
    galaxy), so the relative error is ``<= 1.5 N exp(-r_t**2 / 2)`` (``< 5e-7`` for 500
    galaxies) and in practice orders of magnitude smaller because kernels overlap. The
    normalising sum misses at most the mass beyond ``r_t`` (``P(chi2_3 > 42.25) = 3.6e-9``).
    Measured against scipy the float32 cubes agree to ~5e-8 of the maximum (float32 rounding).
Degenerate clusters (one rule)
    The data covariance ``C`` is measured in voxel units, ``S = C / (d_j d_k)`` with ``d_j`` the
    voxel width of axis ``j``. The cluster is *degenerate* when the smallest eigenvalue of
    ``S`` is below ``max(1e-4, 1e-10 * lambda_max)``, i.e. the galaxies have a spread below
    0.01 voxel (0.64 h^-1 kpc, 0.88 km/s on the default grid) in some direction: two galaxies,
    three galaxies in 3-D (always coplanar), identical velocities, collinear points. Only then
    every eigenvalue of ``S`` below ``1 / h0**2`` is raised to ``1 / h0**2`` (eigenvectors
    kept), so the kernel is at least one voxel wide (standard deviation) along each such
    principal direction and never falls between voxel centres; all other directions, and every
    non-degenerate cluster, are left exactly as scipy would have them. (A floor of a fixed tiny
    fraction of the window would leave kernels far narrower than a voxel, whose values at the
    voxel centres underflow to zero.)
Bad input
    Any NaN/inf, mismatched lengths or fewer than ``min_galaxies`` (default 3) galaxies raise
    :class:`KDEInputError`, naming the cluster id. So does a cluster none of whose kernel mass
    reaches a voxel centre (galaxies far outside the window).

Performance: kernels are compiled with numba (``cache=True``, ``fastmath=False``,
``nogil=True``); :func:`kde_cube` runs on the calling thread and keeps a 1 MB (for 50^3)
float64 workspace per thread; :func:`kde_cubes` spreads clusters over threads with ``prange``
(set the count with ``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``). Run
``python benchmarks/bench_kde.py`` for numbers against scipy (~200x faster per thread
at 100 galaxies on a 50^3 grid).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

__all__ = [
    "DEFAULT_H0",
    "DEFAULT_TRUNCATION",
    "Grid3D",
    "KDEInputError",
    "axis_centres",
    "grid_points",
    "kernel_covariance",
    "kde_cube",
    "kde_cubes",
    "kde_2d",
    "kde_1d",
]

logger = logging.getLogger(__name__)

#: Bandwidth factor of the paper (scipy ``bw_method``), dimensionless.
DEFAULT_H0 = 0.175
#: Mahalanobis truncation radius of each kernel; exp(-6.5**2 / 2) = 6.7e-10.
DEFAULT_TRUNCATION = 6.5

# Degeneracy test (voxel^2 units): absolute floor (0.01 voxel)^2 and relative floor.
_DEGENERATE_ABS = 1e-4
_DEGENERATE_REL = 1e-10
# Largest accepted truncation radius (keeps every recurrence factor far from overflow).
_MAX_TRUNCATION = 20.0


class KDEInputError(ValueError):
    """A cluster's galaxies cannot be turned into a KDE; the message names the cluster."""


@dataclass(frozen=True)
class Grid3D:
    """The 3-D evaluation grid of the ``(x_proj, y_proj, v_los)`` cubes.

    Parameters
    ----------
    n : int
        Voxels per axis (the cube is ``n**3``).
    half_width_mpc_h : float
        Half-width ``L`` of the square sky window, proper h^-1 Mpc: ``x, y`` in ``[-L, L]``.
    v_max_kms : float
        Velocity half-width ``V``, km/s: ``v_los`` in ``[-V, V]``.

    Notes
    -----
    Values are evaluated at voxel centres, see :func:`axis_centres`.
    """

    n: int = 50
    half_width_mpc_h: float = 1.6
    v_max_kms: float = 2200.0

    def __post_init__(self):
        _check_axes("Grid3D", self.n, half_width_mpc_h=self.half_width_mpc_h,
                    v_max_kms=self.v_max_kms)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Cube shape ``(n, n, n)``, axis order ``(x, y, v)``."""
        return (self.n, self.n, self.n)

    @property
    def x_centres(self) -> np.ndarray:
        """Voxel centres along ``x_proj``, proper h^-1 Mpc, shape ``(n,)``."""
        return axis_centres(-self.half_width_mpc_h, self.half_width_mpc_h, self.n)

    @property
    def y_centres(self) -> np.ndarray:
        """Voxel centres along ``y_proj``, proper h^-1 Mpc, shape ``(n,)``."""
        return self.x_centres

    @property
    def v_centres(self) -> np.ndarray:
        """Voxel centres along ``v_los``, km/s, shape ``(n,)``."""
        return axis_centres(-self.v_max_kms, self.v_max_kms, self.n)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel widths ``(dx, dy, dv)`` in (h^-1 Mpc, h^-1 Mpc, km/s)."""
        d = 2.0 * self.half_width_mpc_h / self.n
        return (d, d, 2.0 * self.v_max_kms / self.n)

    def centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel centres ``(x, y, v)`` per axis (h^-1 Mpc, h^-1 Mpc, km/s)."""
        return self.x_centres, self.y_centres, self.v_centres


def _check_axes(where, n, **widths):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"{where}: n must be an integer >= 2, got {n!r}")
    for name, val in widths.items():
        if not (np.isfinite(val) and val > 0):
            raise ValueError(f"{where}: {name} must be finite and > 0, got {val!r}")


def axis_centres(lo: float, hi: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal voxels tiling ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : float
        Axis limits (units of the axis).
    n : int
        Number of voxels.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)`` float64: midpoints of ``np.linspace(lo, hi, n + 1)``.
    """
    edges = np.linspace(lo, hi, int(n) + 1)
    return 0.5 * (edges[:-1] + edges[1:])


def grid_points(grid: Grid3D = Grid3D()) -> np.ndarray:
    """All voxel centres of ``grid`` in the order of ``cube.ravel()`` (C order).

    Parameters
    ----------
    grid : Grid3D
        The evaluation grid.

    Returns
    -------
    numpy.ndarray
        Shape ``(3, n**3)`` float64; rows ``x`` (h^-1 Mpc), ``y`` (h^-1 Mpc), ``v`` (km/s).
        ``scipy.stats.gaussian_kde(...).evaluate(grid_points(grid)).reshape(grid.shape)`` is
        directly comparable with :func:`kde_cube`.
    """
    xs, ys, vs = grid.centres()
    mesh = np.meshgrid(xs, ys, vs, indexing="ij")
    return np.stack([m.ravel() for m in mesh])


# ----------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------

def _label(cluster_id) -> str:
    return "cluster (no id given)" if cluster_id is None else f"cluster {cluster_id!r}"


def _check_common(h0, truncation, min_galaxies):
    if not (np.isfinite(h0) and h0 > 0):
        raise ValueError(f"h0 must be finite and > 0, got {h0!r}")
    if not (np.isfinite(truncation) and 0 < truncation <= _MAX_TRUNCATION):
        raise ValueError(f"truncation must be in (0, {_MAX_TRUNCATION}], got {truncation!r} "
                         f"(beyond ~8 nothing changes in float64)")
    if int(min_galaxies) != min_galaxies or min_galaxies < 2:
        raise ValueError(f"min_galaxies must be an integer >= 2 (a covariance needs 2 "
                         f"galaxies), got {min_galaxies!r}")


def _as_columns(columns, names, min_galaxies, cluster_id) -> list[np.ndarray]:
    """Validate one cluster's coordinate columns; return them as contiguous float64."""
    label = _label(cluster_id)
    arrays = [np.ascontiguousarray(np.asarray(c, dtype=np.float64)) for c in columns]
    for a, name in zip(arrays, names):
        if a.ndim != 1:
            raise KDEInputError(f"{label}: '{name}' must be 1-D, got shape {a.shape}")
    if len({a.size for a in arrays}) != 1:
        raise KDEInputError(f"{label}: coordinate columns {names} have different lengths "
                            f"{[a.size for a in arrays]}")
    n_gal = arrays[0].size
    if n_gal < min_galaxies:
        raise KDEInputError(f"{label}: {n_gal} galaxies, fewer than min_galaxies="
                            f"{min_galaxies}; fix: drop the cluster upstream or lower "
                            f"min_galaxies")
    for a, name in zip(arrays, names):
        bad = ~np.isfinite(a)
        if bad.any():
            raise KDEInputError(f"{label}: '{name}' has {int(bad.sum())} non-finite "
                                f"(NaN/inf) value(s) of {n_gal}; fix: drop or repair those "
                                f"galaxies upstream")
    return arrays


def _empty_error(cluster_id, truncation):
    return KDEInputError(f"{_label(cluster_id)}: no kernel mass reaches any voxel centre "
                         f"(no voxel centre lies within {truncation} kernel widths of a "
                         f"galaxy); fix: check that coordinates are relative to the cluster "
                         f"centre and that the window cuts were applied")


# ----------------------------------------------------------------------------------------
# compiled kernels; all coordinates in voxel units: X = (x - first centre) / voxel width,
# so the voxel centres sit at X = 0, 1, ..., n - 1
# ----------------------------------------------------------------------------------------

@njit(cache=True, fastmath=False, nogil=True)
def _to_voxel_units(x, c0, inv_d, out):
    """``out[:] = (x - c0) * inv_d``: coordinates in voxel units."""
    for i in range(x.size):
        out[i] = (x[i] - c0) * inv_d
    return out


@njit(cache=True, fastmath=False, nogil=True)
def _sym_eig(a):
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
def _kernel_cov_vox(data, h0):
    """Kernel covariance and its inverse (voxel units) of ``data`` (d, N) in voxel units.

    Returns ``(H, H^-1, regularised)``; ``regularised`` tells whether the degeneracy rule
    (module docstring) was applied. Without it ``H = h0**2 * cov(data, ddof=1)`` exactly.
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
    lam, vec = _sym_eig(cov)
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
def _params_3d(H, prec):
    """Constants of :func:`_accumulate_3d` from the kernel covariance ``H`` and its inverse
    ``prec`` (voxel units).

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
def _params_2d(H):
    """Constants of :func:`_accumulate_2d` (same meaning as in :func:`_params_3d`)."""
    det = H[0, 0] * H[1, 1] - H[0, 1] * H[0, 1]
    pvv = H[0, 0] / det
    par = np.empty(5)
    par[0] = 1.0 / H[0, 0]
    par[1] = -H[0, 1] / H[0, 0]             # v | R: centre W - avr dR
    par[2] = pvv
    par[3] = 1.0 / pvv
    par[4] = math.sqrt(H[0, 0])
    return par


@njit(cache=True, fastmath=False, nogil=True)
def _span(centre, half, n):
    """Integer voxels ``[i0, i1]`` within ``[centre - half, centre + half]`` and ``[0, n-1]``."""
    a = centre - half
    b = centre + half
    if a < 0.0:
        a = 0.0
    if b > n - 1.0:
        b = n - 1.0
    if a > b:
        return 0, -1
    return int(math.ceil(a)), int(math.floor(b))


@njit(cache=True, fastmath=False, nogil=True)
def _run_line(row, i0, i1, c, g, r_f, r_b, q):
    """Add a 1-D Gaussian to ``row[i0..i1]`` from its value ``g`` at voxel ``c``.

    ``r_f = g[c+1] / g[c]``, ``r_b = g[c-1] / g[c]`` and ``q = exp(-prec)``: the exact
    recurrences ``g[k+1] = g[k] r[k]``, ``r[k+1] = r[k] q`` run outwards from ``c`` as two
    independent chains (instruction-level parallelism). With ``c`` the voxel of the line
    nearest the Gaussian's centre every ratio applied to a stored value is <= 1 (no
    overflow; far tails may underflow harmlessly), and the rounding error grows like
    ``steps**2`` ulp, below 1e-12 relative on 50 voxels.
    """
    g_b = g * r_b
    r_b *= q
    k_f = c
    k_b = c - 1
    while k_f <= i1 and k_b >= i0:
        row[k_f] += g
        row[k_b] += g_b
        g *= r_f
        g_b *= r_b
        r_f *= q
        r_b *= q
        k_f += 1
        k_b -= 1
    while k_f <= i1:
        row[k_f] += g
        g *= r_f
        r_f *= q
        k_f += 1
    while k_b >= i0:
        row[k_b] += g_b
        g_b *= r_b
        r_b *= q
        k_b -= 1


@njit(cache=True, fastmath=False, nogil=True)
def _run_line_above(row, n, c, g, r_f, r_b, q, g_min):
    """As :func:`_run_line`, but the line is the run of voxels around ``c`` (within
    ``[0, n-1]``) where the Gaussian is ``>= g_min = exp(-r_t**2 / 2)``, i.e. exactly the
    voxels with ``Q <= r_t**2``, found while walking instead of by a square root."""
    g_b = g * r_b
    r_b *= q
    k_f = c
    k_b = c - 1
    while k_f < n and k_b >= 0 and g >= g_min and g_b >= g_min:
        row[k_f] += g
        row[k_b] += g_b
        g *= r_f
        g_b *= r_b
        r_f *= q
        r_b *= q
        k_f += 1
        k_b -= 1
    while k_f < n and g >= g_min:
        row[k_f] += g
        g *= r_f
        r_f *= q
        k_f += 1
    while k_b >= 0 and g_b >= g_min:
        row[k_b] += g_b
        g_b *= r_b
        r_b *= q
        k_b -= 1


@njit(cache=True, fastmath=False, nogil=True)
def _add_line(row, i0, i1, u, prec, q0, q):
    """``row[k] += exp(-(q0 + prec (k - u)**2) / 2)`` for ``k = i0..i1`` (``q = exp(-prec)``).

    Lines of one or two voxels call ``exp`` per voxel; longer ones start at the voxel
    nearest the centre ``u`` and use :func:`_run_line`: two ``exp`` per line.
    """
    if i1 - i0 < 2:
        for k in range(i0, i1 + 1):
            t = k - u
            row[k] += math.exp(-0.5 * (q0 + prec * t * t))
        return
    c = min(max(math.floor(u + 0.5), float(i0)), float(i1))
    t = c - u
    r_f = math.exp(-prec * (t + 0.5))
    _run_line(row, i0, i1, int(c), math.exp(-0.5 * (q0 + prec * t * t)), r_f, q / r_f, q)


@njit(cache=True, fastmath=False, nogil=True)
def _accumulate_3d(X, Y, W, par, r_t, acc):
    """Add ``exp(-Q/2)`` of every galaxy to ``acc[ix, iy, iv]`` inside ``Q <= r_t**2``.

    Loops run exactly over each truncation ellipsoid: ``ix`` over the x marginal, ``iy`` over
    the ellipse of ``y | x``, ``iv`` over the interval of ``v | x, y``.

    Within a plane ``ix`` the Gaussian restricted to the lattice ``(iy, iv)`` obeys exact
    multiplicative recurrences in both indices, so the state at the centre voxel of line
    ``iy + 1`` follows from that of line ``iy`` by a few products (state ``f`` = value,
    ``r_f``/``r_b`` = ratios along ``v``, ``s`` = ratio along ``y``; constants
    ``alpha = exp(-pvv avy)``, ``beta = exp(-cy - pvv avy**2)``): ``exp`` is called ~4 times
    per plane instead of twice per line, and each line is walked outwards while the value
    stays ``>= exp(-r_t**2/2)`` (:func:`_run_line_above`), which is the same ellipsoid. The
    state is recomputed exactly at the first line of a plane, when the line centre jumps by
    more than 4 voxels, or when it leaves ``(1e-250, 2)``; clusters whose kernel is so narrow
    or tilted that these factors could leave ``exp(+-500)`` use an exact start for every line
    (:func:`_add_line`).
    """
    inv_hxx = par[0]
    byx = par[1]
    cy = par[2]
    inv_cy = par[3]
    avx = par[4]
    avy = par[5]
    pvv = par[6]
    inv_pvv = par[7]
    half_x = r_t * par[8]
    r2 = r_t * r_t
    q = math.exp(-pvv)
    bound = (r_t * math.sqrt(cy) + cy + r_t * math.sqrt(pvv) * (1.0 + abs(avy))
             + pvv * (1.0 + abs(avy) + avy * avy))
    lattice = bound <= 500.0 and abs(avy) <= 4.0
    g_min = math.exp(-0.5 * r2)
    if lattice:
        inv_q = math.exp(pvv)
        alpha = math.exp(-pvv * avy)
        inv_alpha = math.exp(pvv * avy)
        beta = math.exp(-cy - pvv * avy * avy)
    else:
        inv_q = alpha = inv_alpha = beta = 1.0
    nx, ny, nv = acc.shape
    for i in range(X.size):
        xi = X[i]
        yi = Y[i]
        ix0, ix1 = _span(xi, half_x, nx)
        for ix in range(ix0, ix1 + 1):
            dx = ix - xi
            qx = dx * dx * inv_hxx
            rem = r2 - qx
            if rem < 0.0:
                continue
            iy0, iy1 = _span(yi - byx * dx, math.sqrt(rem * inv_cy), ny)
            w_x = W[i] - avx * dx
            have = False                    # lattice state valid at (iy - 1, c)?
            c = 0
            f = r_f = r_b = s = 0.0
            for iy in range(iy0, iy1 + 1):
                if have:                    # step the state to (iy, c)
                    f *= s
                    s *= beta
                    r_f *= alpha
                    r_b *= inv_alpha
                dy = iy - yi
                e = dy + byx * dx
                q2 = qx + cy * e * e
                remv = r2 - q2
                if remv < 0.0:
                    have = False
                    continue
                u = w_x - avy * dy
                if not lattice:
                    iv0, iv1 = _span(u, math.sqrt(remv * inv_pvv), nv)
                    if iv0 <= iv1:
                        _add_line(acc[ix, iy], iv0, iv1, u, pvv, q2, q)
                    continue
                # voxel of the line nearest its centre: the line's maximum on the grid
                cn = int(min(max(math.floor(u + 0.5), 0.0), nv - 1.0))
                ok = False
                if have and abs(cn - c) <= 4:
                    while c < cn:
                        f *= r_f
                        r_f *= q
                        r_b *= inv_q
                        s *= alpha
                        c += 1
                    while c > cn:
                        f *= r_b
                        r_b *= q
                        r_f *= inv_q
                        s *= inv_alpha
                        c -= 1
                    ok = 1e-250 < f < 2.0           # False for NaN too
                if not ok:                          # exact (re)start of the state at (iy, cn)
                    c = cn
                    t = c - u
                    f = math.exp(-0.5 * (q2 + pvv * t * t))
                    r_f = math.exp(-pvv * (t + 0.5))
                    r_b = q / r_f
                    s = math.exp(-0.5 * (cy * (2.0 * e + 1.0) + pvv * avy * (2.0 * t + avy)))
                    have = True
                if f >= g_min:                      # Q <= r_t**2  <=>  exp(-Q/2) >= g_min
                    _run_line_above(acc[ix, iy], nv, c, f, r_f, r_b, q, g_min)


@njit(cache=True, fastmath=False, nogil=True)
def _accumulate_2d(R, W, par, r_t, acc):
    """2-D analogue of :func:`_accumulate_3d` on ``acc[iR, iv]``."""
    inv_hrr = par[0]
    avr = par[1]
    pvv = par[2]
    inv_pvv = par[3]
    half_r = r_t * par[4]
    r2 = r_t * r_t
    q = math.exp(-pvv)
    nr, nv = acc.shape
    for i in range(R.size):
        ri = R[i]
        i0, i1 = _span(ri, half_r, nr)
        for ir in range(i0, i1 + 1):
            dr = ir - ri
            qr = dr * dr * inv_hrr
            rem = r2 - qr
            if rem < 0.0:
                continue
            u = W[i] - avr * dr
            iv0, iv1 = _span(u, math.sqrt(rem * inv_pvv), nv)
            if iv0 <= iv1:
                _add_line(acc[ir], iv0, iv1, u, pvv, qr, q)


@njit(cache=True, fastmath=False, nogil=True)
def _accumulate_1d(W, hvv, r_t, acc):
    """1-D analogue of :func:`_accumulate_3d` (``hvv``: kernel variance, voxel^2)."""
    pvv = 1.0 / hvv
    half = r_t * math.sqrt(hvv)
    q = math.exp(-pvv)
    for i in range(W.size):
        i0, i1 = _span(W[i], half, acc.size)
        if i0 <= i1:
            _add_line(acc, i0, i1, W[i], pvv, 0.0, q)


@njit(cache=True, fastmath=False, nogil=True)
def _normalise_into(acc, out):
    """``out[:] = float32(acc / acc.sum())`` over flat views, then zero ``acc`` for reuse.

    Returns the float64 sum (0 when no kernel reached the grid; ``out`` is NaN then).
    """
    flat = acc.reshape(acc.size)
    o = out.reshape(out.size)
    m = flat.size
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    j = 0
    while j + 3 < m:                                # four partial sums (ILP)
        s0 += flat[j]
        s1 += flat[j + 1]
        s2 += flat[j + 2]
        s3 += flat[j + 3]
        j += 4
    while j < m:
        s0 += flat[j]
        j += 1
    total = (s0 + s1) + (s2 + s3)
    scale = 1.0 / total if total > 0.0 else np.nan
    for j in range(m):
        o[j] = flat[j] * scale
        flat[j] = 0.0
    return total


@njit(cache=True, fastmath=False, nogil=True)
def _cube_one(x, y, v, c0, inv_d, h0, r_t, acc, out):
    """One cube into ``out`` (float32) using the all-zero float64 workspace ``acc`` (left
    all zero); returns (grid sum, regularised)."""
    data = np.empty((3, x.size))
    _to_voxel_units(x, c0[0], inv_d[0], data[0])
    _to_voxel_units(y, c0[1], inv_d[1], data[1])
    _to_voxel_units(v, c0[2], inv_d[2], data[2])
    H, prec, regularised = _kernel_cov_vox(data, h0)
    _accumulate_3d(data[0], data[1], data[2], _params_3d(H, prec), r_t, acc)
    return _normalise_into(acc, out), regularised


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


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------

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
        True when the degeneracy rule (module docstring) was applied: the data covariance
        ``S`` in voxel units had an eigenvalue below ``max(1e-4, 1e-10 lambda_max)`` voxel^2,
        and every eigenvalue below ``1 / h0**2`` was raised to ``1 / h0**2``.
    """
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    widths = np.asarray(voxel_widths, dtype=np.float64).reshape(-1)
    if widths.size != data.shape[0]:
        raise ValueError(f"{data.shape[0]} coordinate rows but {widths.size} voxel widths")
    if data.shape[1] < 2 or not np.all(np.isfinite(data)):
        raise ValueError("data needs >= 2 columns (galaxies), all finite")
    H_vox, _, regularised = _kernel_cov_vox(np.ascontiguousarray(data / widths[:, None]),
                                         float(h0))
    return H_vox * np.outer(widths, widths), bool(regularised)


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
        neglected; error bound in the module docstring (``exp(-r_t**2/2)`` of a kernel's peak
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
    _check_common(h0, truncation, min_galaxies)
    x, y, v = _as_columns((x_mpc_h, y_mpc_h, v_kms), ("x_mpc_h", "y_mpc_h", "v_kms"),
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
        logger.debug("%s: degenerate covariance regularised", _label(cluster_id))
    if not total > 0.0:
        raise _empty_error(cluster_id, truncation)
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
    _check_common(h0, truncation, min_galaxies)
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
    # vectorised input checks; the first offending cluster raises through _as_columns
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
        _as_columns([c[a:b] for c in cols], ("x_mpc_h", "y_mpc_h", "v_kms"), min_galaxies,
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
        raise _empty_error(ids[int(empty[0])], truncation)
    return out


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
    _check_common(h0, truncation, min_galaxies)
    _check_axes("kde_2d", n, half_width_mpc_h=half_width_mpc_h, v_max_kms=v_max_kms)
    n = int(n)
    x, y, v = _as_columns((x_mpc_h, y_mpc_h, v_kms), ("x_mpc_h", "y_mpc_h", "v_kms"),
                          min_galaxies, cluster_id)
    d_r = math.sqrt(2.0) * half_width_mpc_h / n
    d_v = 2.0 * v_max_kms / n
    data = np.empty((2, x.size))
    _to_voxel_units(np.hypot(x, y), 0.5 * d_r, 1.0 / d_r, data[0])
    _to_voxel_units(v, -v_max_kms + 0.5 * d_v, 1.0 / d_v, data[1])
    H, _, _ = _kernel_cov_vox(data, float(h0))
    acc = np.zeros((n, n))
    _accumulate_2d(data[0], data[1], _params_2d(H), float(truncation), acc)
    out = np.empty((n, n), dtype=np.float32)
    if not _normalise_into(acc, out) > 0.0:
        raise _empty_error(cluster_id, truncation)
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
    _check_common(h0, truncation, min_galaxies)
    _check_axes("kde_1d", n, v_max_kms=v_max_kms)
    n = int(n)
    (v,) = _as_columns((v_kms,), ("v_kms",), min_galaxies, cluster_id)
    d_v = 2.0 * v_max_kms / n
    data = np.empty((1, v.size))
    _to_voxel_units(v, -v_max_kms + 0.5 * d_v, 1.0 / d_v, data[0])
    H, _, _ = _kernel_cov_vox(data, float(h0))
    acc = np.zeros(n)
    _accumulate_1d(data[0], H[0, 0], float(truncation), acc)
    out = np.empty(n, dtype=np.float32)
    if not _normalise_into(acc, out) > 0.0:
        raise _empty_error(cluster_id, truncation)
    return out
