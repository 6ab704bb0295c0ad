"""Schemas, readers and writers of the two simulation tables (halos, galaxies).

Every catalogue source (``synthetic`` or ``mdpl2``) produces exactly these two HDF5 files;
everything downstream reads them through :func:`read_halos` and :func:`read_galaxies`.
Positions are comoving h^-1 Mpc inside the periodic box ``[0, box_size_mpc_h)``; velocities
are peculiar velocities in km/s; masses are log10 M200c in h^-1 Msun; radii are proper
h^-1 Mpc at the snapshot redshift; magnitudes are absolute SDSS r, ``M_r - 5 log10 h``.
"""
from __future__ import annotations

import numpy as np

from .tables import CatalogueError, Schema, read_table, write_table

__all__ = [
    "HALO_SCHEMA",
    "GALAXY_SCHEMA",
    "BOX_ATTRS",
    "write_halos",
    "write_galaxies",
    "read_halos",
    "read_galaxies",
    "positions",
    "velocities",
]

HALO_SCHEMA = Schema({
    "halo_id": ("i8", "", "unique halo id"),
    "upid": ("i8", "", "id of the host halo; -1 for host (distinct) halos"),
    "log10_m200c": ("f8", "log10(h^-1 Msun)", "M200c, mass inside 200x critical density"),
    "r200c_mpc_h": ("f8", "h^-1 Mpc (proper)", "R200c at the snapshot redshift"),
    "c200c": ("f8", "", "NFW concentration R200c / r_s"),
    "x_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "y_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "z_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "vx_kms": ("f8", "km/s", "peculiar velocity"),
    "vy_kms": ("f8", "km/s", "peculiar velocity"),
    "vz_kms": ("f8", "km/s", "peculiar velocity"),
})

GALAXY_SCHEMA = Schema({
    "galaxy_id": ("i8", "", "unique galaxy id"),
    "halo_id": ("i8", "", "id of the host (upid == -1) halo the galaxy is bound to"),
    "is_central": ("i1", "", "1 for the central galaxy of its host halo, else 0"),
    "x_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "y_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "z_mpc_h": ("f8", "h^-1 Mpc (comoving)", "position in the periodic box"),
    "vx_kms": ("f8", "km/s", "peculiar velocity"),
    "vy_kms": ("f8", "km/s", "peculiar velocity"),
    "vz_kms": ("f8", "km/s", "peculiar velocity"),
    "mag_r": ("f8", "mag (M_r - 5 log10 h)", "absolute SDSS r-band magnitude"),
})

#: Table attributes every halo and galaxy file carries.
BOX_ATTRS = ("box_size_mpc_h", "redshift", "cosmology", "source")

_POS = ("x_mpc_h", "y_mpc_h", "z_mpc_h")
_VEL = ("vx_kms", "vy_kms", "vz_kms")


def _check_attrs(path, attrs):
    for k in BOX_ATTRS:
        if k not in attrs:
            raise CatalogueError(path, k, "table attribute missing",
                                 "write the file with cmpipe.io.write_halos/write_galaxies")


def _check_box(path, cols, box):
    for k in _POS:
        c = cols[k]
        if c.size and (c.min() < 0 or c.max() >= box):
            raise CatalogueError(
                path, k, f"positions outside the periodic box [0, {box}) h^-1 Mpc "
                f"(range {c.min():.3g} to {c.max():.3g})",
                "positions must be comoving h^-1 Mpc; wrap them with x % box_size "
                "(a range in kpc/h or Mpc without h means wrong units)")


def write_halos(path, columns, *, box_size_mpc_h, redshift, cosmology, source):
    """Write the halo table (see :data:`HALO_SCHEMA`) atomically."""
    write_table(path, columns, group="halos", schema=HALO_SCHEMA,
                attrs=dict(box_size_mpc_h=float(box_size_mpc_h), redshift=float(redshift),
                           cosmology=cosmology, source=source))


def write_galaxies(path, columns, *, box_size_mpc_h, redshift, cosmology, source):
    """Write the galaxy table (see :data:`GALAXY_SCHEMA`) atomically."""
    write_table(path, columns, group="galaxies", schema=GALAXY_SCHEMA,
                attrs=dict(box_size_mpc_h=float(box_size_mpc_h), redshift=float(redshift),
                           cosmology=cosmology, source=source))


def read_halos(path):
    """Read and validate a halo table; returns ``(columns, attrs)``."""
    cols, attrs = read_table(path, group="halos", required=HALO_SCHEMA,
                             finite=HALO_SCHEMA)
    _check_attrs(path, attrs)
    _check_box(path, cols, attrs["box_size_mpc_h"])
    m = cols["log10_m200c"]
    if m.size and (m.min() < 5 or m.max() > 17):
        raise CatalogueError(path, "log10_m200c", f"values {m.min():.3g}..{m.max():.3g} "
                             "are not log10 masses in h^-1 Msun",
                             "store log10(M200c / (h^-1 Msun)), not the linear mass")
    return cols, attrs


def read_galaxies(path):
    """Read and validate a galaxy table; returns ``(columns, attrs)``."""
    cols, attrs = read_table(path, group="galaxies", required=GALAXY_SCHEMA,
                             finite=GALAXY_SCHEMA)
    _check_attrs(path, attrs)
    _check_box(path, cols, attrs["box_size_mpc_h"])
    cols["is_central"] = cols["is_central"].astype(bool)
    return cols, attrs


def positions(cols) -> np.ndarray:
    """(N, 3) comoving positions in h^-1 Mpc of a halo or galaxy table."""
    return np.column_stack([cols[k] for k in _POS])


def velocities(cols) -> np.ndarray:
    """(N, 3) peculiar velocities in km/s of a halo or galaxy table."""
    return np.column_stack([cols[k] for k in _VEL])
