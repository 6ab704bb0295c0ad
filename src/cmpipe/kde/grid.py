"""The evaluation grids of the KDE cubes and the checks of a cluster's input columns.

Conventions (units, voxel centres, bad input) in :mod:`cmpipe.kde`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_H0",
    "DEFAULT_TRUNCATION",
    "KDEInputError",
    "Grid3D",
    "check_axes",
    "axis_centres",
    "grid_points",
    "cluster_label",
    "check_settings",
    "as_columns",
    "empty_error",
]

#: Bandwidth factor of the paper (scipy ``bw_method``), dimensionless.
DEFAULT_H0 = 0.175
#: Mahalanobis truncation radius of each kernel; exp(-6.5**2 / 2) = 6.7e-10.
DEFAULT_TRUNCATION = 6.5

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
        check_axes("Grid3D", self.n, half_width_mpc_h=self.half_width_mpc_h,
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


def check_axes(where, n, **widths):
    """Raise ``ValueError`` (naming ``where``) unless ``n`` is an integer >= 2 and every
    width (units of its axis) is finite and > 0."""
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

def cluster_label(cluster_id) -> str:
    """How error messages name a cluster."""
    return "cluster (no id given)" if cluster_id is None else f"cluster {cluster_id!r}"


def check_settings(h0, truncation, min_galaxies):
    """Raise ``ValueError`` for an invalid bandwidth factor ``h0``, truncation radius (at
    most 20 kernel widths) or ``min_galaxies`` (an integer >= 2)."""
    if not (np.isfinite(h0) and h0 > 0):
        raise ValueError(f"h0 must be finite and > 0, got {h0!r}")
    if not (np.isfinite(truncation) and 0 < truncation <= _MAX_TRUNCATION):
        raise ValueError(f"truncation must be in (0, {_MAX_TRUNCATION}], got {truncation!r} "
                         f"(beyond ~8 nothing changes in float64)")
    if int(min_galaxies) != min_galaxies or min_galaxies < 2:
        raise ValueError(f"min_galaxies must be an integer >= 2 (a covariance needs 2 "
                         f"galaxies), got {min_galaxies!r}")


def as_columns(columns, names, min_galaxies, cluster_id) -> list[np.ndarray]:
    """Validate one cluster's coordinate columns; return them as contiguous float64."""
    label = cluster_label(cluster_id)
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


def empty_error(cluster_id, truncation):
    """The :class:`KDEInputError` of a cluster none of whose kernel mass reaches a voxel
    centre."""
    return KDEInputError(f"{cluster_label(cluster_id)}: no kernel mass reaches any voxel centre "
                         f"(no voxel centre lies within {truncation} kernel widths of a "
                         f"galaxy); fix: check that coordinates are relative to the cluster "
                         f"centre and that the window cuts were applied")
