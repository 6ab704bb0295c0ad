"""Schemas and readers of the mock-catalogue products (projected clusters, window galaxies).

``results/{run}/mock/projected.h5``, ``fluxlimited.h5`` and ``clusters.h5`` all hold two
tables: ``clusters`` (one row per projected cluster, sorted by ``cluster_id``) and
``galaxies`` (one row per galaxy inside a cluster's window, sorted by ``cluster_id``).
Later stages add columns to ``clusters``; the schemas below grow accordingly.
"""
from __future__ import annotations

import numpy as np

from .tables import Schema, read_table

__all__ = [
    "SIGHTLINE_SCHEMA",
    "PROJECTED_CLUSTER_SCHEMA",
    "FLUX_CLUSTER_SCHEMA",
    "SPLIT_CLUSTER_SCHEMA",
    "WINDOW_GALAXY_SCHEMA",
    "FLUX_GALAXY_SCHEMA",
    "read_mock",
    "galaxy_offsets",
]

SIGHTLINE_SCHEMA = Schema({
    "halo_id": ("i8", "", "host halo id"),
    "sightline": ("i8", "", "index of the line of sight within its halo"),
    "nx": ("f8", "", "unit line-of-sight vector, box x component"),
    "ny": ("f8", "", "unit line-of-sight vector, box y component"),
    "nz": ("f8", "", "unit line-of-sight vector, box z component"),
})

PROJECTED_CLUSTER_SCHEMA = Schema({
    "cluster_id": ("i8", "", "projected-cluster id (unique within the run)"),
    "halo_id": ("i8", "", "host halo id"),
    "sightline": ("i8", "", "index of the line of sight within its halo"),
    "log10_m200c": ("f8", "log10(h^-1 Msun)", "true M200c of the halo"),
    "r200c_mpc_h": ("f8", "h^-1 Mpc (proper)", "R200c of the halo"),
    "n_window": ("i8", "", "galaxies in the window before the flux limit"),
    "interloper_halo_id": ("i8", "", "most massive other host halo in the window (-1: none)"),
    "interloper_mass_ratio": ("f8", "", "M200c(interloper halo) / M200c(cluster); 0 if none"),
    "interloper_distance": ("f8", "", "paper eq. (6) phase-space distance to it; NaN if none"),
})

FLUX_CLUSTER_SCHEMA = Schema({
    **PROJECTED_CLUSTER_SCHEMA,
    "observer_distance_mpc_h": ("f8", "h^-1 Mpc (comoving)", "distance observer-cluster"),
    "redshift_obs": ("f8", "", "cosmological redshift of the cluster seen by its observer"),
    "n_gal": ("i8", "", "galaxies in the window brighter than the flux limit"),
    "n_members": ("i8", "", "of those, galaxies bound to this halo"),
})

SPLIT_CLUSTER_SCHEMA = Schema({
    **FLUX_CLUSTER_SCHEMA,
    "split": ("i1", "", "-1 unused, 0 train, 1 validation, 2 test, 3 eval"),
})

WINDOW_GALAXY_SCHEMA = Schema({
    "cluster_id": ("i8", "", "projected cluster the galaxy is seen in"),
    "galaxy_id": ("i8", "", "galaxy id in the galaxy table"),
    "x_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "sky offset from the central galaxy, axis e1"),
    "y_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "sky offset from the central galaxy, axis e2"),
    "v_los_kms": ("f8", "km/s", "line-of-sight velocity relative to the central galaxy, "
                  "peculiar + Hubble flow"),
    "los_offset_mpc_h": ("f8", "h^-1 Mpc (comoving)", "real-space offset along the line of "
                         "sight (positive = behind the cluster)"),
    "mag_r": ("f8", "mag (M_r - 5 log10 h)", "absolute r magnitude"),
    "is_member": ("i1", "", "1 if bound to the cluster's halo, else 0 (interloper)"),
})

FLUX_GALAXY_SCHEMA = Schema({
    **WINDOW_GALAXY_SCHEMA,
    "mag_r_app": ("f8", "mag", "apparent r magnitude seen by the cluster's observer"),
})


def read_mock(path, *, clusters_only: bool = False):
    """Read a mock product; returns ``(clusters, galaxies, attrs)`` (galaxies None if
    ``clusters_only``)."""
    clusters, attrs = read_table(path, group="clusters", required=("cluster_id",))
    galaxies = None
    if not clusters_only:
        galaxies, _ = read_table(path, group="galaxies", required=("cluster_id",))
    return clusters, galaxies, attrs


def galaxy_offsets(cluster_ids: np.ndarray, galaxy_cluster_ids: np.ndarray) -> np.ndarray:
    """Row offsets (len = n_clusters + 1) of each cluster's galaxies in a galaxy table
    sorted by ``cluster_id``; cluster k owns rows ``offsets[k]:offsets[k+1]``."""
    lo = np.searchsorted(galaxy_cluster_ids, cluster_ids, side="left")
    hi = np.searchsorted(galaxy_cluster_ids, cluster_ids, side="right")
    if len(cluster_ids) and np.any(lo[1:] != hi[:-1]):
        raise ValueError("galaxy table is not sorted by cluster_id in cluster order")
    return np.append(lo, hi[-1] if len(hi) else 0).astype(np.int64)
