"""Survey posteriors: each cluster's network prediction d~ through the calibration, under
the test-set (flat) prior and under the population (Tinker 2008) prior.

One row per survey cluster, sorted by id (:func:`cmpipe.io.survey_products.
survey_posterior_schema`); clusters without a cube have NaN posteriors. Masses are
log10(M200c / h^-1 Msun), standard deviations dex.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ..cosmology import Cosmology
from ..io.survey_products import SURVEY_POSTERIOR_KEYS, SURVEY_PRIORS
from ..io.tables import CatalogueError
from ..settings import ConfigError, Settings

__all__ = ["population_mass_range", "nearest_calibrated_distance", "posterior_table_base",
           "predictions_by_cluster", "survey_posterior_table", "survey_posterior_meta",
           "log_posterior_summary"]

log = logging.getLogger(__name__)

#: Clusters whose posteriors are summarised at once.
_CHUNK = 2048


def population_mass_range(s: Settings, measured_range, measured_what: str = "the calibrated "
                          "range of the joint PDF") -> tuple[float, float]:
    """True-mass range of the population prior, log10(M200c / h^-1 Msun).

    The sample's (``survey.population_prior``, or the synthetic survey's mass threshold)
    clipped to ``measured_range``, the masses the estimator's likelihood was measured on
    (:attr:`cmpipe.calibration.JointPDF.calibrated_mass_range`, or the neural flow's
    training masses).

    Raises
    ------
    ConfigError
        The range is empty.
    """
    sv = s.survey
    cal_lo, cal_hi = (float(v) for v in measured_range)
    lo = sv.population_prior.log10_m_min
    if lo is None and sv.source == "synthetic":
        lo = sv.synthetic.log10_m_min
    hi = sv.population_prior.log10_m_max
    lo = cal_lo if lo is None else max(float(lo), cal_lo)
    hi = cal_hi if hi is None else min(float(hi), cal_hi)
    if not lo < hi:
        raise ConfigError(f"survey.population_prior: the mass range [{lo}, {hi}] is empty "
                          f"inside {measured_what} [{cal_lo:.3f}, {cal_hi:.3f}]; widen "
                          "log10_m_min/log10_m_max or set them to null")
    return float(lo), float(hi)


#: A posterior whose median lies within this distance of an end of the calibrated mass
#: range (the test set's true masses) is flagged: the flat prior's edge pulls it inward.
CALIBRATION_EDGE_DEX = 0.2


def flag_calibration_edge(table, calibrated_range, edge_dex: float = CALIBRATION_EDGE_DEX):
    """Set ``table["outside_calibrated_range"]`` (int8): 1 where the flat-prior posterior
    median lies outside ``[lo + edge_dex, hi - edge_dex]`` of ``calibrated_range`` (lo, hi
    in log10 h^-1 Msun), i.e. within ``edge_dex`` of an end of the masses the calibration
    was measured on, or beyond; NaN medians are not flagged. Returns the number flagged."""
    lo, hi = (float(v) for v in calibrated_range)
    med = np.asarray(table["flat_median"], dtype=np.float64)
    fin = np.isfinite(med)
    flag = fin & ((med < lo + edge_dex) | (med > hi - edge_dex))
    table["outside_calibrated_range"] = flag.astype(np.int8)
    n = int(flag.sum())
    if n:
        log.warning("%d survey cluster(s) have a posterior median outside the calibrated "
                    "range [%.2f, %.2f] (the test set's masses %.2f-%.2f less %.1f dex at "
                    "each end, where the flat prior's edge pulls posteriors inward; column "
                    "outside_calibrated_range): extend the training masses (selection."
                    "log10_m200c_min, simulation.tail) to cover them", n, lo + edge_dex,
                    hi - edge_dex, lo, hi, edge_dex)
    return n


def nearest_calibrated_distance(pdf) -> float | None:
    """Nearest observer distance [comoving h^-1 Mpc] the calibration saw: the smallest
    distance of the test-set pairs its first distance node was tabulated from
    (``distance_min_mpc_h`` of node 0 of a distance-aware joint PDF); None for a
    distance-blind table, which records no distances."""
    nodes = getattr(pdf, "nodes", None)
    if not nodes:
        return None
    value = nodes[0].meta.get("distance_min_mpc_h")
    return None if value is None else float(value)


def posterior_table_base(s: Settings, cosmo: Cosmology, cl: Mapping,
                         nearest_mpc_h: float | None = None) -> dict:
    """The cluster columns of a survey posterior table (``survey/posteriors.ecsv`` and the
    flow's), with each cluster's comoving distance [h^-1 Mpc], whether it lies beyond
    the mock's observers (``mock.observer_radius_mpc_h``; logged: the calibration has no
    training window that faint-sampled) and whether it lies nearer than ``nearest_mpc_h``
    (:func:`nearest_calibrated_distance`; ``nearer_than_mock``, 0 everywhere when None;
    warned with the ids: no mock cluster was seen that near, with its window this wide on
    the sky and its galaxies this bright)."""
    table = {c: cl[c] for c in ("cluster_id", "ra_deg", "dec_deg", "z", "n_gal", "n_members",
                                "n_mem", "log10_m_cat", "log10_m_cat_err", "skipped")}
    r = np.asarray(cosmo.comoving_distance_mpc_h(np.asarray(cl["z"], dtype=float)),
                   dtype=float).reshape(-1)
    from ..cosmology import observer_radius_mpc_h

    depth = observer_radius_mpc_h(s, cosmo)
    table["comoving_distance_mpc_h"] = r
    table["beyond_mock_depth"] = (r > depth).astype(np.int8)
    near = (r < nearest_mpc_h) if nearest_mpc_h is not None else np.zeros(r.size, bool)
    table["nearer_than_mock"] = near.astype(np.int8)
    if near.any():
        ids = np.asarray(cl["cluster_id"])[near]
        log.warning("%d survey cluster(s) lie nearer than any cluster the calibration saw "
                    "(comoving distance < %.1f h^-1 Mpc, the nearest test-set observer "
                    "distance; column nearer_than_mock): their posteriors are extrapolated; "
                    "ids %s%s", int(near.sum()), nearest_mpc_h,
                    ", ".join(str(i) for i in ids[:20]), " ..." if ids.size > 20 else "")
    n_far = int(table["beyond_mock_depth"].sum())
    if n_far:
        fix = ("their redshifts carry peculiar velocities beyond the survey's depth, which the "
               "mock's observers reach (mock.observer_radius_mpc_h: null); set it a little "
               "deeper to cover them" if s.mock.observer_radius_mpc_h is None else
               "raise mock.observer_radius_mpc_h to the survey's depth (or null) and rerun")
        log.warning("%d of %d survey cluster(s) lie beyond the mock's observers (comoving "
                    "distance > %g h^-1 Mpc, z up to %.3f): the network and its calibration "
                    "never saw clusters that far, so their posteriors are extrapolated "
                    "(column beyond_mock_depth); %s", n_far, r.size, depth,
                    float(np.nanmax(np.asarray(cl["z"], dtype=float))), fix)
    return table


def predictions_by_cluster(cluster_ids, pred: Mapping, cubes) -> np.ndarray:
    """Network predictions d~ [log10(h^-1 Msun)] in the rows of ``cluster_ids`` (sorted),
    NaN for clusters without a cube.

    Raises
    ------
    CatalogueError
        A predicted cluster is not in ``cluster_ids`` (``cubes`` names the file).
    """
    n = len(cluster_ids)
    d = np.full(n, np.nan)
    if len(pred["cluster_id"]):
        row = np.searchsorted(cluster_ids, pred["cluster_id"])
        if np.any(row >= n) or np.any(cluster_ids[np.minimum(row, n - 1)]
                                      != pred["cluster_id"]):
            raise CatalogueError(cubes, "cluster_id", "cube ids differ from the phase-space "
                                 "cluster table", "rerun survey_cubes")
        d[row] = pred["log10_m200c_pred"]
    return d


def survey_posterior_table(s: Settings, cosmo: Cosmology, cl: Mapping, d, pdf,
                           m_range) -> dict:
    """The posterior table of the survey clusters.

    Parameters
    ----------
    s : Settings
    cosmo : Cosmology
    cl : mapping of ndarray
        The phase-space cluster table (sorted by id).
    d : ndarray
        Network prediction d~ per cluster [log10(h^-1 Msun)], NaN without a cube.
    pdf : cmpipe.calibration.JointPDF or cmpipe.calibration.DistanceJointPDF
        The calibration; a distance-aware one is sliced at each cluster's comoving distance
        (from its redshift, ``comoving_distance_mpc_h``), the distance-blind test-set
        prior (its ``blind`` table) weighting the population prior.
    m_range : (float, float)
        True-mass range of the population prior, log10(h^-1 Msun)
        (:func:`population_mass_range`).

    Returns
    -------
    dict of ndarray
        :func:`posterior_table_base`, ``log10_m_pred``, ``extrapolated`` and the
        ``flat_*`` (test-set prior) and ``pop_*`` (population prior) summaries.
    """
    from ..calibration import calibration_rows, is_extrapolated
    from ..massfunction import prior_from_joint_pdf, summaries_under_priors

    n = len(cl["cluster_id"])
    ok = np.isfinite(d)
    table = posterior_table_base(s, cosmo, cl, nearest_calibrated_distance(pdf))
    table["log10_m_pred"] = d
    table["extrapolated"] = (is_extrapolated(pdf, np.where(ok, d, pdf.d_grid[0]))
                             & ok).astype(np.int8)
    for p in ("flat", "pop"):
        for key in SURVEY_POSTERIOR_KEYS:
            table[f"{p}_{key}"] = np.full(n, np.nan)
    prior = prior_from_joint_pdf(getattr(pdf, "blind", pdf))
    dist = np.asarray(table["comoving_distance_mpc_h"], dtype=np.float64)
    idx = np.flatnonzero(ok)
    for c0 in range(0, idx.size, _CHUNK):
        sel = idx[c0:c0 + _CHUNK]
        su = summaries_under_priors(pdf.m_grid, calibration_rows(pdf, d[sel], dist[sel]),
                                    cl["z"][sel], cosmo, prior, log10_m_range=m_range)
        for p, name in (("flat", "test_prior"), ("pop", "population_prior")):
            for key in SURVEY_POSTERIOR_KEYS:
                table[f"{p}_{key}"][sel] = su[name][key]
    flag_calibration_edge(table, pdf.calibrated_mass_range)
    return table


def survey_posterior_meta(s: Settings, table: Mapping, cl: Mapping, m_range, *, model,
                          joint_pdf) -> dict:
    """Header metadata of the survey posterior table: run, inputs, priors, counts and the
    column notes."""
    n = len(cl["cluster_id"])
    return dict(
        run=s.run, model=str(model), joint_pdf=str(joint_pdf),
        prior_flat=SURVEY_PRIORS["flat"], prior_pop=SURVEY_PRIORS["pop"],
        population_log10_m_range=list(m_range),
        n_clusters=int(n), n_with_posterior=int(np.isfinite(table["flat_median"]).sum()),
        n_skipped=int(cl["skipped"].sum()), n_extrapolated=int(table["extrapolated"].sum()),
        n_beyond_mock_depth=int(table["beyond_mock_depth"].sum()),
        n_nearer_than_mock=int(table["nearer_than_mock"].sum()),
        n_outside_calibrated_range=int(table["outside_calibrated_range"].sum()),
        calibration_edge_dex=CALIBRATION_EDGE_DEX,
        comments=["flat_*: posterior under the test-set prior (flat in log M): "
                  "the paper's calibrated posterior",
                  "pop_*: posterior under the Tinker (2008) mass function at the cluster "
                  f"redshift (population prior), truncated to log10 M in [{m_range[0]:.3f}, "
                  f"{m_range[1]:.3f}]",
                  "masses log10(M200c / h^-1 Msun); *_sd in dex; lo68/hi68 = 15.87/84.13%, "
                  "lo95/hi95 = 2.5/97.5% quantiles",
                  "skipped = 1: fewer than survey.min_galaxies galaxies in the window (NaN)"])


def log_posterior_summary(table: Mapping, cl: Mapping) -> None:
    """Log the posteriors made: clusters whose d~ fell in a gap of the calibration
    (warned), the median mass and the median shift population - flat prior [dex]."""
    n = len(cl["cluster_id"])
    ok = np.isfinite(table["log10_m_pred"])
    good = np.isfinite(table["flat_median"]) & np.isfinite(table["pop_median"])
    if ok.sum() > good.sum():
        log.warning("%d cluster(s) have a prediction d~ where the calibration joint PDF "
                    "vanishes (a gap of the test set): NaN posteriors, ids %s",
                    int(ok.sum() - good.sum()), ", ".join(
                        str(int(i)) for i in cl["cluster_id"][ok & ~good][:20]))
    if good.any():
        shift = table["pop_median"][good] - table["flat_median"][good]
        log.info("survey posteriors: %d of %d clusters (%d skipped, %d extrapolated); median "
                 "log M (flat prior) %.3f, median shift population - flat %.3f dex",
                 good.sum(), n, int(cl["skipped"].sum()), int(table["extrapolated"].sum()),
                 float(np.median(table["flat_median"][good])), float(np.median(shift)))
    else:
        log.warning("survey posteriors: no cluster has a cube; every posterior is NaN")
