"""The joint density of network predictions and true masses: tabulation and the table.

Pipeline step 8 (``docs/science.md``; paper section 3.1 and 4.1). The trained network's
point predictions ``d~`` (log10 h^-1 Msun) of the *test-set* clusters and their true
``log10 M200c`` define the joint density ``P(d~, log M)``, estimated by a bivariate Gaussian
KDE and tabulated once on a fine grid (:func:`tabulate_joint_pdf`, :class:`JointPDF`; the
file format is :mod:`cmpipe.io.joint_pdf`).

Conventions
-----------
Units
    Both axes are log10 of a mass in h^-1 Msun (dex). The table is a probability density
    in dex^-2 (it integrates to 1 over the plane, up to kernel mass outside the grid);
    posteriors are densities in dex^-1 over the ``m`` grid.
Bandwidth
    Exactly :class:`scipy.stats.gaussian_kde` with ``bw_method=bandwidth`` (default 0.20,
    the paper's value): the kernel covariance is ``H = bandwidth**2 * np.cov([d, m])`` (data
    covariance with ``ddof=1``, full 2x2 with the correlation), every pair has weight 1 and
    the density is ``mean_i N((d, m); (d_i, m_i), H)``.
Grid
    Grid *nodes* ``np.linspace(lo, hi, n)`` on each axis, ``table[i_d, i_m]`` (rows are
    predictions ``d~``, columns are masses). Default extents: the range of the pairs on that
    axis plus a margin in kernel standard deviations ``sqrt(H_jj)`` on each side. Along
    ``log M`` the margin is the truncation radius (``m_margin = 7.5``): every kernel lies
    wholly inside the grid, so no posterior loses mass off the ``m`` axis. Along ``d~`` it is
    ``d_margin = 2``: the edge rows are still carried by the most extreme test-set
    predictions (kernel weight ``exp(-2)``) rather than by vanishing far tails, which matters
    because out-of-range predictions use the edge row. Explicit ``d_range``/``m_range``
    override.
Exact evaluation, fast
    Nothing is binned. A kernel is factored exactly by completing the square in ``m``:
    ``exp(-Q/2) = exp(-(d - d_i)**2 / (2 H_dd)) * exp(-(m - mu_i(d))**2 / (2 s**2))`` with the
    conditional mean ``mu_i(d) = m_i + (H_dm / H_dd)(d - d_i)`` and conditional variance
    ``s**2 = H_mm - H_dm**2 / H_dd``. For each grid row ``d_j`` and each pair within the
    truncation radius in ``d`` the row receives a 1-D Gaussian in ``m``, evaluated on exactly
    the nodes inside the truncation ellipse ``Q <= truncation**2``. Along the row the
    Gaussian is advanced from its peak node outwards by the exact multiplicative recurrence
    ``g[k+1] = g[k] r[k], r[k+1] = r[k] exp(-dm**2 / s**2)`` (two multiplications per node,
    no ``exp``; rounding ~1e-12 relative over a thousand nodes;
    :func:`cmpipe.kernels.add_gaussian_run`). Rows are independent, so
    they are spread over numba threads (``prange``); the result does not depend on the
    thread count (each row sums its pairs in the same order).
    Cost: ``n_pairs * pi * truncation**2 * sqrt(det H) / (dd * dm)`` node updates, about
    ``1e9`` for 2e4 realistic pairs on 1000 x 1000 (a few seconds on one core; run
    ``python benchmarks/bench_posterior.py``), against ``2e10`` exponentials for scipy.
    Error bound: a neglected kernel value is below ``exp(-truncation**2 / 2) K0``
    (``6.1e-13 K0`` at 7.5, ``K0 = 1 / (2 pi sqrt(det H))``), so every node of the density is
    low by at most ``6.1e-13 K0``; relative to the table maximum (``>= K0 / n_pairs`` times a
    factor of order one when kernels span several nodes) that is ``<~ n_pairs * 6e-13``
    (``1e-8`` for 2e4 pairs), and far less in practice because kernels overlap.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange

from ..io.joint_pdf import read_joint_pdf, write_joint_pdf
from ..kernels import add_gaussian_run

__all__ = [
    "DEFAULT_BANDWIDTH",
    "DEFAULT_GRID_SIZE",
    "DEFAULT_TRUNCATION",
    "DEFAULT_TAIL_WIDTH",
    "JointPDF",
    "MAX_TAIL_WEIGHT",
    "core_scale",
    "tail_mixture",
    "kernel_covariance",
    "tabulate_joint_pdf",
    "is_extrapolated",
    "posterior_rows",
]

logger = logging.getLogger(__name__)

#: KDE bandwidth factor of the paper (scipy ``bw_method``), dimensionless.
DEFAULT_BANDWIDTH = 0.20
#: Default number of grid nodes on each axis.
DEFAULT_GRID_SIZE = 1000
#: Mahalanobis truncation radius of each kernel; exp(-7.5**2 / 2) = 6.1e-13.
DEFAULT_TRUNCATION = 7.5
#: Width of the outlier component (:func:`tail_mixture`) when none is chosen, in units of
#: the table's scatter of d~ at each mass.
DEFAULT_TAIL_WIDTH = 3.0
#: Largest accepted truncation radius.
_MAX_TRUNCATION = 20.0


@dataclass(frozen=True, eq=False)
class JointPDF:
    """The tabulated joint density ``P(d~, log10 M)`` of (prediction, truth) pairs.

    Attributes
    ----------
    d_grid : numpy.ndarray, shape (n_d,)
        Uniform grid of network predictions ``d~``, log10 h^-1 Msun (table rows).
    m_grid : numpy.ndarray, shape (n_m,)
        Uniform grid of true masses ``log10 M200c``, log10 h^-1 Msun (table columns).
    table : numpy.ndarray, shape (n_d, n_m)
        Density at the grid nodes, dex^-2, float64.
    bandwidth : float
        KDE bandwidth factor (scipy ``bw_method`` convention).
    n_pairs : int
        Number of (prediction, truth) pairs.
    kernel_covariance : numpy.ndarray, shape (2, 2)
        Kernel covariance ``H`` in (d~, log M), dex^2.
    truncation : float
        Mahalanobis truncation radius of each kernel.
    meta : dict
        Free-form provenance (stored as HDF5 attributes: scalars and strings).
    """

    d_grid: np.ndarray
    m_grid: np.ndarray
    table: np.ndarray
    bandwidth: float
    n_pairs: int
    kernel_covariance: np.ndarray
    truncation: float = DEFAULT_TRUNCATION
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_grid", "m_grid"):
            g = np.asarray(getattr(self, name), dtype=np.float64)
            if g.ndim != 1 or g.size < 2 or not np.all(np.diff(g) > 0):
                raise ValueError(f"JointPDF.{name} must be an increasing 1-D grid of >= 2 "
                                 "nodes")
            step = (g[-1] - g[0]) / (g.size - 1)
            if not np.allclose(np.diff(g), step, rtol=1e-6, atol=0.0):
                raise ValueError(f"JointPDF.{name} must be uniformly spaced")
            object.__setattr__(self, name, g)
        t = np.asarray(self.table, dtype=np.float64)
        if t.shape != (self.d_grid.size, self.m_grid.size):
            raise ValueError(f"JointPDF.table has shape {t.shape}, expected "
                             f"{(self.d_grid.size, self.m_grid.size)} (n_d, n_m)")
        object.__setattr__(self, "table", t)
        object.__setattr__(self, "kernel_covariance",
                           np.asarray(self.kernel_covariance, dtype=np.float64).reshape(2, 2))

    @property
    def calibrated_mass_range(self) -> tuple[float, float]:
        """``(min, max)`` of the test-set true masses, log10 h^-1 Msun: where the likelihood
        ``P(d~ | M)`` implied by the table is measured rather than extrapolated.

        Stored by :func:`tabulate_joint_pdf` in ``meta``; for older tables, the masses where
        the ``log M`` marginal reaches half its maximum (the edges of a flat test-set prior
        smoothed by a symmetric kernel).
        """
        if "m_true_min" in self.meta and "m_true_max" in self.meta:
            return float(self.meta["m_true_min"]), float(self.meta["m_true_max"])
        marg = self.table.sum(axis=0)
        above = np.flatnonzero(marg >= 0.5 * marg.max())
        return float(self.m_grid[above[0]]), float(self.m_grid[above[-1]])

    @property
    def d_step(self) -> float:
        """Grid spacing of ``d_grid``, dex."""
        return float((self.d_grid[-1] - self.d_grid[0]) / (self.d_grid.size - 1))

    @property
    def m_step(self) -> float:
        """Grid spacing of ``m_grid``, dex."""
        return float((self.m_grid[-1] - self.m_grid[0]) / (self.m_grid.size - 1))

    def save(self, path) -> None:
        """Write to HDF5 at ``path`` atomically (:func:`cmpipe.io.joint_pdf.write_joint_pdf`:
        group ``joint_pdf``, table gzip-compressed)."""
        write_joint_pdf(path, d_grid=self.d_grid, m_grid=self.m_grid, table=self.table,
                        kernel_covariance=self.kernel_covariance, bandwidth=self.bandwidth,
                        n_pairs=self.n_pairs, truncation=self.truncation, meta=self.meta)

    @classmethod
    def load(cls, path) -> "JointPDF":
        """Read a :class:`JointPDF` written by :meth:`save`
        (:func:`cmpipe.io.joint_pdf.read_joint_pdf`).

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        cmpipe.io.tables.CatalogueError
            (a ``ValueError``) The file is not readable HDF5 (truncated, corrupt), holds no
            ``joint_pdf`` group, has an unknown format version or misses a dataset.
        """
        return cls(**read_joint_pdf(path))


# ----------------------------------------------------------------------------------------
# tabulation
# ----------------------------------------------------------------------------------------

def kernel_covariance(d_pred, m_true, bandwidth: float = DEFAULT_BANDWIDTH) -> np.ndarray:
    """Kernel covariance ``bandwidth**2 * cov([d, m])`` (``ddof=1``), dex^2, as scipy."""
    return float(bandwidth) ** 2 * np.cov(np.stack([d_pred, m_true]), ddof=1)


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _tabulate(d_sorted, m_sorted, d0, dd, nd, m0, dm, nm, h_dd, beta, s2, r_t, n_chunks,
              out):
    """Fill ``out[nd, nm]`` with the unnormalised kernel sum (kernels of peak 1).

    ``d_sorted``/``m_sorted``: pairs sorted by ``d``. Row ``j`` (node ``d0 + j dd``) gets,
    for each pair within ``r_t sqrt(h_dd)`` in ``d``, the conditional Gaussian in ``m``
    truncated to ``Q <= r_t**2``. Rows are dealt to chunks round-robin (balanced load).
    """
    r2 = r_t * r_t
    half_d = r_t * math.sqrt(h_dd)
    prec = dm * dm / s2                  # precision of the conditional Gaussian, node units
    n = d_sorted.size
    for ch in prange(n_chunks):
        for j in range(ch, nd, n_chunks):
            row = out[j]
            for k in range(nm):
                row[k] = 0.0
            dj = d0 + j * dd
            lo = np.searchsorted(d_sorted, dj - half_d)
            for i in range(lo, n):
                x = dj - d_sorted[i]
                if x < -half_d:
                    break
                qd = x * x / h_dd
                if qd > r2:
                    continue
                u = (m_sorted[i] + beta * x - m0) / dm
                hw = math.sqrt((r2 - qd) / prec)
                i0 = max(int(math.ceil(u - hw)), 0)
                i1 = min(int(math.floor(u + hw)), nm - 1)
                if i0 > i1:
                    continue
                add_gaussian_run(row, i0, i1, u, prec, math.exp(-0.5 * qd))


#: Largest accepted weight of the outlier component: the core keeps its central 68%
#: interval only while ``w`` stays below ``1 - 0.683`` whatever the width.
MAX_TAIL_WEIGHT = 0.3
#: Probability of the central interval the outlier component leaves unchanged (1 sigma).
_CORE_PROBABILITY = math.erf(1.0 / math.sqrt(2.0))


def core_scale(weight: float, width: float) -> float:
    """Factor ``s`` by which :func:`tail_mixture` narrows the KDE's core: for a Gaussian
    column of sd ``sigma``, ``(1 - w) N(0, (s sigma)^2) + w N(0, (k sigma)^2)`` holds 68.27%
    of its probability within ``+-sigma``, as ``N(0, sigma^2)`` does; 1 for ``w = 0``.

    Raises
    ------
    ValueError
        ``weight`` outside [0, 0.3] or ``width`` below 1.
    """
    from scipy.optimize import brentq       # here: the plots env reads tables without scipy
    from scipy.special import erf

    w, k = float(weight), float(width)
    if not 0.0 <= w <= MAX_TAIL_WEIGHT:
        raise ValueError(f"tail weight must be in [0, {MAX_TAIL_WEIGHT}], got {weight}")
    if not (k >= 1.0 and math.isfinite(k)):
        raise ValueError(f"tail width must be >= 1 (units of the scatter), got {width}")
    outer = erf(1.0 / (k * math.sqrt(2.0)))               # the component's mass within 1 sd
    if w == 0.0 or outer >= _CORE_PROBABILITY:
        return 1.0

    def excess(s):
        return (1.0 - w) * erf(1.0 / (s * math.sqrt(2.0))) + w * outer - _CORE_PROBABILITY
    return float(brentq(excess, 1e-3, 1.0, xtol=1e-12))


def tail_mixture(table, d_grid, weight: float, width: float) -> np.ndarray:
    """Mix an outlier component into a joint-PDF table, keeping the core's 68% intervals:
    ``(1 - w) T_s + w B``.

    Why: the kernel covariance is a fraction of the pairs' covariance, and the pairs lie
    along a tight relation (d~ ~ log M, correlation ~0.98), so a kernel's width *across*
    the relation is ``bandwidth * sd * sqrt(1 - rho**2)``, about 0.02 dex, far below the
    relation's scatter (0.07-0.15 dex). Beyond the most extreme test pair the likelihood
    ``P(d~ | M)`` then falls on that 0.02-dex scale: a cluster 0.1 dex beyond it is ruled out
    at ~e^-18, and a posterior pressed against a prior's edge (a population prior's mass
    threshold) shrinks to a few thousandths of a dex around the wrong mass. The component
    gives the likelihood tails of the relation's own scatter.

    ``B(d, m) = P(m) N(d; mu(m), (width * sigma(m))**2) / Z(m)``: ``P(m)``, ``mu(m)`` and
    ``sigma(m)`` are the table's own ``log M`` marginal and the mean and standard deviation
    of ``d~`` in each mass column (trapezoid over the ``d~`` grid), and ``Z(m)`` the normal's
    integral over the grid, so the marginal ``P(m)`` (the test-set prior) is unchanged.
    Columns whose marginal is below 1e-12 of its maximum get no component and keep their
    KDE (times ``1 - w``).

    Mixing alone would widen every posterior's core: the KDE's central intervals are
    already calibrated, and the component adds probability outside them. So each column of
    the KDE is narrowed about its mean by :func:`core_scale` ``s(w, k)`` (``T_s(d, m) =
    T(mu + (d - mu) / s, m) / s``, linear between grid nodes, renormalised to ``P(m)``):
    for a Gaussian column the mixture's ``+-sigma`` interval holds 68.27%, as the KDE's
    does, while its tails are lifted. Column means and the marginal are unchanged; the
    column variance is ``((1 - w) s^2 + w k^2) sigma^2``.

    Parameters
    ----------
    table : ndarray, shape (n_d, n_m)
        Density on the grid, dex^-2 (rows ``d~``, columns ``log M``).
    d_grid : ndarray, shape (n_d,)
        Uniform grid of ``d~``, log10 h^-1 Msun.
    weight : float
        ``w`` in [0, 0.3].
    width : float
        Width of the component in units of ``sigma(m)``, >= 1.

    Returns
    -------
    ndarray, shape (n_d, n_m)
    """
    s = core_scale(weight, width)                          # checks weight and width
    w, k = float(weight), float(width)
    t = np.asarray(table, dtype=np.float64)
    if w == 0.0:
        return t
    g = np.asarray(d_grid, dtype=np.float64)
    dd = float((g[-1] - g[0]) / (g.size - 1))
    wd = np.full(g.size, dd)
    wd[[0, -1]] *= 0.5                                   # trapezoid weights along d~
    marg = wd @ t
    ok = marg > 1e-12 * marg.max()
    safe = np.where(ok, marg, 1.0)
    mu = (wd * g) @ t / safe
    var = wd @ (t * (g[:, None] - mu[None, :]) ** 2) / safe

    def normalised(c):                                   # each column to the marginal P(m)
        z = wd @ c
        return c * np.where(ok & (z > 0), marg / np.where(z > 0, z, 1.0), 0.0)

    # the core, narrowed by s about each column's mean
    at = (mu[None, :] + (g[:, None] - mu[None, :]) / s - g[0]) / dd
    i0 = np.clip(np.floor(at).astype(np.intp), 0, g.size - 2)
    f = np.clip(at - i0, 0.0, 1.0)
    cols = np.arange(t.shape[1])[None, :]
    core = ((1.0 - f) * t[i0, cols] + f * t[i0 + 1, cols]) * ((at >= 0) & (at <= g.size - 1))
    sig = k * np.sqrt(np.maximum(var, dd * dd))
    comp = np.exp(-0.5 * ((g[:, None] - mu[None, :]) / sig[None, :]) ** 2)
    core = np.where(ok[None, :], normalised(core), t)    # empty columns kept as they are
    return (1.0 - w) * core + w * normalised(comp)


def _check_pairs(d_pred, m_true):
    d = np.asarray(d_pred, dtype=np.float64).ravel()
    m = np.asarray(m_true, dtype=np.float64).ravel()
    if d.size != m.size:
        raise ValueError(f"d_pred has {d.size} values but m_true has {m.size}; they must "
                         "be the same test-set clusters in the same order")
    if d.size < 3:
        raise ValueError(f"need at least 3 (prediction, truth) pairs for a 2-D KDE, got "
                         f"{d.size}")
    bad = ~(np.isfinite(d) & np.isfinite(m))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} non-finite (prediction, truth) pair(s), first "
                         f"at index {int(np.flatnonzero(bad)[0])}; drop them before "
                         "calibrating")
    return d, m


def _axis(values, sd, n, rng, margin, name):
    if n < 2:
        raise ValueError(f"{name}: need at least 2 grid nodes, got {n}")
    if rng is None:
        lo, hi = values.min() - margin * sd, values.max() + margin * sd
    else:
        lo, hi = (float(r) for r in rng)
        if not hi > lo:
            raise ValueError(f"{name}: range ({lo}, {hi}) must be increasing")
    return np.linspace(lo, hi, int(n))


def _checked_covariance(d, m, bandwidth, truncation):
    """Check the settings; return the kernel covariance ``H`` (dex^2), its elements
    ``h_dd, h_dm, h_mm`` and determinant (dex^4), refusing a singular one."""
    if not (bandwidth > 0 and math.isfinite(bandwidth)):
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth}")
    if not 0 < truncation <= _MAX_TRUNCATION:
        raise ValueError(f"truncation must be in (0, {_MAX_TRUNCATION}], got {truncation}")
    H = kernel_covariance(d, m, bandwidth)
    h_dd, h_dm, h_mm = float(H[0, 0]), float(H[0, 1]), float(H[1, 1])
    det = h_dd * h_mm - h_dm * h_dm
    if not (h_dd > 0 and h_mm > 0 and det > 1e-12 * h_dd * h_mm):
        raise ValueError("the (prediction, truth) pairs have a singular covariance "
                         f"(var d = {h_dd / bandwidth**2:.3g}, var m = "
                         f"{h_mm / bandwidth**2:.3g} dex^2, correlation ~ 1): a 2-D KDE is "
                         "undefined; check the predictions are not constant or identical "
                         "to the truths")
    return H, h_dd, h_dm, h_mm, det


def _warn_under_resolved(s2, h_dd, dd, dm):
    """Warn when a kernel (conditional variance ``s2``, d~ variance ``h_dd``, dex^2) is
    narrower than the grid steps ``dd``, ``dm`` (dex)."""
    if math.sqrt(s2) < dm:
        logger.warning("joint PDF under-resolved along log M: the kernel's conditional "
                       "width %.3g dex is below the grid step %.3g dex; raise n_m",
                       math.sqrt(s2), dm)
    if math.sqrt(h_dd) < dd:
        logger.warning("joint PDF under-resolved along d~: kernel width %.3g dex below the "
                       "grid step %.3g dex; raise n_d", math.sqrt(h_dd), dd)


def tabulate_joint_pdf(d_pred, m_true, *, bandwidth: float = DEFAULT_BANDWIDTH,
                       n_d: int = DEFAULT_GRID_SIZE, n_m: int = DEFAULT_GRID_SIZE,
                       d_range: tuple[float, float] | None = None,
                       m_range: tuple[float, float] | None = None,
                       d_margin: float = 2.0, m_margin: float | None = None,
                       truncation: float = DEFAULT_TRUNCATION, shrink: bool = False,
                       tail_weight: float = 0.0, tail_width: float = DEFAULT_TAIL_WIDTH,
                       meta: dict | None = None) -> JointPDF:
    """Tabulate the bivariate Gaussian KDE of (prediction, truth) pairs on a grid.

    Parameters
    ----------
    d_pred : array_like, shape (N,)
        Network predictions ``d~`` of the test-set clusters, log10 h^-1 Msun.
    m_true : array_like, shape (N,)
        Their true ``log10 M200c``, log10 h^-1 Msun.
    bandwidth : float
        KDE bandwidth factor (scipy ``bw_method`` convention); the paper uses 0.20.
    n_d, n_m : int
        Grid nodes along ``d~`` and ``log M``.
    d_range, m_range : (float, float), optional
        Explicit grid extents, log10 h^-1 Msun (nodes include both ends).
    d_margin : float
        Default ``d~`` extent: the range of the predictions extended by ``d_margin`` kernel
        standard deviations ``sqrt(H_dd)`` on each side.
    m_margin : float, optional
        Default ``log M`` extent: the range of the truths extended by ``m_margin`` kernel
        standard deviations ``sqrt(H_mm)``; default ``truncation`` (every kernel wholly
        inside the grid).
    truncation : float
        Mahalanobis radius beyond which kernels are neglected (``exp(-t**2/2)`` of the peak).
    shrink : bool
        Variance-preserving kernel smoothing (West 1993; Liu & West 2001): the kernel
        centres are the pairs pulled towards their mean by ``a = sqrt(1 - bandwidth**2)``
        while the kernels keep ``H = bandwidth**2 cov``, so the density has the data's
        covariance instead of ``(1 + bandwidth**2)`` times it. For a Gaussian-like relation
        the posterior widths are then those of the data, not ``sqrt(1 + bandwidth**2)``
        (2% at 0.2) wider, which over-covers the 68% interval by ~0.01. Needs
        ``bandwidth < 1``.
    tail_weight, tail_width : float
        The outlier component mixed into the table (:func:`tail_mixture`): its weight in
        [0, 0.3] (0: the plain KDE) and its width in units of the table's own scatter of
        ``d~`` at each mass (>= 1). :func:`cmpipe.calibration.select_tail` chooses both by
        cross-validation.
    meta : dict, optional
        Provenance stored with the table (scalars and strings).

    Returns
    -------
    JointPDF
        The density in dex^-2, ``table[i_d, i_m]``.

    Raises
    ------
    ValueError
        Mismatched or non-finite inputs, fewer than 3 pairs, a singular data covariance
        (e.g. all predictions equal) or invalid settings.
    """
    d, m = _check_pairs(d_pred, m_true)
    H, h_dd, h_dm, h_mm, det = _checked_covariance(d, m, bandwidth, truncation)
    m_margin = truncation if m_margin is None else float(m_margin)
    d_grid = _axis(d, math.sqrt(h_dd), n_d, d_range, float(d_margin), "d axis")
    m_grid = _axis(m, math.sqrt(h_mm), n_m, m_range, m_margin, "m axis")
    dd = (d_grid[-1] - d_grid[0]) / (d_grid.size - 1)
    dm = (m_grid[-1] - m_grid[0]) / (m_grid.size - 1)
    beta = h_dm / h_dd
    s2 = det / h_dd
    _warn_under_resolved(s2, h_dd, dd, dm)
    m_lo, m_hi = float(m.min()), float(m.max())
    if shrink:
        if not bandwidth < 1:
            raise ValueError(f"shrink needs bandwidth < 1, got {bandwidth}")
        a = math.sqrt(1.0 - bandwidth ** 2)
        d = d.mean() + a * (d - d.mean())
        m = m.mean() + a * (m - m.mean())
    order = np.argsort(d, kind="stable")
    d_s = np.ascontiguousarray(d[order])
    m_s = np.ascontiguousarray(m[order])
    table = np.empty((d_grid.size, m_grid.size), dtype=np.float64)
    n_chunks = max(1, min(d_grid.size, 8 * numba.get_num_threads()))
    _tabulate(d_s, m_s, float(d_grid[0]), float(dd), d_grid.size, float(m_grid[0]),
              float(dm), m_grid.size, h_dd, beta, s2, float(truncation), n_chunks, table)
    table *= 1.0 / (2.0 * math.pi * math.sqrt(det) * d.size)
    if tail_weight:
        table = tail_mixture(table, d_grid, tail_weight, tail_width)
    logger.info("joint PDF of %d pairs tabulated on %d x %d nodes (d~ %.3f..%.3f, log M "
                "%.3f..%.3f), bandwidth %.3g", d.size, d_grid.size, m_grid.size,
                d_grid[0], d_grid[-1], m_grid[0], m_grid[-1], bandwidth)
    meta = dict(meta or {})
    meta.setdefault("m_true_min", m_lo)
    meta.setdefault("m_true_max", m_hi)
    meta.setdefault("shrink", int(bool(shrink)))
    meta["tail_weight"] = float(tail_weight)
    meta["tail_width"] = float(tail_width)
    return JointPDF(d_grid=d_grid, m_grid=m_grid, table=table, bandwidth=float(bandwidth),
                    n_pairs=int(d.size), kernel_covariance=H, truncation=float(truncation),
                    meta=meta)


def is_extrapolated(pdf: JointPDF, d_obs) -> np.ndarray:
    """True where a prediction (log10 h^-1 Msun) lies outside the tabulated ``d~`` range."""
    d = np.asarray(d_obs, dtype=np.float64)
    return (d < pdf.d_grid[0]) | (d > pdf.d_grid[-1])


def posterior_rows(pdf: JointPDF, d):
    """Unnormalised interpolated slices, shape (len(d), n_m), for a 1-D float array ``d``."""
    if not np.all(np.isfinite(d)):
        raise ValueError("posterior: predictions must be finite (got NaN/inf)")
    u = np.clip((d - pdf.d_grid[0]) / pdf.d_step, 0.0, pdf.d_grid.size - 1.0)
    j = np.minimum(u.astype(np.int64), pdf.d_grid.size - 2)
    f = (u - j)[:, None]
    t = pdf.table
    return (1.0 - f) * t[j] + f * t[j + 1]
