"""Survey rules: the run's config records, sky catalogues, cubes, posteriors, mass function.

Each stage reads its inputs, calls the science of :mod:`cmpipe.survey` and writes its
products (docs/data-products.md); ``cmpipe infer`` (:mod:`.infer`) runs
:func:`survey_cubes` and :func:`survey_posteriors` on a user's catalogue.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import io
from ..cosmology import make_cosmology
from ..io.mock import galaxy_offsets
from ..io.survey import (CLUSTER_NAME, read_phase_space_galaxies, read_survey_clusters,
                         read_survey_galaxies, write_any_table, write_survey_clusters,
                         write_survey_galaxies, write_survey_truth)
from ..io.survey_products import (CLUSTER_NAMES_ATTR, SURVEY_PHASE_SPACE_CLUSTER_SCHEMA,
                                  empty_survey_truth, read_table_columns, read_table_meta,
                                  read_test_set_truth, survey_posterior_schema,
                                  with_cluster_names, write_mass_function_table,
                                  write_survey_phase_space)
from ..io.tables import CatalogueError, read_table
from ..settings import ConfigError, stage_seed
from .common import jsonable, log, settings_of

__all__ = ["resolved_config", "model_config", "survey_catalogue", "survey_cubes",
           "survey_posteriors", "mass_function"]


def resolved_config(*, config, out, run_dir=None):
    """Rule ``resolved_config``: the run's config (overlays merged, defaults filled) as YAML.

    ``cmpipe infer --run-dir results/{run}`` reads it to rebuild the window, the KDE and the
    cosmology the model was trained with. The rule runs after the model, its config record
    (``model/config.json``) and the calibration are made, so a run that fails earlier
    leaves the previous file; with ``run_dir``, the SHA-256 of those products goes under the
    top-level key ``products`` (:func:`cmpipe.io.artefacts.run_products`, with the digests
    of its calibration and survey sections), which ``cmpipe infer`` checks.
    """
    import yaml

    from ..io.artefacts import PRODUCTS_KEY, run_products
    from ..sections import SPEED_ONLY_KEYS

    plain = json.loads(json.dumps(dict(config), default=str))
    plain.pop(PRODUCTS_KEY, None)
    if run_dir is not None:
        plain[PRODUCTS_KEY] = run_products(run_dir, plain, ignore=SPEED_ONLY_KEYS)
    text = ("# Resolved config of this run (config.yaml + --configfile overlays, schema "
            "defaults filled).\n# Written by rule resolved_config; read by `cmpipe infer "
            "--run-dir`. Do not edit.\n# 'products': SHA-256 of the model, its config record "
            "and the calibration this config describes (not a config key).\n"
            + yaml.safe_dump(plain, sort_keys=False))
    with io.atomic_output(out) as tmp:
        tmp.write_text(text)
    log.info("resolved config of run %s written to %s", plain.get("run"), out)


def model_config(*, config, model, out):
    """Rule ``model_config``: ``model/config.json``, the config sections that shaped the
    model (:data:`cmpipe.io.artefacts.MODEL_CONFIG_SECTIONS`) and the SHA-256 of its files.

    Runs right after the model is written (and only then: the rule has no params), so it
    records the config the model was trained with; ``cmpipe infer`` compares it with
    ``config.resolved.yaml``.
    """
    from ..io.artefacts import write_model_config

    rec = write_model_config(dict(config), Path(model).parent, out)
    log.info("model config record written to %s (model %s, sha256 %s)", out, model,
             rec["files"]["cnn3d.keras"][:12])


def survey_catalogue(*, config, clusters_out, galaxies_out, truth_out, meta_out, halos=None,
                     galaxies=None):
    """Rule ``survey_catalogue``: the survey's cluster and galaxy tables on the sky.

    ``survey.source: synthetic`` observes the synthetic box (:func:`cmpipe.survey.
    make_synthetic_survey`, observer from the ``survey`` stage seed); true masses go to
    ``truth_out`` only. ``survey.source: catalogue`` reads the user's files through the
    column mappings and writes the same normalised tables, and a truth table with no rows
    (``meta.json``: ``has_truth: false``), so later rules have one code path.
    """
    from ..survey import make_synthetic_survey, synthetic_survey_record
    from ..survey.volume import catalogue_survey_record

    s = settings_of(config)
    sv = s.survey
    cosmo = make_cosmology(s.cosmology)
    source = sv.source
    if source == "synthetic":
        if halos is None or galaxies is None:
            raise ConfigError("survey.source: synthetic needs catalogue/halos.h5 and "
                              "catalogue/galaxies.h5 (run the catalogue rule)")
        h, attrs = io.read_halos(halos)
        g, _ = io.read_galaxies(galaxies)
        seed = stage_seed(s.seed, "survey")
        sur = make_synthetic_survey(h, g, attrs, cosmo, seed=seed,
                                    fibre_arcsec=s.nuisance.fibre_collision_arcsec,
                                    infall_radius_r200c=s.nuisance.infall_radius_r200c,
                                    **sv.synthetic.to_dict())
        del h, g
        cl, gal, truth = sur.clusters, sur.galaxies, sur.truth
        meta = synthetic_survey_record(sur, attrs, seed, cosmo)
    elif source == "catalogue":
        cl = read_survey_clusters(sv.clusters, dict(sv.cluster_columns) or None,
                                  angle_unit=sv.angle_unit)
        gal = read_survey_galaxies(sv.galaxies, dict(sv.galaxy_columns) or None,
                                   angle_unit=sv.angle_unit)
        meta = catalogue_survey_record(sv.catalogue_volume.to_dict(), cosmo,
                                       clusters_file=sv.clusters,
                                       galaxies_file=sv.galaxies)
        truth = empty_survey_truth()
    else:
        raise ConfigError(f"survey.source: unknown source {source!r} (synthetic or "
                          "catalogue)")
    meta.update(n_clusters=int(len(cl["cluster_id"])), n_galaxies=int(len(gal["ra_deg"])))
    header = dict(source=source, cosmology=cosmo.name, run=s.run)
    write_survey_clusters(clusters_out, cl, meta=header)
    write_survey_galaxies(galaxies_out, gal, meta=header)
    write_survey_truth(truth_out, truth, meta=dict(header, has_truth=meta["has_truth"]))
    io.write_json(meta_out, jsonable(meta))
    log.info("survey (%s): %d clusters, %d galaxies, volume %.4g (h^-1 Mpc)^3%s", source,
             meta["n_clusters"], meta["n_galaxies"], meta["volume_mpc_h3"],
             "" if meta["has_truth"] else "; no true masses (truth table empty)")
    if meta["n_clusters"] == 0:
        raise CatalogueError(clusters_out, "cluster_id", "the survey holds no cluster",
                             "lower survey.synthetic.log10_m_min or raise radius_mpc_h / "
                             "area_deg2" if source == "synthetic" else
                             "check survey.catalogue.clusters")


def survey_cubes(*, config, clusters, cubes_out, phase_space_out, galaxies=None,
                 phase_space_in=None, cluster_columns=None, galaxy_columns=None,
                 angle_unit="auto", threads=1, progress=False):
    """Rule ``survey_cubes``: survey clusters -> the mock's window -> KDE cubes.

    Reads the cluster table (and either the galaxy table on the sky, ``galaxies``, or
    galaxies already in phase space, ``phase_space_in``), converts to phase space with
    :func:`cmpipe.survey.sky.sky_to_phase_space` and the config's ``window``, and computes the
    cubes with the config's ``kde`` settings, ``kde.batch_size`` at a time. Clusters with
    fewer than ``survey.min_galaxies`` window galaxies are skipped (logged, counted, kept in
    ``phase_space.h5`` with ``skipped = 1``). The cube file's ``log10_m200c`` is NaN (no
    true mass at ingestion) and ``n_members`` is -1 when the galaxy table has no
    membership column. ``cubes_out`` None: the phase-space table only (``cmpipe infer
    --estimator flow`` of a flow on 2-D images needs no cubes).
    """
    from ..survey.windows import (phase_space_windows, select_windows, sky_windows,
                                  survey_min_galaxies, warn_degenerate_windows)

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    W, V = s.window.half_width_mpc_h, s.window.v_max_kms
    if (galaxies is None) == (phase_space_in is None):
        raise ConfigError("survey_cubes: give exactly one of a galaxy table on the sky "
                          "(galaxies) or galaxies in phase space (phase_space_in)")
    min_gal = survey_min_galaxies(s.survey.min_galaxies, s.mock.min_galaxies)
    cl = read_survey_clusters(clusters, cluster_columns, angle_unit=angle_unit)
    if not len(cl["cluster_id"]):
        raise CatalogueError(clusters, "(rows)", "the table has no cluster row (header only?)",
                             "give one row per cluster (cluster_id, ra_deg, dec_deg, z)")
    names = cl.pop(CLUSTER_NAME, None)       # ids are names: ids = rows, names kept
    order = np.argsort(cl["cluster_id"], kind="stable")
    cl = {c: v[order] for c, v in cl.items()}
    if phase_space_in is None:
        if angle_unit == "auto":
            from ..survey.sky import check_cluster_density
            check_cluster_density(cl["ra_deg"], cl["dec_deg"], cl["z"], cosmo,
                                  table=str(clusters))
        gal = read_survey_galaxies(galaxies, galaxy_columns, angle_unit=angle_unit,
                                   cluster_names=names)
        win = sky_windows(cl, gal, cosmo, half_width_mpc_h=W, v_max_kms=V,
                          pair_by_cluster_id=s.survey.pair_by_cluster_id,
                          cluster_table=str(clusters), galaxy_table=str(galaxies))
    else:
        gal = read_phase_space_galaxies(phase_space_in, cl["cluster_id"], half_width_mpc_h=W,
                                        v_max_kms=V, cluster_names=names)
        win = phase_space_windows(gal, cl, cosmo, half_width_mpc_h=W, v_max_kms=V,
                                  source=phase_space_in)
    sel = select_windows(cl, win, min_gal, half_width_mpc_h=W, v_max_kms=V)
    if not sel.kept.any():
        _no_cluster_left(cl, sel, min_gal, clusters, galaxies or phase_space_in, W, V)
    write_survey_phase_space(phase_space_out, sel.clusters, sel.galaxies, dict(
        half_width_mpc_h=W, v_max_kms=V, min_galaxies=min_gal, counts=sel.counts,
        skipped_ids=[int(i) for i in sel.skipped_ids], cosmology=cosmo.name,
        clusters_file=str(clusters),
        galaxies_file=str(galaxies if galaxies is not None else phase_space_in),
        input="sky" if phase_space_in is None else "phase space",
        **({} if names is None else {CLUSTER_NAMES_ATTR: [str(x) for x in names]})))
    ids = cl["cluster_id"][sel.kept]
    warn_degenerate_windows(ids, sel.galaxies,
                            galaxies if galaxies is not None else phase_space_in)
    if cubes_out is not None:
        _write_survey_cubes(s, cubes_out, ids, sel, threads=threads, progress=progress,
                            clusters=clusters, cosmo=cosmo)
    log.info("survey cubes: %d of %d clusters (%d skipped), %d window galaxies, %s",
             ids.size, len(cl["cluster_id"]), sel.skipped_ids.size,
             sel.counts["n_window_galaxies_kept"],
             f"{s.kde.n_grid}^3 voxels" if cubes_out is not None else "no cubes made")


def _no_cluster_left(cl, sel, min_gal, clusters, galaxies, W, V):
    """Stop with the reasons when no cluster has a cube: every window empty, or too few
    galaxies in each (counted), and what to check."""
    n = len(cl["cluster_id"])
    n_gal = sel.clusters["n_gal"]
    empty = int((n_gal == 0).sum())
    few = n - empty
    raise CatalogueError(
        galaxies, "galaxies", f"no cluster is left: of {n} cluster(s) of {clusters}, "
        f"{empty} have no galaxy in the window (|x|,|y| <= {W:g} h^-1 Mpc, |v| <= {V:g} "
        f"km/s) and {few} fewer than {min_gal} (largest {int(n_gal.max(initial=0))})",
        "check that galaxies and clusters cover the same sky and redshifts (z, not c z or "
        "z / 1000; RA/Dec in degrees), or lower --min-galaxies (survey.min_galaxies)")


def _write_survey_cubes(s, cubes_out, ids, sel, *, threads, progress, clusters, cosmo):
    """The KDE cubes of the kept clusters (:func:`cmpipe.kde.kde_cube_batches`), written
    batch by batch, with each cluster's comoving distance from its redshift; a singular
    window stops with the cluster table named."""
    import numba

    from ..io.cubes import CubeWriter
    from ..kde import Grid3D, KDEInputError, kde_cube_batches

    k, g = s.kde, sel.galaxies
    W, V = s.window.half_width_mpc_h, s.window.v_max_kms
    n_gal = sel.clusters["n_gal"]
    z = np.asarray(sel.clusters["z"], dtype=np.float64)[sel.kept]
    rows = dict(cluster_id=ids, log10_m200c=np.full(ids.size, np.nan), n_gal=n_gal[sel.kept],
                n_members=sel.n_members[sel.kept],
                distance_mpc_h=np.asarray(cosmo.comoving_distance_mpc_h(z), dtype=np.float64))
    grid = Grid3D(n=k.n_grid, half_width_mpc_h=W, v_max_kms=V)
    file_attrs = dict(n_grid=k.n_grid, half_width_mpc_h=W, v_max_kms=V, h0=k.h0,
                      truncation=k.truncation, normalisation="each cube sums to 1",
                      split="survey", axes="x_proj_mpc_h, y_proj_mpc_h, v_los_kms")
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    with CubeWriter(cubes_out, ids.size, k.n_grid, file_attrs) as w:
        if ids.size:
            offsets = galaxy_offsets(ids, g["cluster_id"])
            batches = kde_cube_batches(g["x_proj_mpc_h"], g["y_proj_mpc_h"], g["v_los_kms"],
                                       offsets, grid=grid, h0=k.h0, truncation=k.truncation,
                                       batch_size=k.batch_size, ids=ids, progress=progress,
                                       desc="kde survey")
            try:
                for b0, b1, cubes in batches:
                    w.write(cubes, {c: v[b0:b1] for c, v in rows.items()})
            except KDEInputError as err:
                raise CatalogueError(clusters, "galaxies", str(err),
                                     "drop that cluster or raise survey.min_galaxies"
                                     ) from err


def survey_posteriors(*, config, model, joint_pdf, cubes, phase_space, out, csv_out=None,
                      extra_meta=None):
    """Rule ``survey_posteriors``: d~ per cluster and its posteriors under both priors.

    Network predictions of the survey cubes (:func:`cmpipe.cnn.training.predict` with the run's
    model), then the calibrated posterior (the joint-PDF slice: test-set prior, what the
    paper reports; columns ``flat_*``) and the population-prior posterior (re-weighted by
    Tinker 2008 at the cluster redshift over the test-set prior from the joint PDF; columns
    ``pop_*``). One row per survey cluster, sorted by id; skipped clusters have NaN.
    ``out`` (and ``csv_out``) format from the extension: .ecsv (units, descriptions and
    metadata kept), .csv (plain) or .fits. ``extra_meta``: more header metadata (``cmpipe
    infer`` names the estimator it chose).
    """
    from ..calibration import load_calibration
    from ..survey.posteriors import (log_posterior_summary, population_mass_range,
                                     predictions_by_cluster, survey_posterior_meta,
                                     survey_posterior_table)
    from ..cnn.training import predict

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    cl, cl_attrs = read_table(phase_space, group="clusters",
                              required=list(SURVEY_PHASE_SPACE_CLUSTER_SCHEMA))
    pdf = load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
    pred = predict(Path(model).parent, cubes,
                   batch_size=s.train.batch_size)
    d = predictions_by_cluster(cl["cluster_id"], pred, cubes)
    m_range = population_mass_range(s, pdf.calibrated_mass_range)
    table = survey_posterior_table(s, cosmo, cl, d, pdf, m_range)
    meta = survey_posterior_meta(s, table, cl, m_range, model=model, joint_pdf=joint_pdf)
    meta.update(extra_meta or {})
    table, schema = with_cluster_names(table, survey_posterior_schema(), cl_attrs, phase_space)
    write_any_table(out, table, schema, meta)
    if csv_out is not None:
        write_any_table(csv_out, table, schema, meta)
    log_posterior_summary(table, cl)


def mass_function(*, config, posteriors, meta, truth, out, pulls_out, mass_function_png,
                  pulls_png, joint_pdf=None, test_predictions=None, mock_clusters=None):
    """Rule ``mass_function``: the survey's dn/dlog10M, Tinker (2008), pulls and figures.

    The estimator of :func:`cmpipe.massfunction.estimate_mass_function` (inverse-uncertainty
    weighted KDE, bootstrap band) on the ``survey.mass_function.prior`` posteriors'
    ``estimate`` with their standard deviations, against Tinker (2008) as the survey should
    see it, forward-modelled through the calibration ``joint_pdf`` when given
    (:func:`cmpipe.survey.mass_function.compare_with_tinker`); pulls, the Eddington shift
    and the likelihood check against true masses (synthetic) or catalogue masses where they
    exist (:mod:`cmpipe.survey.stats`; docs/data-products.md for every definition).
    """
    from ..plots import pipeline as plots
    from ..calibration import load_calibration
    from ..survey.mass_function import compare_with_tinker, mass_function_sample
    from ..survey.stats import (eddington_shift, likelihood_check, pulls_record,
                                reference_masses, survey_pulls)

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    mf = s.survey.mass_function
    info = json.loads(Path(meta).read_text())
    post = read_table_columns(posteriors)
    sample = mass_function_sample(post, prior=mf.prior, estimate=mf.estimate,
                                  z_range=info.get("z_range"))
    if sample.use.sum() < 2:
        raise CatalogueError(posteriors, sample.column, f"only {int(sample.use.sum())} "
                             "cluster(s) with a posterior for the mass function",
                             "enlarge the survey (survey.synthetic.radius_mpc_h, area_deg2) "
                             "or lower survey.min_galaxies")
    tr = read_table_columns(truth)
    refs = reference_masses(post, tr, bool(info.get("has_truth")))
    pdf = (load_calibration(joint_pdf, distance_aware=s.calibration.distance_aware)
           if joint_pdf is not None else None)
    cmp = compare_with_tinker(sample, info, refs, cosmo, pdf=pdf, seed=s.seed,
                              synthetic_log10_m_min=s.survey.synthetic.log10_m_min,
                              **mf.to_dict())
    likelihood = None
    if pdf is not None and refs.kind == "truth":
        test_set = (read_test_set_truth(test_predictions, mock_clusters)
                    if test_predictions is not None and mock_clusters is not None else None)
        # the PIT in the distance-blind table, matched to the test set's distances
        likelihood = likelihood_check(getattr(pdf, "blind", pdf), post, refs.log10_m,
                                      sample.use, cosmo, test_set)
    pulls, per_cluster = survey_pulls(post, refs.log10_m, refs.err, cmp.log10_m_complete)
    result = pulls_record(
        run=s.run, meta=info, post=post, refs=refs, log10_m_complete=cmp.log10_m_complete,
        log10_m_complete_from=cmp.log10_m_complete_from, pulls=pulls,
        eddington=eddington_shift(post, refs, cmp.log10_m_complete, cmp.z_theory, cosmo,
                                  pulls),
        likelihood=likelihood,
        population_log10_m_range=read_table_meta(posteriors).get("population_log10_m_range"),
        mass_function=cmp.summary(n_clusters=int(sample.use.sum()),
                                  volume_mpc_h3=float(info["volume_mpc_h3"]),
                                  reference=refs.kind))
    table = cmp.table()
    write_mass_function_table(out, table)
    io.write_json(pulls_out, jsonable(result))
    plots.survey_mass_function_figure(table, result, mass_function_png,
                                      truth=tr if refs.kind == "truth" else None)
    plots.survey_pulls_figure(post, refs.log10_m, per_cluster, result, pulls_png)
    _log_mass_function(result, refs.kind)


def _log_mass_function(result, reference):
    m, f, pp = result["mass_function"], result["flat"]["all"], result["population"]["all"]
    log.info("mass function: %d clusters (Tinker expects %.0f); of %d bins above 10^%.2f "
             "the forward-modelled Tinker is inside the bootstrap band in %d (%d with the "
             "sample variance), the survey's true masses forward-modelled in %d; pulls vs %s: "
             "flat %s, population %s", m["n_clusters"],
             m["forward"].get("n_expected", np.nan), m["n_bins_compared"],
             result["log10_m_complete"], m["n_bins_forward_in_band"],
             m["n_bins_forward_in_band_with_sample_variance"],
             m["n_bins_truth_forward_in_band"] or 0, reference,
             f"{f['pull_mean']:.3f} +- {f['pull_sd']:.3f}" if f.get("n", 0) > 1 else "n/a",
             f"{pp['pull_mean']:.3f} +- {pp['pull_sd']:.3f}" if pp.get("n", 0) > 1 else "n/a")
    c = m["consistency"]
    log.info("mass function vs Tinker (2008): band-count p = %s, chi^2 p = %s: %s", *(
        "n/a" if v is None else f"{v:.3g}" for v in (c["band_count_p_value"],
                                                       c["chi2_p_value"])),
             {True: "consistent", False: "inconsistent", None: "not tested"}[
                 c["consistent_with_tinker"]])
