"""Classical dynamical mass estimators on the same windows as the network.

``docs/science.md``, "Classical baselines": the network is judged against

* **M-sigma**: the Evrard et al. (2008) dark-matter scaling
  ``sigma_DM = 1082.9 km/s [h(z) M200c / 1e15 Msun]^0.3361`` inverted for ``M200c``
  (:func:`mass_from_velocity_dispersion`, the exact inverse of
  :func:`cmpipe.cosmology.evrard_sigma_dm_kms`), with the galaxies' line-of-sight velocity
  dispersion from the gapper (:func:`gapper_dispersion`) or the biweight scale
  (:func:`biweight_dispersion`);
* **virial theorem**: :func:`virial_mass`, the estimator of Heisler, Tremaine & Bahcall
  (1985) in the projected-virial-radius form of Girardi et al. (1998).

Conventions
-----------
Units
    Positions ``x_proj``, ``y_proj``: proper h^-1 Mpc relative to the cluster centre;
    velocities ``v_los``: km/s relative to the central galaxy (the cluster rest frame of the
    window, Hubble flow included). With ``G = 4.30091727e-9 Mpc (km/s)^2 / Msun`` and
    positions in h^-1 Mpc, ``sigma^2 R / G`` is a mass in h^-1 Msun. Masses are returned as
    log10 h^-1 Msun.
Rest frame
    The dispersion estimators depend only on velocity *differences* (gapper) or are taken
    about the median (biweight), so no re-centring is needed; the interloper-rejection
    options centre on the biweight location (Beers et al. 1990, c = 6).
Interlopers
    ``interlopers="none"`` (default): every galaxy of the window is used, as the network sees
    it; robustness comes from the estimators themselves. ``"clip"``: iterative 3-sigma
    clipping about the biweight location with the biweight scale. ``"shifting_gapper"``: a
    simple shifting gapper (Fadda et al. 1996): galaxies sorted by projected radius in bins
    of at least 15, and in each bin only the run of velocities without a gap wider than
    1000 km/s that contains the cluster velocity is kept.
What the estimates mean
    M-sigma targets M200c by construction (through the Evrard relation for dark matter: no
    velocity bias). The virial estimator measures the mass of the system traced by the
    window's galaxies (inside the aperture, including interlopers), not M200c; it is
    reported as is and after a single additive offset in log M fitted on the *test* set
    (:func:`calibrate_offset`), so the evaluation set stays untouched.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from astropy.stats import biweight_location, biweight_scale
from scipy.spatial.distance import pdist

from ..cosmology import Cosmology
from ..mock.projection import G_KMS2_MPC_MSUN

__all__ = [
    "EVRARD_SIGMA15_KMS",
    "EVRARD_ALPHA",
    "mass_from_velocity_dispersion",
    "gapper_dispersion",
    "biweight_dispersion",
    "reject_interlopers",
    "projected_virial_radius",
    "virial_mass",
    "baseline_masses",
    "calibrate_offset",
    "apply_offset",
]

logger = logging.getLogger(__name__)

#: Evrard et al. (2008) normalisation: sigma_DM of a 1e15 h(z)^-1 Msun halo, km/s.
EVRARD_SIGMA15_KMS = 1082.9
#: Evrard et al. (2008) slope of log sigma_DM against log M200c.
EVRARD_ALPHA = 0.3361
#: Softening of projected pair separations (proper h^-1 Mpc): coincident galaxies.
_R_SOFT = 1e-4
_INTERLOPER_METHODS = ("none", "clip", "shifting_gapper")


def mass_from_velocity_dispersion(sigma_kms, z, cosmology: Cosmology):
    """M200c from a velocity dispersion by inverting Evrard et al. (2008).

    ``log10 M200c = 15 + log10(sigma / 1082.9 km/s) / 0.3361 - log10 E(z)``, since
    ``h(z) M[Msun] = E(z) M[h^-1 Msun]``; the exact inverse of
    :func:`cmpipe.cosmology.evrard_sigma_dm_kms`.

    Parameters
    ----------
    sigma_kms : array_like
        One-dimensional velocity dispersion, km/s (> 0; zero or NaN give NaN).
    z : float or array_like
        Cluster redshift.
    cosmology : Cosmology

    Returns
    -------
    numpy.ndarray or float
        log10 M200c, log10 h^-1 Msun.
    """
    s = np.asarray(sigma_kms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(s > 0, np.log10(np.where(s > 0, s, 1.0)), np.nan)
    out = (15.0 + (logs - math.log10(EVRARD_SIGMA15_KMS)) / EVRARD_ALPHA
           - np.log10(cosmology.efunc(np.asarray(z, dtype=np.float64))))
    return float(out) if np.ndim(out) == 0 else out


def gapper_dispersion(v_kms, *, central_at_rest: bool = False) -> float:
    """Gapper estimate of the velocity dispersion (Beers, Flynn & Gebhardt 1990), km/s.

    ``sigma_G = sqrt(pi) / (n (n - 1)) sum_{i=1}^{n-1} w_i g_i`` with ``w_i = i (n - i)`` and
    ``g_i = v_(i+1) - v_(i)`` the gaps of the sorted velocities. Since
    ``sum_i w_i g_i = sum_{i<j} |v_i - v_j|`` and ``E|X - Y| = 2 sigma / sqrt(pi)`` for a
    Gaussian, this is an *unbiased* estimate of sigma for Gaussian velocities at any n, so no
    ``sqrt(n / (n - 1))`` factor is applied by default. That factor (Eke et al. 2004) belongs
    to samples whose velocities are measured relative to a brightest galaxy assumed to be
    at rest in the cluster frame: set ``central_at_rest=True`` to apply it.

    Parameters
    ----------
    v_kms : array_like
        Line-of-sight velocities, km/s (any common offset).
    central_at_rest : bool
        Multiply by ``sqrt(n / (n - 1))``.

    Returns
    -------
    float
        km/s; NaN for fewer than 2 velocities.
    """
    v = np.sort(np.asarray(v_kms, dtype=np.float64).ravel())
    n = v.size
    if n < 2:
        return float("nan")
    i = np.arange(1, n)
    s = math.sqrt(math.pi) / (n * (n - 1.0)) * float(np.dot(i * (n - i), np.diff(v)))
    return s * math.sqrt(n / (n - 1.0)) if central_at_rest else s


def biweight_dispersion(v_kms, *, c: float = 9.0, modify_sample_size: bool = True) -> float:
    """Biweight scale of the velocities (Beers et al. 1990), km/s.

    :func:`astropy.stats.biweight_scale` about the median with tuning constant ``c = 9``;
    ``modify_sample_size=True`` counts only the galaxies with non-zero weight (within
    ``c`` MADs), the form closer to the standard deviation when galaxies are rejected.

    Returns
    -------
    float
        km/s; NaN for fewer than 2 velocities or a zero MAD.
    """
    v = np.asarray(v_kms, dtype=np.float64).ravel()
    if v.size < 2:
        return float("nan")
    s = float(biweight_scale(v, c=c, modify_sample_size=modify_sample_size))
    return s if s > 0 and math.isfinite(s) else float("nan")


def _centre_and_scale(v):
    loc = float(biweight_location(v, c=6.0))
    scale = biweight_dispersion(v)
    return loc, scale


def reject_interlopers(x_mpc_h, y_mpc_h, v_kms, *, method: str = "none",
                       n_sigma: float = 3.0, gap_kms: float = 1000.0, bin_min: int = 15,
                       max_iter: int = 20) -> np.ndarray:
    """Mask of galaxies kept as members by a simple interloper rejection.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like
        Projected positions, proper h^-1 Mpc.
    v_kms : array_like
        Line-of-sight velocities, km/s.
    method : {"none", "clip", "shifting_gapper"}
        ``none``: keep all. ``clip``: iterative ``n_sigma`` clipping of ``|v - loc|`` with
        ``loc``/``scale`` the biweight location/scale of the kept galaxies, until no change.
        ``shifting_gapper``: galaxies sorted by ``R = sqrt(x^2 + y^2)`` in consecutive bins
        of ``bin_min`` (the last bin absorbs a remainder); in each bin the sorted velocities
        are split at gaps wider than ``gap_kms`` and the run containing the velocity closest
        to the cluster velocity (biweight location of the window) is kept.
    n_sigma, gap_kms, bin_min, max_iter
        Settings of the methods above.

    Returns
    -------
    numpy.ndarray of bool
    """
    v = np.asarray(v_kms, dtype=np.float64).ravel()
    keep = np.ones(v.size, dtype=bool)
    if method not in _INTERLOPER_METHODS:
        raise ValueError(f"interlopers: unknown method '{method}'; use one of "
                         f"{', '.join(_INTERLOPER_METHODS)}")
    if method == "none" or v.size < 3:
        return keep
    if method == "clip":
        for _ in range(max_iter):
            loc, scale = _centre_and_scale(v[keep])
            if not math.isfinite(scale):
                break
            new = np.abs(v - loc) <= n_sigma * scale
            if new.sum() < 3 or np.array_equal(new, keep):
                break
            keep = new
        return keep
    r = np.hypot(np.asarray(x_mpc_h, dtype=np.float64).ravel(),
                 np.asarray(y_mpc_h, dtype=np.float64).ravel())
    centre = float(biweight_location(v, c=6.0))
    order = np.argsort(r, kind="stable")
    n_bins = max(1, v.size // bin_min)
    for chunk in np.array_split(order, n_bins):
        idx = chunk[np.argsort(v[chunk], kind="stable")]
        vs = v[idx]
        breaks = np.flatnonzero(np.diff(vs) > gap_kms) + 1
        runs = np.split(np.arange(idx.size), breaks)
        k0 = int(np.argmin(np.abs(vs - centre)))
        for run in runs:
            if k0 not in run:
                keep[idx[run]] = False
    return keep


def projected_virial_radius(x_mpc_h, y_mpc_h) -> float:
    """Projected virial radius ``R_PV = N (N - 1) / sum_{i<j} 1 / R_ij``, proper h^-1 Mpc.

    Twice the harmonic mean of the projected pair separations ``R_ij`` (Girardi et al. 1998,
    eq. 6 with pairs counted once); separations below 1e-4 h^-1 Mpc are raised to it
    (coincident galaxies). NaN for fewer than 2 galaxies.
    """
    pts = np.column_stack([np.asarray(x_mpc_h, dtype=np.float64).ravel(),
                           np.asarray(y_mpc_h, dtype=np.float64).ravel()])
    n = pts.shape[0]
    if n < 2:
        return float("nan")
    inv = 1.0 / np.maximum(pdist(pts), _R_SOFT)
    return n * (n - 1.0) / float(inv.sum())


def virial_mass(x_mpc_h, y_mpc_h, v_kms, *, sigma_kms: float | None = None) -> float:
    """Projected virial mass estimate, log10 h^-1 Msun.

    ``M_V = 3 pi sigma^2 R_PV / (2 G)`` with ``R_PV`` of :func:`projected_virial_radius`:
    identical to Heisler, Tremaine & Bahcall (1985, eq. 11)
    ``M_VT = (3 pi N / 2G) sum v_i^2 / sum_{i<j} 1 / R_ij`` when ``sigma^2`` is the mean
    square velocity about the mean. For an isotropic, self-gravitating system whose galaxies
    trace the mass and are all observed, ``E[M_V] -> M_total`` for large N (the virial
    theorem ``2K + W = 0`` and ``<1/R_proj> = (pi/2) <1/r>`` for random orientations).

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like
        Projected positions, proper h^-1 Mpc.
    v_kms : array_like
        Line-of-sight velocities, km/s.
    sigma_kms : float, optional
        Velocity dispersion to use, km/s; default the sample standard deviation
        (``ddof=1``) of ``v_kms``. :func:`baseline_masses` passes the gapper dispersion,
        which is far less sensitive to interlopers.

    Returns
    -------
    float
        log10 M, log10 h^-1 Msun; NaN for fewer than 2 galaxies.
    """
    v = np.asarray(v_kms, dtype=np.float64).ravel()
    if v.size < 2:
        return float("nan")
    s = float(np.std(v, ddof=1)) if sigma_kms is None else float(sigma_kms)
    r_pv = projected_virial_radius(x_mpc_h, y_mpc_h)
    m = 1.5 * math.pi * s * s * r_pv / G_KMS2_MPC_MSUN
    return math.log10(m) if m > 0 and math.isfinite(m) else float("nan")


def baseline_masses(x_mpc_h, y_mpc_h, v_kms, offsets, z, cosmology: Cosmology, *,
                    interlopers: str = "none", min_galaxies: int = 5,
                    central_at_rest: bool = False, biweight_c: float = 9.0,
                    **rejection) -> dict:
    """All classical baselines for many clusters (concatenated galaxy columns).

    Cluster ``k`` is rows ``offsets[k]:offsets[k+1]`` of the columns, as in
    :func:`cmpipe.kde.kde_cubes` (``offsets = np.concatenate([[0], np.cumsum(counts)])``).

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N_total,)
        Projected positions relative to each cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N_total,)
        Line-of-sight velocities relative to each cluster's central galaxy, km/s.
    offsets : array_like of int, shape (n_clusters + 1,)
    z : float or array_like, shape (n_clusters,)
        Cluster redshifts (for E(z) in the Evrard relation).
    cosmology : Cosmology
    interlopers : {"none", "clip", "shifting_gapper"}
        Interloper rejection before every estimator (:func:`reject_interlopers`); default
        none (the window exactly as the network sees it).
    min_galaxies : int
        Clusters with fewer (kept) galaxies get NaN masses.
    central_at_rest : bool
        Gapper ``sqrt(n / (n - 1))`` factor (:func:`gapper_dispersion`).
    biweight_c : float
        Biweight tuning constant.
    **rejection
        Settings passed to :func:`reject_interlopers` (``n_sigma``, ``gap_kms``, ...).

    Returns
    -------
    dict of numpy.ndarray, each shape (n_clusters,)
        ``n_used`` (galaxies after rejection), ``sigma_gapper_kms``,
        ``sigma_biweight_kms``, ``log10_m_msigma_gapper``, ``log10_m_msigma_biweight``
        (log10 h^-1 Msun, M200c via Evrard et al. 2008), ``r_pv_mpc_h`` (projected virial
        radius, proper h^-1 Mpc) and ``log10_m_virial`` (log10 h^-1 Msun, virial estimator
        with the gapper dispersion: the mass within the window, not M200c).
    """
    cols = [np.asarray(c, dtype=np.float64).ravel() for c in (x_mpc_h, y_mpc_h, v_kms)]
    if not (cols[0].size == cols[1].size == cols[2].size):
        raise ValueError("x_mpc_h, y_mpc_h, v_kms must have equal length")
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError("offsets must be a 1-D integer array of length n_clusters + 1")
    if (np.any(np.diff(offsets) < 0) or offsets[0] < 0
            or offsets[-1] > cols[0].size):
        raise ValueError(f"offsets must be non-decreasing within [0, {cols[0].size}]")
    if interlopers not in _INTERLOPER_METHODS:
        raise ValueError(f"interlopers: unknown method '{interlopers}'; use one of "
                         f"{', '.join(_INTERLOPER_METHODS)}")
    n_cl = offsets.size - 1
    zz = np.broadcast_to(np.asarray(z, dtype=np.float64), (n_cl,))
    out = {k: np.full(n_cl, np.nan) for k in (
        "sigma_gapper_kms", "sigma_biweight_kms", "r_pv_mpc_h", "log10_m_virial")}
    n_used = np.zeros(n_cl, dtype=np.int64)
    for k in range(n_cl):
        a, b = int(offsets[k]), int(offsets[k + 1])
        x, y, v = (c[a:b] for c in cols)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))
                and np.all(np.isfinite(v))):
            raise ValueError(f"cluster {k}: non-finite galaxy coordinates")
        keep = reject_interlopers(x, y, v, method=interlopers, **rejection)
        x, y, v = x[keep], y[keep], v[keep]
        n_used[k] = v.size
        if v.size < min_galaxies:
            continue
        sg = gapper_dispersion(v, central_at_rest=central_at_rest)
        out["sigma_gapper_kms"][k] = sg
        out["sigma_biweight_kms"][k] = biweight_dispersion(v, c=biweight_c)
        out["r_pv_mpc_h"][k] = projected_virial_radius(x, y)
        out["log10_m_virial"][k] = virial_mass(x, y, v, sigma_kms=sg)
    few = int(np.count_nonzero(n_used < min_galaxies))
    if few:
        logger.info("%d of %d clusters have fewer than %d galaxies: baseline masses NaN",
                    few, n_cl, min_galaxies)
    out["n_used"] = n_used
    out["log10_m_msigma_gapper"] = np.asarray(mass_from_velocity_dispersion(
        out["sigma_gapper_kms"], zz, cosmology), dtype=np.float64).reshape(n_cl)
    out["log10_m_msigma_biweight"] = np.asarray(mass_from_velocity_dispersion(
        out["sigma_biweight_kms"], zz, cosmology), dtype=np.float64).reshape(n_cl)
    return out


def calibrate_offset(log10_m_pred, log10_m_true, *, robust: bool = False) -> float:
    """Single additive offset in log M mapping an estimator onto M200c, dex.

    Fit it on the *test* set and apply it (:func:`apply_offset`) to the evaluation set, so
    the evaluation stays honest. ``offset = mean(log M_true - log M_pred)`` (least squares),
    or the median with ``robust=True``; non-finite pairs are ignored.
    """
    p = np.asarray(log10_m_pred, dtype=np.float64).ravel()
    t = np.asarray(log10_m_true, dtype=np.float64).ravel()
    if p.size != t.size:
        raise ValueError("calibrate_offset: predictions and truths differ in length")
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.any():
        raise ValueError("calibrate_offset: no finite (prediction, truth) pairs")
    r = t[ok] - p[ok]
    return float(np.median(r) if robust else r.mean())


def apply_offset(log10_m_pred, offset_dex: float):
    """``log10 M_pred + offset`` (log10 h^-1 Msun)."""
    return np.asarray(log10_m_pred, dtype=np.float64) + float(offset_dex)
