"""What the estimator should see if the universe is Tinker's: forward models, and the
tests of a measured mass function against them.

Conventions
-----------
Gaussian forward model (:func:`forward_model`)
    Each true mass scattered by a Gaussian of ``sigma(log M)`` (plus an optional bias),
    then smoothed by the estimator's kernel ``h``::

        <n_hat>(m) = int_{m_t >= m_min} n(m_t) N(m; m_t + b(m_t), s(m_t)^2 + h^2) dm_t

Calibrated forward models
    True masses observed through the calibrated likelihood of the joint PDF
    (:func:`cmpipe.massfunction.likelihood.observe_through_calibration`) and measured by
    the same estimator: from Tinker (:func:`forward_model_calibrated`) or from given
    masses (:func:`forward_model_from_masses`).
Tests
    The nodes where the forward model lies inside the bootstrap band
    (:func:`forward_in_band`), the null distribution of that count from mock surveys
    (:func:`null_band_fractions`) and a chi^2 with the bootstrap covariance
    (:func:`band_chi2`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..calibration import JointPDF
from ..cosmology import Cosmology, halo_bias
from .estimator import MassFunctionEstimate, estimate_mass_function, kde_mass_function
from .likelihood import observe_through_calibration
from .theory import sample_variance_fraction, tinker08_dndlog10m

__all__ = [
    "forward_model",
    "forward_model_calibrated",
    "forward_model_from_masses",
    "forward_in_band",
    "band_chi2",
    "null_band_fractions",
]


def _scatter_fn(s) -> Callable:
    if callable(s):
        return lambda m: np.broadcast_to(np.asarray(s(m), dtype=float), np.shape(m))
    val = float(s)
    return lambda m: np.full(np.shape(m), val)


def forward_model(log10_m, z, cosmology: Cosmology, *, scatter_dex=0.0, bias_dex=0.0,
                  kernel_dex: float = 0.0, log10_m_true_min: float = 12.0,
                  log10_m_true_max: float = 16.5, weight: Callable | None = None,
                  dndlog10m: Callable | None = None, step_dex: float = 0.002) -> np.ndarray:
    """The Tinker (2008) mass function seen through Gaussian mass errors and the KDE.

    Parameters
    ----------
    log10_m : array_like
        Where to evaluate, log10 h^-1 Msun.
    z : float
        Redshift of the mass function.
    cosmology : Cosmology
    scatter_dex : float or callable
        Standard deviation ``s`` of the estimates about the true mass, dex; a callable takes
        the true log10 M (array) and returns ``s``.
    bias_dex : float or callable
        Mean offset ``b`` of the estimates at a given true mass, dex.
    kernel_dex : float
        The estimator's kernel standard deviation ``h``, dex (added in quadrature).
    log10_m_true_min, log10_m_true_max : float
        True-mass range of the sample (the selection threshold of a mass-selected sample).
    weight : callable, optional
        Weight of a cluster as a function of its true log10 M (e.g. ``1 / s(m)`` to mimic
        the inverse-uncertainty weighting when the uncertainties track the scatter); the
        result keeps the total ``int n dm_t``, as the estimator keeps ``N / V``.
    dndlog10m : callable, optional
        Replace Tinker by ``dndlog10m(m_true)`` (h^3 Mpc^-3 dex^-1).
    step_dex : float
        Integration step in true mass, dex.

    Returns
    -------
    ndarray
        Expected dn/dlog10 M of the estimator, h^3 Mpc^-3 dex^-1.
    """
    m = np.atleast_1d(np.asarray(log10_m, dtype=float))
    mt = np.arange(log10_m_true_min, log10_m_true_max + 0.5 * step_dex, step_dex)
    n = (dndlog10m(mt) if dndlog10m is not None
         else tinker08_dndlog10m(mt, z, cosmology))
    n = np.asarray(n, dtype=float)
    s = _scatter_fn(scatter_dex)(mt)
    b = _scatter_fn(bias_dex)(mt)
    width = np.sqrt(s ** 2 + float(kernel_dex) ** 2)
    if np.any(width <= 0):
        raise ValueError("forward_model: scatter and kernel are both zero; the estimator "
                         "then sees n itself (evaluate tinker08_dndlog10m)")
    w = np.ones_like(mt) if weight is None else np.asarray(weight(mt), dtype=float)
    tw = np.full(mt.size, step_dex)
    tw[[0, -1]] *= 0.5                                 # trapezoid
    u = (m[:, None] - mt[None, :] - b[None, :]) / width[None, :]
    g = np.exp(-0.5 * u * u) / (np.sqrt(2.0 * np.pi) * width[None, :])
    out = g @ (n * w * tw)
    if weight is not None:
        out *= np.sum(n * tw) / np.sum(n * w * tw)
    return out if np.ndim(log10_m) else float(out[0])


def forward_in_band(est: MassFunctionEstimate, forward, sv, compared):
    """Where ``forward`` lies inside the estimate's bootstrap band (``lo68 <= forward <=
    hi68``), and inside the band widened by the sample variance (``|estimate - forward|
    <= sqrt(((hi68 - lo68) / 2)^2 + sv^2)``), on the ``compared`` nodes only: the band
    counts of the data and of :func:`null_band_fractions`.

    Returns
    -------
    (ndarray, ndarray)
        Boolean masks on the grid.
    """
    forward = np.asarray(forward, dtype=float)
    compared = np.asarray(compared, dtype=bool)
    half = 0.5 * (est.hi68 - est.lo68)
    inside = compared & (est.lo68 <= forward) & (forward <= est.hi68)
    inside_sv = compared & (np.abs(est.dn_dlog10m - forward) <= np.hypot(half, sv))
    return inside, inside_sv


def _sample_masses(mt, n, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` masses drawn from the density ``n`` tabulated on the grid ``mt`` (inverse
    CDF of its trapezoidal integral)."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (n[1:] + n[:-1]) * np.diff(mt))])
    return np.interp(rng.random(size) * cdf[-1], cdf, mt)


def band_chi2(est: MassFunctionEstimate, forward, sv, compared, kernel_dex: float,
              forward_scale: float) -> dict | None:
    """chi^2 of the estimate against the forward model over compared nodes spaced two
    kernel widths apart (nearly independent), with the bootstrap covariance of those nodes,
    the forward model's own Monte Carlo noise (its bootstrap variance / forward_scale) and
    the sample variance ``sv`` (absolute sd per node, one fully correlated fluctuation) --
    the test the band count approximates; None without bootstrap draws (``return_draws``).

    Returns
    -------
    dict or None
        ``chi2``, ``dof`` (nodes used), ``p_value`` (chi^2 survival function), the nodes'
        ``log10_m`` and ``node_step``.
    """
    from scipy import stats

    compared = np.asarray(compared, dtype=bool)
    if est.draws is None or not compared.any():
        return None
    forward, sv = np.asarray(forward, dtype=float), np.asarray(sv, dtype=float)
    idx = np.flatnonzero(compared)
    step = max(1, int(round(2.0 * kernel_dex / float(np.diff(est.log10_m)[0]))))
    idx = idx[::step]
    cov = np.atleast_2d(np.cov(est.draws[:, idx], rowvar=False))
    cov = cov * (1.0 + 1.0 / forward_scale) + np.outer(sv[idx], sv[idx])
    r = est.dn_dlog10m[idx] - forward[idx]
    try:
        val = float(r @ np.linalg.solve(cov, r))
    except np.linalg.LinAlgError:
        return None
    return dict(chi2=val, dof=int(idx.size), p_value=float(stats.chi2.sf(val, idx.size)),
                log10_m=est.log10_m[idx].tolist(), node_step=step,
                note="nodes spaced ~2 kernel widths; covariance = bootstrap x (1 + 1 / "
                     "forward_scale) + sample variance (rank one)")


def forward_model_calibrated(pdf: JointPDF, log10_m_grid, cosmology: Cosmology, *,
                             volume_mpc_h3: float, log10_m_true_range, bandwidth_dex,
                             z_clusters, z_mass_function: float, prior: str = "flat",
                             estimate: str = "median", dndlog10m: Callable | None = None,
                             scale: float = 20.0, seed: int = 0,
                             step_dex: float = 0.002) -> dict:
    """The mass function the estimator should see if the universe is Tinker's, through the
    calibrated likelihood ``P(d~ | M)`` of the joint PDF rather than a Gaussian scatter.

    A Monte Carlo of the survey, ``scale`` times larger: true masses drawn from
    ``dndlog10m`` (Tinker 2008 at ``z_mass_function`` by default) in
    ``log10_m_true_range``, observed through :func:`observe_through_calibration` (with a
    redshift resampled from ``z_clusters`` for the population prior), then the same
    weighted-KDE estimator with the same kernel ``bandwidth_dex`` as the data. The
    network's mean reversion, its mass-dependent scatter and the posterior edges are all in
    it; only the sample variance is reduced (by ``scale``), and the sample variance of the
    real survey (:func:`sample_variance_fraction`) is not in it.

    Returns
    -------
    dict
        ``dn_dlog10m`` (on ``log10_m_grid``, h^3 Mpc^-3 dex^-1), ``n_expected`` (clusters
        expected in the real volume), ``n_simulated``, ``m_true`` and ``m_est`` (the draws).
    """
    lo, hi = (float(v) for v in log10_m_true_range)
    mt = np.arange(lo, hi + 0.5 * step_dex, step_dex)
    n = np.asarray(dndlog10m(mt) if dndlog10m is not None
                   else tinker08_dndlog10m(mt, z_mass_function, cosmology), dtype=float)
    tw = np.full(mt.size, step_dex)
    tw[[0, -1]] *= 0.5
    n_expected = float(volume_mpc_h3) * float(np.sum(n * tw))
    n_sim = max(2, int(round(scale * n_expected)))
    rng = np.random.default_rng(seed)
    m_true = _sample_masses(mt, n, rng, n_sim)
    z = np.asarray(z_clusters, dtype=float)
    z = z[np.isfinite(z)]
    zs = rng.choice(z, size=n_sim) if z.size else np.full(n_sim, z_mass_function)
    m_est, sd = observe_through_calibration(pdf, m_true, cosmology, rng=rng, z=zs,
                                            prior=prior, estimate=estimate,
                                            log10_m_range=(lo, hi))
    ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    dn = kde_mass_function(m_est[ok], sd[ok], float(volume_mpc_h3) * ok.sum() / n_expected,
                           log10_m_grid, bandwidth_dex=bandwidth_dex)
    return dict(dn_dlog10m=dn, n_expected=n_expected, n_simulated=int(ok.sum()),
                m_true=m_true[ok], m_est=m_est[ok])


def null_band_fractions(pdf: JointPDF, log10_m_grid, cosmology: Cosmology, *,
                        forward, volume_mpc_h3: float, log10_m_true_range, bandwidth_dex,
                        log10_m_complete: float, z_clusters, z_mass_function: float,
                        sigma_lin: float | None = None, prior: str = "flat",
                        estimate: str = "median", dndlog10m: Callable | None = None,
                        n_surveys: int = 200, n_boot: int = 200, bootstrap: str = "poisson",
                        seed: int = 0, step_dex: float = 0.002,
                        progress: bool = True) -> dict:
    """How often a survey of a Tinker universe, measured by this pipeline, puts the
    forward model inside its own band: the null distribution of the band-count statistic.

    Each of ``n_surveys`` mock surveys: a sample-variance fluctuation ``delta(M) = b(M)
    sigma_lin g`` (``g ~ N(0, 1)``, one per survey, :func:`sample_variance_fraction`; none
    when ``sigma_lin`` is None), a Poisson number of true masses from ``n(M) (1 +
    delta(M))`` in ``log10_m_true_range`` over the survey volume, each observed through the
    calibration (:func:`observe_through_calibration`), the estimator with its ``bootstrap``
    band and the data's kernel, and the fraction of grid nodes from ``log10_m_complete``
    to the survey's largest estimate where ``forward`` lies inside the band (and inside
    the band widened by the sample variance, as the data are compared). ``progress``: a
    tqdm bar over the surveys.

    Returns
    -------
    dict
        ``fraction_in_band`` and ``fraction_in_band_with_sample_variance`` (arrays, one
        per survey) and ``n_bins`` (nodes compared in each survey).
    """
    from tqdm.auto import tqdm

    lo, hi = (float(v) for v in log10_m_true_range)
    mt = np.arange(lo, hi + 0.5 * step_dex, step_dex)
    n = np.asarray(dndlog10m(mt) if dndlog10m is not None
                   else tinker08_dndlog10m(mt, z_mass_function, cosmology), dtype=float)
    grid = np.asarray(log10_m_grid, dtype=float)
    forward = np.asarray(forward, dtype=float)
    b_t = np.asarray(halo_bias(mt, z_mass_function, cosmology), dtype=float)
    sv_grid = (sample_variance_fraction(grid, z_mass_function, cosmology, volume_mpc_h3,
                                        sigma_lin=sigma_lin) * forward
               if sigma_lin is not None else np.zeros(grid.size))
    z = np.asarray(z_clusters, dtype=float)
    z = z[np.isfinite(z)]
    rng = np.random.default_rng(seed)
    frac = np.full(int(n_surveys), np.nan)
    frac_sv = np.full(int(n_surveys), np.nan)
    n_bins = np.zeros(int(n_surveys), dtype=int)
    quiet = logging.getLogger(__package__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)      # one estimator log line per mock survey otherwise
    try:
        for k in tqdm(range(int(n_surveys)), desc="null surveys", unit="survey",
                      disable=not progress):
            g = rng.standard_normal() if sigma_lin is not None else 0.0
            nk = n * np.clip(1.0 + b_t * float(sigma_lin or 0.0) * g, 0.0, None)
            count = rng.poisson(float(volume_mpc_h3) * float(
                np.sum(0.5 * (nk[1:] + nk[:-1]) * np.diff(mt))))
            if count < 2:
                continue
            m_true = _sample_masses(mt, nk, rng, count)
            zs = rng.choice(z, size=count) if z.size else np.full(count, z_mass_function)
            m_est, sd = observe_through_calibration(pdf, m_true, cosmology, rng=rng, z=zs,
                                                    prior=prior, estimate=estimate,
                                                    log10_m_range=(lo, hi))
            ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
            if ok.sum() < 2:
                continue
            est = estimate_mass_function(m_est[ok], sd[ok], volume_mpc_h3, grid,
                                         bandwidth_dex=bandwidth_dex, n_boot=int(n_boot),
                                         bootstrap=bootstrap,
                                         seed=int(rng.integers(2 ** 32)))
            cmp = (grid >= log10_m_complete) & (grid <= m_est[ok].max())
            if not cmp.any():
                continue
            inside, inside_sv = forward_in_band(est, forward, sv_grid, cmp)
            n_bins[k] = int(cmp.sum())
            frac[k] = inside.sum() / cmp.sum()
            frac_sv[k] = inside_sv.sum() / cmp.sum()
    finally:
        quiet.setLevel(level)
    return dict(fraction_in_band=frac, fraction_in_band_with_sample_variance=frac_sv,
                n_bins=n_bins)


def forward_model_from_masses(pdf: JointPDF, m_true, log10_m_grid, cosmology: Cosmology, *,
                              volume_mpc_h3: float, bandwidth_dex, z_clusters=0.1,
                              prior: str = "flat", estimate: str = "median",
                              log10_m_range=None, repeats: int = 20,
                              seed: int = 0) -> np.ndarray:
    """What the estimator should see for *these* true masses (e.g. the synthetic survey's
    own clusters): each observed ``repeats`` times through
    :func:`observe_through_calibration`, the same estimator and kernel, normalised to the
    real number of clusters. Free of the sample variance that separates a survey from
    Tinker, so it checks the calibration and the estimator alone.

    Returns
    -------
    ndarray
        dn/dlog10 M on ``log10_m_grid``, h^3 Mpc^-3 dex^-1.
    """
    m_true = np.asarray(m_true, dtype=float)
    m_true = m_true[np.isfinite(m_true)]
    if m_true.size == 0:
        raise ValueError("forward_model_from_masses: no finite true mass")
    rng = np.random.default_rng(seed)
    m_rep = np.repeat(m_true, repeats)
    z = np.broadcast_to(np.asarray(z_clusters, dtype=float), m_true.shape)
    m_est, sd = observe_through_calibration(pdf, m_rep, cosmology, rng=rng,
                                            z=np.repeat(z, repeats), prior=prior,
                                            estimate=estimate, log10_m_range=log10_m_range)
    ok = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    vol = float(volume_mpc_h3) * ok.sum() / m_true.size
    return kde_mass_function(m_est[ok], sd[ok], vol, log10_m_grid, bandwidth_dex=bandwidth_dex)
