"""Lognormal tracer fields and linear velocities on a periodic FFT grid.

This is the standard lognormal-mock technique (Coles & Jones 1991; Agrawal et al. 2017,
JCAP 10, 003). One set of Gaussian white-noise phases defines the linear density field
delta_lin of a periodic box. A tracer of linear bias ``b`` is given its own Gaussian field
``G_b`` with the *same* phases and the power spectrum ``P_G`` for which the lognormal field
``exp(G_b - sigma_G^2 / 2) - 1`` has the correlation function ``b^2 xi_lin`` on the grid:

    xi_G(r) = ln(1 + b^2 xi_lin(r)),   P_G = FT[xi_G]  (negative P_G clipped to 0).

Tracers are placed in cells with probability proportional to ``exp(G_b)`` and uniformly
inside the cell. Peculiar velocities follow linear theory on delta_lin,

    v(k) = i a H(z) f(z) delta_lin(k) k / k^2,

interpolated (trilinear, i.e. cloud-in-cell weights) to the tracer positions.

Because xi on the grid is real and even, its transform is computed as a type-I discrete
cosine transform of one octant (an exact identity, 8x less work than a full FFT).

Conventions: positions are comoving h^-1 Mpc in ``[0, box)``; wavenumbers are comoving
h Mpc^-1; power spectra are (h^-1 Mpc)^3; grid node ``i`` sits at ``x = i * cell``. All
grids are float32 / complex64 (``numpy.fft.rfftn``), so a 128^3 grid needs ~10 MB a field.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.fft as sfft

__all__ = ["LognormalBox", "trilinear_interpolate", "wrap_periodic"]

log = logging.getLogger(__name__)

#: Smallest allowed value of ``1 + b^2 xi`` before the logarithm (guards xi < -1/b^2).
_ONE_PLUS_XI_FLOOR = 1e-6
_AXES = (0, 1, 2)


class LognormalBox:
    """One realisation of a periodic linear density field and its lognormal tracers.

    Parameters
    ----------
    power_spectrum : callable
        ``power_spectrum(k)`` -> linear matter P(k) in (h^-1 Mpc)^3 at the snapshot
        redshift, for comoving ``k`` in h Mpc^-1 (a 1-D float array).
    box_size : float
        Comoving side of the periodic box, h^-1 Mpc.
    cells : int
        Grid cells per side (cell size ``box_size / cells``).
    rng : numpy.random.Generator
        Draws the white-noise phases (the only random step of the constructor).
    workers : int, optional
        Threads of ``scipy.fft`` (-1: all CPUs).

    Attributes
    ----------
    cell : float
        Cell size, h^-1 Mpc.
    xi_grid : ndarray, shape (cells, cells, cells), float32
        Linear correlation function of the gridded field at the grid separations.
    """

    def __init__(self, power_spectrum: Callable, box_size: float, cells: int,
                 rng: np.random.Generator, workers: int = -1):
        if cells < 8 or cells % 2:
            raise ValueError(f"grid cells must be an even integer >= 8, got {cells}")
        self.box_size = float(box_size)
        self.cells = int(cells)
        self.cell = self.box_size / self.cells
        self._vcell = self.cell ** 3
        self._workers = workers
        n = self.cells
        # index of the octant element equal (by symmetry) to each FFT-grid index
        self._fold = np.minimum(np.arange(n), n - np.arange(n))
        kf = np.float32(2.0 * np.pi / self.box_size)
        kx = (np.fft.fftfreq(n, d=1.0 / n).astype(np.float32) * kf)
        kz = (np.fft.rfftfreq(n, d=1.0 / n).astype(np.float32) * kf)
        self._k = (kx[:, None, None], kx[None, :, None], kz[None, None, :])
        k2 = self._k[0] ** 2 + self._k[1] ** 2 + self._k[2] ** 2
        k2[0, 0, 0] = 1.0  # the k = 0 mode is zeroed below; avoid 0/0
        self._k2 = k2
        kmag = np.sqrt(k2)
        # P(k) on a 1-D log grid, then log-log interpolation onto |k| of every mode.
        kgrid = np.logspace(np.log10(0.5 * kf), np.log10(np.sqrt(3.0) * kf * n / 2) + 0.01,
                            512)
        pgrid = np.asarray(power_spectrum(kgrid), dtype=float)
        if np.any(~np.isfinite(pgrid)) or np.any(pgrid <= 0):
            raise ValueError("power_spectrum(k) must be finite and positive")
        pk = np.exp(np.interp(np.log(kmag.ravel()), np.log(kgrid), np.log(pgrid)))
        pk = pk.reshape(kmag.shape).astype(np.float32)
        pk[0, 0, 0] = 0.0
        # xi on the grid: xi(r) = (1/V) sum_k P(k) e^{ikr} = irfftn(P) / V_cell.
        self.xi_grid = (sfft.irfftn(pk, s=(n, n, n), axes=_AXES, workers=workers)
                        / self._vcell).astype(np.float32)
        white = rng.standard_normal((n, n, n), dtype=np.float32)
        self._white_k = sfft.rfftn(white, axes=_AXES, workers=workers)
        del white
        self._delta_k = self._white_k * np.sqrt(pk / self._vcell)
        log.debug("lognormal grid %d^3, cell %.3g h^-1 Mpc, sigma_lin(cell) = %.3g",
                  n, self.cell, float(np.sqrt(self.xi_grid[0, 0, 0])))

    @property
    def sigma_lin_cell(self) -> float:
        """rms of the gridded linear density field (dimensionless)."""
        return float(np.sqrt(self.xi_grid[0, 0, 0]))

    def linear_density(self) -> np.ndarray:
        """Gridded linear density contrast delta_lin, shape (cells,)*3, float32."""
        n = self.cells
        return sfft.irfftn(self._delta_k, s=(n, n, n), axes=_AXES,
                           workers=self._workers).astype(np.float32)

    def gaussian_field(self, bias: float) -> np.ndarray:
        """Gaussian field G_b whose lognormal transform has correlation b^2 xi_lin.

        Parameters
        ----------
        bias : float
            Linear bias b of the tracer (dimensionless, > 0).

        Returns
        -------
        ndarray, shape (cells,)*3, float32
            Zero-mean Gaussian field sharing the white-noise phases of the box.
        """
        n, h = self.cells, self.cells // 2
        octant = self.xi_grid[:h + 1, :h + 1, :h + 1]
        xi_g = np.log(np.maximum(1.0 + np.float32(bias) ** 2 * octant,
                                 np.float32(_ONE_PLUS_XI_FLOOR)))
        # pg = DFT[xi_G] = P_G / V_cell; for the even field xi_G it is the DCT-I of
        # the octant, unfolded onto the rfftn half-grid.
        pg = sfft.dctn(xi_g, type=1, workers=self._workers)
        pg = pg[np.ix_(self._fold, self._fold, np.arange(h + 1))]
        np.maximum(pg, 0.0, out=pg)  # negative P_G clipped to 0
        pg[0, 0, 0] = 0.0
        return sfft.irfftn(self._white_k * np.sqrt(pg), s=(n, n, n), axes=_AXES,
                           workers=self._workers).astype(np.float32)

    def sample_positions(self, bias: float, count: int,
                         rng: np.random.Generator) -> np.ndarray:
        """Place ``count`` tracers of bias ``bias`` in the lognormal density field.

        Cells are drawn (with replacement) with probability proportional to
        ``exp(G_b)``, i.e. to ``1 + delta_LN``; positions are uniform within the cell
        centred on the grid node.

        Parameters
        ----------
        bias : float
            Linear bias (dimensionless).
        count : int
            Number of tracers.
        rng : numpy.random.Generator

        Returns
        -------
        ndarray, shape (count, 3), float64
            Comoving positions in h^-1 Mpc, wrapped into ``[0, box_size)``.
        """
        if count == 0:
            return np.empty((0, 3))
        g = self.gaussian_field(bias).ravel()
        w = np.exp(g - g.max(), dtype=np.float32)
        cdf = np.cumsum(w, dtype=np.float64)
        idx = np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right")
        idx = np.minimum(idx, cdf.size - 1)
        ijk = np.column_stack(np.unravel_index(idx, (self.cells,) * 3)).astype(float)
        pos = (ijk + rng.random((count, 3)) - 0.5) * self.cell
        return wrap_periodic(pos, self.box_size)

    def linear_velocity_grids(self, a_h_f: float) -> list[np.ndarray]:
        """Linear-theory peculiar-velocity grids, v(k) = i aHf delta(k) k / k^2.

        Parameters
        ----------
        a_h_f : float
            a(z) H(z) f(z) in km/s per comoving h^-1 Mpc.

        Returns
        -------
        list of 3 ndarray, shape (cells,)*3, float32
            vx, vy, vz in km/s on the grid nodes.
        """
        n = self.cells
        pref = (1j * np.float32(a_h_f)) * self._delta_k / self._k2
        return [sfft.irfftn(pref * ki, s=(n, n, n), axes=_AXES,
                            workers=self._workers).astype(np.float32) for ki in self._k]


def wrap_periodic(pos, box_size: float) -> np.ndarray:
    """Wrap positions into ``[0, box_size)`` exactly (float rounding included)."""
    pos = np.mod(np.asarray(pos, dtype=float), box_size)
    pos[pos >= box_size] -= box_size
    pos[pos < 0] = 0.0
    return pos


def trilinear_interpolate(grid: np.ndarray, pos: np.ndarray, box_size: float) -> np.ndarray:
    """Periodic trilinear (cloud-in-cell) interpolation of a grid to points.

    Parameters
    ----------
    grid : ndarray, shape (n, n, n)
        Field values at nodes ``x = i * box_size / n``.
    pos : ndarray, shape (N, 3)
        Comoving positions, h^-1 Mpc.
    box_size : float
        Box side, h^-1 Mpc.

    Returns
    -------
    ndarray, shape (N,), float64
    """
    n = grid.shape[0]
    f = np.asarray(pos, dtype=float) * (n / box_size)
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    i0 %= n
    i1 = (i0 + 1) % n
    out = np.zeros(len(f))
    for cx, wx in ((i0[:, 0], 1 - t[:, 0]), (i1[:, 0], t[:, 0])):
        for cy, wy in ((i0[:, 1], 1 - t[:, 1]), (i1[:, 1], t[:, 1])):
            for cz, wz in ((i0[:, 2], 1 - t[:, 2]), (i1[:, 2], t[:, 2])):
                out += wx * wy * wz * grid[cx, cy, cz]
    return out
