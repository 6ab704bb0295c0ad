"""Simulation-based calibration: the joint density of network predictions and true masses.

Pipeline step 8 (``docs/science.md``; paper section 3.1 and 4.1). The trained network maps
every *test-set* cluster to a point prediction ``d~`` (log10 h^-1 Msun); together with the
true ``log10 M200c`` these pairs define the joint density ``P(d~, log M)``, estimated by a
bivariate Gaussian KDE and tabulated once on a fine grid (:func:`tabulate_joint_pdf`,
:class:`JointPDF`). The posterior of any cluster is the slice of that table at its own
prediction, renormalised over ``log M`` (:func:`posterior`); :func:`summarise` gives MAP,
mean, median and interval limits for many clusters at once and :func:`posterior_cdf_at`
the probability integral transform (PIT) of a known true mass.

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
    no ``exp``; rounding ~1e-12 relative over a thousand nodes). Rows are independent, so
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
Slicing and extrapolation
    A prediction between two grid rows gets the linear interpolation of the two rows
    (``(1 - f) T[j] + f T[j+1]``), then is renormalised by the trapezoidal integral over the
    ``m`` grid. A prediction outside ``[d_grid[0], d_grid[-1]]`` is clipped to the edge row
    and flagged ``extrapolated`` (with the default margin: more than two kernel widths
    beyond every test-set prediction, outside what the calibration set can speak for; the
    edge-row posterior is a stand-in, not an extrapolation). A row with zero density (a
    prediction in a gap of the test set wider than twice the truncation radius) gives an
    all-NaN posterior.
Summaries
    From the normalised slice on the uniform ``m`` grid: MAP (grid maximum refined by a
    parabola through the three nodes around it), mean and standard deviation (trapezoidal
    moments), and quantiles from the trapezoidal CDF by linear interpolation between nodes:
    median, the 68.27% central interval (tails ``Phi(-1) = 15.87%`` each, ``docs/science.md``)
    and the 95% central interval (tails 2.5%).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numba
import numpy as np
from numba import njit, prange

from .io.tables import atomic_output

__all__ = [
    "DEFAULT_BANDWIDTH",
    "DEFAULT_GRID_SIZE",
    "DEFAULT_TRUNCATION",
    "QUANTILE_LEVELS",
    "JointPDF",
    "tabulate_joint_pdf",
    "kernel_covariance",
    "posterior",
    "summarise",
    "posterior_cdf_at",
    "is_extrapolated",
]

logger = logging.getLogger(__name__)

#: KDE bandwidth factor of the paper (scipy ``bw_method``), dimensionless.
DEFAULT_BANDWIDTH = 0.20
#: Default number of grid nodes on each axis.
DEFAULT_GRID_SIZE = 1000
#: Mahalanobis truncation radius of each kernel; exp(-7.5**2 / 2) = 6.1e-13.
DEFAULT_TRUNCATION = 7.5
#: Largest accepted truncation radius.
_MAX_TRUNCATION = 20.0
#: Cumulative probabilities reported by :func:`summarise` (key -> level).
QUANTILE_LEVELS = {
    "lo95": 0.025,
    "lo68": 0.5 * math.erfc(1.0 / math.sqrt(2.0)),     # Phi(-1) = 0.158655
    "median": 0.5,
    "hi68": 1.0 - 0.5 * math.erfc(1.0 / math.sqrt(2.0)),
    "hi95": 0.975,
}
_FORMAT_VERSION = 1
_GROUP = "joint_pdf"
_CHUNK_ROWS = 2048


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
        """Write to HDF5 at ``path`` atomically (group ``joint_pdf``; table gzip-compressed)."""
        with atomic_output(path) as tmp:
            with h5py.File(tmp, "w") as f:
                g = f.create_group(_GROUP)
                for name, unit in (("d_grid", "log10 h^-1 Msun (network prediction)"),
                                   ("m_grid", "log10 h^-1 Msun (true M200c)")):
                    ds = g.create_dataset(name, data=getattr(self, name))
                    ds.attrs["unit"] = unit
                ds = g.create_dataset("table", data=self.table, compression="gzip",
                                      chunks=(min(64, self.table.shape[0]),
                                              self.table.shape[1]))
                ds.attrs["unit"] = "dex^-2"
                ds.attrs["description"] = "joint density P(d~, log M); rows d~, columns M"
                ds = g.create_dataset("kernel_covariance", data=self.kernel_covariance)
                ds.attrs["unit"] = "dex^2"
                g.attrs["bandwidth"] = float(self.bandwidth)
                g.attrs["n_pairs"] = int(self.n_pairs)
                g.attrs["truncation"] = float(self.truncation)
                g.attrs["format_version"] = _FORMAT_VERSION
                for k, v in self.meta.items():
                    g.attrs[f"meta_{k}"] = v

    @classmethod
    def load(cls, path) -> "JointPDF":
        """Read a :class:`JointPDF` written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        cmpipe.io.tables.CatalogueError
            (a ``ValueError``) The file is not readable HDF5 (truncated, corrupt), holds no
            ``joint_pdf`` group, has an unknown format version or misses a dataset.
        """
        from .io.tables import CatalogueError

        path = Path(path)
        fix = ("rerun the calibration (snakemake --cores N --configfile ... --forcerun "
               "calibrate)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: joint PDF file does not exist; rerun the "
                                    "calibration rule that makes it")
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise CatalogueError(path, _GROUP, f"not a readable HDF5 file ({err})",
                                 fix + "; the file is truncated or corrupt") from err
        with f:
            if _GROUP not in f:
                raise CatalogueError(path, _GROUP, "group missing: not a joint PDF written "
                                     "by cmpipe.calibration.JointPDF.save", fix)
            g = f[_GROUP]
            version = int(g.attrs.get("format_version", -1))
            if version != _FORMAT_VERSION:
                raise CatalogueError(path, "format_version", f"joint PDF format version "
                                     f"{version}, expected {_FORMAT_VERSION}", fix)
            meta = {}
            try:
                for k, v in g.attrs.items():
                    if k.startswith("meta_"):
                        v = v.decode() if isinstance(v, bytes) else v
                        meta[k[5:]] = v.item() if isinstance(v, np.generic) else v
                return cls(d_grid=g["d_grid"][...], m_grid=g["m_grid"][...],
                           table=g["table"][...], bandwidth=float(g.attrs["bandwidth"]),
                           n_pairs=int(g.attrs["n_pairs"]),
                           kernel_covariance=g["kernel_covariance"][...],
                           truncation=float(g.attrs["truncation"]), meta=meta)
            except (KeyError, OSError) as err:
                raise CatalogueError(path, _GROUP, f"incomplete or damaged joint PDF ({err})",
                                     fix) from err


# ----------------------------------------------------------------------------------------
# tabulation
# ----------------------------------------------------------------------------------------

def kernel_covariance(d_pred, m_true, bandwidth: float = DEFAULT_BANDWIDTH) -> np.ndarray:
    """Kernel covariance ``bandwidth**2 * cov([d, m])`` (``ddof=1``), dex^2, as scipy."""
    return float(bandwidth) ** 2 * np.cov(np.stack([d_pred, m_true]), ddof=1)


@njit(cache=True, fastmath=False, nogil=True)
def _add_gaussian_run(row, i0, i1, u, prec, amp):
    """``row[k] += amp * exp(-prec (k - u)**2 / 2)`` for ``k = i0..i1`` (node units).

    Starts at the node ``c`` nearest ``u`` (clipped into the run) and walks outwards with
    the exact recurrences ``g[k+1] = g[k] r_f[k]``, ``r_f[k+1] = r_f[k] q`` (and the mirror
    for ``k < c``), ``q = exp(-prec)``: every ratio applied is <= 1, so nothing overflows.
    """
    if i1 - i0 < 2:
        for k in range(i0, i1 + 1):
            t = k - u
            row[k] += amp * math.exp(-0.5 * prec * t * t)
        return
    c = min(max(math.floor(u + 0.5), float(i0)), float(i1))
    t = c - u
    q = math.exp(-prec)
    g = amp * math.exp(-0.5 * prec * t * t)
    r_f = math.exp(-prec * (t + 0.5))
    r_b = math.exp(prec * (t - 0.5))
    k_f = int(c)
    k_b = k_f - 1
    g_b = g * r_b
    r_b *= q
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
                _add_gaussian_run(row, i0, i1, u, prec, math.exp(-0.5 * qd))


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


def tabulate_joint_pdf(d_pred, m_true, *, bandwidth: float = DEFAULT_BANDWIDTH,
                       n_d: int = DEFAULT_GRID_SIZE, n_m: int = DEFAULT_GRID_SIZE,
                       d_range: tuple[float, float] | None = None,
                       m_range: tuple[float, float] | None = None,
                       d_margin: float = 2.0, m_margin: float | None = None,
                       truncation: float = DEFAULT_TRUNCATION, shrink: bool = False,
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
    m_margin = truncation if m_margin is None else float(m_margin)
    d_grid = _axis(d, math.sqrt(h_dd), n_d, d_range, float(d_margin), "d axis")
    m_grid = _axis(m, math.sqrt(h_mm), n_m, m_range, m_margin, "m axis")
    dd = (d_grid[-1] - d_grid[0]) / (d_grid.size - 1)
    dm = (m_grid[-1] - m_grid[0]) / (m_grid.size - 1)
    beta = h_dm / h_dd
    s2 = det / h_dd
    if math.sqrt(s2) < dm:
        logger.warning("joint PDF under-resolved along log M: the kernel's conditional "
                       "width %.3g dex is below the grid step %.3g dex; raise n_m",
                       math.sqrt(s2), dm)
    if math.sqrt(h_dd) < dd:
        logger.warning("joint PDF under-resolved along d~: kernel width %.3g dex below the "
                       "grid step %.3g dex; raise n_d", math.sqrt(h_dd), dd)
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
    logger.info("joint PDF of %d pairs tabulated on %d x %d nodes (d~ %.3f..%.3f, log M "
                "%.3f..%.3f), bandwidth %.3g", d.size, d_grid.size, m_grid.size,
                d_grid[0], d_grid[-1], m_grid[0], m_grid[-1], bandwidth)
    meta = dict(meta or {})
    meta.setdefault("m_true_min", m_lo)
    meta.setdefault("m_true_max", m_hi)
    meta.setdefault("shrink", int(bool(shrink)))
    return JointPDF(d_grid=d_grid, m_grid=m_grid, table=table, bandwidth=float(bandwidth),
                    n_pairs=int(d.size), kernel_covariance=H, truncation=float(truncation),
                    meta=meta)


# ----------------------------------------------------------------------------------------
# slicing
# ----------------------------------------------------------------------------------------

def is_extrapolated(pdf: JointPDF, d_obs) -> np.ndarray:
    """True where a prediction (log10 h^-1 Msun) lies outside the tabulated ``d~`` range."""
    d = np.asarray(d_obs, dtype=np.float64)
    return (d < pdf.d_grid[0]) | (d > pdf.d_grid[-1])


def _rows(pdf: JointPDF, d):
    """Unnormalised interpolated slices, shape (len(d), n_m), for a 1-D float array ``d``."""
    if not np.all(np.isfinite(d)):
        raise ValueError("posterior: predictions must be finite (got NaN/inf)")
    u = np.clip((d - pdf.d_grid[0]) / pdf.d_step, 0.0, pdf.d_grid.size - 1.0)
    j = np.minimum(u.astype(np.int64), pdf.d_grid.size - 2)
    f = (u - j)[:, None]
    t = pdf.table
    return (1.0 - f) * t[j] + f * t[j + 1]


def _normalise(p, dm):
    """Normalise rows of ``p`` to unit trapezoidal integral; all-zero rows become NaN."""
    norm = dm * (p.sum(axis=1) - 0.5 * (p[:, 0] + p[:, -1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / norm[:, None]
    p[~(norm > 0)] = np.nan
    return p


def _cdf(p, dm):
    """Trapezoidal CDF at the nodes of normalised rows ``p``; ``cdf[:, 0] = 0``."""
    c = np.empty_like(p)
    c[:, 0] = 0.0
    np.cumsum(0.5 * dm * (p[:, 1:] + p[:, :-1]), axis=1, out=c[:, 1:])
    c /= c[:, -1:]                       # exactly 1 at the top (rounding)
    return c


def posterior(pdf: JointPDF, d_obs: float, *, with_flag: bool = False):
    """Posterior ``P(log M | d~_obs)``: the slice of the joint density, renormalised.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : float
        The cluster's network prediction, log10 h^-1 Msun. Values outside the tabulated
        range use the edge row (see ``with_flag``).
    with_flag : bool
        Also return whether ``d_obs`` was outside the tabulated range (extrapolated).

    Returns
    -------
    m_grid : numpy.ndarray, shape (n_m,)
        log10 M200c nodes, log10 h^-1 Msun (the table's own array; do not modify).
    p : numpy.ndarray, shape (n_m,)
        Posterior density, dex^-1, integrating to 1 (trapezoid) over ``m_grid``; all NaN if
        the density vanishes on that row.
    extrapolated : bool
        Only with ``with_flag``.
    """
    d = float(d_obs)
    if not math.isfinite(d):
        raise ValueError(f"posterior: prediction must be finite, got {d_obs}")
    nd = pdf.d_grid.size
    u = min(max((d - pdf.d_grid[0]) / pdf.d_step, 0.0), nd - 1.0)
    j = min(int(u), nd - 2)
    f = u - j
    p = pdf.table[j] * (1.0 - f)
    p += f * pdf.table[j + 1]
    norm = pdf.m_step * (p.sum() - 0.5 * (p[0] + p[-1]))
    if norm > 0:
        p *= 1.0 / norm
    else:
        p[:] = np.nan
    if with_flag:
        return pdf.m_grid, p, bool(d < pdf.d_grid[0] or d > pdf.d_grid[-1])
    return pdf.m_grid, p


def _quantiles(cdf, m0, dm, q):
    """Linear interpolation of the node CDF (rows) at level ``q``; log10 h^-1 Msun."""
    k = np.count_nonzero(cdf < q, axis=1)          # first node with cdf >= q
    k = np.clip(k, 1, cdf.shape[1] - 1)
    rows = np.arange(cdf.shape[0])
    c0, c1 = cdf[rows, k - 1], cdf[rows, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((q - c0) / (c1 - c0), 0.0, 1.0)
    return m0 + (k - 1 + frac) * dm


def _map(p, m0, dm):
    """Posterior peak, refined by the parabola through the maximum node and neighbours."""
    n = p.shape[1]
    k = np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)
    rows = np.arange(p.shape[0])
    kk = np.clip(k, 1, n - 2)
    a, b, c = p[rows, kk - 1], p[rows, kk], p[rows, kk + 1]
    den = a - 2.0 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where((den < 0) & (k == kk), 0.5 * (a - c) / den, 0.0)
    return m0 + (k + np.clip(np.nan_to_num(shift), -0.5, 0.5)) * dm


def summarise(pdf: JointPDF, d_obs) -> dict:
    """Posterior summaries for many clusters at once.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : array_like, shape (N,)
        Network predictions, log10 h^-1 Msun.

    Returns
    -------
    dict of numpy.ndarray, each shape (N,)
        ``map``, ``mean``, ``median`` (log10 h^-1 Msun), ``sd`` (posterior standard
        deviation, dex), ``lo68``/``hi68`` (the 15.87% / 84.13% quantiles: the 68.27%
        central interval), ``lo95``/``hi95`` (2.5% / 97.5%), all log10 h^-1 Msun, and
        ``extrapolated`` (bool: prediction outside the tabulated range, edge row used).
        Rows with vanishing density give NaN.
    """
    d = np.atleast_1d(np.asarray(d_obs, dtype=np.float64)).ravel()
    m0, dm, mg = float(pdf.m_grid[0]), pdf.m_step, pdf.m_grid
    out = {k: np.empty(d.size) for k in ("map", "mean", "median", "sd", "lo68", "hi68",
                                         "lo95", "hi95")}
    for s in range(0, d.size, _CHUNK_ROWS):
        sl = slice(s, min(s + _CHUNK_ROWS, d.size))
        p = _normalise(_rows(pdf, d[sl]), dm)
        w = np.full(mg.size, dm)
        w[[0, -1]] *= 0.5                            # trapezoid weights
        mean = (p * (w * mg)).sum(axis=1)
        var = (p * (w * (mg[None, :] - mean[:, None]) ** 2)).sum(axis=1)
        out["mean"][sl] = mean
        out["sd"][sl] = np.sqrt(var)
        out["map"][sl] = _map(p, m0, dm)
        cdf = _cdf(p, dm)
        for key, q in QUANTILE_LEVELS.items():
            out[key][sl] = _quantiles(cdf, m0, dm, q)
        bad = ~np.isfinite(p[:, 0])
        if bad.any():
            for key in out:
                out[key][sl][bad] = np.nan
    out["extrapolated"] = is_extrapolated(pdf, d)
    n_ex = int(out["extrapolated"].sum())
    if n_ex:
        logger.warning("%d of %d predictions outside the tabulated d~ range [%.3f, %.3f]; "
                       "their posteriors use the edge row (flagged 'extrapolated')", n_ex,
                       d.size, pdf.d_grid[0], pdf.d_grid[-1])
    return out


def posterior_cdf_at(pdf: JointPDF, d_obs, m_true) -> np.ndarray | float:
    """Posterior CDF at the true mass: the PIT value ``P(log M <= m_true | d~_obs)``.

    Parameters
    ----------
    pdf : JointPDF
    d_obs : float or array_like, shape (N,)
        Network predictions, log10 h^-1 Msun.
    m_true : float or array_like, shape (N,)
        True log10 M200c, log10 h^-1 Msun; 0 below the grid, 1 above.

    Returns
    -------
    float or numpy.ndarray
        PIT values in [0, 1] (NaN for rows of vanishing density); a float for scalar input.
    """
    scalar = np.ndim(d_obs) == 0 and np.ndim(m_true) == 0
    d, mt = np.broadcast_arrays(np.atleast_1d(np.asarray(d_obs, dtype=np.float64)),
                                np.atleast_1d(np.asarray(m_true, dtype=np.float64)))
    d, mt = d.ravel(), mt.ravel()
    if not np.all(np.isfinite(mt)):
        raise ValueError("posterior_cdf_at: true masses must be finite (got NaN/inf)")
    m0, dm, nm = float(pdf.m_grid[0]), pdf.m_step, pdf.m_grid.size
    out = np.empty(d.size)
    for s in range(0, d.size, _CHUNK_ROWS):
        sl = slice(s, min(s + _CHUNK_ROWS, d.size))
        cdf = _cdf(_normalise(_rows(pdf, d[sl]), dm), dm)
        u = np.clip((mt[sl] - m0) / dm, 0.0, nm - 1.0)
        k = np.minimum(u.astype(np.int64), nm - 2)
        f = u - k
        rows = np.arange(cdf.shape[0])
        out[sl] = (1.0 - f) * cdf[rows, k] + f * cdf[rows, k + 1]
    return float(out[0]) if scalar else out


def cross_validated_pit(d_pred, m_true, groups, *, n_folds: int = 5, seed: int = 0,
                        **tabulate_kwargs) -> np.ndarray:
    """Out-of-sample PIT values of the test pairs, by K-fold cross-validation over groups.

    Each fold's pairs get posteriors from a joint PDF of the other folds (same bandwidth
    and grid settings, ``tabulate_kwargs`` of :func:`tabulate_joint_pdf`); folds are whole
    groups (host halos), so no halo calibrates its own sightlines. The fraction of
    ``|PIT - 0.5| < 0.3413`` is the test set's own out-of-sample 68% coverage: a check of
    the calibration with ~3-4x the pairs of the eval set.

    Returns
    -------
    ndarray, shape (N,)
        ``P(log M <= m_true | d~)`` for every pair (NaN where the fold's table vanishes).
    """
    d = np.asarray(d_pred, dtype=float)
    m = np.asarray(m_true, dtype=float)
    uniq, g = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if g.size != d.size or d.size != m.size:
        raise ValueError("d_pred, m_true and groups differ in length")
    if uniq.size < n_folds:
        raise ValueError(f"{uniq.size} groups cannot make {n_folds} folds")
    fold_of_group = np.random.default_rng(seed).permutation(uniq.size) % n_folds
    fold = fold_of_group[g]
    pit = np.full(d.size, np.nan)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        for k in range(n_folds):
            out = fold == k
            pdf = tabulate_joint_pdf(d[~out], m[~out], **tabulate_kwargs)
            pit[out] = posterior_cdf_at(pdf, d[out], m[out])
    finally:
        logger.setLevel(level)
    return pit
