"""Survey clusters -> the mock's phase-space windows: the galaxies each cluster's cube is
made of, and which clusters have enough of them.

Galaxies come either on the sky (RA, Dec, z; converted by
:func:`cmpipe.survey.sky.sky_to_phase_space`) or already in projected phase space
(``cmpipe infer --phase-space``); both give one row per (cluster, window galaxy) pair in
:data:`cmpipe.io.survey_products.SURVEY_PHASE_SPACE_GALAXY_SCHEMA`, sorted by cluster id.
Offsets are proper h^-1 Mpc (x east along +RA, y north along +Dec), velocities km/s in
the cluster frame, c (z - z_cl) / (1 + z_cl).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..cosmology import Cosmology
from ..io.mock import galaxy_offsets

__all__ = ["Windows", "WindowSelection", "survey_min_galaxies", "sky_windows",
           "phase_space_windows", "select_windows", "warn_degenerate_windows"]

log = logging.getLogger(__name__)


class Windows(NamedTuple):
    """Window galaxies of the survey clusters (clusters sorted by id).

    Attributes
    ----------
    galaxies : dict of ndarray
        One row per (cluster, window galaxy) pair, phase-space galaxy schema.
    n_gal : ndarray of int64
        Window galaxies per cluster.
    d_a_mpc_h : ndarray
        Angular-diameter distance of each cluster, proper h^-1 Mpc.
    counts : dict
        How many clusters, galaxies and pairs went in and came out.
    has_labels : bool
        Whether the galaxies carry cluster-membership labels.
    """

    galaxies: dict
    n_gal: np.ndarray
    d_a_mpc_h: np.ndarray
    counts: dict
    has_labels: bool


class WindowSelection(NamedTuple):
    """The clusters with at least ``min_galaxies`` window galaxies (:func:`select_windows`).

    Attributes
    ----------
    clusters : dict of ndarray
        Rows of the phase-space cluster table (every cluster, ``skipped`` = 1 for those
        with too few galaxies).
    galaxies : dict of ndarray
        The window galaxies of the kept clusters.
    kept : ndarray of bool
        Per cluster.
    n_members : ndarray of int64
        Window galaxies listed as members of the cluster (-1: no membership labels).
    skipped_ids : ndarray of int64
        Ids of the clusters skipped.
    counts : dict
        :attr:`Windows.counts` with the clusters and galaxies kept and skipped.
    """

    clusters: dict
    galaxies: dict
    kept: np.ndarray
    n_members: np.ndarray
    skipped_ids: np.ndarray
    counts: dict


def survey_min_galaxies(min_galaxies: int | None, mock_min_galaxies: int) -> int:
    """Fewest window galaxies a survey cluster needs for a cube: ``survey.min_galaxies``,
    else the mock's ``mock.min_galaxies``, and never below 3 (a 3D KDE)."""
    return max(3, int(min_galaxies if min_galaxies is not None else mock_min_galaxies))


def sky_windows(clusters: Mapping, galaxies: Mapping, cosmology: Cosmology, *,
                half_width_mpc_h: float, v_max_kms: float, pair_by_cluster_id: bool = False,
                cluster_table=None, galaxy_table=None) -> Windows:
    """Galaxies on the sky -> each cluster's window (:func:`cmpipe.survey.sky.sky_to_phase_space`).

    Parameters
    ----------
    clusters : mapping of ndarray
        Survey cluster table sorted by id: ``cluster_id``, ``ra_deg``, ``dec_deg`` [deg],
        ``z``.
    galaxies : mapping of ndarray
        Survey galaxy table: ``galaxy_id``, ``ra_deg``, ``dec_deg`` [deg], ``z`` and
        ``cluster_id`` (membership label; :data:`cmpipe.io.survey.NO_CLUSTER` or -1 none).
    cosmology : Cosmology
    half_width_mpc_h : float
        Window half-width in x and y, proper h^-1 Mpc.
    v_max_kms : float
        Window half-depth in line-of-sight velocity, km/s.
    pair_by_cluster_id : bool
        Put a galaxy only in the window of the cluster it is listed in.
    cluster_table, galaxy_table : str, optional
        File names for error messages.

    Returns
    -------
    Windows
        ``is_member`` is 1 where the galaxy is listed in that cluster, 0 where in another
        or none, -1 for every galaxy when no galaxy carries a label.
    """
    from .sky import sky_to_phase_space

    labels = galaxies["cluster_id"]
    win = sky_to_phase_space(clusters["cluster_id"], clusters["ra_deg"], clusters["dec_deg"],
                             clusters["z"], galaxies["ra_deg"], galaxies["dec_deg"],
                             galaxies["z"], cosmology, half_width_mpc_h=half_width_mpc_h,
                             v_max_kms=v_max_kms, min_galaxies=1,
                             galaxy_cluster_id=labels if pair_by_cluster_id else None,
                             angle_unit="deg", cluster_table=cluster_table,
                             galaxy_table=galaxy_table, warn_skipped=False)
    rows = win.galaxies["galaxy_row"]
    has_labels = _membership_usable(labels, clusters["cluster_id"], galaxy_table,
                                    cluster_table)
    member = (labels[rows] == win.galaxies["cluster_id"]).astype(np.int8) if has_labels \
        else np.full(rows.size, -1, dtype=np.int8)
    g = dict(cluster_id=win.galaxies["cluster_id"], galaxy_id=galaxies["galaxy_id"][rows],
             x_proj_mpc_h=win.galaxies["x_proj_mpc_h"],
             y_proj_mpc_h=win.galaxies["y_proj_mpc_h"], v_los_kms=win.galaxies["v_los_kms"],
             is_member=member)
    return Windows(g, win.clusters["n_gal"], win.clusters["d_a_mpc_h"], dict(win.counts),
                   has_labels)


def _membership_usable(labels, cluster_ids, galaxy_table, cluster_table) -> bool:
    """Whether the galaxies' membership labels name any survey cluster. Labels given
    (other than "none": :data:`cmpipe.io.survey.NO_CLUSTER`, or -1 when no cluster has
    that id) that match no cluster are warned about once: the column is then ignored
    (``n_members`` -1) instead of giving 0 members everywhere."""
    from ..io.survey import NO_CLUSTER

    matched = np.isin(labels, cluster_ids)
    if matched.any():
        return True
    given = labels != NO_CLUSTER
    if not np.isin(-1, cluster_ids):
        given &= labels != -1
    if given.any():
        log.warning("%s: column 'cluster_id' (membership) is given but none of its %d ids "
                    "matches a cluster id of %s (e.g. %s); membership ignored, n_members "
                    "-1. Fix: map the galaxy column holding the cluster table's ids "
                    "(--galaxy-column cluster_id=COLUMN), or drop it", galaxy_table,
                    np.unique(labels[given]).size, cluster_table,
                    ", ".join(str(int(i)) for i in np.unique(labels[given])[:3]))
    return False


def phase_space_windows(galaxies: Mapping, clusters: Mapping, cosmology: Cosmology, *,
                        half_width_mpc_h: float, v_max_kms: float, source="") -> Windows:
    """Galaxies given in phase space -> each cluster's window: rows outside it dropped.

    Parameters
    ----------
    galaxies : mapping of ndarray
        :func:`cmpipe.io.survey.read_phase_space_galaxies`: ``cluster_id``, ``galaxy_id``,
        ``x_proj_mpc_h``, ``y_proj_mpc_h`` [proper h^-1 Mpc], ``v_los_kms`` [km/s].
    clusters : mapping of ndarray
        Survey cluster table sorted by id (``cluster_id``, ``z``); every galaxy's cluster
        is in it.
    cosmology : Cosmology
    half_width_mpc_h, v_max_kms : float
        The window: |x|, |y| <= half_width_mpc_h [proper h^-1 Mpc], |v| <= v_max_kms [km/s].
    source : str
        The file, for the log.

    Returns
    -------
    Windows
        ``is_member`` -1 (no membership), ``has_labels`` False.
    """
    W, V = half_width_mpc_h, v_max_kms
    cid, gid = galaxies["cluster_id"], galaxies["galaxy_id"]
    cols = {k: galaxies[k] for k in ("x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms")}
    n = len(cid)
    inside = ((np.abs(cols["x_proj_mpc_h"]) <= W) & (np.abs(cols["y_proj_mpc_h"]) <= W)
              & (np.abs(cols["v_los_kms"]) <= V))
    if (~inside).any():
        (log.warning if (~inside).sum() > 0.5 * n else log.info)(
            "%s: %d of %d galaxies outside the window (|x|,|y| <= %g h^-1 Mpc, |v| <= "
                 "%g km/s) dropped", source, int((~inside).sum()), n, W, V)
    order = np.argsort(cid[inside], kind="stable")
    g = dict(cluster_id=cid[inside][order], galaxy_id=gid[inside][order],
             **{k: v[inside][order] for k, v in cols.items()})
    g["is_member"] = np.full(len(order), -1, dtype=np.int8)
    # clusters are sorted by id
    n_gal = np.bincount(np.searchsorted(clusters["cluster_id"], g["cluster_id"]),
                        minlength=len(clusters["cluster_id"])).astype(np.int64)
    d_a = np.asarray(cosmology.angular_diameter_distance_mpc_h(clusters["z"]), dtype=float)
    counts = dict(n_clusters=int(len(n_gal)), n_galaxies_in=int(n),
                  n_window_pairs=int(len(order)))
    return Windows(g, n_gal, np.atleast_1d(d_a), counts, False)


def select_windows(clusters: Mapping, windows: Windows, min_galaxies: int, *,
                   half_width_mpc_h: float, v_max_kms: float) -> WindowSelection:
    """Keep the clusters with at least ``min_galaxies`` window galaxies (the others are
    logged, counted and kept in the cluster rows with ``skipped = 1``).

    Parameters
    ----------
    clusters : mapping of ndarray
        Survey cluster table sorted by id.
    windows : Windows
        Their window galaxies.
    min_galaxies : int
        Fewest window galaxies for a cube.
    half_width_mpc_h, v_max_kms : float
        The window [proper h^-1 Mpc, km/s], for the log.

    Returns
    -------
    WindowSelection
    """
    g, n_gal = windows.galaxies, windows.n_gal
    n_cl = len(clusters["cluster_id"])
    kept = n_gal >= min_galaxies
    keep_g = np.isin(g["cluster_id"], clusters["cluster_id"][kept])
    g = {c: v[keep_g] for c, v in g.items()}
    if windows.has_labels:
        row = np.searchsorted(clusters["cluster_id"], g["cluster_id"])
        n_members = np.bincount(row[g["is_member"] == 1], minlength=n_cl).astype(np.int64)
    else:
        n_members = np.full(n_cl, -1, dtype=np.int64)
    skipped = clusters["cluster_id"][~kept]
    counts = windows.counts
    counts.update(n_clusters=int(n_cl), n_clusters_kept=int(kept.sum()),
                  n_skipped=int((~kept).sum()), n_window_galaxies_kept=int(keep_g.sum()))
    if skipped.size:
        log.warning("survey: %d of %d clusters skipped, fewer than %d galaxies in the window "
                    "(|x|,|y| <= %g h^-1 Mpc, |v| <= %g km/s): ids %s%s", skipped.size,
                    n_cl, min_galaxies, half_width_mpc_h, v_max_kms,
                    ", ".join(str(int(i)) for i in skipped[:20]),
                    " ..." if skipped.size > 20 else "")
    rows = dict(cluster_id=clusters["cluster_id"], ra_deg=clusters["ra_deg"],
                dec_deg=clusters["dec_deg"], z=clusters["z"], d_a_mpc_h=windows.d_a_mpc_h,
                n_gal=n_gal, n_members=n_members, n_mem=clusters["n_mem"],
                log10_m_cat=clusters["log10_m_cat"],
                log10_m_cat_err=clusters["log10_m_cat_err"], skipped=(~kept).astype(np.int8))
    return WindowSelection(rows, g, kept, n_members, skipped, counts)


def warn_degenerate_windows(ids, galaxies: Mapping, source) -> None:
    """Warn about clusters whose window galaxies are degenerate: all identical (duplicated
    rows) or all at one velocity (e.g. every galaxy given the cluster redshift). Their KDE
    is a kernel-sized blob and the mass says nothing about the cluster.

    Parameters
    ----------
    ids : ndarray of int64
        The clusters with cubes, sorted.
    galaxies : mapping of ndarray
        Their window galaxies, sorted by ``cluster_id``.
    source : path-like
        The galaxy file, for the message.
    """
    if not ids.size:
        return
    o = galaxy_offsets(ids, galaxies["cluster_id"])
    start, stop = o[:-1], o[1:]
    has = stop > start
    if not has.any():
        return
    same = {}
    for k in ("x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"):
        a = galaxies[k]
        lo = np.minimum.reduceat(a, start[has]) if a.size else a
        hi = np.maximum.reduceat(a, start[has]) if a.size else a
        same[k] = hi - lo == 0
    identical = same["x_proj_mpc_h"] & same["y_proj_mpc_h"] & same["v_los_kms"]
    one_v = same["v_los_kms"] & ~identical
    for mask, what in ((identical, "all their window galaxies identical (duplicated rows?)"),
                       (one_v, "all their window galaxies at one velocity (v_los "
                               "= c (z - z_cl) / (1 + z_cl) constant: every galaxy given the "
                               "cluster redshift?)")):
        if mask.any():
            bad = ids[has][mask]
            log.warning("%s: %d cluster(s) have %s; their masses are meaningless: ids %s%s",
                        source, bad.size, what, ", ".join(str(int(i)) for i in bad[:20]),
                        " ..." if bad.size > 20 else "")
