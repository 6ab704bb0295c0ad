"""The Tinker et al. (2008) mass function and the survey's sample variance (theory).

Conventions
-----------
Mass function
    Tinker et al. (2008) via colossus (``mdef='200c'``, ``dndlnM``) times ln 10 -> per
    dex: :func:`tinker08_dndlog10m`, dn/dlog10 M in h^3 Mpc^-3 dex^-1 at log10 M200c in
    h^-1 Msun. It is defined in :mod:`cmpipe.mock.universe` with the other colossus wrappers
    (the halo bias), which draws the synthetic box's halos from it without importing this
    package (and its numba kernels), and re-exported here. :func:`tinker08_survey_average`
    averages it over a survey's depth.
Eddington bias (:func:`eddington_bias`)
    For a locally exponential mass function ``n(m) = A exp(alpha m)`` with
    ``alpha = d ln n / d log10 M = ln(10) beta`` (``beta = d log10 n / d log10 M``, about
    -1 at 10^14 and steeper above) and Gaussian log-mass errors of ``sigma`` dex:

    * the observed function is ``n_obs(m) = n(m) exp(alpha^2 sigma^2 / 2)``, i.e.
      ``log10(n_obs / n) = ln(10) beta^2 sigma^2 / 2``;
    * clusters observed at ``m`` have mean true mass ``m + alpha sigma^2 =
      m + ln(10) beta sigma^2`` (lower, as beta < 0): a flat-prior estimate is biased high
      by ``-ln(10) beta sigma^2`` dex, the shift
      :func:`cmpipe.massfunction.priors.population_prior_posterior` removes by using the
      mass function as the prior.

    (Completing the square: ``exp(alpha m_t) N(m; m_t, sigma^2)`` is proportional to
    ``N(m_t; m + alpha sigma^2, sigma^2)`` times ``exp(alpha m + alpha^2 sigma^2 / 2)``.)
    The curvature of the real function makes these first-order;
    :func:`cmpipe.massfunction.forward.forward_model` is exact.
Sample variance
    The Tinker et al. (2010) bias times the rms linear density contrast of the survey
    window (:func:`sample_variance_fraction`, :func:`window_sigma_lin` for the synthetic
    survey's cap in its periodic box, :func:`sphere_sigma_lin` for a top-hat sphere).
"""
from __future__ import annotations

import math

import numpy as np

from ..cosmology import Cosmology, halo_bias, tinker08_dndlog10m

__all__ = [
    "LN10",
    "tinker08_dndlog10m",
    "tinker08_survey_average",
    "local_slope",
    "eddington_bias",
    "sample_variance_fraction",
    "sphere_sigma_lin",
    "window_sigma_lin",
]

#: ln 10: dn/dlog10 M = ln(10) dn/dln M.
LN10 = math.log(10.0)


def tinker08_survey_average(log10_m, radius_mpc_h: float, cosmology: Cosmology, *,
                            n_nodes: int = 16) -> np.ndarray:
    """Tinker (2008) dn/dlog10M averaged over the comoving volume of a sphere (or cap).

    ``<n>(m) = int_0^R n(m, z(r)) 3 r^2 / R^3 dr`` by Gauss-Legendre quadrature with
    ``n_nodes`` nodes; the volume average a survey to depth ``radius_mpc_h`` (h^-1 Mpc)
    sees. h^3 Mpc^-3 dex^-1.
    """
    x, wq = np.polynomial.legendre.leggauss(int(n_nodes))
    r = 0.5 * radius_mpc_h * (x + 1.0)
    w = 0.5 * radius_mpc_h * wq * 3.0 * r ** 2 / radius_mpc_h ** 3
    zs = cosmology.z_at_comoving_distance(r)
    m = np.atleast_1d(np.asarray(log10_m, dtype=float))
    out = sum(wi * tinker08_dndlog10m(m, zi, cosmology) for wi, zi in zip(w, zs))
    return out if np.ndim(log10_m) else float(out[0])


def local_slope(log10_m, z, cosmology: Cosmology, *, delta_dex: float = 0.01) -> np.ndarray:
    """``alpha = d ln(dn/dlog10M) / d log10 M`` of Tinker (2008), per dex (central
    difference over +-``delta_dex``). ``beta = alpha / ln 10`` is the log10 slope."""
    m = np.asarray(log10_m, dtype=float)
    up = tinker08_dndlog10m(m + delta_dex, z, cosmology)
    dn = tinker08_dndlog10m(m - delta_dex, z, cosmology)
    return (np.log(up) - np.log(dn)) / (2.0 * delta_dex)


def eddington_bias(log10_m, z, cosmology: Cosmology, sigma_dex) -> dict:
    """First-order Eddington bias for Gaussian log-mass errors (module docstring).

    Parameters
    ----------
    log10_m : array_like
        Observed log10 M200c, h^-1 Msun.
    z : float
    cosmology : Cosmology
    sigma_dex : float or array_like
        Log-mass error, dex.

    Returns
    -------
    dict of ndarray
        ``alpha`` (d ln n / d log10 M, dex^-1), ``beta`` (= alpha / ln 10),
        ``mean_true_minus_observed`` (``alpha sigma^2``, dex: the correction to apply to a
        flat-prior estimate), ``log10_ratio`` (``log10(n_obs / n) = alpha^2 sigma^2 /
        (2 ln 10)``) and ``ratio`` (``n_obs / n``).
    """
    a = local_slope(log10_m, z, cosmology)
    s2 = np.asarray(sigma_dex, dtype=float) ** 2
    return dict(alpha=a, beta=a / LN10, mean_true_minus_observed=a * s2,
                log10_ratio=a * a * s2 / (2.0 * LN10), ratio=np.exp(0.5 * a * a * s2))


def sample_variance_fraction(log10_m, z: float, cosmology: Cosmology,
                             volume_mpc_h3: float, *,
                             sigma_lin: float | None = None) -> np.ndarray:
    """Relative sample (cosmic) variance of the cluster density in a survey volume,
    ``b(M) sigma_lin``: the Tinker et al. (2010) bias (colossus, M200c) times the rms
    linear density contrast of the survey volume (Hu & Kravtsov 2003 to first order). One
    fluctuation moves all masses together (fully correlated across bins).

    ``sigma_lin`` is that of the survey's own window when given
    (:func:`window_sigma_lin`: the synthetic survey's cap inside its periodic box, whose
    modes stop at the box size); by default the top-hat sphere of the survey's volume
    (colossus ``sigma(R)`` at ``z``), which over-estimates a cap-shaped survey somewhat.

    Returns
    -------
    ndarray
        Fractional standard deviation of dn/dlog10 M at each mass.
    """
    if sigma_lin is None:
        sigma_lin = sphere_sigma_lin(volume_mpc_h3, z, cosmology)
    b = halo_bias(log10_m, z, cosmology)
    return np.asarray(b, dtype=float) * float(sigma_lin)


def sphere_sigma_lin(volume_mpc_h3: float, z: float, cosmology: Cosmology) -> float:
    """rms linear density contrast in the top-hat sphere of ``volume_mpc_h3`` (h^-1 Mpc)^3
    at ``z`` (colossus ``sigma(R)``)."""
    r = (3.0 * float(volume_mpc_h3) / (4.0 * np.pi)) ** (1.0 / 3.0)
    return float(cosmology.colossus.sigma(r, z))


def window_sigma_lin(weights, box_size_mpc_h: float, z: float,
                     cosmology: Cosmology) -> float:
    """rms linear density contrast averaged over a survey window in a periodic box.

    ``sigma^2 = (1 / V_box) sum_{k != 0} P_lin(k, z) |W(k)|^2`` over the box's lattice of
    modes, with ``W(k) = sum_x w(x) exp(-i k.x)`` the transform of the window's cell weights
    normalised to unit sum: the variance of the window-averaged contrast of a Gaussian
    field of power ``P_lin`` (colossus) that lives on this periodic box. For the synthetic
    universe (a lognormal field with exactly these modes and no mode larger than the box)
    this is the sample variance of its survey; for a real survey, a box several times the
    window's size (zero-padded) gives the continuum integral
    ``int d^3k / (2 pi)^3 P |W|^2`` up to the modes larger than that box.

    Parameters
    ----------
    weights : ndarray, shape (n, n, n)
        Window weight of every cell (e.g. the number of survey images of the cell); any
        normalisation.
    box_size_mpc_h : float
        Comoving side of the box, h^-1 Mpc.
    z : float
    cosmology : Cosmology

    Returns
    -------
    float
        sigma_lin of the window-averaged density contrast (dimensionless).
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 3 or len(set(w.shape)) != 1:
        raise ValueError("weights must be a cubic (n, n, n) grid of cell weights")
    if not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("window weights must be finite, >= 0 and not all zero")
    n = w.shape[0]
    f = np.fft.rfftn(w / w.sum())
    k1 = 2.0 * np.pi * np.fft.fftfreq(n, d=box_size_mpc_h / n)
    kz = 2.0 * np.pi * np.fft.rfftfreq(n, d=box_size_mpc_h / n)
    k = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + kz[None, None, :] ** 2)
    mult = np.full(kz.size, 2.0)                     # the half of k-space rfftn leaves out
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    p = np.zeros_like(k)
    nz = k > 0
    p[nz] = cosmology.colossus.matterPowerSpectrum(k[nz], z)
    var = np.sum(p * (f.real ** 2 + f.imag ** 2) * mult[None, None, :]) / box_size_mpc_h ** 3
    return float(np.sqrt(var))


