"""The embedded default survey (``survey.source: synthetic``): an SDSS-like sky survey
drawn from the synthetic box, with the box's own (not flattened) mass function.

The products are the tables a real survey gives -- clusters and galaxies in RA, Dec and
observed redshift, in the schema of :mod:`cmpipe.io.survey` -- so the real ingestion code
(:func:`cmpipe.survey.sky.sky_to_phase_space`) is what runs on them; the true masses go to a
separate truth table.

Geometry
--------
Observer
    At a uniformly random comoving position ``o`` in the periodic box (``seed``), at rest
    (no observer peculiar velocity; redshifts are in the frame of the box).
Sky frame
    The box axes are the equatorial Cartesian axes: +x points to (RA, Dec) = (0, 0),
    +y to (90, 0), +z to Dec = +90 deg. RA = atan2(y, x) in [0, 360), Dec = asin(z / r).
Footprint
    A spherical cap of solid angle ``Omega = area_deg2 (pi / 180)^2`` sr around the pole
    (``pole_ra_deg``, ``pole_dec_deg``; default (185, 32), near the centre of the SDSS
    Legacy northern cap): directions with ``n . p >= cos(theta_cap)``,
    ``cos(theta_cap) = 1 - Omega / (2 pi)`` (8,250 deg^2 -> theta_cap = 53.1 deg).
Volume
    Cluster centres within comoving distance ``R`` (``radius_mpc_h``) in the cap:
    ``V = Omega R^3 / 3 = (Omega / 4 pi) (4/3) pi R^3`` (h^-1 Mpc)^3. Clusters are selected on
    the real-space distance of their halo centre, so V is exact (a redshift-space
    selection would move clusters across the edge by their peculiar velocities).
Periodic replicas
    Every object is placed at all images ``x + n L`` (n in Z^3) that fall within the
    depth; when ``L >= 2 R_gal`` (``R_gal = R + galaxy_margin_mpc_h``) each object is seen at
    most once, otherwise the box is tiled around the observer and **replicas repeat the
    same structures** at several sky positions (the same halo may be several clusters; the
    truth table's ``halo_id`` and ``replica`` tell them apart). Satellites are first
    unwrapped to the minimum image around their host halo, so a cluster's galaxies are
    never split across replicas.
Cluster centre and redshift
    As the mock is centred: the position and observed redshift of the halo's central
    galaxy (the halo centre and velocity if it has none), whether or not that galaxy
    passes the flux limit -- a cluster finder's density-peak centre, not a galaxy pick.
Redshifts
    ``z_cos`` from the comoving distance, and ``1 + z_obs = (1 + z_cos)(1 + v_pec,los / c)``
    with ``v_pec,los`` the peculiar velocity along the line of sight.
Flux limit
    Apparent r < ``mag_r_limit`` from :func:`cmpipe.mock.fluxlimit.apparent_magnitudes` at
    the galaxy's real-space comoving distance (as the mock). Galaxies are kept within
    ``R_gal`` (the margin covers the background of the most distant windows: +-2200 km/s
    of Hubble flow and peculiar motions) and inside the footprint (windows at the edge are
    truncated, as in the real survey).
Catalogue columns
    ``n_mem``: the cluster's own galaxies above the flux limit (a perfect member finder);
    ``log10_m_cat``/``log10_m_cat_err``: NaN (no catalogue mass; truth is separate).
"""
from __future__ import annotations

import itertools
import logging
from typing import NamedTuple

import numpy as np

from ..cosmology import C_KMS, Cosmology, apparent_magnitudes
from ..io.survey import SURVEY_CLUSTER_SCHEMA, SURVEY_GALAXY_SCHEMA, SURVEY_TRUTH_SCHEMA
from .sky import radec_to_unit

__all__ = [
    "FULL_SKY_DEG2",
    "SyntheticSurvey",
    "cap_cos_half_angle",
    "survey_volume_mpc_h3",
    "in_footprint",
    "make_synthetic_survey",
    "Z_MIN_OBS",
    "synthetic_survey_record",
]

log = logging.getLogger(__name__)

#: Area of the whole sky, deg^2 (4 pi sr).
FULL_SKY_DEG2 = 4.0 * np.pi * (180.0 / np.pi) ** 2

_POS = ("x_mpc_h", "y_mpc_h", "z_mpc_h")
_VEL = ("vx_kms", "vy_kms", "vz_kms")


class SyntheticSurvey(NamedTuple):
    """Products of :func:`make_synthetic_survey`.

    Attributes
    ----------
    clusters : dict of ndarray
        :data:`~cmpipe.io.survey.SURVEY_CLUSTER_SCHEMA` rows, ``cluster_id = 0..K-1`` by
        increasing distance.
    galaxies : dict of ndarray
        :data:`~cmpipe.io.survey.SURVEY_GALAXY_SCHEMA` rows (``mag_r`` apparent).
    truth : dict of ndarray
        :data:`~cmpipe.io.survey.SURVEY_TRUTH_SCHEMA` rows, aligned with ``clusters``.
    volume_mpc_h3 : float
        Survey volume for the clusters, (h^-1 Mpc)^3 comoving.
    meta : dict
        Observer, footprint, depth, replicas, thresholds, seed.
    """

    clusters: dict
    galaxies: dict
    truth: dict
    volume_mpc_h3: float
    meta: dict


def _check_area(area_deg2):
    if not 0.0 < area_deg2 <= FULL_SKY_DEG2 * (1 + 1e-12):
        raise ValueError(f"survey area_deg2 = {area_deg2!r}: must be in (0, "
                         f"{FULL_SKY_DEG2:.1f}] deg^2. Fix: give the footprint area in deg^2")


def cap_cos_half_angle(area_deg2: float) -> float:
    """Cosine of the half-angle of a spherical cap of ``area_deg2`` deg^2."""
    _check_area(area_deg2)
    omega = area_deg2 * (np.pi / 180.0) ** 2
    return max(1.0 - omega / (2.0 * np.pi), -1.0)


def survey_volume_mpc_h3(radius_mpc_h: float, area_deg2: float) -> float:
    """Comoving volume of a cap of ``area_deg2`` deg^2 out to ``radius_mpc_h`` h^-1 Mpc,
    ``Omega R^3 / 3`` in (h^-1 Mpc)^3."""
    _check_area(area_deg2)
    omega = area_deg2 * (np.pi / 180.0) ** 2
    return float(omega * radius_mpc_h ** 3 / 3.0)


def in_footprint(ra_deg, dec_deg, *, area_deg2: float, pole_ra_deg: float,
                 pole_dec_deg: float) -> np.ndarray:
    """True for directions (degrees) inside the cap footprint of ``area_deg2`` deg^2."""
    p = radec_to_unit(pole_ra_deg, pole_dec_deg)
    return radec_to_unit(ra_deg, dec_deg) @ p >= cap_cos_half_angle(area_deg2)


def _lookup(keys, values) -> np.ndarray:
    """Row of each of ``values`` in the unique integer array ``keys``; -1 if absent."""
    keys = np.asarray(keys, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if keys.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], values), keys.size - 1)
    return np.where(keys[order][pos] == values, order[pos], -1).astype(np.int64)


def _shifts(pos_min, pos_max, observer, depth, box):
    """Integer image shifts n (k, 3) whose images x + n L can lie within ``depth``."""
    lo = np.floor((observer - depth - pos_max) / box).astype(int)
    hi = np.ceil((observer + depth - pos_min) / box).astype(int)
    return np.array(list(itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi)))),
                    dtype=np.int64)


def _images(pos, shifts, observer, box, depth, pole, cos_cap):
    """All images within ``depth`` of the observer and inside the cap.

    Returns object index, shift index, offset vectors (k, 3) and distances (k,).
    """
    idx, sh, rr = [], [], []
    for s, n in enumerate(shifts):
        r = pos + (n * box - observer)[None, :]
        d2 = np.einsum("ij,ij->i", r, r)
        ok = (d2 <= depth * depth) & (d2 > 0.0)
        if not ok.any():
            continue
        k = np.flatnonzero(ok)
        rk = r[k]
        dk = np.sqrt(d2[k])
        inside = (rk @ pole) >= cos_cap * dk
        idx.append(k[inside])
        sh.append(np.full(int(inside.sum()), s, dtype=np.int64))
        rr.append(rk[inside])
    if not idx:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)),
                np.zeros(0))
    r = np.concatenate(rr)
    return np.concatenate(idx), np.concatenate(sh), r, np.linalg.norm(r, axis=1)


def _sky(r, d, vel, z_cos):
    """RA, Dec (deg) and z_obs of offsets ``r`` (k, 3) at distances ``d`` with
    cosmological redshifts ``z_cos`` and peculiar velocities ``vel`` (k, 3) km/s."""
    ra = np.mod(np.degrees(np.arctan2(r[:, 1], r[:, 0])), 360.0)
    dec = np.degrees(np.arcsin(np.clip(r[:, 2] / d, -1.0, 1.0)))
    v_los = np.einsum("ij,ij->i", vel, r) / d
    z_obs = (1.0 + z_cos) * (1.0 + v_los / C_KMS) - 1.0
    return ra, dec, z_obs


#: Smallest observed redshift a survey galaxy may have (stars / blueshifted objects are cut).
Z_MIN_OBS = 0.001


class _Box(NamedTuple):
    """Halo and galaxy arrays of the box, each galaxy unwrapped to the minimum image
    around its host halo (positions comoving h^-1 Mpc, velocities km/s)."""

    h_id: np.ndarray
    h_pos: np.ndarray
    h_vel: np.ndarray
    h_logm: np.ndarray
    g_pos: np.ndarray
    g_vel: np.ndarray
    g_mag: np.ndarray
    g_hrow: np.ndarray
    cen_of: np.ndarray


def _box_size(box_attrs: dict, radius_mpc_h: float, galaxy_margin_mpc_h: float) -> float:
    """The box side [comoving h^-1 Mpc], after checking the survey's depth and margin."""
    for k in ("box_size_mpc_h",):
        if k not in box_attrs:
            raise KeyError(f"box_attrs lacks '{k}'; pass the attrs returned by read_halos")
    if not radius_mpc_h > 0 or not galaxy_margin_mpc_h >= 0:
        raise ValueError("radius_mpc_h must be > 0 and galaxy_margin_mpc_h >= 0 (h^-1 Mpc)")
    return float(box_attrs["box_size_mpc_h"])


def _box_arrays(halos: dict, galaxies: dict, box: float) -> _Box:
    """The box's arrays: satellites unwrapped around their host (so members share a
    replica) and the row of each host's central galaxy (-1 if none)."""
    h_id = np.asarray(halos["halo_id"], dtype=np.int64)
    h_pos = np.column_stack([np.asarray(halos[k], float) for k in _POS])
    h_vel = np.column_stack([np.asarray(halos[k], float) for k in _VEL])
    h_logm = np.asarray(halos["log10_m200c"], float)

    g_pos = np.column_stack([np.asarray(galaxies[k], float) for k in _POS])
    g_vel = np.column_stack([np.asarray(galaxies[k], float) for k in _VEL])
    g_halo = np.asarray(galaxies["halo_id"], dtype=np.int64)
    g_mag = np.asarray(galaxies["mag_r"], float)
    g_hrow = _lookup(h_id, g_halo)
    # unwrap every galaxy to the minimum image around its host, so members share a replica
    has = g_hrow >= 0
    dpos = g_pos[has] - h_pos[g_hrow[has]]
    dpos -= box * np.round(dpos / box)
    g_pos = g_pos.copy()
    g_pos[has] = h_pos[g_hrow[has]] + dpos

    # central galaxy of each host (the cluster centre)
    cen = np.flatnonzero(np.asarray(galaxies["is_central"]).astype(bool) & has)
    cen_of = np.full(h_id.size, -1, dtype=np.int64)
    cen_of[g_hrow[cen]] = cen
    return _Box(h_id, h_pos, h_vel, h_logm, g_pos, g_vel, g_mag, g_hrow, cen_of)


def _with_infall(b: _Box, host, r200c_mpc_h, frac: float, x_out: float, redshift: float,
                 survey_rng) -> _Box:
    """``b`` with the survey universe's infall galaxies (as the mock's ``infall_fraction``
    nuisance, :func:`cmpipe.mock.nuisance.infall_shell`): Poisson(``frac`` x satellites)
    members of each ``host`` halo between R200c and ``x_out`` R200c (comoving offsets
    ``(1 + z)`` times the proper ones), moving with the halo plus their peculiar velocity,
    each with the magnitude of a random satellite of its halo. Their random stream is
    seeded from ``survey_rng``, which is not drawn from when ``frac`` is 0 (``b`` as is)."""
    from ..mock.nuisance import infall_shell, poisson_sources
    from ..mock.projection import v200c_kms

    if not frac > 0.0:
        return b
    rng = np.random.default_rng([int(survey_rng.integers(2**63)), 28])
    is_sat = b.g_hrow >= 0
    is_sat[b.cen_of[b.cen_of >= 0]] = False
    rate = np.zeros(b.h_id.size)
    rate[host] = frac
    drawn = poisson_sources(np.flatnonzero(is_sat), b.g_hrow, rate, rng)
    if drawn is None:
        return b
    which, src = drawn
    r200 = np.asarray(r200c_mpc_h, dtype=float)[which]
    offset, pec = infall_shell(r200, v200c_kms(b.h_logm[which], r200), x_out, rng)
    return _Box(b.h_id, b.h_pos, b.h_vel, b.h_logm,
                np.vstack([b.g_pos, b.h_pos[which] + (1.0 + redshift) * offset]),
                np.vstack([b.g_vel, b.h_vel[which] + pec]),
                np.concatenate([b.g_mag, b.g_mag[src]]),
                np.concatenate([b.g_hrow, which]), b.cen_of)


def _cluster_images(b: _Box, host, shifts, observer, box, radius_mpc_h, pole, cos_cap):
    """Images of the ``host`` halos within ``radius_mpc_h`` in the cap, ordered by
    distance: halo row, shift index, halo-centre distance, and the cluster centre's offset
    from the observer and velocity (its central galaxy's, the halo's if it has none)."""
    hi, hs, hr, hd = _images(b.h_pos[host], shifts, observer, box, radius_mpc_h, pole, cos_cap)
    hi = host[hi]
    order = np.lexsort((hs, hi, hd))
    hi, hs, hr, hd = hi[order], hs[order], hr[order], hd[order]
    c_pos = hr.copy()
    c_vel = b.h_vel[hi].copy()
    ci = b.cen_of[hi]
    withc = ci >= 0
    c_pos[withc] = b.g_pos[ci[withc]] + (shifts[hs[withc]] * box - observer)
    c_vel[withc] = b.g_vel[ci[withc]]
    return hi, hs, hd, c_pos, c_vel


def _galaxy_images(b: _Box, shifts, observer, box, r_gal, pole, cos_cap, cosmology,
                   mag_r_limit, mag_shift_mag=0.0):
    """Galaxy images within ``r_gal`` in the cap and brighter than ``mag_r_limit`` (absolute
    magnitudes shifted by ``mag_shift_mag``): galaxy row, shift index, offset, distance and
    apparent r magnitude."""
    gi, gs, gr, gd = _images(b.g_pos, shifts, observer, box, r_gal, pole, cos_cap)
    m_app = (apparent_magnitudes(b.g_mag[gi] + mag_shift_mag, gd, cosmology) if gi.size
             else np.zeros(0))
    bright = m_app < mag_r_limit
    return gi[bright], gs[bright], gr[bright], gd[bright], m_app[bright]


def _members(b: _Box, hi, hs, gi, gs, n_sh):
    """Cluster of each galaxy image (-1: none) and each cluster's member count: a galaxy
    belongs to cluster c if its host halo is c's halo seen in the same replica."""
    n_cl = hi.size
    cluster_id = np.arange(n_cl, dtype=np.int64)
    c_key = hi * n_sh + hs
    g_key = np.where(b.g_hrow[gi] >= 0, b.g_hrow[gi] * n_sh + gs, -1)
    hit = _lookup(c_key, g_key)
    g_cl = np.where(hit >= 0, cluster_id[np.maximum(hit, 0)], -1).astype(np.int64)
    n_mem = np.bincount(g_cl[g_cl >= 0], minlength=n_cl).astype(np.int64)
    return g_cl, n_mem


def spectroscopic_targets(ra_deg, dec_deg, *, completeness: float,
                          fibre_collision_loss: float, fibre_arcsec: float,
                          rng: np.random.Generator) -> np.ndarray:
    """Which flux-limited galaxies of a survey get a redshift: fibre collisions on the sky
    (:func:`cmpipe.mock.nuisance.collided_targets`: in a random order, a target within
    ``fibre_arcsec`` of an earlier one that got a fibre is collided; each collided target
    is then lost with probability ``fibre_collision_loss``), then the random completeness
    (each remaining target kept with probability ``completeness``), in the order and with
    the rules of the mock's :func:`cmpipe.mock.nuisance.spectroscopic_selection`.

    Returns
    -------
    ndarray of bool
        True for a galaxy with a redshift.
    """
    from ..mock.nuisance import collided_targets

    n = np.asarray(ra_deg).size
    keep = np.ones(n, dtype=bool)
    if fibre_collision_loss > 0.0 and n > 1:
        u = radec_to_unit(ra_deg, dec_deg)
        chord = 2.0 * np.sin(0.5 * np.radians(fibre_arcsec / 3600.0))
        hit = collided_targets(u, chord, rng)
        keep &= ~(hit & (rng.random(n) < fibre_collision_loss))
    if completeness < 1.0:
        keep &= rng.random(n) < completeness
    return keep


def _with_redshift(g_ra, g_dec, g_order, g_cl, n_cl, rng, **selection):
    """The galaxies of ``g_order`` that get a redshift (:func:`spectroscopic_targets`) and
    each cluster's members among them."""
    got_z = spectroscopic_targets(g_ra[g_order], g_dec[g_order], rng=rng, **selection)
    g_order = g_order[got_z]
    lab = g_cl[g_order]
    return g_order, np.bincount(lab[lab >= 0], minlength=n_cl).astype(np.int64)


def _meta(box_attrs, cosmology, observer, box, r_gal, cos_cap, tiled, n_flux, shifts,
          n_repeat, seed, numbers) -> dict:
    """The record of a synthetic survey (``numbers``: its settings, stored as floats)."""
    return dict(observer_mpc_h=observer.tolist(), box_size_mpc_h=box,
                box_redshift=float(box_attrs.get("redshift", np.nan)),
                galaxy_radius_mpc_h=float(r_gal),
                cap_half_angle_deg=float(np.degrees(np.arccos(cos_cap))),
                **{k: float(v) for k, v in numbers.items()}, tiled=bool(tiled),
                n_galaxies_flux_limited=int(n_flux), replica_shifts=shifts.tolist(),
                n_repeated_clusters=int(n_repeat), seed=str(seed), cosmology=cosmology.name)


def _receding(g_ra, g_dec, g_zobs):
    """Rows of the galaxies a redshift survey keeps (z_obs > :data:`Z_MIN_OBS`), sorted by
    RA then Dec: galaxies right around the observer can be blueshifted by their peculiar
    velocities."""
    recede = g_zobs > Z_MIN_OBS
    if not recede.all():
        log.info("dropped %d galaxies with z_obs <= %g (next to the observer)",
                 int((~recede).sum()), Z_MIN_OBS)
    return np.flatnonzero(recede)[np.lexsort((g_dec[recede], g_ra[recede]))]


def _as_schema(table: dict, schema) -> dict:
    return {k: np.ascontiguousarray(table[k], dtype=v[0]) for k, v in schema.items()}


def _log_survey(meta: dict, n_cl: int, n_gal: int) -> None:
    m = meta
    if m["tiled"]:
        log.warning("box of %.0f h^-1 Mpc < 2 x %.0f h^-1 Mpc depth: tiled with %d periodic "
                    "replicas; %d clusters repeat a halo already seen", m["box_size_mpc_h"],
                    m["galaxy_radius_mpc_h"], len(m["replica_shifts"]),
                    m["n_repeated_clusters"])
    log.info("synthetic survey: observer at (%.1f, %.1f, %.1f) h^-1 Mpc, %.0f deg^2 cap, "
             "R = %.0f h^-1 Mpc (V = %.4g (h^-1 Mpc)^3): %d clusters >= 10^%.2f, %d galaxies "
             "r < %.2f", *m["observer_mpc_h"], m["area_deg2"], m["radius_mpc_h"],
             m["volume_mpc_h3"], n_cl, m["log10_m_min"], n_gal, m["mag_r_limit"])


#: The settings of :func:`make_synthetic_survey` its record keeps (``meta``).
_RECORDED = ("radius_mpc_h", "area_deg2", "pole_ra_deg", "pole_dec_deg", "log10_m_min",
             "mag_r_limit", "mag_shift_mag", "completeness", "fibre_collision_loss",
             "fibre_arcsec", "infall_fraction", "infall_radius_r200c")


def make_synthetic_survey(halos: dict, galaxies: dict, box_attrs: dict,
                          cosmology: Cosmology, *, radius_mpc_h: float = 250.0,
                          area_deg2: float = 8250.0, log10_m_min: float = 13.7,
                          mag_r_limit: float = 18.0, pole_ra_deg: float = 185.0,
                          pole_dec_deg: float = 32.0, galaxy_margin_mpc_h: float = 50.0,
                          mag_shift_mag: float = 0.0, completeness: float = 1.0,
                          fibre_collision_loss: float = 0.0, fibre_arcsec: float = 55.0,
                          infall_fraction: float = 0.0, infall_radius_r200c: float = 2.0,
                          seed=0) -> SyntheticSurvey:
    """Observe the synthetic box as an SDSS-like survey (module docstring for the geometry).

    Parameters
    ----------
    halos, galaxies : dict of ndarray
        :data:`~cmpipe.io.catalogues.HALO_SCHEMA` and ``GALAXY_SCHEMA`` tables (absolute
        ``mag_r``); hosts (``upid == -1``) from ``log10_m_min`` become clusters.
    box_attrs : dict
        ``box_size_mpc_h`` (comoving h^-1 Mpc); ``redshift`` is recorded.
    cosmology : Cosmology
    radius_mpc_h : float
        Comoving depth of the cluster sample, h^-1 Mpc.
    area_deg2 : float
        Footprint area, deg^2 (a spherical cap).
    log10_m_min : float
        Cluster mass threshold, log10(M200c / h^-1 Msun).
    mag_r_limit : float
        Galaxies with apparent r below this are kept.
    pole_ra_deg, pole_dec_deg : float
        Centre of the footprint cap, degrees.
    galaxy_margin_mpc_h : float
        Galaxies are kept out to ``radius_mpc_h + galaxy_margin_mpc_h`` (comoving).
    mag_shift_mag, completeness, fibre_collision_loss, fibre_arcsec : float
        The survey's nuisances (:mod:`cmpipe.mock.nuisance`): magnitudes shifted before the
        flux limit, then :func:`spectroscopic_targets`. 0, 1, 0: every galaxy kept.
    infall_fraction, infall_radius_r200c : float
        The survey universe's galaxies beyond R200c (as ``nuisance.infall_fraction``;
        :func:`_with_infall`). 0: the box as simulated.
    seed : int or numpy.random.SeedSequence
        Fixes the observer position (and, through it, the selection's random draws).

    Returns
    -------
    SyntheticSurvey : ``(clusters, galaxies, truth, volume_mpc_h3, meta)``.
    """
    settings = dict(locals())
    box = _box_size(box_attrs, radius_mpc_h, galaxy_margin_mpc_h)
    cos_cap = cap_cos_half_angle(area_deg2)
    pole = radec_to_unit(pole_ra_deg, pole_dec_deg)
    rng = np.random.default_rng(seed)
    observer = rng.random(3) * box
    r_gal = radius_mpc_h + galaxy_margin_mpc_h
    volume = survey_volume_mpc_h3(radius_mpc_h, area_deg2)
    b = _box_arrays(halos, galaxies, box)
    host = np.flatnonzero((np.asarray(halos["upid"]) == -1) & (b.h_logm >= log10_m_min))
    b = _with_infall(b, host, halos["r200c_mpc_h"], float(infall_fraction),
                     float(infall_radius_r200c), float(box_attrs.get("redshift", 0.0)), rng)
    allpos = np.vstack([b.h_pos, b.g_pos]) if len(b.g_pos) else b.h_pos
    shifts = _shifts(allpos.min(axis=0), allpos.max(axis=0), observer, r_gal, box)
    tiled = box < 2.0 * r_gal

    hi, hs, hd, c_pos, c_vel = _cluster_images(b, host, shifts, observer, box, radius_mpc_h,
                                               pole, cos_cap)
    c_dist = np.linalg.norm(c_pos, axis=1)
    n_cl = hi.size
    # galaxies: within R + margin, inside the cap, brighter than the flux limit
    gi, gs, gr, gd, m_app = _galaxy_images(b, shifts, observer, box, r_gal, pole, cos_cap,
                                           cosmology, mag_r_limit, mag_shift_mag)
    # one distance -> redshift inversion for everything (each call tabulates afresh)
    z_all = np.atleast_1d(cosmology.z_at_comoving_distance(np.concatenate([c_dist, hd, gd])))
    c_zcos, h_zcos, g_zcos = np.split(z_all, [n_cl, 2 * n_cl])
    c_ra, c_dec, c_zobs = _sky(c_pos, c_dist, c_vel, c_zcos)
    g_ra, g_dec, g_zobs = _sky(gr, gd, b.g_vel[gi], g_zcos)
    g_cl, n_mem_true = _members(b, hi, hs, gi, gs, len(shifts))
    g_order = _receding(g_ra, g_dec, g_zobs)
    n_flux = g_order.size
    # the spectroscopic selection, from its own stream after the observer's draw
    g_order, n_mem = _with_redshift(g_ra, g_dec, g_order, g_cl, n_cl,
                                    np.random.default_rng(rng.integers(2**63)),
                                    completeness=completeness,
                                    fibre_collision_loss=fibre_collision_loss,
                                    fibre_arcsec=fibre_arcsec)
    n_gal = g_order.size

    cluster_id = np.arange(n_cl, dtype=np.int64)
    clusters = dict(cluster_id=cluster_id, ra_deg=c_ra, dec_deg=c_dec, z=c_zobs,
                    log10_m_cat=np.full(n_cl, np.nan), log10_m_cat_err=np.full(n_cl, np.nan),
                    n_mem=n_mem)
    gals = dict(galaxy_id=np.arange(n_gal, dtype=np.int64), ra_deg=g_ra[g_order],
                dec_deg=g_dec[g_order], z=g_zobs[g_order], cluster_id=g_cl[g_order],
                mag_r=m_app[g_order])
    truth = dict(cluster_id=cluster_id, halo_id=b.h_id[hi], replica=hs, log10_m200c=b.h_logm[hi],
                 r200c_mpc_h=np.asarray(halos["r200c_mpc_h"], float)[hi],
                 comoving_distance_mpc_h=hd, z_cos=h_zcos, z_obs=c_zobs, n_mem_true=n_mem_true)
    meta = _meta(box_attrs, cosmology, observer, box, r_gal, cos_cap, tiled, n_flux, shifts,
                 n_cl - np.unique(hi).size, seed,
                 dict(volume_mpc_h3=volume, **{k: settings[k] for k in _RECORDED}))
    _log_survey(meta, n_cl, n_gal)
    return SyntheticSurvey(_as_schema(clusters, SURVEY_CLUSTER_SCHEMA),
                           _as_schema(gals, SURVEY_GALAXY_SCHEMA),
                           _as_schema(truth, SURVEY_TRUTH_SCHEMA), volume, meta)


def synthetic_survey_record(survey: SyntheticSurvey, box_attrs: dict, seed: int,
                            cosmology: Cosmology) -> dict:
    """The record (``survey/meta.json``) of a synthetic survey.

    Parameters
    ----------
    survey : SyntheticSurvey
        What :func:`make_synthetic_survey` returned.
    box_attrs : dict
        The box's table attributes; ``redshift`` is the snapshot redshift of the theory.
    seed : int
        The survey stage seed (fixes the observer).
    cosmology : Cosmology

    Returns
    -------
    dict
        ``survey.meta`` (less the replica shifts, counted in ``n_replicas``) with
        ``source``, ``has_truth``, ``volume_mpc_h3`` [(h^-1 Mpc)^3], ``theory`` (Tinker
        2008 at the box redshift) and ``z_range`` (None: no redshift cut).
    """
    m = dict(survey.meta)
    shifts = m.pop("replica_shifts", [])
    m["volume_mpc_h3"] = survey.volume_mpc_h3
    meta = dict(source="synthetic", has_truth=True, **m, n_replicas=len(shifts),
                theory=dict(kind="snapshot", z=float(box_attrs["redshift"]),
                            note="the synthetic box is one snapshot: its halos follow "
                                 "Tinker (2008) at the box redshift at every distance"),
                z_range=None)
    meta["seed"] = int(seed)
    meta["cosmology"] = cosmology.name
    return meta
