"""Statistics of the survey's posteriors against reference masses (``survey/pulls.json``).

Reference masses are the synthetic survey's true masses, or a catalogue's own masses with
their errors. Pulls (:data:`PULL_DEFINITIONS`) test the posteriors' widths and centres;
the Eddington shift says what selecting on the estimate does to its mean; the likelihood
check asks whether the survey's predictions d~ follow the test set's P(d~ | M). Masses
are log10(M200c / h^-1 Msun) throughout, widths and residuals dex.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..cosmology import Cosmology

__all__ = ["PULL_DEFINITIONS", "ReferenceMasses", "reference_masses", "pull_stats",
           "survey_pulls", "eddington_shift", "pit_summary", "likelihood_check",
           "pulls_record"]

#: The two pull definitions of pulls.json: the primary one has mean 0 and sd 1 over the
#: population exactly when the posteriors are right (E[M - E(M|d)] = 0, E[(M - E)^2 / Var]
#: = 1); the median/half-interval one is the paper's Fig. 9 style and is skewed by
#: asymmetric posteriors (a truncated prior pulls the median below the mean).
PULL_DEFINITIONS = {
    "mean_sd": ("mean", "(posterior mean - reference) / sqrt(posterior sd^2 + reference "
                "error^2)"),
    "median_half68": ("median", "(posterior median - reference) / sqrt(((hi68 - lo68) / "
                      "2)^2 + reference error^2)"),
}

#: True-mass bins of the likelihood check, log10(h^-1 Msun) (open-ended at both ends).
_MASS_EDGES = [-np.inf, 14.0, 14.3, 14.6, np.inf]
#: Kernel widths of the test-set PIT regression: log10 mass [dex], distance [h^-1 Mpc].
_KERNEL_DEX, _KERNEL_MPC_H = 0.1, 20.0


class ReferenceMasses(NamedTuple):
    """Reference mass of each survey cluster (:func:`reference_masses`).

    Attributes
    ----------
    log10_m : ndarray
        log10(M200c / h^-1 Msun), NaN where there is none.
    err : ndarray
        Its uncertainty, dex (NaN: none, or exact).
    kind : {"truth", "catalogue", "none"}
    """

    log10_m: np.ndarray
    err: np.ndarray
    kind: str


def reference_masses(post: Mapping, truth: Mapping, has_truth: bool) -> ReferenceMasses:
    """The survey's reference masses: true masses (a synthetic survey, ``has_truth``),
    else the catalogue's masses and errors where it gives any, else none.

    Parameters
    ----------
    post : mapping of ndarray
        The posterior table: ``cluster_id``, ``log10_m_cat``, ``log10_m_cat_err``.
    truth : mapping of ndarray
        The truth table (``cluster_id`` sorted, ``log10_m200c``); may have no rows.
    has_truth : bool
        From the survey record.
    """
    ref = np.full(len(post["cluster_id"]), np.nan)
    ref_err = np.full(ref.shape, np.nan)
    reference = "none"
    if has_truth and len(truth["cluster_id"]):
        row = np.searchsorted(truth["cluster_id"], post["cluster_id"])
        row = np.minimum(row, len(truth["cluster_id"]) - 1)
        hit = truth["cluster_id"][row] == post["cluster_id"]
        ref[hit] = truth["log10_m200c"][row[hit]]
        reference = "truth"
    elif np.isfinite(post["log10_m_cat"]).any():
        ref = np.asarray(post["log10_m_cat"], dtype=float)
        ref_err = np.asarray(post["log10_m_cat_err"], dtype=float)
        reference = "catalogue"
    return ReferenceMasses(ref, ref_err, reference)


def pull_stats(est, sigma, ref, ref_err, lo, hi) -> tuple[dict, np.ndarray]:
    """Pulls ``(est - ref) / sqrt(sigma^2 + ref_err^2)`` and their summary.

    Parameters
    ----------
    est : ndarray
        Estimates, log10(h^-1 Msun) (NaN: none).
    sigma : ndarray
        Their uncertainties, dex.
    ref, ref_err : ndarray
        Reference masses [log10(h^-1 Msun)] and their errors [dex] (NaN error: exact).
    lo, hi : ndarray
        The 68% interval of each posterior [log10(h^-1 Msun)], for ``coverage_68``.

    Returns
    -------
    summary : dict
        ``n`` (clusters with a finite estimate, reference and total error > 0) and, if
        n > 0: ``pull_mean``, ``pull_sd`` (ddof 1), ``pull_mean_err`` (sd / sqrt(n)),
        ``residual_mean_dex``, ``residual_sd_dex``, ``median_sigma_dex`` (of the total
        error) and ``coverage_68`` (fraction of references inside [lo, hi]); the sds are
        None for n = 1.
    pull : ndarray
        Per cluster, NaN where not counted.
    """
    tot = np.sqrt(sigma ** 2 + np.where(np.isfinite(ref_err), ref_err, 0.0) ** 2)
    ok = np.isfinite(est) & np.isfinite(ref) & (tot > 0)
    if not ok.any():
        return dict(n=0), np.full(est.shape, np.nan)
    pull = np.full(est.shape, np.nan)
    pull[ok] = (est[ok] - ref[ok]) / tot[ok]
    res = est[ok] - ref[ok]
    out = dict(n=int(ok.sum()), pull_mean=float(pull[ok].mean()),
               pull_sd=float(pull[ok].std(ddof=1)) if ok.sum() > 1 else None,
               pull_mean_err=float(pull[ok].std(ddof=1) / np.sqrt(ok.sum()))
               if ok.sum() > 1 else None,
               residual_mean_dex=float(res.mean()),
               residual_sd_dex=float(res.std(ddof=1)) if ok.sum() > 1 else None,
               median_sigma_dex=float(np.median(tot[ok])),
               coverage_68=float(np.mean((ref[ok] >= lo[ok]) & (ref[ok] <= hi[ok]))))
    return out, pull


def survey_pulls(post: Mapping, ref, ref_err, log10_m_complete: float):
    """Pulls under both priors and both :data:`PULL_DEFINITIONS`.

    Parameters
    ----------
    post : mapping of ndarray
        The posterior table (``{flat,pop}_{mean,median,sd,lo68,hi68}``).
    ref, ref_err : ndarray
        Reference masses [log10(h^-1 Msun)] and errors [dex].
    log10_m_complete : float
        Completeness mass: ``selected_on_estimate`` counts the clusters whose estimate is
        at least this.

    Returns
    -------
    pulls : dict
        ``{"flat", "population"}`` -> ``all`` and ``selected_on_estimate``
        (:func:`pull_stats` of the ``mean_sd`` definition) and ``median_half68`` (the same
        two for the other definition).
    per_cluster : dict
        ``{"flat", "population"}`` -> the ``mean_sd`` pull of every cluster.
    """
    pulls = {}
    per_cluster = {}
    for name, q in (("flat", "flat"), ("population", "pop")):
        lo, hi = post[f"{q}_lo68"], post[f"{q}_hi68"]
        for defn, (key, _) in PULL_DEFINITIONS.items():
            est_q = post[f"{q}_{key}"]
            sig = post[f"{q}_sd"] if key == "mean" else 0.5 * (hi - lo)
            stats, pull = pull_stats(est_q, sig, ref, ref_err, lo, hi)
            sel = np.isfinite(est_q) & (est_q >= log10_m_complete)
            stats_sel, _ = pull_stats(np.where(sel, est_q, np.nan), sig, ref, ref_err, lo,
                                      hi)
            if defn == "mean_sd":
                pulls[name] = dict(all=stats, selected_on_estimate=stats_sel)
                per_cluster[name] = pull
            else:
                pulls[name][defn] = dict(all=stats, selected_on_estimate=stats_sel)
    return pulls, per_cluster


def eddington_shift(post: Mapping, refs: ReferenceMasses, log10_m_complete: float, z: float,
                    cosmology: Cosmology, pulls: Mapping) -> dict | None:
    """Expected Eddington shift of the flat-prior mean for clusters selected on it.

    ``shift_dex = -alpha sigma^2`` with ``alpha`` = d ln n / d log10 M of Tinker (2008) at
    redshift ``z`` at the selected estimates [per dex] and ``sigma`` the measured
    flat-prior scatter about the references [dex]; compared with the measured pulls.

    Returns
    -------
    dict or None
        None without references (fewer than two matched clusters).
    """
    from ..massfunction import LN10, local_slope

    ref = refs.log10_m
    fm = post["flat_mean"]
    sel = np.isfinite(fm) & np.isfinite(ref) & (fm >= log10_m_complete)
    if refs.kind == "none" or np.sum(np.isfinite(fm) & np.isfinite(ref)) <= 1:
        return None
    both = np.isfinite(fm) & np.isfinite(ref)
    sig_flat = float(np.std(fm[both] - ref[both], ddof=1))
    base = sel if sel.any() else both
    alpha = float(np.mean(local_slope(fm[base], z, cosmology)))
    shift = -alpha * sig_flat ** 2
    med_sig = float(np.median(post["flat_sd"][base]))
    return dict(
        scatter_dex=sig_flat, alpha_per_dex=alpha, beta=alpha / LN10,
        shift_dex=shift, shift_pull=shift / med_sig if med_sig > 0 else None,
        flat_pull_mean_selected=pulls["flat"]["selected_on_estimate"].get("pull_mean"),
        flat_residual_mean_dex_selected=pulls["flat"]["selected_on_estimate"].get(
            "residual_mean_dex"),
        flat_pull_mean_all=pulls["flat"]["all"].get("pull_mean"),
        note="shift_dex = -alpha sigma^2: the mean (flat-prior mean - reference) "
             "expected for clusters selected on their flat-prior estimate (>= "
             "log10_m_complete), alpha = d ln n / d log10 M of Tinker (2008) at those "
             "estimates, sigma the measured flat-prior scatter; for a sample selected on "
             "the true mass the flat-prior mean is ~0 and the population-prior mean "
             "~ -shift_dex instead.")


def pit_summary(u) -> dict:
    """Summary of PIT values ``u``: ``n`` and, for n >= 2, the mean with its error under
    uniformity (sqrt(1 / 12 n)), the fractions below 0.1587 and above 0.8413 (each 0.1587
    if uniform) and the Kolmogorov-Smirnov p-value against U(0, 1)."""
    from scipy import stats

    n = int(u.size)
    if n < 2:
        return dict(n=n)
    return dict(n=n, mean=float(u.mean()), mean_err=float(np.sqrt(1 / 12 / n)),
                frac_below_16=float(np.mean(u < 0.1587)),
                frac_above_84=float(np.mean(u > 0.8413)),
                ks_p_value=float(stats.kstest(u, "uniform").pvalue))


def _mass_bins(ok, ref, summary) -> dict:
    """``summary(mask)`` in the true-mass bins of :data:`_MASS_EDGES`."""
    edges = _MASS_EDGES
    return {f"{max(a, 13.0):.1f}-{min(b, 16.0):.1f}": summary(ok & (ref >= a) & (ref < b))
            for a, b in zip(edges[:-1], edges[1:])}


def _test_set_expectation(u_t, m_t, r_t, ref, r, ok) -> np.ndarray:
    """The test set's PIT at each survey cluster's (true mass, distance): a Gaussian kernel
    regression over the test clusters (0.1 dex, 20 h^-1 Mpc); NaN where the kernel weight
    is below 1e-3 or outside ``ok``."""
    good = np.isfinite(u_t)
    expect = np.full(ref.shape, np.nan)
    idx = np.flatnonzero(ok)
    for c0 in range(0, idx.size, 512):
        i = idx[c0:c0 + 512]
        k = np.exp(-0.5 * (((ref[i, None] - m_t[None, good]) / _KERNEL_DEX) ** 2
                           + ((r[i, None] - r_t[None, good]) / _KERNEL_MPC_H) ** 2))
        ksum = k.sum(axis=1)
        expect[i] = np.where(ksum > 1e-3, (k @ u_t[good]) / np.maximum(ksum, 1e-300),
                             np.nan)
    return expect


def _matched_to_test_set(u, expect, ok, ref, r) -> dict:
    """Survey PIT minus the test set's at the same (mass, distance), overall and in
    distance terciles and true-mass bins."""
    diff = u - expect

    def matched(sel):
        sel = sel & np.isfinite(diff)
        n = int(sel.sum())
        if n < 2:
            return dict(n=n)
        return dict(n=n, survey_mean=float(u[sel].mean()),
                    test_set_mean=float(expect[sel].mean()),
                    difference=float(diff[sel].mean()),
                    difference_err=float(diff[sel].std(ddof=1) / np.sqrt(n)))

    q = np.quantile(r[ok], [0.0, 1 / 3, 2 / 3, 1.0])
    rows = {f"{q[j]:.0f}-{q[j + 1]:.0f}": matched(ok & (r >= q[j]) & (
        (r < q[j + 1]) if j < 2 else (r <= q[j + 1]))) for j in range(3)}
    return dict(
        all=matched(ok), by_distance=rows, by_true_mass=_mass_bins(ok, ref, matched),
        note="the test set's own PIT at the survey cluster's true mass and comoving "
             "distance (Gaussian kernel regression, 0.1 dex x 20 h^-1 Mpc, over the "
             "test clusters at their mock observer distances): the PIT depends on "
             "distance (the flux limit makes nearby clusters richer, and the network "
             "reads richness), so by distance the survey is compared with the test set "
             "at the same mass and distance; difference ~ 0 within difference_err if "
             "the survey is observed as the mock is")


def likelihood_check(pdf, post: Mapping, ref, use, cosmology: Cosmology,
                     test_set=None) -> dict | None:
    """Do the survey's predictions follow the test set's P(d~ | M) at the true masses?

    The PIT u = P(d~' <= d~ | M_true) of each survey cluster in the calibration joint PDF
    (:func:`cmpipe.massfunction.likelihood_pit`) is uniform overall and in true-mass bins
    if the survey is observed as the mock is. In distance bins neither is uniform (the
    flux limit makes nearby clusters richer, and the network reads richness), so there
    the survey is compared with the test set's own PIT at the same mass and distance.

    Parameters
    ----------
    pdf : cmpipe.calibration.JointPDF
    post : mapping of ndarray
        The posterior table: ``log10_m_pred`` (d~) and ``z``.
    ref : ndarray
        True masses, log10(h^-1 Msun).
    use : ndarray of bool
        The clusters to check.
    cosmology : Cosmology
        For the clusters' comoving distances.
    test_set : tuple of ndarray, optional
        :func:`cmpipe.io.survey_products.read_test_set_truth`: the test set's d~, true
        masses and observer distances [h^-1 Mpc]; adds ``matched_to_test_set``.

    Returns
    -------
    dict or None
        :func:`pit_summary` of all clusters and by true mass; None for fewer than two.
    """
    from ..massfunction import likelihood_pit

    u = likelihood_pit(pdf, post["log10_m_pred"], ref)
    ok = use & np.isfinite(u)
    if ok.sum() < 2:
        return None
    out = dict(all=pit_summary(u[ok]), by_true_mass=_mass_bins(ok, ref,
                                                                lambda m: pit_summary(u[m])),
               note="u = P(d~' <= d~ | M_true) in the calibration joint PDF: uniform (mean "
                    "0.5 +- mean_err, 15.9% below 0.159 and above 0.841) if the survey's "
                    "predictions follow the test set's likelihood")
    r = np.asarray(cosmology.comoving_distance_mpc_h(post["z"]), dtype=float)
    if test_set is not None:
        d_t, m_true_t, r_t = test_set
        u_t = likelihood_pit(pdf, d_t, m_true_t)
        m_t = np.asarray(m_true_t, dtype=float)
        expect = _test_set_expectation(u_t, m_t, r_t, ref, r, ok)
        out["matched_to_test_set"] = _matched_to_test_set(u, expect, ok, ref, r)
    return out


def pulls_record(*, run, meta: Mapping, post: Mapping, refs: ReferenceMasses,
                 log10_m_complete: float, log10_m_complete_from: str, pulls: Mapping,
                 eddington, likelihood, population_log10_m_range,
                 mass_function: Mapping) -> dict:
    """The content of ``survey/pulls.json`` (docs/data-products.md), in its key order:
    definitions, counts, the pulls of both priors, the Eddington shift, the likelihood
    check and the ``mass_function`` comparison."""
    fm = post["flat_mean"]
    return dict(
        run=run, source=meta.get("source"), reference=refs.kind,
        estimate="posterior mean", sigma="posterior standard deviation; catalogue mass "
        "errors added in quadrature",
        pull_definition=PULL_DEFINITIONS["mean_sd"][1],
        pull_definition_median_half68=PULL_DEFINITIONS["median_half68"][1] + " (keys "
        "flat.median_half68, population.median_half68)",
        population_log10_m_range=population_log10_m_range,
        n_clusters=int(len(post["cluster_id"])), n_with_posterior=int(
            np.isfinite(post["flat_median"]).sum()),
        n_matched=int(np.sum(np.isfinite(fm) & np.isfinite(refs.log10_m))),
        log10_m_complete=log10_m_complete, log10_m_complete_from=log10_m_complete_from,
        flat=pulls["flat"], population=pulls["population"], eddington=eddington,
        likelihood_check=likelihood, mass_function=mass_function)
