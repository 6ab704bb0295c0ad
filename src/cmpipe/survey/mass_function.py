"""The survey's cluster mass function against Tinker et al. (2008).

The estimator of :func:`cmpipe.massfunction.estimate_mass_function` (inverse-uncertainty
weighted KDE, bootstrap band) on one posterior summary per cluster; Tinker (2008) as the
survey should see it (:func:`cmpipe.survey.volume.survey_theory`), forward-modelled
through a Gaussian scatter and the kernel, and -- given the calibration joint PDF --
through the calibrated likelihood P(d~ | M) and the same posteriors and estimator (the
comparison uses this one). The band is widened by the survey's sample variance
(:func:`cmpipe.survey.volume.survey_sigma_lin`), and mock surveys of a Tinker universe
give the null distribution of the band count. Masses log10(M200c / h^-1 Msun), number
densities dn/dlog10M in (h^-1 Mpc)^-3, volumes (h^-1 Mpc)^3.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..cosmology import Cosmology
from ..settings import stage_seed
from .stats import ReferenceMasses
from .volume import survey_sigma_lin, survey_theory

__all__ = ["NULL_NOTE", "MassFunctionSample", "ForwardModel", "MassFunctionComparison",
           "mass_function_sample", "forward_scatter", "forward_models", "completeness_mass",
           "band_count_null", "truth_forward_model", "compare_with_tinker"]

#: Significance level of the mass-function consistency tests.
CONSISTENCY_ALPHA = 0.05

NULL_NOTE = ("null_surveys mock surveys of a Tinker universe (Poisson counts, one "
             "sample-variance fluctuation b(M) sigma_lin g each) observed through the "
             "calibration and measured like the data: the distribution of the band-count "
             "fraction a correct pipeline gives. p_value = P(null fraction <= observed); "
             "null_prob_at_least_two_thirds = how often a correct pipeline reaches 2/3")

#: Column prefix of each prior in the posterior table.
_PREFIX = {"flat": "flat", "population": "pop"}
#: Upper end of the forward model's true masses without a calibration, log10(h^-1 Msun).
_M_TRUE_MAX = 16.0
#: Lower end for a catalogue without a joint PDF, log10(h^-1 Msun).
_M_TRUE_MIN_CATALOGUE = 12.0


class MassFunctionSample(NamedTuple):
    """The clusters and estimates the mass function is measured from.

    Attributes
    ----------
    prefix : str
        Column prefix of the prior's posteriors: ``flat`` or ``pop``.
    column : str
        The posterior-table column of the estimate, e.g. ``flat_median``.
    log10_m : ndarray
        The estimate per cluster, log10(h^-1 Msun).
    sd : ndarray
        The posterior standard deviation per cluster, dex.
    z : ndarray
        Cluster redshifts.
    use : ndarray of bool
        Clusters with a finite estimate, sd > 0 and inside the survey's redshift range.
    """

    prefix: str
    column: str
    log10_m: np.ndarray
    sd: np.ndarray
    z: np.ndarray
    use: np.ndarray


class ForwardModel(NamedTuple):
    """Tinker (2008) forward-modelled to what the estimator should measure.

    Attributes
    ----------
    gaussian : ndarray
        Through a Gaussian scatter and the kernel, dn/dlog10M [(h^-1 Mpc)^-3].
    forward : ndarray
        The one compared: the calibrated one given a joint PDF, else ``gaussian``.
    info : dict
        Method and counts, for ``pulls.json``.
    log10_m_true_range : (float, float)
        True masses drawn, log10(h^-1 Msun).
    log10_m_true_min : float
        Lower end of the true masses, log10(h^-1 Msun).
    """

    gaussian: np.ndarray
    forward: np.ndarray
    info: dict
    log10_m_true_range: tuple
    log10_m_true_min: float


def mass_function_sample(post: Mapping, *, prior: str, estimate: str,
                         z_range=None) -> MassFunctionSample:
    """The clusters the mass function is measured from.

    Parameters
    ----------
    post : mapping of ndarray
        The posterior table.
    prior : {"flat", "population"}
        Whose posteriors.
    estimate : str
        Which summary (``median``, ``mean``, ``map``).
    z_range : (float, float), optional
        Redshift range of the survey volume (a catalogue's ``catalogue_volume``).
    """
    p = _PREFIX[prior]
    column = f"{p}_{estimate}"
    m_est = post[column]
    sd = post[f"{p}_sd"]
    use = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    if z_range:
        z0, z1 = z_range
        use &= (post["z"] >= z0) & (post["z"] <= z1)
    return MassFunctionSample(p, column, m_est, sd, post["z"], use)


def forward_scatter(sample: MassFunctionSample, refs: ReferenceMasses) -> tuple[float, str]:
    """Gaussian scatter [dex] of the estimates about the references (their std over the
    matched clusters), or the median posterior sd without references; and its origin."""
    use = sample.use
    matched = use & np.isfinite(refs.log10_m)
    if refs.kind != "none" and matched.sum() > 1:
        scatter = float(np.std(sample.log10_m[matched] - refs.log10_m[matched], ddof=1))
        scatter_from = f"std of ({sample.column} - {refs.kind} mass) over " \
                       f"{int(matched.sum())} clusters"
    else:
        scatter = float(np.median(sample.sd[use]))
        scatter_from = f"median posterior sd ({sample.prefix}_sd): no reference masses"
    return scatter, scatter_from


def forward_models(grid, z_theory: float, cosmology: Cosmology, n_of_m: Callable, *,
                   sample: MassFunctionSample, volume_mpc_h3: float, scatter_dex: float,
                   scatter_from: str, kernel_dex: float, bandwidth, log10_m_true_min: float,
                   pdf=None, prior: str, estimate: str, forward_scale: float,
                   seed: int) -> ForwardModel:
    """Tinker (2008) as the estimator should measure it.

    Always through a Gaussian of ``scatter_dex`` and the kernel
    (:func:`cmpipe.massfunction.forward_model`); given the joint PDF ``pdf``, also through
    the calibration (:func:`cmpipe.massfunction.forward_model_calibrated`: Tinker masses
    in ``[max(log10_m_true_min, calibrated low end), calibrated high end]`` drawn at
    ``forward_scale`` times the survey volume, d~ from P(d~ | M), the same posteriors
    (``prior``), ``estimate``, sd weights and kernel), which is then the one compared.
    ``seed`` is the run's master seed (stream ``mass_function_forward``).
    """
    from ..massfunction import forward_model, forward_model_calibrated

    gauss = np.asarray(forward_model(grid, z_theory, cosmology, scatter_dex=scatter_dex,
                                     kernel_dex=kernel_dex, log10_m_true_min=log10_m_true_min,
                                     dndlog10m=n_of_m), dtype=float)
    info = dict(method="gaussian", note=f"Tinker convolved with a Gaussian of {scatter_from} "
                "and the estimator's kernel (no joint PDF given)")
    if pdf is None:
        return ForwardModel(gauss, gauss, info, (log10_m_true_min, _M_TRUE_MAX),
                            log10_m_true_min)
    cal_lo, cal_hi = pdf.calibrated_mass_range
    t_range = (max(log10_m_true_min, cal_lo), cal_hi)
    fw = forward_model_calibrated(
        pdf, grid, cosmology, volume_mpc_h3=volume_mpc_h3, log10_m_true_range=t_range,
        bandwidth_dex=kernel_dex if bandwidth == "scott" else bandwidth,
        z_clusters=sample.z[sample.use], z_mass_function=z_theory, prior=prior,
        estimate=estimate, dndlog10m=n_of_m, scale=float(forward_scale),
        seed=stage_seed(seed, "mass_function_forward") % (2 ** 32))
    info = dict(
        method="calibrated", log10_m_true_range=list(t_range),
        n_expected=fw["n_expected"], n_simulated=fw["n_simulated"],
        note="Tinker masses in log10_m_true_range drawn at forward_scale x the survey "
             "volume; d~ drawn from the joint PDF's P(d~ | M); the same posteriors, "
             "point estimate, sd weights and kernel as the data")
    return ForwardModel(gauss, np.asarray(fw["dn_dlog10m"], dtype=float), info, t_range,
                        t_range[0])


def completeness_mass(log10_m_complete, *, source, log10_m_true_min: float, grid,
                      dn_dlog10m) -> tuple[float, str]:
    """Mass [log10(h^-1 Msun)] above which the survey is taken as complete, and why: the
    configured one, else the synthetic survey's threshold (``log10_m_true_min``), else
    the peak of the measured dn/dlog10M."""
    if log10_m_complete is not None:
        return float(log10_m_complete), "survey.mass_function.log10_m_complete"
    if source == "synthetic":
        return float(log10_m_true_min), "survey.synthetic.log10_m_min"
    return float(grid[int(np.argmax(dn_dlog10m))]), "peak of the measured dn/dlog10M"


def band_count_null(nb: Mapping, observed: Mapping, n_surveys: int) -> dict:
    """Observed band-count fractions against their null distribution.

    Parameters
    ----------
    nb : mapping
        :func:`cmpipe.massfunction.null_band_fractions`: per mock survey, the fraction of
        compared bins whose forward model lies in the band (``fraction_in_band``) and in
        the band widened by the sample variance.
    observed : mapping
        The survey's fractions, same keys.
    n_surveys : int

    Returns
    -------
    dict
        Per key: observed, null median and 68% range, the probability that a correct
        pipeline reaches 2/3, and p_value = P(null <= observed).
    """
    from ..calibration import QUANTILE_LEVELS

    null = dict(n_surveys=n_surveys, note=NULL_NOTE)
    for key, obs in observed.items():
        f = nb[key][np.isfinite(nb[key])]
        null[key] = dict(observed=float(obs), null_median=float(np.median(f)),
                         null_lo68=float(np.quantile(f, QUANTILE_LEVELS["lo68"])),
                         null_hi68=float(np.quantile(f, QUANTILE_LEVELS["hi68"])),
                         null_prob_at_least_two_thirds=float(np.mean(f >= 2 / 3 - 1e-9)),
                         p_value=float(np.mean(f <= obs + 1e-9)))
    return null


def truth_forward_model(pdf, refs: ReferenceMasses, sample: MassFunctionSample, grid,
                        cosmology: Cosmology, *, volume_mpc_h3: float, bandwidth_dex,
                        prior: str, estimate: str, log10_m_true_range, seed: int):
    """The survey's own true masses through the calibration, the same posteriors and
    estimator (:func:`cmpipe.massfunction.forward_model_from_masses`), scaled to all the
    clusters used: the calibration and estimator checked without sample variance.
    Returns dn/dlog10M [(h^-1 Mpc)^-3] on ``grid``; all NaN without a joint PDF, true
    masses or two matched clusters."""
    from ..massfunction import forward_model_from_masses

    use, ref = sample.use, refs.log10_m
    out = np.full(grid.shape, np.nan)
    if pdf is None or refs.kind != "truth" or (use & np.isfinite(ref)).sum() <= 1:
        return out
    out = forward_model_from_masses(
        pdf, ref[use & np.isfinite(ref)], grid, cosmology, volume_mpc_h3=volume_mpc_h3,
        bandwidth_dex=bandwidth_dex, z_clusters=sample.z[use & np.isfinite(ref)],
        prior=prior, estimate=estimate, log10_m_range=log10_m_true_range,
        seed=stage_seed(seed, "mass_function_truth") % (2 ** 32))
    out *= use.sum() / max(int((use & np.isfinite(ref)).sum()), 1)
    return out


def consistency_verdict(null: Mapping | None, chi2: Mapping | None,
                        alpha: float = CONSISTENCY_ALPHA) -> dict:
    """The calibrated verdict on the mass function (``pulls.json`` ``consistency``).

    The band count's p-value against its null distribution of mock surveys (with the
    sample variance; :func:`band_count_null`) and the chi^2 p-value (bootstrap plus
    sample-variance covariance; :func:`cmpipe.massfunction.band_chi2`) must each be
    >= ``alpha``. This replaces "forward model inside the band at >= 2/3 of the nodes",
    which a correct pipeline fails often (the null distribution says how often).

    Returns
    -------
    dict
        ``criterion``, ``band_count_p_value``, ``chi2_p_value`` and
        ``consistent_with_tinker`` (None when a test could not run).
    """
    band = (null or {}).get("fraction_in_band_with_sample_variance") or {}
    p_band, p_chi2 = band.get("p_value"), (chi2 or {}).get("p_value")
    known = (p_band is not None and p_chi2 is not None and np.isfinite(p_band)
             and np.isfinite(p_chi2))
    return dict(criterion=f"band-count p-value (null surveys, with sample variance) >= "
                          f"{alpha} and chi^2 p-value >= {alpha}",
                band_count_p_value=p_band, chi2_p_value=p_chi2,
                consistent_with_tinker=bool(p_band >= alpha and p_chi2 >= alpha)
                if known else None)


@dataclass
class MassFunctionComparison:
    """What :func:`compare_with_tinker` measured; :meth:`table` and :meth:`summary` are the
    products (``survey/mass_function.csv`` and ``pulls.json``'s ``mass_function``)."""

    grid: np.ndarray
    measured: object                    # cmpipe.massfunction.MassFunctionEstimate
    tinker: np.ndarray
    model: ForwardModel
    z_theory: float
    theory: str
    scatter_dex: float
    scatter_from: str
    kernel_dex: float
    log10_m_complete: float
    log10_m_complete_from: str
    log10_m_top: float
    compared: np.ndarray
    sigma_lin: float
    sigma_lin_window: str
    sample_variance_sd: np.ndarray
    in_band: np.ndarray
    in_band_sv: np.ndarray
    chi2: dict
    null: dict | None
    truth_forward: np.ndarray
    options: dict

    @property
    def n_compared(self) -> int:
        return int(self.compared.sum())

    def _inside(self, curve):
        est = self.measured
        return self.compared & (est.lo68 <= curve) & (curve <= est.hi68)

    def table(self) -> dict:
        """Columns of ``survey/mass_function.csv``."""
        est = self.measured
        return dict(log10_m=self.grid, dn_dlog10m=est.dn_dlog10m, lo68=est.lo68,
                    hi68=est.hi68, boot_sd=est.boot_sd, tinker08=self.tinker,
                    tinker08_forward=self.model.forward,
                    tinker08_forward_gaussian=self.model.gaussian,
                    sample_variance_sd=self.sample_variance_sd,
                    truth_forward=self.truth_forward,
                    forward_in_band_sv=self.in_band_sv.astype(np.int8),
                    compared=self.compared.astype(np.int8),
                    forward_in_band=self.in_band.astype(np.int8))

    def consistency(self, alpha: float = CONSISTENCY_ALPHA) -> dict:
        """:func:`consistency_verdict` of this comparison's null test and chi^2."""
        return consistency_verdict(self.null, self.chi2, alpha)

    def summary(self, *, n_clusters: int, volume_mpc_h3: float, reference: str) -> dict:
        """The ``mass_function`` section of ``pulls.json`` (docs/data-products.md)."""
        o, n_cmp, fw = self.options, self.n_compared, self.model.info
        in_band, in_band_sv = self.in_band, self.in_band_sv
        truth_in = self._inside(self.truth_forward)
        return dict(
            prior=o["prior"], estimate=o["estimate"], n_clusters=n_clusters,
            volume_mpc_h3=volume_mpc_h3, kernel_dex=self.kernel_dex,
            bandwidth=o["bandwidth_dex"], n_boot=self.measured.n_boot, theory=self.theory,
            forward_scatter_dex=self.scatter_dex, forward_scatter_from=self.scatter_from,
            forward_log10_m_true_min=self.model.log10_m_true_min, forward=fw,
            forward_scale=float(o["forward_scale"]),
            compared_log10_m_range=[self.log10_m_complete, self.log10_m_top],
            n_bins_compared=n_cmp, n_bins_forward_in_band=int(in_band.sum()),
            fraction_forward_in_band=float(in_band.sum() / n_cmp) if n_cmp else None,
            fraction_tinker_in_band=float(self._inside(self.tinker).sum() / n_cmp)
            if n_cmp else None,
            n_bins_forward_in_band_with_sample_variance=int(in_band_sv.sum()),
            fraction_forward_in_band_with_sample_variance=float(in_band_sv.sum() / n_cmp)
            if n_cmp else None,
            bootstrap=o["bootstrap"],
            sample_variance_sigma_lin=self.sigma_lin,
            sample_variance_window=self.sigma_lin_window,
            sample_variance_note="relative sd b(M) sigma_lin: Tinker (2010) bias times the "
            "rms linear density contrast of the survey window (sample_variance_window), "
            "added in quadrature to half the bootstrap band; fully correlated across "
            "masses",
            chi2=self.chi2, band_count_null=self.null, consistency=self.consistency(),
            n_clusters_expected_tinker=fw.get("n_expected"),
            n_bins_truth_forward_in_band=int(truth_in.sum()) if reference == "truth"
            else None,
            fraction_truth_forward_in_band=float(truth_in.sum() / n_cmp)
            if n_cmp and reference == "truth" else None,
            truth_forward_note="the survey's own true masses, each observed 20 times "
            "through the joint PDF and the same posteriors and estimator: the calibration "
            "and estimator checked without sample variance")


def compare_with_tinker(sample: MassFunctionSample, meta: Mapping, refs: ReferenceMasses,
                        cosmology: Cosmology, *, pdf=None, seed: int,
                        synthetic_log10_m_min: float, prior: str, estimate: str,
                        bandwidth_dex, n_boot: int, bootstrap: str, forward_scale: float,
                        null_surveys: int, log10_m_lo: float, log10_m_hi: float, n_grid: int,
                        log10_m_complete) -> MassFunctionComparison:
    """Measure the survey's dn/dlog10M and compare it with Tinker (2008).

    Parameters
    ----------
    sample : MassFunctionSample
        :func:`mass_function_sample`.
    meta : mapping
        The survey record (``survey/meta.json``): ``volume_mpc_h3`` [(h^-1 Mpc)^3],
        ``source``, the theory and the window.
    refs : ReferenceMasses
        For the Gaussian scatter and the true-mass forward model.
    cosmology : Cosmology
    pdf : cmpipe.calibration.JointPDF, optional
        The calibration: the calibrated forward model, the null band counts and the
        true-mass forward model need it.
    seed : int
        The run's master seed; streams ``mass_function`` (bootstrap),
        ``mass_function_forward``, ``mass_function_null``, ``mass_function_truth``.
    synthetic_log10_m_min : float
        The synthetic survey's mass threshold [log10(h^-1 Msun)] if the record lacks it.
    prior, estimate, bandwidth_dex, n_boot, bootstrap, forward_scale, null_surveys, \
log10_m_lo, log10_m_hi, n_grid, log10_m_complete
        The validated ``survey.mass_function`` section (config schema): grid from
        ``log10_m_lo`` to ``log10_m_hi`` [log10(h^-1 Msun)] in ``n_grid`` points, kernel
        ``bandwidth_dex`` (dex or ``"scott"``), ``n_boot`` bootstrap draws.

    Returns
    -------
    MassFunctionComparison
    """
    from ..massfunction import (band_chi2, estimate_mass_function, forward_in_band,
                                null_band_fractions, sample_variance_fraction)

    use, m_est = sample.use, sample.log10_m
    grid = np.linspace(float(log10_m_lo), float(log10_m_hi), int(n_grid))
    volume = float(meta["volume_mpc_h3"])
    bw = bandwidth_dex
    est = estimate_mass_function(m_est[use], sample.sd[use], volume, grid, bandwidth_dex=bw,
                                 n_boot=int(n_boot), bootstrap=bootstrap,
                                 seed=stage_seed(seed, "mass_function") % (2 ** 32),
                                 return_draws=True)
    n_of_m, z_th, theory_label = survey_theory(meta, cosmology)
    tinker = np.asarray(n_of_m(grid), dtype=float)
    scatter, scatter_from = forward_scatter(sample, refs)
    kernel = float(np.median(est.bandwidth_dex))
    synthetic = meta.get("source") == "synthetic"
    m_true_min = float(meta.get("log10_m_min", synthetic_log10_m_min)) if synthetic \
        else _M_TRUE_MIN_CATALOGUE
    model = forward_models(grid, z_th, cosmology, n_of_m, sample=sample, volume_mpc_h3=volume,
                           scatter_dex=scatter, scatter_from=scatter_from, kernel_dex=kernel,
                           bandwidth=bw, log10_m_true_min=m_true_min, pdf=pdf, prior=prior,
                           estimate=estimate, forward_scale=forward_scale, seed=seed)
    m_c, m_c_from = completeness_mass(log10_m_complete, source=meta.get("source"),
                                      log10_m_true_min=model.log10_m_true_min, grid=grid,
                                      dn_dlog10m=est.dn_dlog10m)
    m_top = float(m_est[use].max())
    compared = (grid >= m_c) & (grid <= m_top)
    n_cmp = int(compared.sum())
    # the survey's sample variance (one fluctuation, all masses): added to the band when
    # comparing with Tinker, which a single survey volume need not follow
    sigma_lin, sv_window = survey_sigma_lin(meta, z_th, cosmology)
    sv = sample_variance_fraction(grid, z_th, cosmology, volume, sigma_lin=sigma_lin) \
        * model.forward
    in_band, in_band_sv = forward_in_band(est, model.forward, sv, compared)
    chi2 = band_chi2(est, model.forward, sv, compared, kernel, float(forward_scale))
    # how often a correct pipeline on a Tinker universe passes the band count
    null = None
    kernel_or_bw = kernel if bw == "scott" else bw
    if pdf is not None and int(null_surveys) > 0 and n_cmp:
        nb = null_band_fractions(
            pdf, grid, cosmology, forward=model.forward, volume_mpc_h3=volume,
            log10_m_true_range=model.log10_m_true_range, bandwidth_dex=kernel_or_bw,
            log10_m_complete=m_c, z_clusters=sample.z[use], z_mass_function=z_th,
            sigma_lin=sigma_lin, prior=prior, estimate=estimate, dndlog10m=n_of_m,
            n_surveys=int(null_surveys), n_boot=min(int(n_boot), 200), bootstrap=bootstrap,
            seed=stage_seed(seed, "mass_function_null") % (2 ** 32))
        null = band_count_null(nb, {"fraction_in_band": in_band.sum() / n_cmp,
                                    "fraction_in_band_with_sample_variance":
                                    in_band_sv.sum() / n_cmp}, int(null_surveys))
    truth_fw = truth_forward_model(pdf, refs, sample, grid, cosmology, volume_mpc_h3=volume,
                                   bandwidth_dex=kernel_or_bw, prior=prior, estimate=estimate,
                                   log10_m_true_range=model.log10_m_true_range, seed=seed)
    options = dict(prior=prior, estimate=estimate, bandwidth_dex=bw, bootstrap=bootstrap,
                   forward_scale=forward_scale)
    return MassFunctionComparison(
        grid, est, tinker, model, z_th, theory_label, scatter, scatter_from, kernel, m_c,
        m_c_from, m_top, compared, sigma_lin, sv_window, sv, in_band, in_band_sv, chi2,
        null, truth_fw, options)
