"""Nuisance parameters of the simulator that act on a projected cluster's window galaxies.

The synthetic universe (or an MDPL2 galaxy model) fixes how many galaxies a halo of a given
mass shows, how fast its satellites move and how many interlopers surround it. None of these
is known to 10% for the real Universe, and the networks learn all of them. Each nuisance
below is a per-cluster number: drawn from its prior for every projected cluster when the
mock is marginalised (``nuisance.sample: true``), held at a value for a variant universe
(``nuisance.fixed``), or at its fiducial value (the universe as simulated). All act after
the projection, in the ``flux_limit`` rule, so none rebuilds the universe:

==========================  ========  =======  ===================================================
nuisance                    fiducial  prior    what it does, and the source of the prior's range
==========================  ========  =======  ===================================================
``mag_shift_mag``           0         -0.03,   every absolute magnitude + delta (mag): the
                                      +0.33    luminosity function's normalisation, so richness
                                               at fixed mass.
                                               Centred on +0.15: the default box has n(<M_r) /
                                               Blanton et al. (2003) = 1.08 / 1.21 / 1.20 at
                                               M_r = -17 / -19 / -21 (``tests/test_universe.py``);
                                               on Blanton's Schechter function the shift that
                                               removes a 1.20 excess is 0.23 mag at -19 and 0.08
                                               at -21 (d ln n / dM = 0.74 and 2.27 per mag), 0.15
                                               at -20 (1.22 per mag). +-0.18 mag changes the
                                               galaxies brighter than M* by -26% / +31%.
``completeness``            1         0.7,     each spectroscopic target kept with probability f
                                      1.0      (redshift failures, bright-star masks, incomplete
                                               plates): SDSS main-sample completeness is ~0.9
                                               overall (Strauss et al. 2002), lower in clusters.
``fibre_collision_loss``    0         0, 0.7   fraction of fibre-collided targets (a neighbour
                                               already targeted within ``fibre_collision_arcsec``,
                                               55 arcsec for SDSS: Blanton et al. 2003, AJ 125,
                                               2276) left without a redshift; ~0.65 outside tile
                                               overlaps (Zehavi et al. 2002). Acts where clusters
                                               are densest, so it is radius-dependent.
``velocity_bias``           1         0.85,    satellites' peculiar velocities relative to the
                                      1.15     halo scaled by b, so their dispersion by b (Wu et
                                               al. 2013; Guo et al. 2015: 0.85-1.0 in SDSS).
``central_velocity_frac``   0         0, 0.3   the central galaxy moves relative to its halo with
                                               a 1D speed ~ N(0, alpha sigma_DM(M)) (Evrard et al.
                                               2008 sigma_DM); the window is centred on the
                                               central, so every other galaxy's v_los shifts by
                                               -delta (van den Bosch et al. 2005; Guo et al.
                                               2015: alpha ~ 0.2-0.3).
``field_scale``             1         0.75,    density of the interlopers (``is_member == 0``)
                                      1.5      scaled by s: thinned for s < 1; for s > 1 Poisson
                                               ((s - 1) N_int) extra field galaxies, each with the
                                               velocity, depth and magnitude of a random interloper
                                               of the window and a new sky position uniform in the
                                               window (the linear-theory box has no non-linear
                                               infall, which real clusters have around them).
``infall_fraction``         0         0.4,     galaxies of the cluster beyond R200c (splashback
                                      0.8      and infall), Poisson(f N_sat) per window: the box's
                                               satellites stop at R200c. An NFW shell of
                                               concentration 2.9 (Lin, Mohr & Stanford 2004)
                                               between R200c and ``infall_radius_r200c`` x R200c
                                               (2: where caustic and GalWeight memberships end);
                                               f is its count over the count inside R200c, 0.41
                                               / 0.55 / 0.78 for concentrations 10 / 5 / 2.5
                                               (Navarro, Frenk & White 1997). Velocities: a mean
                                               radial infall from 0 at R200c to -0.5 V200 at the
                                               outer radius (maximum infall ~900 km/s around the
                                               most massive groups, Pivato et al. 2006) and an
                                               isotropic dispersion from 0.6 to 0.5 V200 (the
                                               Jeans dispersion at R200c; dispersion ~ infall
                                               speed near the splashback radius, Pizzardo et al.
                                               2024). They are members (``is_member`` 1), so the
                                               pure catalogue's membership reaches 2 R200c.
==========================  ========  =======  ===================================================

Order, as a survey would see it: the infall galaxies join the window, the central's offset
and the satellites' velocity bias (the infall galaxies' too) move velocities (then the
window's ``|v_los| <= v_max`` is applied again), the field is scaled, magnitudes shift,
the flux limit selects targets (:func:`cmpipe.mock.fluxlimit.flux_limit`), fibre
collisions and the random completeness remove targets (:func:`spectroscopic_selection`),
and the richness cut counts what is left.

Velocities of window galaxies are ``v_los = (v - v_c).n + a H d.n`` (:mod:`cmpipe.mock.
projection`), with ``d.n`` the comoving line-of-sight offset ``los_offset_mpc_h``; the
velocity bias scales the peculiar part ``v_los - a H d.n`` only. The central is the member
at the window's origin (``x_proj = y_proj = v_los = 0``), where the projection puts it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ..io.tables import Schema

__all__ = ["NUISANCES", "NUISANCE_SCHEMA", "FIDUCIAL", "column", "is_active", "draw",
           "perturb_window", "poisson_sources", "infall_shell", "infall_members",
           "spectroscopic_selection",
           "collided_targets", "central_mask", "WindowNuisances"]

log = logging.getLogger(__name__)

#: name -> (fiducial value, unit, meaning).
NUISANCES: dict[str, tuple[float, str, str]] = {
    "mag_shift_mag": (0.0, "mag", "shift added to every absolute magnitude"),
    "completeness": (1.0, "", "probability that a flux-limited target keeps its redshift"),
    "fibre_collision_loss": (0.0, "", "fraction of fibre-collided targets without a redshift"),
    "velocity_bias": (1.0, "", "satellites' peculiar velocities / the simulated ones"),
    "central_velocity_frac": (0.0, "", "central's 1D velocity offset / sigma_DM(M)"),
    "field_scale": (1.0, "", "interloper density / the simulated one"),
    "infall_fraction": (0.0, "", "galaxies between R200c and the infall radius / satellites"),
}
#: The fiducial universe: every nuisance at its fiducial value.
FIDUCIAL = {k: v[0] for k, v in NUISANCES.items()}


def column(name: str) -> str:
    """Cluster-table column of nuisance ``name`` (``nu_`` + name)."""
    return f"nu_{name}"


#: Per-cluster columns written beside the flux-limited clusters when nuisances are active.
NUISANCE_SCHEMA = Schema({
    **{column(k): ("f8", unit, desc) for k, (_, unit, desc) in NUISANCES.items()},
    "nu_central_offset_kms": ("f8", "km/s", "the central's drawn line-of-sight offset"),
})


def is_active(settings) -> bool:
    """True when the mock departs from the fiducial universe (``settings`` is the
    :class:`cmpipe.sections.NuisanceSettings`): sampling, or any value held fixed."""
    return bool(settings.sample) or any(
        float(v) != FIDUCIAL[k] for k, v in (settings.fixed or {}).items())


def draw(n: int, settings, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Nuisance values of ``n`` clusters: uniform in each prior range when
    ``settings.sample``, else fiducial; ``settings.fixed`` values override either.

    Parameters
    ----------
    n : int
        Number of projected clusters.
    settings : cmpipe.sections.NuisanceSettings
    rng : numpy.random.Generator
        Drawn in the order of :data:`NUISANCES` (n values each) when sampling.

    Returns
    -------
    dict
        ``column(name) -> (n,)`` float array for every nuisance.
    """
    fixed: Mapping = settings.fixed or {}
    unknown = sorted(set(fixed) - set(NUISANCES))
    if unknown:
        raise ValueError(f"nuisance.fixed: unknown nuisance(s) {unknown}; known: "
                         f"{sorted(NUISANCES)}")
    out = {}
    for name, (fid, _, _) in NUISANCES.items():
        if settings.sample:
            lo, hi = (float(x) for x in getattr(settings, name))
            vals = rng.uniform(lo, hi, n)
        else:
            vals = np.full(n, fid)
        if name in fixed:
            vals = np.full(n, float(fixed[name]))
        out[column(name)] = vals
    return out


def central_mask(galaxies: Mapping) -> np.ndarray:
    """The central galaxy of each window: a member at the origin of the window."""
    return ((np.asarray(galaxies["is_member"]) != 0) & (np.asarray(galaxies["x_proj_mpc_h"]) == 0)
            & (np.asarray(galaxies["y_proj_mpc_h"]) == 0)
            & (np.asarray(galaxies["v_los_kms"]) == 0))


def _take(galaxies: Mapping, keep: np.ndarray) -> dict:
    return {k: np.asarray(v)[keep] for k, v in galaxies.items()}


def poisson_sources(pool: np.ndarray, row: np.ndarray, rate: np.ndarray,
                    rng: np.random.Generator):
    """New galaxies copied from old ones: for each cluster ``c`` Poisson(``rate[c]`` x the
    number of its galaxies in ``pool``), each a copy of a random galaxy of its pool.

    ``pool`` holds galaxy indices, ``row`` every galaxy's cluster index (``rate`` is per
    cluster). Returns ``(which, src)``: each new galaxy's cluster index and source galaxy,
    grouped by cluster; None when none is drawn. The field scale's clones and the infall
    galaxies (here and in the synthetic survey) come from it.
    """
    n_pool = np.bincount(row[pool], minlength=rate.size)
    k = rng.poisson(rate * n_pool)
    if not k.sum():
        return None
    order = pool[np.argsort(row[pool], kind="stable")]
    start = np.concatenate([[0], np.cumsum(n_pool)])
    which = np.repeat(np.arange(rate.size), k)
    return which, order[start[which] + (rng.random(which.size) * n_pool[which]).astype(np.int64)]


def _field_clones(galaxies, row, scale, *, half_width_mpc_h, rng):
    """Extra interlopers for clusters with ``scale > 1`` (Poisson, sources at random)."""
    inter = np.flatnonzero(np.asarray(galaxies["is_member"]) == 0)
    drawn = poisson_sources(inter, row, np.clip(scale - 1.0, 0.0, None), rng)
    if drawn is None:
        return None
    src = drawn[1]
    clones = {key: np.asarray(v)[src].copy() for key, v in galaxies.items()}
    w = float(half_width_mpc_h)
    clones["x_proj_mpc_h"] = rng.uniform(-w, w, src.size)
    clones["y_proj_mpc_h"] = rng.uniform(-w, w, src.size)
    clones["galaxy_id"] = np.full(src.size, -1, dtype=np.asarray(galaxies["galaxy_id"]).dtype)
    return clones


#: NFW concentration of the infall/splashback shell (cluster galaxies: Lin et al. 2004).
INFALL_CONCENTRATION = 2.9
#: Mean radial velocity at the shell's outer radius, V200 (0 at R200c, linear between).
INFALL_VR_V200 = -0.5
#: 1D velocity dispersion at R200c and at the outer radius, V200 (linear between).
INFALL_SIGMA_V200 = (0.6, 0.5)


def _nfw_shell_radii(u, concentration, x_out):
    """Radii ``x = r / R200c`` in ``[1, x_out]`` of an NFW profile from uniforms ``u``
    (inverse of the shell's mass fraction, tabulated on 1,025 radii)."""
    def mass(x):
        cx = concentration * x
        return np.log1p(cx) - cx / (1.0 + cx)
    xs = np.linspace(1.0, x_out, 1025)
    cdf = (mass(xs) - mass(1.0)) / (mass(x_out) - mass(1.0))
    return np.interp(u, cdf, xs)


def infall_shell(r200c_mpc_h, v200_kms, x_out: float, rng: np.random.Generator):
    """Offsets from their cluster's centre (proper h^-1 Mpc, ``(n, 3)``) and peculiar
    velocities relative to it (km/s, ``(n, 3)``) of one infall galaxy per entry of the
    clusters' ``r200c_mpc_h`` (proper) and ``v200_kms``: radii on the NFW shell
    (:data:`INFALL_CONCENTRATION`) between R200c and ``x_out`` R200c, isotropic directions,
    the mean radial velocity :data:`INFALL_VR_V200` and dispersion :data:`INFALL_SIGMA_V200`
    (V200), each linear in radius from R200c to the outer radius."""
    r200 = np.asarray(r200c_mpc_h, dtype=float)
    v200 = np.asarray(v200_kms, dtype=float)
    x = _nfw_shell_radii(rng.random(r200.size), INFALL_CONCENTRATION, float(x_out))
    n_hat = rng.standard_normal((r200.size, 3))
    n_hat /= np.linalg.norm(n_hat, axis=1)[:, None]
    ramp = (x - 1.0) / (float(x_out) - 1.0)
    mean_vr = INFALL_VR_V200 * ramp * v200
    sigma = (INFALL_SIGMA_V200[0] + (INFALL_SIGMA_V200[1] - INFALL_SIGMA_V200[0]) * ramp) * v200
    pec = mean_vr[:, None] * n_hat + sigma[:, None] * rng.standard_normal((r200.size, 3))
    return (x * r200)[:, None] * n_hat, pec


def infall_members(clusters: Mapping, galaxies: Mapping, row: np.ndarray, frac, *,
                   x_out: float, a_h: float, scale_factor: float, half_width_mpc_h: float,
                   rng: np.random.Generator) -> dict | None:
    """The galaxies of each cluster beyond R200c (``infall_fraction``): Poisson(``f`` x its
    window's satellites), placed by :func:`infall_shell`, in the window's coordinates; each
    takes the magnitude of a random satellite of its cluster. Those outside the window on
    the sky are dropped (the velocity window is applied by the caller).

    ``clusters`` needs ``log10_m200c`` and ``r200c_mpc_h`` (proper); ``row`` is each
    galaxy's cluster index; ``a_h`` km/s per comoving h^-1 Mpc; ``scale_factor`` turns the
    proper radii into the comoving line-of-sight offsets of the projection. Returns the new
    rows (``galaxy_id`` -1, ``is_member`` 1), or None when there are none.
    """
    from .projection import v200c_kms

    sat = np.flatnonzero((np.asarray(galaxies["is_member"]) != 0) & ~central_mask(galaxies))
    drawn = poisson_sources(sat, row, np.asarray(frac, dtype=float), rng)
    if drawn is None:
        return None
    which, src = drawn
    new = {key: np.asarray(v)[src].copy() for key, v in galaxies.items()}
    r200 = np.asarray(clusters["r200c_mpc_h"], dtype=float)[which]
    v200 = v200c_kms(np.asarray(clusters["log10_m200c"], dtype=float)[which], r200)
    offset, pec = infall_shell(r200, v200, x_out, rng)   # along (e1, e2, line of sight)
    new["x_proj_mpc_h"], new["y_proj_mpc_h"] = offset[:, 0], offset[:, 1]
    new["los_offset_mpc_h"] = offset[:, 2] / float(scale_factor)
    new["v_los_kms"] = pec[:, 2] + a_h * new["los_offset_mpc_h"]
    new["galaxy_id"] = np.full(which.size, -1, dtype=new["galaxy_id"].dtype)
    new["is_member"] = np.ones(which.size, dtype=new["is_member"].dtype)
    w = float(half_width_mpc_h)
    inside = (np.abs(offset[:, 0]) <= w) & (np.abs(offset[:, 1]) <= w)
    return _take(new, inside)


def perturb_window(clusters: Mapping, galaxies: Mapping, nu: Mapping, *, a_h: float,
                   sigma_dm_kms, v_max_kms: float, half_width_mpc_h: float,
                   rng: np.random.Generator, scale_factor: float,
                   infall_radius_r200c: float) -> tuple[dict, np.ndarray]:
    """The nuisances that act before the flux limit, on one batch of windows.

    Parameters
    ----------
    clusters : mapping
        The batch's projected clusters (``cluster_id`` sorted).
    galaxies : mapping
        Their window galaxies (``WINDOW_GALAXY_SCHEMA``), grouped by cluster.
    nu : mapping
        :func:`draw`'s columns for these clusters.
    a_h : float
        ``a H(z)``, km/s per comoving h^-1 Mpc (the projection's Hubble term).
    sigma_dm_kms : array_like
        Each cluster's 1D dark-matter dispersion, km/s (Evrard et al. 2008).
    v_max_kms, half_width_mpc_h : float
        The window (km/s; proper h^-1 Mpc).
    rng : numpy.random.Generator
    scale_factor, infall_radius_r200c : float
        ``1 / (1 + z)`` and the outer radius of the infall galaxies in R200c
        (:func:`infall_members`; used only where ``infall_fraction`` > 0).

    Returns
    -------
    galaxies : dict
        The window galaxies with the infall galaxies, after the central's offset, the
        velocity bias (then the velocity window again), the field scaling and the magnitude
        shift, grouped by cluster (added galaxies follow their cluster's).
    offset_kms : ndarray
        The central's drawn line-of-sight offset per cluster, km/s.
    """
    cid = np.asarray(clusters["cluster_id"])
    g = {k: np.asarray(v).copy() for k, v in galaxies.items()}
    row = np.searchsorted(cid, g["cluster_id"])
    frac = np.asarray(nu[column("infall_fraction")], dtype=float)
    if np.any(frac > 0.0):                  # none drawn (no random numbers) otherwise
        extra = infall_members(clusters, g, row, frac, x_out=infall_radius_r200c, a_h=a_h,
                               scale_factor=scale_factor, half_width_mpc_h=half_width_mpc_h,
                               rng=rng)
        if extra is not None:
            g = {k: np.concatenate([g[k], extra[k]]) for k in g}
            g = _take(g, np.argsort(g["cluster_id"], kind="stable"))
            row = np.searchsorted(cid, g["cluster_id"])
    central = central_mask(g)
    member = (g["is_member"] != 0) & ~central
    b = np.asarray(nu[column("velocity_bias")])[row]
    hubble = a_h * g["los_offset_mpc_h"]
    biased = member & (b != 1.0)        # b = 1 leaves velocities bit for bit as they are
    v = np.where(biased, hubble + b * (g["v_los_kms"] - hubble), g["v_los_kms"])
    offset = (rng.standard_normal(cid.size) * np.asarray(nu[column("central_velocity_frac")])
              * np.asarray(sigma_dm_kms, dtype=float))
    g["v_los_kms"] = np.where(central, 0.0, v - offset[row])
    keep = np.abs(g["v_los_kms"]) <= v_max_kms
    s = np.asarray(nu[column("field_scale")], dtype=float)
    thin = (g["is_member"] == 0) & (s[row] < 1.0)
    keep &= ~thin | (rng.random(row.size) < s[row])
    g = _take(g, keep)
    row = row[keep]
    clones = _field_clones(g, row, s, half_width_mpc_h=half_width_mpc_h, rng=rng)
    if clones is not None:
        g = {k: np.concatenate([g[k], clones[k]]) for k in g}
        order = np.argsort(g["cluster_id"], kind="stable")
        g = _take(g, order)
        row = np.searchsorted(cid, g["cluster_id"])
    g["mag_r"] = g["mag_r"] + np.asarray(nu[column("mag_shift_mag")])[row]
    return g, offset


def collided_targets(theta: np.ndarray, radius: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Targets (of a window, or of a survey on the sky) that lose a fibre: in a random order, a target is collided if
    an earlier target that got a fibre lies within ``radius`` (same units as ``theta``)."""
    from scipy.spatial import cKDTree

    n = theta.shape[0]
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    pairs = cKDTree(theta).query_pairs(radius, output_type="ndarray")
    if not len(pairs):
        return out
    rank = rng.permutation(n)
    neighbours = [[] for _ in range(n)]
    for i, j in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    fibre = np.zeros(n, dtype=bool)
    for i in np.argsort(rank):
        if any(fibre[j] for j in neighbours[i]):
            out[i] = True
        else:
            fibre[i] = True
    return out


def spectroscopic_selection(galaxies: Mapping, row: np.ndarray, visible: np.ndarray,
                            nu: Mapping, *, angular_distance_mpc_h, fibre_arcsec: float,
                            rng: np.random.Generator) -> np.ndarray:
    """The flux-limited targets that get a redshift: fibre collisions, then the random
    completeness.

    Parameters
    ----------
    galaxies : mapping
        Window galaxies (``x_proj_mpc_h``, ``y_proj_mpc_h`` proper h^-1 Mpc).
    row : ndarray
        Each galaxy's cluster index in ``nu`` (galaxies grouped by cluster, ascending).
    visible : ndarray of bool
        The flux limit's targets.
    nu : mapping
        :func:`draw`'s columns.
    angular_distance_mpc_h : array_like
        Each cluster's angular-diameter distance from its observer, proper h^-1 Mpc.
    fibre_arcsec : float
        Smallest separation of two fibres on a plate (SDSS: 55 arcsec).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of bool
        ``visible`` less the targets left without a redshift.
    """
    keep = np.asarray(visible, dtype=bool).copy()
    loss = np.asarray(nu[column("fibre_collision_loss")], dtype=float)
    radius = np.radians(float(fibre_arcsec) / 3600.0)
    d_a = np.asarray(angular_distance_mpc_h, dtype=float)
    row = np.asarray(row)
    if np.any(np.diff(row) < 0):
        raise ValueError("spectroscopic_selection: galaxies must be grouped by cluster")
    bounds = np.searchsorted(row, np.arange(loss.size + 1))
    for c in np.flatnonzero(loss > 0):
        idx = bounds[c] + np.flatnonzero(keep[bounds[c]:bounds[c + 1]])
        if idx.size < 2:
            continue
        theta = np.column_stack([np.asarray(galaxies["x_proj_mpc_h"])[idx],
                                 np.asarray(galaxies["y_proj_mpc_h"])[idx]]) / d_a[c]
        hit = collided_targets(theta, radius, rng)
        keep[idx[hit & (rng.random(idx.size) < loss[c])]] = False
    f = np.asarray(nu[column("completeness")], dtype=float)[row]
    lost = keep & (f < 1.0) & (rng.random(row.size) >= f)
    return keep & ~lost


class WindowNuisances:
    """The nuisances of every projected cluster of a mock, drawn once (so the mock does not
    depend on how its clusters are batched) and applied batch by batch from one stream.

    Parameters
    ----------
    settings : cmpipe.sections.NuisanceSettings
    window : cmpipe.sections.WindowSettings
    cosmology : cmpipe.cosmology.Cosmology
    log10_m200c : array_like
        Every projected cluster's true mass, log10(h^-1 Msun) (for sigma_DM).
    redshift : float
        The snapshot's redshift.
    observer_distance_mpc_h : array_like
        Every cluster's comoving observer distance, h^-1 Mpc.
    rng : numpy.random.Generator
        The nuisances' own stream (the observers' stays the fiducial mock's).
    """

    def __init__(self, settings, window, cosmology, *, log10_m200c, redshift: float,
                 observer_distance_mpc_h, rng: np.random.Generator):
        from ..cosmology import evrard_sigma_dm_kms

        self.settings, self.window, self.rng = settings, window, rng
        dist = np.asarray(observer_distance_mpc_h, dtype=float)
        self.nu = draw(dist.size, settings, rng)
        z = float(redshift)
        self.scale_factor = 1.0 / (1.0 + z)
        self.a_h = cosmology.hubble_kms_per_mpc_h(z) / (1.0 + z)
        self.sigma_dm_kms = evrard_sigma_dm_kms(np.asarray(log10_m200c, dtype=float), z,
                                                cosmology)
        self.d_a = dist / (1.0 + cosmology.z_at_comoving_distance(dist))

    def apply(self, sl: slice, clusters: Mapping, galaxies: Mapping):
        """One batch (``sl`` of the mock's clusters): the clusters with their ``nu_*``
        columns, the perturbed window galaxies, and the ``select`` callable of
        :func:`cmpipe.mock.fluxlimit.flux_limit` (:func:`spectroscopic_selection`)."""
        nu = {k: v[sl] for k, v in self.nu.items()}
        gal, offset = perturb_window(
            clusters, galaxies, nu, a_h=self.a_h, sigma_dm_kms=self.sigma_dm_kms[sl],
            v_max_kms=self.window.v_max_kms, half_width_mpc_h=self.window.half_width_mpc_h,
            rng=self.rng, scale_factor=self.scale_factor,
            infall_radius_r200c=self.settings.infall_radius_r200c)
        cl = dict(clusters, **nu, nu_central_offset_kms=offset)
        d_a = self.d_a[sl]

        def select(row, visible):
            return spectroscopic_selection(gal, row, visible, nu, angular_distance_mpc_h=d_a,
                                           fibre_arcsec=self.settings.fibre_collision_arcsec,
                                           rng=self.rng)
        return cl, gal, select
