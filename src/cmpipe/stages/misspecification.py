"""Rules ``misspecification_shard`` and ``misspecification``: trained CNN3D + calibrations,
unchanged, on the eval clusters of variant universes
(:mod:`cmpipe.evaluation.misspecification`).

Products under ``results/{run}/`` (``docs/data-products.md``, "Analyses"):

- ``misspecification_shard`` -> ``robustness/misspecification/shard-{k}.json`` (temporary):
  the rows of every ``robustness.misspecification_shards``-th variant, one-thread jobs
  side by side; ``misspecification`` -> ``robustness/misspecification.{json,csv}`` from
  them (the same numbers for any number of shards: each variant draws from its own
  stream); ``misspecification_plots`` -> ``robustness/misspecification.png``

Models: the run's own (``marginalised`` when its mock draws every cluster's nuisances,
``nuisance.sample: true``; else ``fiducial``) and, with ``compare.fiducial_run``, the
fiducial-model run's beside it, on the same variant windows (one set of KDE cubes per
variant, both networks on it).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import io
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, read_table, write_csv
from ..settings import stage_rng
from .analyses import cubes_and_predict, load_network, read_json
from .common import jsonable, log, settings_of
from .compare import check_fiducial_run
from .cubes import split_galaxies

__all__ = ["MISSPECIFICATION_COLUMNS", "MISSPECIFICATION_CRITERIA", "FIDUCIAL_EVAL_TOLERANCE",
           "recorded_shards", "misspecification_shard", "misspecification",
           "misspecification_plots"]

MISSPECIFICATION_COLUMNS = ("model", "run", "estimator", "variant", "kind", "others",
                            "nuisance", "value", "n", "n_halos", "n_dropped",
                            "mean_residual_dex", "mean_residual_dex_err", "scatter_dex",
                            "scatter_dex_near", "scatter_dex_mid", "scatter_dex_far",
                            "coverage_68", "coverage_68_err", "coverage_95", "coverage_95_err",
                            "within_criteria")
#: Where a variant at a prior edge counts as calibrated (issue 28): |mean residual| <= 0.03
#: dex, 68% coverage within 0.68 +- 0.05, 95% within 0.95 +- 0.03.
MISSPECIFICATION_CRITERIA = {"mean_residual_dex": 0.03, "coverage_68": 0.05, "coverage_95": 0.03}
#: On the fiducial universe a marginalised model must still cover within these of nominal
#: (0.6827 / 0.9545).
FIDUCIAL_EVAL_TOLERANCE = {"coverage_68": 0.03, "coverage_95": 0.02}
_NOMINAL = {"coverage_68": 0.6827, "coverage_95": 0.9545}
#: Predictions that must agree to round-off (dex): the same windows through the same code.
_REPRODUCE_DEX = 1e-6


def recorded_shards(summary, default: int) -> int:
    """The shard count a finished matrix ``summary`` (``misspecification.json``) was made
    with (its ``n_shards``), else ``default`` (no file yet, or one without it).

    ``robustness.misspecification_shards`` is speed-only (:data:`cmpipe.sections.
    SPEED_ONLY_KEYS`): the workflow keeps the recorded count for an existing matrix, so a
    new count changes no job's input files and reruns nothing."""
    import json
    from pathlib import Path

    try:
        n = json.loads(Path(summary).read_text()).get("n_shards")
    except (OSError, ValueError, AttributeError):
        return int(default)
    return n if isinstance(n, int) and n >= 1 else int(default)


def _projected_eval_windows(projected, ids):
    """The eval clusters' rows of ``mock/projected.h5`` and their window galaxies before
    the flux limit (galaxy table sorted by cluster id), and the snapshot redshift."""
    from ..io.mock import PROJECTED_CLUSTER_SCHEMA

    pc, attrs = read_table(projected, group="clusters", required=PROJECTED_CLUSTER_SCHEMA)
    row = np.clip(np.searchsorted(pc["cluster_id"], ids), 0, len(pc["cluster_id"]) - 1)
    if not np.array_equal(pc["cluster_id"][row], ids):
        raise CatalogueError(projected, "cluster_id", "eval clusters missing from the "
                             "projected windows", "rerun the mock rules (snakemake ... "
                             "--forcerun project)")
    g_cid, _ = read_table(projected, group="galaxies", columns=["cluster_id"])
    lo = int(np.searchsorted(g_cid["cluster_id"], ids.min(), side="left"))
    hi = int(np.searchsorted(g_cid["cluster_id"], ids.max(), side="right"))
    del g_cid
    g, _ = read_table(projected, group="galaxies", rows=slice(lo, hi))
    keep = np.isin(g["cluster_id"], ids)
    return ({k: v[row] for k, v in pc.items()}, {k: v[keep] for k, v in g.items()},
            float(attrs["redshift"]))


def _eval_reference(path):
    """Stored eval predictions sorted by cluster id."""
    ref, _ = read_table(path, group="predictions")
    order = np.argsort(ref["cluster_id"], kind="stable")
    return {k: np.asarray(v)[order] for k, v in ref.items()}


def _models(s, model, normalisation, joint_pdf, eval_predictions, flow, fiducial,
            sets=None):
    """The models of the matrix: this run's, and the fiducial-model run's when given
    (checked: a fiducial run beside a marginalised one, on the same KDE grid). Each has
    its CNN3D + calibration and, when given, its flow (+ test-split calibration); this
    run's also its set estimator (+ calibration) when ``sets`` is given."""
    from ..calibration import load_calibration
    from .flow import load_flow

    def calibration(path):                  # each loaded once, not once per variant
        return load_calibration(path, distance_aware=s.calibration.distance_aware) if path \
            else None

    def one(kind, run, m, norm_path, pdf_path, ev, fl):
        net, norm = load_network(m, norm_path)
        fl = fl or {}
        return dict(kind=kind, run=run, net=net, norm=norm, model=str(m),
                    joint_pdf=str(pdf_path), eval=ev, pdf=calibration(pdf_path),
                    flow=load_flow(fl["model"]) if fl.get("model") else None,
                    flow_pdf=str(fl["joint_pdf"]) if fl.get("joint_pdf") else None,
                    flow_cal=calibration(fl.get("joint_pdf")))

    out = [one("marginalised" if s.nuisance.sample else "fiducial", s.run, model,
               normalisation, joint_pdf, eval_predictions, flow)]
    sets = sets or {}
    out[0]["sets"] = load_flow(sets["model"]) if sets.get("model") else None
    out[0]["sets_pdf"] = str(sets["joint_pdf"]) if sets.get("joint_pdf") else None
    out[0]["sets_cal"] = calibration(sets.get("joint_pdf"))
    if fiducial:
        # compare.fiducial_run beside nuisance.sample: false is a config error
        # (settings.semantic_errors); the named run must be fiducial itself
        check_fiducial_run(fiducial["config"], s.compare.fiducial_run)
        fid = one("fiducial", s.compare.fiducial_run, fiducial["model"],
                  fiducial["normalisation"], fiducial["joint_pdf"], fiducial["eval"],
                  dict(model=fiducial.get("flow_model"),
                       joint_pdf=fiducial.get("flow_joint_pdf")) if flow else None)
        if list(fid["norm"]["input"]["grid"]) != list(out[0]["norm"]["input"]["grid"]):
            raise CatalogueError(fiducial["normalisation"], "input.grid", "the fiducial "
                                 "model's cube grid differs from this run's",
                                 "run the fiducial model with this config's kde section")
        out.append(fid)
    return out


def _variant_windows(v, s, cosmo, proj, gal, z, dist):
    """The eval clusters of variant ``v`` after its nuisances, the flux limit and the
    richness cut: cluster rows and window galaxies (as flux_limit writes them)."""
    from ..mock.fluxlimit import flux_limit
    from ..mock.nuisance import WindowNuisances

    select, cl, g = None, proj, gal
    if v.kind != "fiducial":
        nset = dataclasses.replace(s.nuisance, sample=v.kind == "prior" or v.others == "prior",
                                   fixed=dict(v.fixed))
        wn = WindowNuisances(nset, s.window, cosmo, log10_m200c=proj["log10_m200c"],
                             redshift=z, observer_distance_mpc_h=dist,
                             rng=stage_rng(s.seed, f"misspecification/{v.name}"))
        cl, g, select = wn.apply(slice(None), proj, gal)
    c_out, g_out, _ = flux_limit(cl, g, dist, cosmology=cosmo, mag_r_limit=s.mock.mag_r_limit,
                                 min_galaxies=s.mock.min_galaxies, select=select)
    return c_out, g_out


def _thirds_scatter(eps, distance, edges) -> dict:
    """Scatter of the residuals in the near, middle and far thirds of the eval set's
    observer distances (``edges``: its 1/3 and 2/3 quantiles)."""
    which = np.searchsorted(edges, distance, side="right")
    out = {}
    for i, name in enumerate(("near", "mid", "far")):
        e = eps[(which == i) & np.isfinite(eps)]
        out[f"scatter_dex_{name}"] = float(np.std(e)) if e.size else float("nan")
    return out


def _row(m_kind, run, estimator, v, m, n_eval, thirds) -> dict:
    name, value = (next(iter(v.fixed.items())) if v.fixed else ("", float("nan")))
    ok = None
    if v.kind == "edge":
        c = MISSPECIFICATION_CRITERIA
        ok = bool(abs(m["mean_residual_dex"]) <= c["mean_residual_dex"]
                  and abs(m["coverage_68"] - 0.68) <= c["coverage_68"]
                  and abs(m["coverage_95"] - 0.95) <= c["coverage_95"])
    elif v.kind == "fiducial" and m_kind == "marginalised":
        ok = all(abs(m[k] - _NOMINAL[k]) <= tol for k, tol in FIDUCIAL_EVAL_TOLERANCE.items())
    return dict(model=m_kind, run=run, estimator=estimator, variant=v.name, kind=v.kind,
                others=v.others, nuisance=name,
                value=value, n_dropped=int(n_eval - m["n"]), within_criteria=ok, **thirds, **m)


def _score(rows, results, t, dist, halo, v, n_eval, edges):
    """Rows of variant ``v``: ``results`` holds (model, estimator, summaries) triples."""
    from ..evaluation.misspecification import variant_metrics

    for mdl, est, summ in results:
        m = variant_metrics(t, summ, halo, seed=0)
        eps = t - np.asarray(summ["median"], dtype=float)
        rows.append(_row(mdl["kind"], mdl["run"], est, v, m, n_eval,
                         _thirds_scatter(eps, dist, edges)))
        log.info("misspecification %s, %s model, %s: n %d, mean residual %+.3f +- %.3f dex, "
                 "scatter %.3f, 68%% %.3f +- %.3f, 95%% %.3f +- %.3f", v.name, mdl["kind"], est,
                 m["n"], m["mean_residual_dex"], m["mean_residual_dex_err"], m["scatter_dex"],
                 m["coverage_68"], m["coverage_68_err"], m["coverage_95"],
                 m["coverage_95_err"])


def _flow_name(mdl) -> str:
    return "flow_sbi" if mdl["flow_pdf"] else "flow"


def _estimates(s, models, preds, gal, offsets, ids, dist, t):
    """(model, estimator, summaries) of every model's CNN3D + SBI (``preds``: its
    predictions), flow and set estimator on one set of windows."""
    from ..calibration import summarise
    from .flow import flow_window_inputs, flow_window_summaries
    from .sets import set_window_sets

    out, flow_inputs = [], None
    for i, mdl in enumerate(models):
        out.append((mdl, "cnn3d_sbi", summarise(mdl["pdf"], preds[i], distance=dist)))
        if mdl["flow"] is not None:
            if flow_inputs is None:          # one set of images for every model's flow
                flow_inputs = flow_window_inputs(s, gal, offsets, ids)
            out.append((mdl, _flow_name(mdl), flow_window_summaries(
                s, mdl["flow"], mdl["flow_cal"], flow_inputs, dist, t)))
        if mdl.get("sets") is not None:
            fm = mdl["sets"][0]
            sets = set_window_sets(s, fm.settings.set_features, gal, offsets)
            out.append((mdl, "sets_sbi" if mdl["sets_pdf"] else "sets",
                        flow_window_summaries(s, mdl["sets"], mdl["sets_cal"],
                                              [(0, len(ids), sets)], dist, t)))
    return out


def _reproduced(pred, ids, ref, what) -> float:
    """Largest |difference| between ``pred`` of ``ids`` and the stored ``ref`` predictions
    on the ids both have (inf when they share none)."""
    both, a, b = np.intersect1d(ids, ref["cluster_id"], return_indices=True)
    if not both.size:
        log.warning("misspecification: no cluster of %s among the variant's", what)
        return float("inf")
    return float(np.max(np.abs(pred[a] - ref["log10_m200c_pred"][b])))


def misspecification_shard(*, config, model, normalisation, joint_pdf, projected, clusters,
                           eval_predictions, out, shard=0, n_shards=1, flow=None,
                           fiducial=None, threads=1, progress=True, sets=None):
    """Rule ``misspecification_shard``: the run's CNN3D + calibration, flow (``flow``: a
    mapping of ``model``, the flow's ``flow.pt``, and ``joint_pdf``, its test-split
    calibration or None) and set estimator (``sets``: likewise) and, with ``fiducial``, the
    fiducial-model run's (a mapping of ``model``, ``normalisation``, ``joint_pdf``,
    ``eval``, ``config``, ``flow_model`` and ``flow_joint_pdf`` paths) on the variant
    universes ``k`` with ``k % n_shards == shard`` (in :func:`variants` order), and shard 0
    on the eval clusters as stored (``eval``, this run's models). Writes ``out`` (JSON: the
    rows with their variant's index, -1 for ``eval``; the checks; the models).

    Checks, which stop the rule if broken (the windows would not be the eval clusters'):
    this run's CNN3D on the stored eval windows reproduces ``eval_predictions``; a CNN3D
    trained on the fiducial universe reproduces its own run's stored eval predictions on
    the fiducial variant (on the clusters both share).
    """
    import numba
    from tqdm.auto import tqdm

    from ..cosmology import make_cosmology
    from ..evaluation.misspecification import Variant, variants
    from ..kde import Grid3D
    from .evaluate import cluster_columns

    s = settings_of(config)
    shard, n_shards = int(shard), int(n_shards)
    if not 0 <= shard < n_shards:
        raise ValueError(f"misspecification shard {shard} of {n_shards}")
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    cosmo = make_cosmology(s.cosmology)
    models = _models(s, model, normalisation, joint_pdf, eval_predictions, flow, fiducial,
                     sets)
    nets = [(mdl["net"], mdl["norm"]) for mdl in models]
    ref = _eval_reference(eval_predictions)
    ids = ref["cluster_id"]
    if ids.size == 0:
        raise CatalogueError(eval_predictions, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    cc = cluster_columns(clusters, ids, ["observer_distance_mpc_h", "halo_id"])
    dist = np.asarray(cc["observer_distance_mpc_h"], dtype=np.float64)
    edges = np.quantile(dist, [1.0 / 3.0, 2.0 / 3.0])
    grid = Grid3D(n=s.kde.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                  v_max_kms=s.window.v_max_kms)
    bs = s.train.batch_size
    rows, checks = [], {}

    def windows(g, kept):
        return dict(x_mpc_h=g["x_proj_mpc_h"], y_mpc_h=g["y_proj_mpc_h"],
                    v_kms=g["v_los_kms"]), galaxy_offsets(kept, g["cluster_id"])

    def scored(index, estimates, t, d, halo, v, n_eval):
        new = []
        _score(new, estimates, t, d, halo, v, n_eval, edges)
        rows.extend([index, r] for r in new)    # tagged with the variant's index

    if shard == 0:       # the eval clusters as stored (this run's models): the path's check
        g = split_galaxies(clusters, ids)
        w, offs = windows(g, ids)
        pred = cubes_and_predict(nets[:1], w, offs, ids, grid, s.kde, bs, dist)
        checks["eval"] = float(np.max(np.abs(pred[0] - ref["log10_m200c_pred"])))
        t = ref["log10_m200c_true"]
        scored(-1, _estimates(s, models[:1], pred, g, offs, ids, dist, t), t, dist,
               cc["halo_id"], Variant("eval", "eval"), ids.size)

    proj, gal, z = _projected_eval_windows(projected, ids)
    if s.mock.members == "bound":
        gal = {k: v[gal["is_member"] != 0] for k, v in gal.items()}
    vs = variants(s.nuisance, s.robustness.misspecification_beyond)
    mine = [(k, v) for k, v in enumerate(vs) if k % n_shards == shard]
    for k, v in tqdm(mine, desc=f"misspecification {shard + 1}/{n_shards}", unit="variant",
                     disable=not progress):
        c_out, g_out = _variant_windows(v, s, cosmo, proj, gal, z, dist)
        kept, d = c_out["cluster_id"], c_out["observer_distance_mpc_h"]
        w, offs = windows(g_out, kept)
        preds = cubes_and_predict(nets, w, offs, kept, grid, s.kde, bs, d)
        for i, mdl in enumerate(models):
            if v.kind == "fiducial" and mdl["kind"] == "fiducial":
                own = mdl["eval"] == eval_predictions
                checks["fiducial"] = (float("inf") if own and kept.size != ids.size else
                                      _reproduced(preds[i], kept, ref if own else
                                                  _eval_reference(mdl["eval"]), mdl["eval"]))
        t = c_out["log10_m200c"]
        scored(k, _estimates(s, models, preds, g_out, offs, kept, d, t), t, d,
               c_out["halo_id"], v, ids.size)
    bad = {k: c for k, c in checks.items() if not c <= _REPRODUCE_DEX}
    if bad:
        raise RuntimeError(f"misspecification: the matrix's windows do not reproduce the stored "
                           f"eval predictions (max |difference| dex: {bad}; 'eval': "
                           f"{eval_predictions} from the eval split's galaxies, 'fiducial': "
                           "the fiducial variant of projected.h5 through the fiducial model): "
                           "rerun the mock rules (--forcerun project)")
    meta = [{k: mdl[k] for k in ("kind", "run", "model", "joint_pdf", "flow_pdf", "sets_pdf")
             if k in mdl} for mdl in models]
    # NaN and None as they are (io.write_json, not jsonable): the gather writes the same
    # numbers as one job would
    io.write_json(out, dict(shard=shard, n_shards=n_shards, rows=rows, checks=checks,
                            models=meta, edges=[float(e) for e in edges]))


def misspecification(*, config, shards, summary_out, table_out):
    """Rule ``misspecification``: the matrix from its shards (``shards``: the JSON files
    of :func:`misspecification_shard`, one per shard): the rows in variant order
    (``eval`` first), the summary per model and estimator; logs the verdicts."""
    import json
    from pathlib import Path

    s = settings_of(config)
    parts = []
    for path in shards:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise CatalogueError(path, "rows", f"not a misspecification shard ({err})",
                                 "rerun it: snakemake --forcerun misspecification_shard"
                                 ) from err
    n = {p["n_shards"] for p in parts}
    if n != {len(parts)} or sorted(p["shard"] for p in parts) != list(range(len(parts))):
        raise CatalogueError(shards[0], "shard", f"{len(parts)} shard files of {sorted(n)} "
                             "shards", "rerun the misspecification shards of one config")
    tagged = sorted((r for p in parts for r in p["rows"]), key=lambda r: r[0])
    rows = [r for _, r in tagged]
    checks = {k: c for p in parts for k, c in p["checks"].items()}
    summary = dict(_summary(s, parts[0]["models"], rows, checks, parts[0]["edges"]),
                   n_shards=len(parts))
    io.write_json(summary_out, jsonable(summary))
    write_csv(table_out, MISSPECIFICATION_COLUMNS, rows)
    for key, m in summary["models"].items():
        log.info("misspecification (%s, run %s): %d of %d prior-edge variants within the "
                 "criteria", key, m["run"], m["edge_variants_within_criteria"],
                 m["n_edge_variants"])


def _summary(s, models, rows, checks, edges) -> dict:
    """The matrix's header: per model and estimator (``{model}/{estimator}``) the count of
    prior-edge variants within the criteria and the fiducial-universe verdict."""
    per = {}
    for key in dict.fromkeys((r["model"], r["estimator"]) for r in rows):
        mdl = next(m for m in models if m["kind"] == key[0])
        mine = [r for r in rows if (r["model"], r["estimator"]) == key]
        edge = {o: [r for r in mine if r["kind"] == "edge" and r["others"] == o]
                for o in ("fiducial", "prior")}
        fid = next((r for r in mine if r["kind"] == "fiducial"), None)
        per["/".join(key)] = dict(
            model_kind=key[0], estimator=key[1], run=mdl["run"],
            model=mdl["model"] if key[1] == "cnn3d_sbi" else None,
            joint_pdf=(mdl["joint_pdf"] if key[1] == "cnn3d_sbi" else
                       mdl["sets_pdf"] if key[1].startswith("sets") else mdl["flow_pdf"]),
            edge_variants_within_criteria=int(sum(bool(r["within_criteria"])
                                                  for r in edge["fiducial"])),
            n_edge_variants=len(edge["fiducial"]),
            edge_variants_within_criteria_others_prior=int(sum(
                bool(r["within_criteria"]) for r in edge["prior"])),
            n_edge_variants_others_prior=len(edge["prior"]),
            fiducial_eval_within_tolerance=(fid or {}).get("within_criteria"))
    first = per[f"{models[0]['kind']}/cnn3d_sbi"]
    return dict(run=s.run, nuisance_sample=bool(s.nuisance.sample), n_eval=int(rows[0]["n"]),
                criteria=MISSPECIFICATION_CRITERIA,
                fiducial_eval_tolerance=FIDUCIAL_EVAL_TOLERANCE,
                distance_third_edges_mpc_h=[float(e) for e in edges],
                reproduces_eval_predictions_dex=checks,
                edge_variants_within_criteria=first["edge_variants_within_criteria"],
                n_edge_variants=first["n_edge_variants"], models=per, variants=rows)


def misspecification_plots(*, summary, png):
    """Rule ``misspecification_plots``: mean residual and coverage per variant universe."""
    from ..plots.analyses import misspecification_figure

    misspecification_figure(read_json(summary, "variants", "rerun the misspecification rule"),
                            png)
