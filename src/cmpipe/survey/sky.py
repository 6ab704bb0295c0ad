"""Survey galaxies on the sky -> cluster projected phase space (pipeline step 10).

A cluster is given by its centre (RA, Dec, in degrees) and redshift ``z_cl``; every survey
galaxy by (RA, Dec, z). Around each cluster the galaxies are mapped to the same phase-space
coordinates the mock uses (:mod:`cmpipe.mock.projection`), then cut to the same window.

Conventions
-----------
Tangent plane
    Gnomonic (TAN) projection about the cluster centre (alpha0, delta0)::

        cos c = sin d0 sin d + cos d0 cos d cos(a - a0)
        xi    = cos d sin(a - a0) / cos c                        (radians, +RA = east)
        eta   = (cos d0 sin d - sin d0 cos d cos(a - a0)) / cos c  (radians, +Dec = north)

    equivalently ``xi = tan(rho) sin(theta)``, ``eta = tan(rho) cos(theta)`` with ``rho`` the
    angular separation and ``theta`` the position angle east of north (what the tests compare
    with :meth:`astropy.coordinates.SkyCoord.separation` / ``position_angle``). Galaxies a
    quarter of the sky or more from the centre (``cos c <= 0``) have no tangent-plane image
    and are never in a window.
Axes
    ``x_proj = D_A(z_cl) xi`` along increasing RA (east) and ``y_proj = D_A(z_cl) eta`` along
    increasing Dec (north), proper h^-1 Mpc, with ``D_A`` the angular-diameter distance of the
    cluster (:meth:`cmpipe.cosmology.Cosmology.angular_diameter_distance_mpc_h`). East x
    north is the outward line of sight, so (x_proj, y_proj, v_los > 0 receding) is
    right-handed like the mock's ``(e1, e2, n)`` (``e1 x e2 = n``,
    :func:`cmpipe.mock.sightlines.basis_for`); on a north-up sky image x grows to the left.
Velocity
    ``v_los = c (z - z_cl) / (1 + z_cl)`` km/s: the line-of-sight velocity in the cluster
    rest frame, peculiar plus Hubble flow, as in the mock.
Window
    ``|x_proj|, |y_proj| <= W`` (proper h^-1 Mpc) and ``|v_los| <= V`` (km/s): the mock's
    cuts (paper: W = 1.6, V = 2200).
Pairing
    Galaxies and clusters are placed on the unit sphere; a 3-D KD-tree
    (:class:`scipy.spatial.cKDTree`) returns, for each cluster, the galaxies within the chord
    of the angular radius ``rho_max = sqrt(2) W / D_A(z_cl)`` (times ``1 + 1e-6`` for
    rounding). A window galaxy has ``tan(rho) = sqrt(xi^2 + eta^2) <= sqrt(2) W / D_A`` and
    ``rho <= tan(rho)``, so no window galaxy is missed; the exact cuts follow.
Angles in radians
    Unitless angle columns are taken to be degrees. A set of positions is rejected as
    "clearly radians" (:func:`check_sky_positions`, kept with the readers' checks in
    :mod:`cmpipe.io.validate`) when it holds at least :data:`RADIANS_MIN_POINTS` points,
    every RA lies in ``[0, 2 pi]`` and every ``|Dec|`` in ``[0, pi/2]``, and the set spans
    more than :data:`RADIANS_MIN_SPAN` (0.1) in RA or Dec. Read as degrees such a set would
    crowd into a 6.3 deg x 3.1 deg patch at RA ~ 0, Dec ~ 0 (0.05% of the sky); read as
    radians it is an ordinary survey region. A real degree catalogue confined to that patch
    can pass ``angle_unit="deg"`` to skip the test.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..cosmology import C_KMS, Cosmology
# the checks of sky input live with the readers (cmpipe.io.validate); kept importable here
from ..io.validate import (MAX_REDSHIFT, RADIANS_MIN_POINTS, RADIANS_MIN_SPAN, SkyInputError,
                           check_redshifts, check_sky_positions)

__all__ = [
    "RADIANS_MIN_POINTS",
    "RADIANS_MIN_SPAN",
    "SkyInputError",
    "PhaseSpaceWindows",
    "check_sky_positions",
    "check_cluster_density",
    "DENSITY_MIN_CLUSTERS",
    "DENSITY_MAX_MPC_H3",
    "check_redshifts",
    "MAX_REDSHIFT",
    "radec_to_unit",
    "gnomonic_offsets",
    "gnomonic_to_radec",
    "relative_velocity_kms",
    "phase_space_to_sky",
    "sky_to_phase_space",
]

log = logging.getLogger(__name__)

#: Relative widening of the KD-tree search radius (rounding only; see module docstring).
_SEARCH_MARGIN = 1e-6
#: Clusters per KD-tree query batch (bounds the memory of the candidate pairs).
_BATCH = 256


@dataclass
class PhaseSpaceWindows:
    """Survey galaxies in the phase-space windows of clusters.

    Attributes
    ----------
    galaxies : dict of ndarray
        One row per (cluster, galaxy) pair inside a window, sorted by ``cluster_id`` then
        by galaxy row: ``cluster_id``, ``galaxy_row`` (row in the input galaxy arrays),
        ``x_proj_mpc_h``, ``y_proj_mpc_h`` (proper h^-1 Mpc, east / north),
        ``v_los_kms`` (km/s) -- the mock's window-galaxy columns.
    clusters : dict of ndarray
        One row per input cluster, in input order: ``cluster_id``, ``ra_deg``, ``dec_deg``,
        ``z``, ``d_a_mpc_h`` (angular-diameter distance, proper h^-1 Mpc) and ``n_gal``
        (galaxies in its window).
    skipped : list of int
        Ids of clusters with fewer than ``min_galaxies`` window galaxies (not in
        ``galaxies``).
    counts : dict
        ``n_clusters``, ``n_clusters_kept``, ``n_skipped``, ``n_galaxies_in``,
        ``n_candidate_pairs`` (KD-tree pairs before the exact cuts), ``n_window_pairs``.
    """

    galaxies: dict
    clusters: dict
    skipped: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- geometry


def radec_to_unit(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors (N, 3) of RA, Dec in degrees (x to RA=0, y to RA=90, z to Dec=+90)."""
    a = np.radians(np.asarray(ra_deg, dtype=float))
    d = np.radians(np.asarray(dec_deg, dtype=float))
    cd = np.cos(d)
    return np.stack([cd * np.cos(a), cd * np.sin(a), np.sin(d)], axis=-1)


def gnomonic_offsets(ra0_deg, dec0_deg, ra_deg, dec_deg):
    """Gnomonic tangent-plane offsets of points about centres, radians.

    Parameters
    ----------
    ra0_deg, dec0_deg : array_like
        Centre(s), degrees; broadcast against the points.
    ra_deg, dec_deg : array_like
        Points, degrees. RA wraps freely (359.9 and 0.1 are 0.2 deg apart).

    Returns
    -------
    xi, eta : ndarray
        Offsets along +RA (east) and +Dec (north), radians of the tangent plane
        (``tan`` of the separation times sin / cos of the position angle).
    cos_c : ndarray
        Cosine of the separation; points with ``cos_c <= 0`` have no image (xi, eta NaN).
    """
    a0 = np.radians(np.asarray(ra0_deg, dtype=float))
    d0 = np.radians(np.asarray(dec0_deg, dtype=float))
    a = np.radians(np.asarray(ra_deg, dtype=float))
    d = np.radians(np.asarray(dec_deg, dtype=float))
    da = a - a0
    sd0, cd0, sd, cd = np.sin(d0), np.cos(d0), np.sin(d), np.cos(d)
    cos_c = sd0 * sd + cd0 * cd * np.cos(da)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cos_c > 0.0, 1.0 / cos_c, np.nan)
    xi = cd * np.sin(da) * inv
    eta = (cd0 * sd - sd0 * cd * np.cos(da)) * inv
    return xi, eta, cos_c


def gnomonic_to_radec(ra0_deg, dec0_deg, xi, eta):
    """Inverse gnomonic projection: tangent-plane offsets (radians) -> RA, Dec (degrees).

    Parameters
    ----------
    ra0_deg, dec0_deg : array_like
        Centre(s), degrees.
    xi, eta : array_like
        Offsets along +RA (east) and +Dec (north), radians of the tangent plane.

    Returns
    -------
    ra_deg, dec_deg : ndarray
        RA in ``[0, 360)`` and Dec, degrees.
    """
    a0 = np.radians(np.asarray(ra0_deg, dtype=float))
    d0 = np.radians(np.asarray(dec0_deg, dtype=float))
    xi = np.asarray(xi, dtype=float)
    eta = np.asarray(eta, dtype=float)
    sd0, cd0 = np.sin(d0), np.cos(d0)
    den = cd0 - eta * sd0
    a = a0 + np.arctan2(xi, den)
    d = np.arctan2(sd0 + eta * cd0, np.hypot(xi, den))
    return np.mod(np.degrees(a), 360.0), np.degrees(d)


def relative_velocity_kms(z, z_cl):
    """Line-of-sight velocity in the cluster frame, ``c (z - z_cl) / (1 + z_cl)``, km/s."""
    z_cl = np.asarray(z_cl, dtype=float)
    return C_KMS * (np.asarray(z, dtype=float) - z_cl) / (1.0 + z_cl)


def phase_space_to_sky(ra0_deg, dec0_deg, z_cl, x_proj_mpc_h, y_proj_mpc_h, v_los_kms,
                       cosmology: Cosmology):
    """Place phase-space coordinates of a cluster on the sky (inverse of the conversion).

    Parameters
    ----------
    ra0_deg, dec0_deg : float
        Cluster centre, degrees.
    z_cl : float
        Cluster redshift.
    x_proj_mpc_h, y_proj_mpc_h : array_like
        Proper offsets east / north, h^-1 Mpc.
    v_los_kms : array_like
        Line-of-sight velocities relative to the cluster, km/s.
    cosmology : Cosmology

    Returns
    -------
    ra_deg, dec_deg, z : ndarray
        Exactly inverted by :func:`sky_to_phase_space` (up to rounding).
    """
    d_a = float(cosmology.angular_diameter_distance_mpc_h(float(z_cl)))
    xi = np.asarray(x_proj_mpc_h, dtype=float) / d_a
    eta = np.asarray(y_proj_mpc_h, dtype=float) / d_a
    ra, dec = gnomonic_to_radec(ra0_deg, dec0_deg, xi, eta)
    z = z_cl + np.asarray(v_los_kms, dtype=float) * (1.0 + z_cl) / C_KMS
    return ra, dec, z


# ---------------------------------------------------------------------------- conversion


#: Fewest clusters for the density test of declared-degree positions.
DENSITY_MIN_CLUSTERS = 10
#: Comoving cluster density [h^3 Mpc^-3] above which positions inside the radians box are
#: taken for radians: 100x the density of groups above 10^13 h^-1 Msun (~1e-4), 10x the
#: Shapley supercluster core; radians read as degrees are ~3300x (57.3^2) denser.
DENSITY_MAX_MPC_H3 = 1e-2


def check_cluster_density(ra_deg, dec_deg, z, cosmology: Cosmology, *,
                          table: str = "clusters", ra_column: str = "ra_deg",
                          dec_column: str = "dec_deg") -> None:
    """Refuse cluster positions that are radians labelled as degrees.

    Declared-degree columns (an astropy unit ``deg``) skip the unitless radians test
    (:func:`cmpipe.io.validate.check_sky_positions`), so values in radians that carry
    ``unit: deg`` would be trusted. The rule: at least :data:`DENSITY_MIN_CLUSTERS`
    clusters, every position inside the radians box (RA in [0, 2 pi], |Dec| <= pi/2), and
    the clusters' comoving number density inside their RA/Dec bounding patch and redshift
    shell above :data:`DENSITY_MAX_MPC_H3`: read as degrees a radian survey crowds into a
    6.3 x 3.1 deg patch and is 57.3^2 times too dense, while a genuine small degree field
    (one cluster near RA 1 deg, or a few in a deep field) is neither that populous nor that
    dense.

    Raises
    ------
    SkyInputError
        The positions look like radians; the message names the table, the columns and
        the fix.
    """
    ra, dec = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    z = np.asarray(z, float)
    if ra.size < DENSITY_MIN_CLUSTERS:
        return
    if not (ra.min() >= 0 and ra.max() <= 2 * np.pi and np.abs(dec).max() <= 0.5 * np.pi):
        return
    d = np.radians(dec)
    omega = np.radians(max(np.ptp(ra), 1e-3)) * max(abs(np.sin(d.max()) - np.sin(d.min())),
                                                     1e-5)
    r = np.asarray(cosmology.comoving_distance_mpc_h(np.array([z.min(), z.max()])), float)
    volume = omega / 3.0 * max(r[1] ** 3 - r[0] ** 3, 1.0)
    density = ra.size / volume
    if density > DENSITY_MAX_MPC_H3:
        raise SkyInputError(
            table, f"{ra_column}/{dec_column}",
            f"all {ra.size} clusters lie in RA {ra.min():.4g}..{ra.max():.4g}, Dec "
            f"{dec.min():.4g}..{dec.max():.4g}: read as degrees they would be "
            f"{density:.3g} clusters per (h^-1 Mpc)^3, over {DENSITY_MAX_MPC_H3:g} (real "
            "clusters: ~1e-5): these look like radians although the unit says deg",
            "convert the columns to degrees (np.degrees) or set their unit to 'rad'; if "
            "the field really is this dense, pass --angle-unit deg (angle_unit='deg')")


def _checked_cluster_ids(cluster_id, cluster_table):
    """Cluster ids as int64, checked to be a 1-D integer array without repeats."""
    cid = np.asarray(cluster_id)
    if cid.ndim != 1 or cid.dtype.kind not in "iu":
        raise SkyInputError(cluster_table, "cluster_id", f"cluster ids must be a 1-D integer "
                            f"array (got dtype {cid.dtype}, shape {cid.shape})",
                            "map an integer id column (or number the rows)")
    cid = cid.astype(np.int64)
    uniq, cnt = np.unique(cid, return_counts=True)
    if (cnt > 1).any():
        dup = uniq[cnt > 1]
        raise SkyInputError(cluster_table, "cluster_id", f"{dup.size} duplicated id(s), e.g. "
                            f"{', '.join(str(int(d)) for d in dup[:5])}",
                            "give every cluster a unique id (drop repeated rows)")
    return cid


def _checked_sky(cid, cluster_ra_deg, cluster_dec_deg, cluster_z, galaxy_ra_deg,
                 galaxy_dec_deg, galaxy_z, galaxy_cluster_id, *, angle_unit, cluster_table,
                 galaxy_table):
    """Checked sky input of :func:`sky_to_phase_space`.

    Returns
    -------
    clusters : tuple of ndarray
        RA in ``[0, 360)`` (degrees), Dec (degrees), z.
    galaxies : tuple
        RA in ``[0, 360)`` (degrees), Dec (degrees), z, and the int64 cluster id of each
        galaxy (``None`` if not given).
    """
    c_ra = check_sky_positions(cluster_ra_deg, cluster_dec_deg, table=cluster_table,
                               ra_column="ra_deg", dec_column="dec_deg",
                               angle_unit=angle_unit)
    c_dec = np.asarray(cluster_dec_deg, dtype=float)
    c_z = check_redshifts(cluster_z, table=cluster_table, allow_zero=False)
    g_ra = check_sky_positions(galaxy_ra_deg, galaxy_dec_deg, table=galaxy_table,
                               ra_column="ra_deg", dec_column="dec_deg",
                               angle_unit=angle_unit)
    g_dec = np.asarray(galaxy_dec_deg, dtype=float)
    g_z = check_redshifts(galaxy_z, table=galaxy_table, allow_zero=True)
    if not (len(c_ra) == len(cid) == len(c_z)):
        raise SkyInputError(cluster_table, "cluster_id", "id, RA, Dec and z differ in length",
                            "pass one value of each per cluster")
    if len(g_z) != len(g_ra):
        raise SkyInputError(galaxy_table, "z", "RA, Dec and z differ in length",
                            "pass one value of each per galaxy")
    g_lab = None
    if galaxy_cluster_id is not None:
        g_lab = np.asarray(galaxy_cluster_id).astype(np.int64)
        if g_lab.shape != g_z.shape:
            raise SkyInputError(galaxy_table, "cluster_id", "length differs from RA/Dec/z",
                                "pass one cluster id per galaxy (or none)")
    return (c_ra, c_dec, c_z), (g_ra, g_dec, g_z, g_lab)


def _window_pairs(cid, clusters, galaxies, d_a, W, V):
    """Every (cluster, galaxy) pair inside a window, found through a KD-tree on the sphere.

    Parameters
    ----------
    cid : ndarray of int64
        Cluster ids.
    clusters, galaxies : tuple
        As returned by :func:`_checked_sky`.
    d_a : ndarray
        Angular-diameter distance of each cluster, proper h^-1 Mpc.
    W, V : float
        Window half-width (proper h^-1 Mpc) and half-depth (km/s).

    Returns
    -------
    ci, gi : ndarray of int64
        Cluster and galaxy rows of each pair.
    x, y : ndarray
        Proper offsets east / north, h^-1 Mpc.
    v : ndarray
        Line-of-sight velocity relative to the cluster, km/s.
    n_cand : int
        KD-tree candidate pairs before the exact cuts.
    """
    c_ra, c_dec, c_z = clusters
    g_ra, g_dec, g_z, g_lab = galaxies
    k = cid.size
    rho_max = np.sqrt(2.0) * W / d_a * (1.0 + _SEARCH_MARGIN)
    chord = 2.0 * np.sin(0.5 * np.minimum(rho_max, np.pi))

    g_unit = radec_to_unit(g_ra, g_dec)
    c_unit = radec_to_unit(c_ra, c_dec)
    tree = cKDTree(g_unit) if len(g_ra) else None

    parts = []
    n_cand = 0
    for b0 in range(0, k, _BATCH):
        sl = slice(b0, min(b0 + _BATCH, k))
        if tree is None:
            break
        found = tree.query_ball_point(c_unit[sl], chord[sl], return_sorted=True)
        lens = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
        if lens.sum() == 0:
            continue
        ci = np.repeat(np.arange(sl.start, sl.stop), lens)
        gi = np.concatenate([np.asarray(f, dtype=np.int64) for f in found])
        n_cand += gi.size
        if g_lab is not None:
            keep = g_lab[gi] == cid[ci]
            ci, gi = ci[keep], gi[keep]
        v = relative_velocity_kms(g_z[gi], c_z[ci])
        ok = np.abs(v) <= V
        ci, gi, v = ci[ok], gi[ok], v[ok]
        xi, eta, _ = gnomonic_offsets(c_ra[ci], c_dec[ci], g_ra[gi], g_dec[gi])
        x = d_a[ci] * xi
        y = d_a[ci] * eta
        ins = (np.abs(x) <= W) & (np.abs(y) <= W)      # NaN (no image) compares False
        parts.append((ci[ins], gi[ins], x[ins], y[ins], v[ins]))
    if parts:
        ci, gi, x, y, v = (np.concatenate(p) for p in zip(*parts))
    else:
        ci = gi = np.zeros(0, dtype=np.int64)
        x = y = v = np.zeros(0)
    return ci, gi, x, y, v, n_cand


def sky_to_phase_space(cluster_id, cluster_ra_deg, cluster_dec_deg, cluster_z,
                       galaxy_ra_deg, galaxy_dec_deg, galaxy_z, cosmology: Cosmology, *,
                       half_width_mpc_h: float = 1.6, v_max_kms: float = 2200.0,
                       min_galaxies: int = 1, galaxy_cluster_id=None,
                       angle_unit: str = "auto", cluster_table: str = "clusters",
                       galaxy_table: str = "galaxies",
                       warn_skipped: bool = True) -> PhaseSpaceWindows:
    """Convert survey galaxies to the projected phase space of many clusters at once.

    Parameters
    ----------
    cluster_id : array_like of int, shape (K,)
        Unique cluster ids.
    cluster_ra_deg, cluster_dec_deg : array_like, shape (K,)
        Cluster centres, degrees.
    cluster_z : array_like, shape (K,)
        Cluster redshifts (> 0).
    galaxy_ra_deg, galaxy_dec_deg, galaxy_z : array_like, shape (N,)
        Survey galaxies: degrees, degrees, redshift (>= 0).
    cosmology : Cosmology
        Gives ``D_A(z_cl)`` in h^-1 Mpc.
    half_width_mpc_h : float
        Window half-width ``W``, proper h^-1 Mpc.
    v_max_kms : float
        Window half-depth ``V``, km/s.
    min_galaxies : int
        Clusters with fewer window galaxies are skipped (logged, counted, listed).
    galaxy_cluster_id : array_like of int, shape (N,), optional
        If given, a galaxy is paired only with the cluster of this id (for galaxy tables
        pre-extracted per cluster field); otherwise every galaxy is paired with every
        cluster whose window it falls in (the paper's use of the full SDSS sample).
    angle_unit : {"auto", "deg"}
        See :func:`check_sky_positions`.
    cluster_table, galaxy_table : str
        Names (e.g. file paths) used in error messages.
    warn_skipped : bool
        Warn about skipped clusters (else log them at INFO: a caller that selects the
        clusters again, :func:`cmpipe.survey.windows.select_windows`, warns once).

    Returns
    -------
    PhaseSpaceWindows

    Raises
    ------
    SkyInputError
        Duplicated cluster ids, positions not in degrees, Dec outside [-90, 90], redshifts
        NaN or negative (clusters: not positive).
    """
    cid = _checked_cluster_ids(cluster_id, cluster_table)
    if not half_width_mpc_h > 0 or not v_max_kms > 0:
        raise ValueError("sky_to_phase_space: half_width_mpc_h and v_max_kms must be > 0")
    cl_in, gal_in = _checked_sky(cid, cluster_ra_deg, cluster_dec_deg, cluster_z,
                                 galaxy_ra_deg, galaxy_dec_deg, galaxy_z, galaxy_cluster_id,
                                 angle_unit=angle_unit, cluster_table=cluster_table,
                                 galaxy_table=galaxy_table)
    c_ra, c_dec, c_z = cl_in
    g_z = gal_in[2]

    W, V = float(half_width_mpc_h), float(v_max_kms)
    k = cid.size
    d_a = np.asarray(cosmology.angular_diameter_distance_mpc_h(c_z), dtype=float).reshape(k)
    ci, gi, x, y, v, n_cand = _window_pairs(cid, cl_in, gal_in, d_a, W, V)
    n_gal = np.bincount(ci, minlength=k).astype(np.int64)
    kept = n_gal >= int(min_galaxies)
    skipped = [int(c) for c in cid[~kept]]
    sel = kept[ci]
    ci, gi, x, y, v = ci[sel], gi[sel], x[sel], y[sel], v[sel]
    order = np.lexsort((gi, cid[ci]))
    galaxies = dict(cluster_id=cid[ci][order], galaxy_row=gi[order],
                    x_proj_mpc_h=x[order], y_proj_mpc_h=y[order], v_los_kms=v[order])
    clusters = dict(cluster_id=cid, ra_deg=c_ra, dec_deg=c_dec, z=c_z, d_a_mpc_h=d_a,
                    n_gal=n_gal)
    counts = dict(n_clusters=int(k), n_clusters_kept=int(kept.sum()),
                  n_skipped=len(skipped), n_galaxies_in=int(len(g_z)),
                  n_candidate_pairs=int(n_cand), n_window_pairs=int(order.size))
    if skipped:
        say = log.warning if warn_skipped else log.info
        say("%d of %d clusters skipped: fewer than %d galaxies in the window "
            "(|x|,|y| <= %.3g h^-1 Mpc, |v| <= %.0f km/s); first ids: %s",
            len(skipped), k, min_galaxies, W, V, ", ".join(str(s) for s in skipped[:10]))
    log.info("sky -> phase space: %d clusters kept, %d window galaxies (%d candidate pairs)",
             counts["n_clusters_kept"], counts["n_window_pairs"], n_cand)
    return PhaseSpaceWindows(galaxies=galaxies, clusters=clusters, skipped=skipped,
                             counts=counts)
