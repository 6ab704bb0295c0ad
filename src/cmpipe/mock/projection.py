"""Projection of the box along each sightline: the phase-space window of every cluster.

For a cluster (host halo) with central galaxy at comoving position c and velocity v_c,
and a unit line of sight n completed by sky axes (e1, e2), every galaxy of the box at
minimum-image comoving offset d and velocity v is seen at

    x_proj = a d.e1,   y_proj = a d.e2                       (proper h^-1 Mpc)
    v_los  = (v - v_c).n + H(z) a d.n                         (km/s, Hubble flow included)

with a = 1/(1+z) and H(z) = 100 E(z) km/s per proper h^-1 Mpc. Galaxies with
|x_proj|, |y_proj| <= W and |v_los| <= V form the window: members of the halo and the
interlopers around it. Halos are processed in batches, so memory does not grow with the
catalogue beyond the galaxy table and its KD-tree.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

from .sightlines import basis_for

__all__ = ["G_KMS2_MPC_MSUN", "Projector", "v200c_kms", "phase_space_distance",
           "project_batches"]

log = logging.getLogger(__name__)

#: Gravitational constant in (km/s)^2 Mpc / Msun (the h's cancel in G M / R).
G_KMS2_MPC_MSUN = 4.30091727e-9


def v200c_kms(log10_m200c, r200c_mpc_h):
    """Circular velocity at R200c, sqrt(G M200c / R200c), km/s (proper R200c)."""
    return np.sqrt(G_KMS2_MPC_MSUN * 10.0 ** np.asarray(log10_m200c)
                   / np.asarray(r200c_mpc_h))


def phase_space_distance(dx, dy, dv, r200c_1, r200c_2, v200c_1, v200c_2):
    """Paper eq. (6): offsets scaled by the mean R200c and mean v200c of the pair.

    Parameters
    ----------
    dx, dy : array_like
        Projected offsets between the two clusters, proper h^-1 Mpc.
    dv : array_like
        Line-of-sight velocity offset, km/s.
    r200c_1, r200c_2 : array_like
        R200c of each, proper h^-1 Mpc.
    v200c_1, v200c_2 : array_like
        v200c of each, km/s.
    """
    r_av = 0.5 * (np.asarray(r200c_1) + r200c_2)
    v_av = 0.5 * (np.asarray(v200c_1) + v200c_2)
    return np.sqrt((dx / r_av) ** 2 + (dy / r_av) ** 2 + (dv / v_av) ** 2)


def _dot(a, u):
    """Row-wise a . u for (m, 3) ``a``, summed in a fixed order (unlike a BLAS matrix
    product, whose rounding depends on the thread count: Snakemake jobs and interactive
    runs must give bit-identical catalogues)."""
    return a[:, 0] * u[0] + a[:, 1] * u[1] + a[:, 2] * u[2]


class _TubeIndex:
    """Finds the points of a periodic box that can fall inside a window along a sightline.

    A window is a thin tube around the line of sight: perpendicular radius at most
    ``r_perp`` (comoving) and line-of-sight extent set by the velocity cut. A point at
    line-of-sight offset ``d`` can only be seen at ``|v_los| <= V`` if
    ``a H |d| <= V + |v| + |v_c|`` (speeds bound every projection of a velocity). Points are
    kept in two KD-trees by speed: the bulk (``|v| <= v_split``) is searched with balls
    strung along the line (radius ``sqrt(r_perp^2 + (s/2)^2)`` every ``s``, which covers
    the tube exactly), the rare fast points with one ball of the larger radius they need.
    The exact window cut is applied afterwards, so this only bounds the work: about three
    times the tube volume instead of a sphere of the full depth.
    """

    def __init__(self, pos, vel, box, a_h, r_perp, v_max, v_split=1500.0):
        self.L = box
        self.a_h = a_h
        self.r_perp = r_perp
        self.V = v_max
        speed = np.linalg.norm(vel, axis=1) if len(vel) else np.zeros(0)
        slow = speed <= v_split
        self.slow_idx = np.flatnonzero(slow)
        self.fast_idx = np.flatnonzero(~slow)
        self.v_slow = float(min(v_split, speed.max(initial=0.0)))
        self.v_fast = float(speed.max(initial=0.0))
        self.slow_tree = cKDTree(pos[slow], boxsize=box)
        self.fast_tree = cKDTree(pos[~slow], boxsize=box) if (~slow).any() else None
        self.step = max(2.0 * r_perp, 1e-3)
        self.r_ball = float(np.hypot(r_perp, 0.5 * self.step))

    def depth(self, v_max_point, speed_c):
        """Comoving line-of-sight half-depth needed, capped at the largest line-of-sight
        offset a minimum-image vector can have, (sqrt(3)/2) L."""
        return min((self.V + v_max_point + speed_c) / self.a_h, 0.5 * np.sqrt(3.0) * self.L)

    def candidates(self, c, n, speed_c):
        """Indices of points possibly inside the window of centre ``c`` along unit ``n``."""
        d1 = self.depth(self.v_slow, speed_c)
        t = np.arange(-d1, d1 + self.step, self.step)
        pts = np.mod(c[None, :] + t[:, None] * n[None, :], self.L)
        found = self.slow_tree.query_ball_point(pts, self.r_ball, return_sorted=False)
        parts = [self.slow_idx[np.unique(np.concatenate(
            [np.asarray(f, dtype=np.int64) for f in found]))]]
        if self.fast_tree is not None:
            d2 = self.depth(self.v_fast, speed_c)
            f = self.fast_tree.query_ball_point(np.mod(c, self.L), float(np.hypot(
                self.r_perp, d2)))
            parts.append(self.fast_idx[np.asarray(f, dtype=np.int64)])
        return np.concatenate(parts)


class Projector:
    """Projects a periodic box of galaxies and host halos along sightlines.

    Parameters
    ----------
    halos : dict of ndarray
        Halo table (HALO_SCHEMA); only host halos (``upid == -1``) are used, as interloper
        clusters.
    galaxies : dict of ndarray
        Galaxy table (GALAXY_SCHEMA).
    box_size_mpc_h : float
        Comoving box side, h^-1 Mpc.
    redshift : float
        Snapshot redshift.
    hubble_kms_per_mpc_h : float
        H(z) in km/s per proper h^-1 Mpc.
    half_width_mpc_h, v_max_kms : float
        The window.
    interloper_log10_m_min : float, optional
        Only host halos at least this massive (log10 h^-1 Msun) are searched as interloper
        clusters. Set it an order of magnitude below the cluster selection: mass ratios
        down to ~0.1 stay exact (the paper's diagnostic needs ratios > 1), and the search
        tree no longer holds the millions of small halos of a large box.
    ghost_halo_ids : array_like, optional
        Halos that only their own windows see (the training tail, :mod:`cmpipe.mock.tail`):
        their galaxies enter no other halo's window and they are never another window's
        interloper halo, so the box's clusters are projected as without them.
    """

    def __init__(self, halos, galaxies, *, box_size_mpc_h, redshift, hubble_kms_per_mpc_h,
                 half_width_mpc_h=1.6, v_max_kms=2200.0, interloper_log10_m_min=None,
                 ghost_halo_ids=None):
        self.L = float(box_size_mpc_h)
        self.a = 1.0 / (1.0 + redshift)
        self.a_h = self.a * hubble_kms_per_mpc_h  # km/s per comoving h^-1 Mpc
        self.W = float(half_width_mpc_h)
        self.V = float(v_max_kms)

        self.g_pos = np.column_stack([galaxies[k] for k in ("x_mpc_h", "y_mpc_h", "z_mpc_h")])
        self.g_vel = np.column_stack([galaxies[k] for k in ("vx_kms", "vy_kms", "vz_kms")])
        self.g_id = np.asarray(galaxies["galaxy_id"])
        self.g_halo = np.asarray(galaxies["halo_id"])
        self.g_mag = np.asarray(galaxies["mag_r"])
        ghosts = np.asarray([] if ghost_halo_ids is None else ghost_halo_ids, dtype=np.int64)
        self.g_ghost = np.isin(self.g_halo, ghosts)

        host = np.asarray(halos["upid"]) == -1
        if interloper_log10_m_min is not None:
            host &= np.asarray(halos["log10_m200c"]) >= interloper_log10_m_min
        self.h_id = np.asarray(halos["halo_id"])[host]
        self.h_pos = np.column_stack([halos[k][host] for k in ("x_mpc_h", "y_mpc_h",
                                                                "z_mpc_h")])
        self.h_vel = np.column_stack([halos[k][host] for k in ("vx_kms", "vy_kms", "vz_kms")])
        self.h_logm = np.asarray(halos["log10_m200c"])[host]
        self.h_r200 = np.asarray(halos["r200c_mpc_h"])[host]
        self._h_index = {int(h): i for i, h in enumerate(self.h_id)}
        self.h_ghost = np.isin(self.h_id, ghosts)

        # central galaxy of each host: phase-space origin of its projections
        cen = np.flatnonzero(np.asarray(galaxies["is_central"]).astype(bool))
        self._central = {int(self.g_halo[i]): i for i in cen}

        r_perp = np.sqrt(2.0) * self.W / self.a  # comoving radius enclosing the sky window
        self.g_index = _TubeIndex(self.g_pos, self.g_vel, self.L, self.a_h, r_perp, self.V)
        self.h_index = _TubeIndex(self.h_pos, self.h_vel, self.L, self.a_h, r_perp, self.V)
        half = 0.5 * self.L
        if self.a_h * half < self.V + 1000.0:
            log.warning("box of %.0f h^-1 Mpc holds only +-%.0f km/s of Hubble flow around "
                        "a cluster; windows of +-%.0f km/s are then truncated by the "
                        "periodic box", self.L, self.a_h * half, self.V)
        self.los_depth = self.g_index.depth(self.g_index.v_slow, 0.0)

    def centre_of(self, halo_id):
        """Comoving position and velocity of a halo's central galaxy (halo centre if it
        has none)."""
        gi = self._central.get(int(halo_id))
        if gi is not None:
            return self.g_pos[gi], self.g_vel[gi]
        hi = self._h_index[int(halo_id)]
        return self.h_pos[hi], self.h_vel[hi]

    def _window(self, pos, vel, idx, c, vc, e1, e2, n):
        """Projected coordinates of points ``idx`` (x, y, v_los, line-of-sight offset)."""
        d = pos[idx] - c
        d -= self.L * np.round(d / self.L)
        x = self.a * _dot(d, e1)
        y = self.a * _dot(d, e2)
        par = _dot(d, n)
        v = _dot(vel[idx] - vc, n) + self.a_h * par
        return x, y, v, par

    def project_halo(self, halo_id, directions):
        """Windows of one halo along each of ``directions`` (k, 3).

        Returns
        -------
        list of dict
            Per sightline: the window galaxies (``galaxy_id``, ``x_proj_mpc_h``,
            ``y_proj_mpc_h``, ``v_los_kms``, ``los_offset_mpc_h``, ``mag_r``,
            ``is_member``) and the interloper-halo summary.
        """
        c, vc = self.centre_of(halo_id)
        speed_c = float(np.linalg.norm(vc))
        hi = self._h_index[int(halo_id)]
        logm, r200 = self.h_logm[hi], self.h_r200[hi]
        v200 = v200c_kms(logm, r200)
        out = []
        for n in np.atleast_2d(directions):
            n = n / np.linalg.norm(n)
            e1, e2 = (np.asarray(e) for e in basis_for(n))
            gidx = self.g_index.candidates(c, n, speed_c)
            x, y, v, par = self._window(self.g_pos, self.g_vel, gidx, c, vc, e1, e2, n)
            ins = (np.abs(x) <= self.W) & (np.abs(y) <= self.W) & (np.abs(v) <= self.V)
            ins &= ~self.g_ghost[gidx] | (self.g_halo[gidx] == halo_id)
            order = np.argsort(gidx[ins], kind="stable")
            sel = gidx[ins][order]
            rec = dict(
                galaxy_id=self.g_id[sel],
                x_proj_mpc_h=x[ins][order],
                y_proj_mpc_h=y[ins][order],
                v_los_kms=v[ins][order],
                los_offset_mpc_h=par[ins][order],
                mag_r=self.g_mag[sel],
                is_member=(self.g_halo[sel] == halo_id).astype(np.int8),
            )
            hidx = self.h_index.candidates(c, n, speed_c)
            hidx = hidx[(self.h_id[hidx] != halo_id) & ~self.h_ghost[hidx]]
            hx, hy, hv, _ = self._window(self.h_pos, self.h_vel, hidx, c, vc, e1, e2, n)
            hk = np.flatnonzero((np.hypot(hx, hy) <= self.W) & (np.abs(hv) <= self.V))
            if len(hk):
                j = hk[np.argmax(self.h_logm[hidx[hk]])]
                ji = hidx[j]
                rec["interloper_halo_id"] = int(self.h_id[ji])
                rec["interloper_mass_ratio"] = float(10.0 ** (self.h_logm[ji] - logm))
                rec["interloper_distance"] = float(phase_space_distance(
                    hx[j], hy[j], hv[j], r200, self.h_r200[ji], v200,
                    v200c_kms(self.h_logm[ji], self.h_r200[ji])))
            else:
                rec["interloper_halo_id"] = -1
                rec["interloper_mass_ratio"] = 0.0
                rec["interloper_distance"] = np.nan
            out.append(rec)
        return out


def project_batches(projector: Projector, sightlines: dict, hosts: dict, *,
                    batch_size: int = 500, progress: bool = True, workers: int = 1):
    """Project every (halo, sightline) row, yielding batches of whole halos.

    Parameters
    ----------
    projector : Projector
    sightlines : dict of ndarray
        SIGHTLINE_SCHEMA rows, grouped by halo.
    hosts : dict of ndarray
        Selected host halos (their ``log10_m200c`` and ``r200c_mpc_h`` are copied).
    batch_size : int
        Halos per yielded batch.
    workers : int
        Processes projecting batches side by side (forked, so they share the projector's
        arrays); the batches come out in order and are the same for any number.

    Yields
    ------
    clusters, galaxies : dict of ndarray
        PROJECTED_CLUSTER_SCHEMA and WINDOW_GALAXY_SCHEMA rows; ``cluster_id`` runs over
        the sightline rows in order (0, 1, ...), so ids do not depend on the batch size.
    """
    import multiprocessing

    from tqdm.auto import tqdm

    global _FORKED
    hid = np.asarray(sightlines["halo_id"])
    starts = np.flatnonzero(np.r_[True, hid[1:] != hid[:-1]])
    job = dict(projector=projector, sightlines=sightlines, hosts=hosts, hid=hid,
               host_row={int(h): i for i, h in enumerate(hosts["halo_id"])},
               dirs=np.column_stack([sightlines["nx"], sightlines["ny"], sightlines["nz"]]),
               starts=starts, stops=np.r_[starts[1:], len(hid)], batch_size=int(batch_size))
    b0s = range(0, len(starts), int(batch_size))
    bar = tqdm(total=len(starts), desc="project", unit="halo", disable=not progress)
    if int(workers) > 1 and len(b0s) > 1:
        _FORKED = job                 # the children inherit it at the fork
        try:
            with multiprocessing.get_context("fork").Pool(int(workers)) as pool:
                for cl, gal, n in pool.imap(_forked_batch, b0s):
                    bar.update(n)
                    yield cl, gal
        finally:
            _FORKED = None
    else:
        for b0 in b0s:
            cl, gal, n = _project_batch(job, b0)
            bar.update(n)
            yield cl, gal
    bar.close()


#: The batch job of :func:`project_batches` in its forked worker processes.
_FORKED = None


def _forked_batch(b0):
    return _project_batch(_FORKED, b0)


def _project_batch(job: dict, b0: int):
    """The clusters and window galaxies of the halos ``b0`` .. ``b0 + batch_size`` of
    ``job`` (:func:`project_batches`), and how many halos that is."""
    projector, sightlines, hosts = job["projector"], job["sightlines"], job["hosts"]
    hid, dirs, bs = job["hid"], job["dirs"], job["batch_size"]
    cl_parts, gal_parts = [], []
    rows = list(zip(job["starts"][b0:b0 + bs], job["stops"][b0:b0 + bs]))
    for s0, s1 in rows:
        h = int(hid[s0])
        row = job["host_row"][h]
        recs = projector.project_halo(h, dirs[s0:s1])
        for k, rec in enumerate(recs):
            cid = s0 + k
            ng = len(rec["galaxy_id"])
            cl_parts.append(dict(
                cluster_id=[cid], halo_id=[h], sightline=[sightlines["sightline"][s0 + k]],
                log10_m200c=[hosts["log10_m200c"][row]],
                r200c_mpc_h=[hosts["r200c_mpc_h"][row]], n_window=[ng],
                interloper_halo_id=[rec["interloper_halo_id"]],
                interloper_mass_ratio=[rec["interloper_mass_ratio"]],
                interloper_distance=[rec["interloper_distance"]]))
            gal = {k2: rec[k2] for k2 in ("galaxy_id", "x_proj_mpc_h", "y_proj_mpc_h",
                                          "v_los_kms", "los_offset_mpc_h", "mag_r",
                                          "is_member")}
            gal["cluster_id"] = np.full(ng, cid, dtype=np.int64)
            gal_parts.append(gal)
    return _concat(cl_parts), _concat(gal_parts), len(rows)


def _concat(parts):
    keys = parts[0].keys()
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
