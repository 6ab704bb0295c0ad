"""Flux-limited mock: each projected cluster seen by its own observer.

Each projected cluster gets an observer at a comoving distance D drawn uniformly inside a
3D ball of radius R (``D = R u^(1/3)``), looking along the cluster's line of sight. A
window galaxy at real-space line-of-sight offset ``d_par`` (comoving) then lies at comoving
distance ``D + d_par``; its apparent magnitude is

    m_r = M_r + 5 log10(D_L / (h^-1 Mpc)) + 25,   D_L = (1 + z) D_c

with ``M_r`` in the ``M - 5 log10 h`` convention, z the cosmological redshift at that
distance and no k-correction (at z < 0.09 the ^{0.1}r-band k-correction is below 0.1 mag).
Galaxies with ``m_r >= mag_r_limit`` are dropped, as are the rare ones whose distance would
put them behind the observer (``D + d_par <= 0``). Clusters left with fewer than
``min_galaxies`` galaxies are dropped and counted. The observer ball's radius and the
apparent magnitudes come from :mod:`cmpipe.cosmology`
(:func:`~cmpipe.cosmology.observer_radius_mpc_h`,
:func:`~cmpipe.cosmology.apparent_magnitudes`), which the survey's depth flag reads too.
"""
from __future__ import annotations

import logging

import numpy as np

from ..cosmology import apparent_magnitudes

__all__ = ["draw_observer_distances", "flux_limit"]

log = logging.getLogger(__name__)


def draw_observer_distances(n: int, radius_mpc_h: float, rng: np.random.Generator):
    """Comoving observer distances uniform in a 3D ball of radius ``radius_mpc_h``."""
    return radius_mpc_h * rng.random(n) ** (1.0 / 3.0)


def flux_limit(clusters: dict, galaxies: dict, observer_distance_mpc_h: np.ndarray, *,
               cosmology, mag_r_limit: float, min_galaxies: int, select=None):
    """Apply the flux limit to projected clusters.

    Parameters
    ----------
    clusters : dict of ndarray
        PROJECTED_CLUSTER_SCHEMA rows.
    galaxies : dict of ndarray
        WINDOW_GALAXY_SCHEMA rows of those clusters, sorted by ``cluster_id``.
    observer_distance_mpc_h : ndarray
        Comoving observer distance of each cluster (same order as ``clusters``).
    cosmology : cmpipe.cosmology.Cosmology
    mag_r_limit : float
        Keep galaxies with apparent r strictly brighter than this.
    min_galaxies : int
        Drop clusters with fewer surviving galaxies.
    select : callable, optional
        ``select(row, visible) -> visible``: which flux-limited targets get a redshift
        (:func:`cmpipe.mock.nuisance.spectroscopic_selection`), applied before the counts
        and the richness cut; ``row`` is each galaxy's index in ``clusters``.

    Returns
    -------
    clusters, galaxies : dict of ndarray
        FLUX_CLUSTER_SCHEMA / FLUX_GALAXY_SCHEMA rows of the surviving clusters.
    counts : dict
        ``n_clusters_in``, ``n_clusters_kept``, ``n_dropped_too_few``,
        ``n_galaxies_in``, ``n_galaxies_kept``, ``n_behind_observer``.
    """
    cid = np.asarray(clusters["cluster_id"])
    g_cid = np.asarray(galaxies["cluster_id"])
    row = np.searchsorted(cid, g_cid)
    if len(g_cid) and (np.any(row >= len(cid)) or np.any(cid[np.minimum(row, len(cid) - 1)]
                                                          != g_cid)):
        raise ValueError("galaxies reference clusters that are not in the cluster table")
    dist = observer_distance_mpc_h[row] + np.asarray(galaxies["los_offset_mpc_h"])
    ahead = dist > 0.0
    m_app = np.full(len(dist), np.inf)
    m_app[ahead] = apparent_magnitudes(np.asarray(galaxies["mag_r"])[ahead], dist[ahead],
                                       cosmology)
    visible = m_app < mag_r_limit
    if select is not None:
        visible = select(row, visible)
    n_gal = np.bincount(row[visible], minlength=len(cid))
    n_mem = np.bincount(row[visible], weights=np.asarray(galaxies["is_member"])[visible],
                        minlength=len(cid)).astype(np.int64)
    keep_c = n_gal >= min_galaxies
    keep_g = visible & keep_c[row]

    out_c = {k: np.asarray(v)[keep_c] for k, v in clusters.items()}
    out_c["observer_distance_mpc_h"] = np.asarray(observer_distance_mpc_h)[keep_c]
    out_c["redshift_obs"] = cosmology.z_at_comoving_distance(out_c["observer_distance_mpc_h"])
    out_c["n_gal"] = n_gal[keep_c]
    out_c["n_members"] = n_mem[keep_c]
    out_g = {k: np.asarray(v)[keep_g] for k, v in galaxies.items()}
    out_g["mag_r_app"] = m_app[keep_g]
    counts = dict(n_clusters_in=int(len(cid)), n_clusters_kept=int(keep_c.sum()),
                  n_dropped_too_few=int((~keep_c).sum()), n_galaxies_in=int(len(g_cid)),
                  n_galaxies_kept=int(keep_g.sum()), n_behind_observer=int((~ahead).sum()))
    return out_c, out_g, counts
