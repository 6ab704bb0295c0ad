"""Neural-flow rules on the survey (issue 9): the survey clusters' images and posteriors.

Products under ``results/{run}/`` (docs/data-products.md, "Neural flow"):

- ``flow_survey_images``    -> flow/images/survey.h5
- ``flow_survey_posteriors``-> flow/survey_posteriors.ecsv, .csv
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from ..cosmology import make_cosmology
from ..io.tables import CatalogueError, read_table
from .common import log, settings_of
from .flow import (FLOW_PRIOR, FLOW_SBI_PRIOR, OUTSIDE_GRID_TOLERANCE, flow_curves,
                   grid_summaries, load_flow, set_flow_threads, write_flow_images)

__all__ = ["flow_survey_images", "flow_survey_posteriors"]


def flow_survey_images(*, config, phase_space, out, progress=False):
    """Rule ``flow_survey_images``: 2-D KDE images of the survey clusters that have a cube
    (``skipped == 0`` in ``survey/phase_space.h5``); true masses NaN. The distance is the
    comoving one of the cluster redshift, ``(1 + z) d_A`` from the phase-space table (equal
    to the run cosmology's comoving distance in flat LCDM; this rule's environment has no
    astropy)."""
    s = settings_of(config)
    cl, _ = read_table(phase_space, group="clusters",
                       columns=["cluster_id", "n_gal", "n_members", "skipped", "z",
                                "d_a_mpc_h"])
    kept = cl["skipped"] == 0
    ids = cl["cluster_id"][kept]
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    rows = dict(cluster_id=ids, log10_m200c=np.full(ids.size, np.nan),
                n_gal=cl["n_gal"][kept][order], n_members=cl["n_members"][kept][order],
                distance_mpc_h=((1.0 + cl["z"]) * cl["d_a_mpc_h"])[kept][order])
    g, _ = read_table(phase_space, group="galaxies",
                      columns=["cluster_id", "x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"],
                      finite=["x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"])
    keep = np.isin(g["cluster_id"], ids)
    g = {c: v[keep] for c, v in g.items()}
    o = np.argsort(g["cluster_id"], kind="stable")
    g = {c: v[o] for c, v in g.items()}
    write_flow_images(out, ids, g, rows, s, "survey", phase_space, progress)


def _population_range(s, meta) -> tuple[float, float]:
    """True-mass range of the population prior: the survey sample's (as for the CNN3D +
    SBI survey posteriors) clipped to the flow's training masses."""
    from ..survey.posteriors import population_mass_range

    return population_mass_range(s, meta["training_mass_range"],
                                  "the flow's training masses")


def flow_survey_posteriors(*, config, model, images, phase_space, out, csv_out=None,
                           joint_pdf=None, threads=1, extra_meta=None,
                           estimator="neural flow"):
    """Rule ``flow_survey_posteriors``: the flow's posteriors of the survey clusters.

    Same table as ``survey/posteriors.ecsv`` (one row per survey cluster, sorted by id;
    ``flat_*`` under the training-set prior the flow carries, ``pop_*`` re-weighted by
    Tinker 2008 at the cluster redshift over that prior, truncated to the sample's mass
    range inside the training masses). ``log10_m_pred`` holds the flow's point estimate
    (``calibration.point_estimate`` of the flat posterior); ``extrapolated`` flags
    posteriors with more than 1% of their probability outside the mass grid. With
    ``joint_pdf`` (rule ``flow_calibrate``) the table is the CNN3D's
    (:func:`cmpipe.survey.posteriors.survey_posterior_table`) with the flow's point
    estimate as d~: slices of the test-split calibration at each cluster's d~ and distance.
    ``extra_meta``: more header metadata (``cmpipe infer`` names the estimator it chose);
    ``estimator``: its name (the set estimator's rule ``set_survey_posteriors`` runs this on
    galaxy sets).
    """
    from ..io.survey_products import SURVEY_POSTERIOR_KEYS, survey_posterior_schema
    from ..massfunction import summaries_under_priors
    from ..survey.posteriors import flag_calibration_edge, posterior_table_base

    s = settings_of(config)
    set_flow_threads(threads)
    cosmo = make_cosmology(s.cosmology)
    point = s.calibration.point_estimate
    cl, cl_attrs = read_table(phase_space, group="clusters")
    n = len(cl["cluster_id"])
    fm, meta, grid = load_flow(model)
    cols, curves, mass = flow_curves(fm, grid, images)
    row = np.searchsorted(cl["cluster_id"], cols["cluster_id"])
    if np.any(row >= n) or np.any(cl["cluster_id"][np.minimum(row, n - 1)]
                                  != cols["cluster_id"]):
        raise CatalogueError(images, "cluster_id", "image ids differ from the phase-space "
                             "cluster table", "rerun flow_survey_images")
    if joint_pdf is not None:
        table, schema, meta_out = _calibrated_survey_table(s, cosmo, cl, row, curves, grid,
                                                           joint_pdf, images, model, estimator)
        return _write_flow_survey(table, schema, dict(meta_out, **(extra_meta or {})), cl,
                                  cl_attrs, phase_space, out, csv_out)
    m_range = _population_range(s, meta)
    prior = np.asarray(meta["training_prior"], dtype=np.float64)
    if prior.shape != grid.shape:
        raise CatalogueError(Path(model).parent / "flow.json", "training_prior",
                             "prior and mass grid differ in length", "rerun flow_train")
    table = posterior_table_base(s, cosmo, cl)
    for p in ("flat", "pop"):
        for key in SURVEY_POSTERIOR_KEYS:
            table[f"{p}_{key}"] = np.full(n, np.nan)
    table["extrapolated"] = np.zeros(n, dtype=np.int8)
    table["extrapolated"][row] = ~(mass >= 1.0 - OUTSIDE_GRID_TOLERANCE)
    inside = ((grid >= m_range[0]) & (grid <= m_range[1])).astype(np.float64)
    for c0 in range(0, row.size, 2048):
        sl = slice(c0, c0 + 2048)
        su = summaries_under_priors(grid, curves[sl], cl["z"][row[sl]], cosmo, prior * inside)
        for p, name in (("flat", "test_prior"), ("pop", "population_prior")):
            for key in SURVEY_POSTERIOR_KEYS:
                table[f"{p}_{key}"][row[sl]] = su[name][key]
    table["log10_m_pred"] = table[f"flat_{point}"]
    flag_calibration_edge(table, meta["training_mass_range"])
    schema = dict(survey_posterior_schema())
    schema["log10_m_pred"] = ("f8", "log10(h^-1 Msun)",
                              f"flow point estimate (posterior {point}, training-set prior)")
    schema["extrapolated"] = ("i1", "", "1: more than 1% of the flow's probability outside "
                                        "the mass grid")
    for key in SURVEY_POSTERIOR_KEYS:
        unit, desc = schema[f"flat_{key}"][1:]
        schema[f"flat_{key}"] = ("f8", unit, desc.replace("test-set (flat) prior",
                                                          "training-set (flat) prior"))
    meta_out = dict(
        **(extra_meta or {}), run=s.run, estimator=estimator, model=str(model),
        images=str(images),
        prior_flat=FLOW_PRIOR,
        prior_pop="population prior: the flat posterior re-weighted by the Tinker et al. "
                  "(2008) mass function at the cluster redshift over the training-set prior",
        population_log10_m_range=list(m_range),
        n_clusters=int(n), n_with_posterior=int(np.isfinite(table["flat_median"]).sum()),
        n_skipped=int(cl["skipped"].sum()), n_extrapolated=int(table["extrapolated"].sum()),
        n_beyond_mock_depth=int(table["beyond_mock_depth"].sum()),
        n_outside_calibrated_range=int(table["outside_calibrated_range"].sum()),
        comments=["flat_*: the flow's posterior (training-set prior, flat in log M)",
                  "pop_*: posterior under the Tinker (2008) mass function at the cluster "
                  f"redshift, truncated to log10 M in [{m_range[0]:.3f}, {m_range[1]:.3f}]",
                  "masses log10(M200c / h^-1 Msun); *_sd in dex; lo68/hi68 = 15.87/84.13%, "
                  "lo95/hi95 = 2.5/97.5% quantiles",
                  "skipped = 1: fewer than survey.min_galaxies galaxies in the window (NaN)"])
    _write_flow_survey(table, io.Schema(schema), meta_out, cl, cl_attrs, phase_space, out,
                       csv_out)


def _calibrated_survey_table(s, cosmo, cl, row, curves, grid, joint_pdf, images, model,
                             estimator):
    """Survey posteriors of the flow + SBI: table, schema and header metadata."""
    from ..calibration import load_calibration
    from ..io.survey_products import survey_posterior_schema
    from ..survey.posteriors import (population_mass_range, survey_posterior_meta,
                                     survey_posterior_table)

    pdf = load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
    d = np.full(len(cl["cluster_id"]), np.nan)
    d[row] = grid_summaries(grid, curves, None, None, s.calibration.point_estimate)["point"]
    m_range = population_mass_range(s, pdf.calibrated_mass_range)
    table = survey_posterior_table(s, cosmo, cl, d, pdf, m_range)
    meta = survey_posterior_meta(s, table, cl, m_range, model=model, joint_pdf=joint_pdf)
    meta.update(estimator=f"{estimator} + SBI", images=str(images),
                prior_flat=FLOW_SBI_PRIOR)
    schema = dict(survey_posterior_schema())
    schema["log10_m_pred"] = ("f8", "log10(h^-1 Msun)", "flow point estimate (posterior "
                              f"{s.calibration.point_estimate}): the summary d~ calibrated")
    return table, io.Schema(schema), meta


def _write_flow_survey(table, schema, meta_out, cl, cl_attrs, phase_space, out, csv_out):
    """Write the flow's survey posterior table (and its CSV twin; ``cluster_name`` when the
    input's ids were names) and log a summary."""
    from ..io.survey import write_any_table
    from ..io.survey_products import with_cluster_names

    table, schema = with_cluster_names(table, schema, cl_attrs, phase_space)

    n = len(cl["cluster_id"])
    write_any_table(out, table, schema, meta_out)
    if csv_out is not None:
        write_any_table(csv_out, table, schema, meta_out)
    good = np.isfinite(table["flat_median"])
    if good.any():
        log.info("flow survey posteriors: %d of %d clusters (%d skipped); median log M "
                 "(flat prior) %.3f, median population - flat shift %.3f dex", good.sum(), n,
                 int(cl["skipped"].sum()), float(np.median(table["flat_median"][good])),
                 float(np.nanmedian(table["pop_median"] - table["flat_median"])))
    else:
        log.warning("flow survey posteriors: no cluster has an image; every posterior is NaN")
