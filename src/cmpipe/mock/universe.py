"""The embedded default catalogue source: a synthetic periodic universe.

MDPL2 (the paper's N-body catalogue) cannot be downloaded everywhere, so cmpipe can build
a stand-in box from the same physics an N-body halo catalogue encodes:

1. **Halo masses**: M200c drawn from the Tinker et al. (2008) mass function of the
   configured cosmology at the snapshot redshift (colossus), total count Poisson(V n),
   masses by inverse CDF on a 0.001-dex grid between ``log10_m_min`` and ``log10_m_max``.
2. **Positions**: lognormal tracers of the colossus linear power spectrum, each halo
   with its Tinker et al. (2010) linear bias b(M) (see :mod:`cmpipe.mock.lognormal`). Halos
   are grouped in bins of width :data:`BIAS_BIN_DLNB` in ln b; every bin shares the same
   white-noise phases, so all halos trace one density field. There is no halo exclusion:
   two halos may overlap.
3. **Velocities**: linear theory on the same field, v(k) = i aHf delta(k) k/k^2 with the
   exact colossus growth rate f(z), interpolated to the halos (trilinear), plus an
   isotropic Gaussian term of ``halo_velocity_sigma_kms`` per component for non-linear
   motions the linear field lacks (default 200 km/s, giving 1-D halo velocity rms of
   ~300-350 km/s, close to N-body values at z ~ 0.1).
4. **Structure**: NFW concentrations from a colossus c(M) model times a log-normal
   scatter of :data:`CONCENTRATION_SCATTER_DEX`; R200c from M200c (proper h^-1 Mpc).
5. **Galaxies**: the Cacciato et al. (2009) conditional luminosity function (halotools
   ``Cacciato09Cens`` / ``Cacciato09Sats``, their published WMAP3 parameters, applied to
   M200c), centrals at rest at the halo centre, satellites on NFW orbits with isotropic
   Jeans velocities (``NFWPhaseSpace``) inside R200c. Luminosities (h^-2 Lsun in the
   ^{0.1}r band) become absolute magnitudes with :data:`MSUN_R_01`.

6. **Training tail** (optional, :class:`TailSettings`): extra halos drawn uniformly in
   log M above the box's natural range of massive halos (a 500 h^-1 Mpc box holds ~2
   above 10^15), placed in the *same* lognormal field with their own bias and the same
   linear velocity field, with concentrations and CLF galaxies as every other halo. They
   are written apart from the box (``tail_halos.h5``, ``tail_galaxies.h5``) and only the
   training catalogue sees them, as "ghosts": a tail cluster's window holds its own
   galaxies and the box's, while no other window sees a tail halo or its galaxies, so the
   box, its interlopers and the survey keep the true abundance.

All randomness flows from one seed through :class:`numpy.random.SeedSequence` children,
so a seed fixes every array.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..cosmology import Cosmology, activate_colossus, halo_bias, tinker08_dndlog10m
from ..io.catalogues import GALAXY_SCHEMA, HALO_SCHEMA
from .lognormal import LognormalBox, trilinear_interpolate, wrap_periodic
from .tail import TailSettings, tail_masses

__all__ = [
    "UniverseSettings",
    "TailSettings",
    "tail_masses",
    "MSUN_R_01",
    "NOMINAL_PARTICLE_MASS",
    "CONCENTRATION_SCATTER_DEX",
    "BIAS_BIN_DLNB",
    "growth_rate",
    "mag_r_to_log10_luminosity",
    "log10_luminosity_to_mag_r",
    "sample_halo_masses",
    "clustered_positions",
    "make_halos",
    "populate_galaxies",
    "generate_universe",
]

log = logging.getLogger(__name__)

#: Absolute magnitude of the Sun in the SDSS ^{0.1}r band (Blanton & Roweis 2007), the
#: band of the Yang et al. (2008) luminosities that Cacciato et al. (2009) fitted.
MSUN_R_01 = 4.76

#: Nominal particle mass handed to halotools (MDPL2's, h^-1 Msun). The synthetic box has
#: no particles; the value only enters halotools' completeness cut, which is disabled.
NOMINAL_PARTICLE_MASS = 1.51e9

#: Log-normal scatter of c200c at fixed mass, dex (Diemer & Kravtsov 2015 find ~0.16).
CONCENTRATION_SCATTER_DEX = 0.16

#: Range halotools' NFW lookup tables accept; catalogue concentrations are clipped to it
#: so that the halo table and the satellite profiles agree.
CONCENTRATION_RANGE = (2.0, 20.0)

#: Width of the bias bins of the lognormal sampling, in ln b (b^2 within +-2.5%).
BIAS_BIN_DLNB = 0.025

#: Spacing of the log10 M grid of the inverse-CDF mass sampling, dex.
_MASS_GRID_DEX = 0.001


@dataclass(frozen=True)
class UniverseSettings:
    """Settings of the synthetic universe.

    Attributes
    ----------
    box_size_mpc_h : float
        Side of the periodic box, comoving h^-1 Mpc.
    redshift : float
        Snapshot redshift.
    log10_m_min, log10_m_max : float
        Halo mass range, log10(M200c / h^-1 Msun).
    grid_cells : int
        FFT grid cells per side of the lognormal field (cell = box / cells).
    mag_r_faint : float
        Faintest galaxy kept, absolute magnitude M_r - 5 log10 h (^{0.1}r band).
    halo_velocity_sigma_kms : float
        rms per component of the random (non-linear) halo velocity term, km/s.
    concentration_model : str
        colossus c(M) model for 200c (``ishiyama21``, ``diemer19``, ...).
    """

    box_size_mpc_h: float = 250.0
    redshift: float = 0.1
    log10_m_min: float = 11.0
    log10_m_max: float = 16.0
    grid_cells: int = 128
    mag_r_faint: float = -17.0
    halo_velocity_sigma_kms: float = 200.0
    concentration_model: str = "ishiyama21"

    def __post_init__(self):
        def bad(field, problem, fix):
            raise ValueError(f"universe setting '{field}' = {getattr(self, field)!r}: "
                             f"{problem}. Fix: {fix}")
        if not self.box_size_mpc_h > 0:
            bad("box_size_mpc_h", "must be positive", "give the box side in h^-1 Mpc")
        if not 0.0 <= self.redshift < 3.0:
            bad("redshift", "outside [0, 3)", "use a low-redshift snapshot")
        if not 8.0 <= self.log10_m_min < self.log10_m_max <= 16.5:
            bad("log10_m_min", f"need 8 <= log10_m_min < log10_m_max "
                f"(= {self.log10_m_max}) <= 16.5", "give log10(M200c / h^-1 Msun)")
        if int(self.grid_cells) != self.grid_cells or self.grid_cells < 8 \
                or self.grid_cells % 2:
            bad("grid_cells", "must be an even integer >= 8", "use e.g. 128")
        if not self.halo_velocity_sigma_kms >= 0:
            bad("halo_velocity_sigma_kms", "must be >= 0", "give km/s")


# ---------------------------------------------------------------------------- physics


def growth_rate(z, cosmology: Cosmology) -> float:
    """Linear growth rate f = dln D / dln a = -(1+z) D'(z) / D(z) (colossus, exact)."""
    c = cosmology.colossus
    return float(-(1.0 + z) * c.growthFactor(z, derivative=1) / c.growthFactor(z))


def mag_r_to_log10_luminosity(mag_r):
    """log10(L / h^-2 Lsun) of an absolute magnitude M_r - 5 log10 h (^{0.1}r band)."""
    return (MSUN_R_01 - np.asarray(mag_r, dtype=float)) / 2.5


def log10_luminosity_to_mag_r(log10_l):
    """Absolute magnitude M_r - 5 log10 h of log10(L / h^-2 Lsun) (^{0.1}r band)."""
    return MSUN_R_01 - 2.5 * np.asarray(log10_l, dtype=float)


# ---------------------------------------------------------------------------- seeds


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise TypeError(f"seed must be a non-negative int or numpy SeedSequence, got {seed!r}")


def _child(seed, k: int) -> np.random.SeedSequence:
    """The ``k``-th child of ``seed``, without mutating a caller's SeedSequence."""
    ss = _seed_sequence(seed)
    return np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (k,))


def _rng(seed, k: int) -> np.random.Generator:
    return np.random.default_rng(_child(seed, k))


# ---------------------------------------------------------------------------- halos


def sample_halo_masses(settings: UniverseSettings, cosmology: Cosmology,
                       rng: np.random.Generator) -> np.ndarray:
    """Draw the halo masses of the box from the Tinker et al. (2008) mass function.

    Parameters
    ----------
    settings : UniverseSettings
    cosmology : Cosmology
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, float64
        log10(M200c / h^-1 Msun), unsorted. Count ~ Poisson(V * n(>M_min)).
    """
    lo, hi = settings.log10_m_min, settings.log10_m_max
    npts = int(np.ceil((hi - lo) / _MASS_GRID_DEX)) + 1
    lgm = np.linspace(lo, hi, npts)
    dn_dlgm = tinker08_dndlog10m(lgm, settings.redshift, cosmology)
    # n(>M) integrated from the top, so the rare high-mass tail keeps full precision.
    seg = 0.5 * (dn_dlgm[1:] + dn_dlgm[:-1]) * np.diff(lgm)
    n_above = np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])
    volume = settings.box_size_mpc_h ** 3
    count = rng.poisson(volume * n_above[0])
    log.info("mass function: n(>10^%.2f) = %.4g (h^-1 Mpc)^-3 -> %d halos (expected %.1f)",
             lo, n_above[0], count, volume * n_above[0])
    u = rng.random(count) * n_above[0]
    return np.interp(u, n_above[::-1], lgm[::-1])


def _place(field, lgm, z, cosmology, rng, label):
    """Lognormal positions of halos ``lgm`` in ``field``, grouped in bins of ln b."""
    from tqdm.auto import tqdm

    n = lgm.size
    pos = np.empty((n, 3))
    if not n:
        return pos
    b = halo_bias(lgm, z, cosmology)
    lnb = np.log(b)
    ibin = np.floor((lnb - lnb.min()) / BIAS_BIN_DLNB).astype(np.int64)
    order = np.argsort(ibin, kind="stable")
    bins, starts = np.unique(ibin[order], return_index=True)
    stops = np.append(starts[1:], n)
    log.info("%s: %d bias bins, b = %.3g..%.3g", label, len(bins), b.min(), b.max())
    for a, e in tqdm(list(zip(starts, stops)), desc=f"lognormal bias bins ({label})",
                     disable=None, leave=False):
        sel = order[a:e]
        b_bin = float(np.sqrt(np.mean(b[sel] ** 2)))
        pos[sel] = field.sample_positions(b_bin, sel.size, rng)
    return pos


def clustered_positions(log10_m200c, settings: UniverseSettings, cosmology: Cosmology,
                        rng: np.random.Generator, *, tail_log10_m=None, tail_rng=None):
    """Lognormal positions and linear-theory velocities of halos of given masses.

    Parameters
    ----------
    log10_m200c : array_like
        log10(M200c / h^-1 Msun) of each halo.
    settings : UniverseSettings
    cosmology : Cosmology
    rng : numpy.random.Generator
    tail_log10_m : array_like, optional
        Masses of training-tail halos placed in the same field and velocity field after
        the box's halos, with ``tail_rng`` (so the box's halos do not depend on the tail).
    tail_rng : numpy.random.Generator, optional
        Required with ``tail_log10_m``.

    Returns
    -------
    pos : ndarray, shape (N, 3)
        Comoving positions, h^-1 Mpc, in ``[0, box_size_mpc_h)``.
    vel : ndarray, shape (N, 3)
        Peculiar velocities, km/s: linear theory plus a Gaussian term of
        ``halo_velocity_sigma_kms`` per component.
    tail_pos, tail_vel : ndarray
        The same for the tail halos; returned only with ``tail_log10_m``.
    """
    lgm = np.asarray(log10_m200c, dtype=float)
    z, box = settings.redshift, settings.box_size_mpc_h
    n = lgm.size
    activate_colossus(cosmology)
    t0 = time.perf_counter()
    field = LognormalBox(lambda k: cosmology.colossus.matterPowerSpectrum(k, z), box,
                         int(settings.grid_cells), rng)
    log.info("lognormal field %d^3 (cell %.3g h^-1 Mpc, sigma_lin = %.3g)",
             settings.grid_cells, field.cell, field.sigma_lin_cell)
    pos = _place(field, lgm, z, cosmology, rng, "box halos")
    tail = None
    if tail_log10_m is not None:
        if tail_rng is None:
            raise ValueError("clustered_positions: tail_log10_m needs tail_rng")
        tail = np.asarray(tail_log10_m, dtype=float)
        tail_pos = _place(field, tail, z, cosmology, tail_rng, "training tail")
    a_h_f = (cosmology.hubble_kms_per_mpc_h(z) / (1.0 + z)) * growth_rate(z, cosmology)
    grids = field.linear_velocity_grids(a_h_f)
    vel = np.column_stack([trilinear_interpolate(g, pos, box) for g in grids])
    if tail is not None:
        tail_vel = np.column_stack([trilinear_interpolate(g, tail_pos, box) for g in grids])
    del grids, field
    if n:
        log.info("linear halo velocities: aHf = %.4g km/s per h^-1 Mpc, rms/component "
                 "%.1f km/s (before the %.0f km/s random term)", a_h_f,
                 float(np.sqrt(np.mean(vel ** 2))), settings.halo_velocity_sigma_kms)
    vel += rng.normal(0.0, settings.halo_velocity_sigma_kms, size=(n, 3))
    log.info("positions and velocities of %d halos in %.1f s", n, time.perf_counter() - t0)
    if tail is None:
        return pos, vel
    tail_vel += tail_rng.normal(0.0, settings.halo_velocity_sigma_kms, size=(tail.size, 3))
    return pos, vel, tail_pos, tail_vel


def _halo_table(lgm, pos, vel, first_id, settings, cosmology, rng) -> dict:
    """HALO_SCHEMA columns of host halos: concentrations (``rng``), R200c, ids from
    ``first_id``."""
    from colossus.halo import concentration, mass_so

    z = settings.redshift
    m = 10.0 ** lgm
    activate_colossus(cosmology)
    c_med = np.asarray(concentration.concentration(m, "200c", z,
                                                   model=settings.concentration_model),
                       dtype=float) if m.size else np.zeros(0)
    scatter = rng.normal(0.0, CONCENTRATION_SCATTER_DEX, lgm.size)
    c200c = np.clip(c_med * 10.0 ** scatter, *CONCENTRATION_RANGE)
    r200c = (mass_so.M_to_R(m, z, "200c") / 1e3 if m.size  # proper kpc/h -> Mpc/h
             else np.zeros(0))
    ids = np.arange(first_id, first_id + lgm.size, dtype=np.int64)
    cols = dict(halo_id=ids, upid=np.full(lgm.size, -1, dtype=np.int64), log10_m200c=lgm,
                r200c_mpc_h=np.asarray(r200c, dtype=float), c200c=c200c,
                x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2],
                vx_kms=vel[:, 0], vy_kms=vel[:, 1], vz_kms=vel[:, 2])
    return {k: np.ascontiguousarray(cols[k], dtype=HALO_SCHEMA[k][0]) for k in HALO_SCHEMA}


def make_halos(settings: UniverseSettings, cosmology: Cosmology, seed,
               tail: TailSettings | None = None):
    """Build the halo table of the synthetic box (and, with ``tail``, the training tail).

    Parameters
    ----------
    settings : UniverseSettings
    cosmology : Cosmology
    seed : int or numpy.random.SeedSequence
        Fixes every random step (masses, phases, placements, velocities, concentrations).
        The tail uses its own streams: the box is the same with or without it.
    tail : TailSettings, optional

    Returns
    -------
    dict of ndarray
        Exactly the :data:`~cmpipe.io.catalogues.HALO_SCHEMA` columns, all host halos
        (``upid = -1``), sorted by decreasing mass, ``halo_id = 1..N``. With ``tail``, a
        pair ``(halos, tail_halos)``; the tail's ids continue after the box's
        (``N+1..N+K``).
    """
    lgm = np.sort(sample_halo_masses(settings, cosmology, _rng(seed, 0)))[::-1]
    if tail is None:
        pos, vel = clustered_positions(lgm, settings, cosmology, _rng(seed, 1))
        return _halo_table(lgm, pos, vel, 1, settings, cosmology, _rng(seed, 2))
    t_lgm = tail_masses(tail, _rng(seed, 3))
    pos, vel, t_pos, t_vel = clustered_positions(lgm, settings, cosmology, _rng(seed, 1),
                                                 tail_log10_m=t_lgm, tail_rng=_rng(seed, 4))
    halos = _halo_table(lgm, pos, vel, 1, settings, cosmology, _rng(seed, 2))
    tail_halos = _halo_table(t_lgm, t_pos, t_vel, lgm.size + 1, settings, cosmology,
                             _rng(seed, 5))
    log.info("training tail: %d halos, log10 M200c %.2f..%.2f (the box holds %d above "
             "%.2f)", t_lgm.size, tail.log10_m_min, tail.log10_m_max,
             int((lgm >= tail.log10_m_min).sum()), tail.log10_m_min)
    return halos, tail_halos


# ---------------------------------------------------------------------------- galaxies


def _clf_model(settings: UniverseSettings, cosmology: Cosmology):
    from halotools.empirical_models import (Cacciato09Cens, Cacciato09Sats, HodModelFactory,
                                            NFWPhaseSpace, TrivialPhaseSpace)

    z = settings.redshift
    threshold = float(mag_r_to_log10_luminosity(settings.mag_r_faint))
    common = dict(threshold=threshold, prim_haloprop_key="halo_m200c",
                  prim_galprop_key="luminosity", redshift=z)
    lo, hi = CONCENTRATION_RANGE
    cens, sats = Cacciato09Cens(**common), Cacciato09Sats(**common)
    # Both components carry the central CLF parameters on purpose (the satellite
    # cut-off luminosity follows the central one); silence halotools' notice about it.
    cens._suppress_repeated_param_warning = True
    sats._suppress_repeated_param_warning = True
    return HodModelFactory(
        centrals_occupation=cens,
        centrals_profile=TrivialPhaseSpace(cosmology=cosmology.astropy, redshift=z,
                                           mdef="200c"),
        satellites_occupation=sats,
        satellites_profile=NFWPhaseSpace(
            cosmology=cosmology.astropy, redshift=z, mdef="200c",
            conc_mass_model="direct_from_halo_catalog",
            concentration_bins=np.linspace(lo, hi, int(round((hi - lo) / 0.25)) + 1)),
    )


def populate_galaxies(halos: dict, settings: UniverseSettings, cosmology: Cosmology,
                      seed) -> dict:
    """Populate a halo table with Cacciato et al. (2009) CLF galaxies (halotools).

    Centrals sit at rest at the halo centre; satellites follow the halo's NFW profile
    (its ``c200c``) inside comoving R200c with isotropic Jeans velocities, whose scale
    is halotools' V200c = sqrt(G M200c / R200c) for the proper R200c of the astropy
    twin. Galaxies fainter than ``settings.mag_r_faint`` are not generated.

    Parameters
    ----------
    halos : dict of ndarray
        A :data:`~cmpipe.io.catalogues.HALO_SCHEMA` table (e.g. from :func:`make_halos`).
    settings : UniverseSettings
    cosmology : Cosmology
    seed : int or numpy.random.SeedSequence

    Returns
    -------
    dict of ndarray
        Exactly the :data:`~cmpipe.io.catalogues.GALAXY_SCHEMA` columns, ordered by
        ``halo_id`` with each halo's central first; ``galaxy_id = 0..N-1``.
    """
    missing = [k for k in HALO_SCHEMA if k not in halos]
    if missing:
        raise KeyError(f"halo table lacks columns {missing}; build it with make_halos")
    z, box = settings.redshift, settings.box_size_mpc_h
    t0 = time.perf_counter()
    from halotools.sim_manager import UserSuppliedHaloCatalog

    model = _clf_model(settings, cosmology)
    m = 10.0 ** np.asarray(halos["log10_m200c"], dtype=float)
    # halotools scales satellite positions by halo_r200c: comoving, like halo_x.
    r_com = np.asarray(halos["r200c_mpc_h"], float) * (1.0 + z)
    halocat = UserSuppliedHaloCatalog(
        redshift=z, Lbox=box, particle_mass=NOMINAL_PARTICLE_MASS,
        halo_id=np.asarray(halos["halo_id"], dtype=np.int64),
        halo_upid=np.full(m.size, -1, dtype=np.int64),
        halo_hostid=np.asarray(halos["halo_id"], dtype=np.int64),
        halo_x=np.asarray(halos["x_mpc_h"], float),
        halo_y=np.asarray(halos["y_mpc_h"], float),
        halo_z=np.asarray(halos["z_mpc_h"], float),
        halo_vx=np.asarray(halos["vx_kms"], float),
        halo_vy=np.asarray(halos["vy_kms"], float),
        halo_vz=np.asarray(halos["vz_kms"], float),
        halo_m200c=m, halo_r200c=r_com,
        halo_nfw_conc=np.asarray(halos["c200c"], float),
        # halotools copies halo_mvir/halo_rvir into every mock; the model never reads
        # them, so they alias the 200c values.
        halo_mvir=m, halo_rvir=r_com,
    )
    hseed = int(_child(seed, 0).generate_state(1, dtype=np.uint32)[0] % 2**31)
    model.populate_mock(halocat, seed=hseed, Num_ptcl_requirement=0,
                        halo_mass_column_key="halo_m200c")
    gt = model.mock.galaxy_table
    is_cen = np.asarray(gt["gal_type"] == "centrals")
    halo_id = np.asarray(gt["halo_id"], dtype=np.int64)
    order = np.lexsort((~is_cen, halo_id))
    pos = wrap_periodic(np.column_stack([np.asarray(gt[k], float)[order]
                                         for k in ("x", "y", "z")]), box)
    cols = dict(
        galaxy_id=np.arange(len(order), dtype=np.int64),
        halo_id=halo_id[order],
        is_central=is_cen[order].astype(np.int8),
        x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2],
        vx_kms=np.asarray(gt["vx"], float)[order],
        vy_kms=np.asarray(gt["vy"], float)[order],
        vz_kms=np.asarray(gt["vz"], float)[order],
        mag_r=log10_luminosity_to_mag_r(np.log10(np.asarray(gt["luminosity"],
                                                              float)[order])),
    )
    del model, halocat
    log.info("galaxies: %d (%d centrals, %d satellites) brighter than M_r - 5log h = "
             "%.2f in %.1f s", len(order), int(is_cen.sum()), int((~is_cen).sum()),
             settings.mag_r_faint, time.perf_counter() - t0)
    return {k: np.ascontiguousarray(cols[k], dtype=GALAXY_SCHEMA[k][0])
            for k in GALAXY_SCHEMA}


def generate_universe(settings: UniverseSettings, cosmology: Cosmology, seed,
                      tail: TailSettings | None = None):
    """Build the synthetic box: halos, then galaxies (and, with ``tail``, the training
    tail's halos and galaxies).

    Parameters
    ----------
    settings : UniverseSettings
    cosmology : Cosmology
    seed : int or numpy.random.SeedSequence
        Master seed; halos use its child 0, galaxies its child 1, tail galaxies child 2.
    tail : TailSettings, optional

    Returns
    -------
    halos, galaxies : dict of ndarray
        :data:`~cmpipe.io.catalogues.HALO_SCHEMA` and
        :data:`~cmpipe.io.catalogues.GALAXY_SCHEMA` column tables. With ``tail`` also
        ``tail_halos, tail_galaxies`` (ids continuing after the box's).
    """
    t0 = time.perf_counter()
    log.info("synthetic universe: %s, cosmology %s", asdict(settings), cosmology.name)
    if tail is None:
        halos = make_halos(settings, cosmology, _child(seed, 0))
    else:
        halos, tail_halos = make_halos(settings, cosmology, _child(seed, 0), tail)
    galaxies = populate_galaxies(halos, settings, cosmology, _child(seed, 1))
    log.info("synthetic universe done: %d halos, %d galaxies in %.1f s",
             halos["halo_id"].size, galaxies["galaxy_id"].size, time.perf_counter() - t0)
    if tail is None:
        return halos, galaxies
    tail_galaxies = populate_galaxies(tail_halos, settings, cosmology, _child(seed, 2))
    tail_galaxies["galaxy_id"] = tail_galaxies["galaxy_id"] + galaxies["galaxy_id"].size
    return halos, galaxies, tail_halos, tail_galaxies
