"""One function per pipeline rule: read inputs, call the science modules, write outputs.

These are the edges where I/O happens. ``workflow/scripts/*.py`` call them in a line or two
through :func:`run_rule` (logging to the rule's log file, clean error messages), and the
tests and the ``cmpipe`` CLI call them directly, so the same code runs everywhere.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import io
from .cosmology import make_cosmology
from .io.mock import (FLUX_CLUSTER_SCHEMA, FLUX_GALAXY_SCHEMA, PROJECTED_CLUSTER_SCHEMA,
                      SIGHTLINE_SCHEMA, SPLIT_CLUSTER_SCHEMA, WINDOW_GALAXY_SCHEMA,
                      galaxy_offsets)
from .io.tables import CatalogueError, TableWriter, read_table, table_length, write_table
from .settings import ConfigError, Settings, stage_rng, stage_seed

__all__ = [
    "run_rule",
    "build_catalogue",
    "select_halos",
    "make_sightlines",
    "project",
    "apply_flux_limit",
    "split",
]

log = logging.getLogger("cmpipe")


def run_rule(func, log_path=None, **kwargs):
    """Run a stage with logging to ``log_path`` (and stderr); known errors exit 1 cleanly.

    Bad input (:class:`CatalogueError`, :class:`ConfigError`, ``ValueError`` raised by our
    checks) is reported as one clear message rather than a traceback.
    """
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        result = func(**kwargs)
    except (CatalogueError, ConfigError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None
    log.info("%s finished in %.1f s", func.__name__, time.perf_counter() - t0)
    return result


def _settings(config) -> Settings:
    return config if isinstance(config, Settings) else Settings.from_config(config)


def _box_attrs(attrs):
    return {k: attrs[k] for k in io.catalogues.BOX_ATTRS}


# -- catalogue ---------------------------------------------------------------------------

def build_catalogue(*, config, halos_out, galaxies_out):
    """Rule ``catalogue``: write halos.h5 and galaxies.h5 from the configured source."""
    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    if s.source == "synthetic":
        from .universe import UniverseSettings, generate_universe

        us = UniverseSettings(redshift=s.redshift, **s.synthetic)
        halos, galaxies = generate_universe(us, cosmo, stage_seed(s.seed, "universe"))
        box = us.box_size_mpc_h
    else:
        from .io.mdpl2 import load_mdpl2

        m = s.mdpl2
        box = m["box_size_mpc_h"]
        kw = {}
        if m.get("halo_columns"):
            from .io.mdpl2 import DEFAULT_HLIST_COLUMNS
            kw["halo_columns"] = {**DEFAULT_HLIST_COLUMNS, **m["halo_columns"]}
        if m.get("galaxy_columns"):
            from .io.mdpl2 import DEFAULT_GALAXY_COLUMNS
            kw["galaxy_columns"] = {**DEFAULT_GALAXY_COLUMNS, **m["galaxy_columns"]}
        halos, galaxies = load_mdpl2(m["halo_file"], m["galaxy_file"], redshift=s.redshift,
                                     box_size_mpc_h=box, cosmology=cosmo,
                                     hdf5_path=m.get("galaxy_hdf5_path"), **kw)
    meta = dict(box_size_mpc_h=box, redshift=s.redshift, cosmology=cosmo.as_dict(),
                source=s.source)
    log.info("catalogue: %d halos, %d galaxies (%s)", len(halos["halo_id"]),
             len(galaxies["galaxy_id"]), s.source)
    io.write_halos(halos_out, halos, **meta)
    io.write_galaxies(galaxies_out, galaxies, **meta)


# -- mock stages -------------------------------------------------------------------------

def select_halos(*, config, halos, out):
    """Rule ``select_halos``: host halos above the mass threshold."""
    from .selection import select_hosts

    s = _settings(config)
    cols, attrs = io.read_halos(halos)
    hosts = select_hosts(cols, s.log10_m200c_min)
    if len(hosts["halo_id"]) == 0:
        raise CatalogueError(halos, "log10_m200c", "no host halo reaches the selection "
                             f"threshold {s.log10_m200c_min}",
                             "lower selection.log10_m200c_min or use a larger box")
    io.write_halos(out, hosts, **_box_attrs(attrs))


def make_sightlines(*, config, hosts, out):
    """Rule ``sightlines``: lines of sight per host, flattening log M."""
    from .selection import allocate_sightlines, assign_sightlines

    s = _settings(config)
    cols, attrs = io.read_halos(hosts)
    rng = stage_rng(s.seed, "sightlines")
    counts = allocate_sightlines(cols["log10_m200c"], lo=s.log10_m200c_min,
                                 bin_width_dex=s.sightlines.bin_width_dex,
                                 target_per_bin=s.sightlines.target_per_bin,
                                 max_per_halo=s.sightlines.max_per_halo, rng=rng)
    rows = assign_sightlines(cols, counts, rng)
    log.info("sightlines: %d projections of %d halos (max %d per halo)",
             len(rows["halo_id"]), int((counts > 0).sum()), int(counts.max(initial=0)))
    write_table(out, rows, group="sightlines", schema=SIGHTLINE_SCHEMA,
                attrs=_box_attrs(attrs))


def project(*, config, halos, galaxies, hosts, sightlines, out, progress=True):
    """Rule ``project``: every galaxy of the box inside each cluster's window."""
    from .projection import Projector, project_batches

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    h, attrs = io.read_halos(halos)
    g, _ = io.read_galaxies(galaxies)
    hs, _ = io.read_halos(hosts)
    sl, _ = read_table(sightlines, group="sightlines", required=SIGHTLINE_SCHEMA)
    proj = Projector(h, g, box_size_mpc_h=attrs["box_size_mpc_h"], redshift=attrs["redshift"],
                     hubble_kms_per_mpc_h=cosmo.hubble_kms_per_mpc_h(attrs["redshift"]),
                     half_width_mpc_h=s.window.half_width_mpc_h, v_max_kms=s.window.v_max_kms,
                     interloper_log10_m_min=s.log10_m200c_min - 1.0)
    del h
    log.info("project: searching +-%.1f h^-1 Mpc (comoving) along each line of sight for "
             "galaxies slower than %.0f km/s; %d faster ones searched separately",
             proj.los_depth, proj.g_index.v_slow, len(proj.g_index.fast_idx))
    meta = dict(_box_attrs(attrs), half_width_mpc_h=s.window.half_width_mpc_h,
                v_max_kms=s.window.v_max_kms)
    n_c = n_g = 0
    with TableWriter(out) as w:
        w.add_group("clusters", PROJECTED_CLUSTER_SCHEMA, meta)
        w.add_group("galaxies", WINDOW_GALAXY_SCHEMA)
        for cl, gal in project_batches(proj, sl, hs, batch_size=s.mock.halo_batch_size,
                                       progress=progress):
            w.append("clusters", cl)
            w.append("galaxies", gal)
            n_c += len(cl["cluster_id"])
            n_g += len(gal["cluster_id"])
    log.info("project: %d projected clusters, %d window galaxies", n_c, n_g)


def _cluster_chunks(n_clusters, chunk):
    for c0 in range(0, n_clusters, chunk):
        yield slice(c0, min(c0 + chunk, n_clusters))


def apply_flux_limit(*, config, projected, out, chunk_clusters=2000):
    """Rule ``flux_limit``: observers, apparent magnitudes, r < limit, richness cut."""
    from .fluxlimit import draw_observer_distances, flux_limit

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    clusters, attrs = read_table(projected, group="clusters", required=PROJECTED_CLUSTER_SCHEMA)
    g_cid, _ = read_table(projected, group="galaxies", columns=["cluster_id"])
    offsets = galaxy_offsets(clusters["cluster_id"], g_cid["cluster_id"])
    rng = stage_rng(s.seed, "flux_limit")
    dist = draw_observer_distances(len(clusters["cluster_id"]), s.mock.observer_radius_mpc_h,
                                   rng)
    totals = {}
    with TableWriter(out) as w:
        w.add_group("clusters", FLUX_CLUSTER_SCHEMA, attrs)
        w.add_group("galaxies", FLUX_GALAXY_SCHEMA)
        for sl in _cluster_chunks(len(dist), chunk_clusters):
            rows = slice(int(offsets[sl.start]), int(offsets[sl.stop]))
            gal, _ = read_table(projected, group="galaxies", rows=rows)
            cl = {k: v[sl] for k, v in clusters.items()}
            c_out, g_out, counts = flux_limit(cl, gal, dist[sl], cosmology=cosmo,
                                              mag_r_limit=s.mock.mag_r_limit,
                                              min_galaxies=s.mock.min_galaxies)
            w.append("clusters", c_out)
            w.append("galaxies", g_out)
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        w.set_attrs("clusters", dict(flux_limit_counts=totals,
                                     mag_r_limit=s.mock.mag_r_limit,
                                     observer_radius_mpc_h=s.mock.observer_radius_mpc_h,
                                     min_galaxies=s.mock.min_galaxies))
    log.info("flux limit r < %.2f: kept %d of %d clusters (%d dropped with < %d galaxies), "
             "%d of %d galaxies", s.mock.mag_r_limit, totals.get("n_clusters_kept", 0),
             totals.get("n_clusters_in", 0), totals.get("n_dropped_too_few", 0),
             s.mock.min_galaxies, totals.get("n_galaxies_kept", 0),
             totals.get("n_galaxies_in", 0))
    if totals.get("n_clusters_kept", 0) == 0:
        raise CatalogueError(projected, "n_gal", "no projected cluster survives the flux limit",
                             "raise mock.mag_r_limit, lower mock.min_galaxies or "
                             "mock.observer_radius_mpc_h")


def split(*, config, fluxlimited, out, chunk_rows=1_000_000):
    """Rule ``split``: train/validation/test/eval by halo; writes clusters.h5."""
    from .splits import assign_splits

    s = _settings(config)
    clusters, attrs = read_table(fluxlimited, group="clusters", required=FLUX_CLUSTER_SCHEMA)
    codes = assign_splits(clusters, s.splits, stage_rng(s.seed, "splits"))
    clusters["split"] = codes
    n_rows = table_length(fluxlimited, "galaxies")
    with TableWriter(out) as w:
        w.add_group("clusters", SPLIT_CLUSTER_SCHEMA, dict(
            attrs, split_codes={"unused": -1, "train": 0, "validation": 1, "test": 2,
                                "eval": 3}))
        w.add_group("galaxies", FLUX_GALAXY_SCHEMA)
        w.append("clusters", clusters)
        for r0 in range(0, n_rows, chunk_rows):
            gal, _ = read_table(fluxlimited, group="galaxies",
                                rows=slice(r0, min(r0 + chunk_rows, n_rows)))
            w.append("galaxies", gal)
    names = {-1: "unused", 0: "train", 1: "validation", 2: "test", 3: "eval"}
    log.info("split: %s", ", ".join(f"{names[c]} {int((codes == c).sum())}"
                                    for c in sorted(names) if (codes == c).any()))


def mock_summary(*, config, halos, hosts, clusters, out):
    """Rule ``mock_summary``: summary.json of the mock catalogue."""
    from .mockstats import mock_summary as summarize

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    h, attrs = io.read_halos(halos)
    hs, _ = io.read_halos(hosts)
    cl, cl_attrs = read_table(clusters, group="clusters", required=SPLIT_CLUSTER_SCHEMA)
    gal, _ = read_table(clusters, group="galaxies", columns=["cluster_id", "is_member"])
    summary = summarize(halos=h, hosts=hs, clusters=cl, galaxies=gal,
                        box_size_mpc_h=attrs["box_size_mpc_h"], redshift=attrs["redshift"],
                        cosmology=cosmo, flux_counts=cl_attrs.get("flux_limit_counts", {}),
                        log10_m_min=s.log10_m200c_min,
                        bin_width_dex=s.sightlines.bin_width_dex)
    summary = dict(run=s.run, source=attrs["source"], cosmology=attrs["cosmology"],
                   seed=s.seed, **summary)
    io.write_json(out, summary)
    log.info("mock summary: %d clusters, per split %s, interloper fraction %.3f",
             summary["n_clusters"], summary["clusters_per_split"],
             summary["interloper_fraction"])


def mock_plots(*, summary, clusters, mass_function_png, splits_png, phase_space_png):
    """Rule ``mock_plots``: figures of the mock catalogue (read from its products)."""
    import json

    from . import plots

    summ = json.loads(Path(summary).read_text())
    cl, _ = read_table(clusters, group="clusters")
    plots.mass_function_figure(summ, mass_function_png)
    plots.split_masses_figure(cl, summ, splits_png)
    gal, _ = read_table(clusters, group="galaxies")
    plots.phase_space_figure(cl, gal, phase_space_png)


# -- KDE cubes ---------------------------------------------------------------------------

SPLIT_NAMES = ("train", "validation", "test", "eval")


def split_counts(clusters) -> dict:
    """Number of projected clusters in each split of ``clusters.h5``."""
    from .settings import SPLIT_CODES

    cl, _ = read_table(clusters, group="clusters", columns=["split"])
    return {name: int((cl["split"] == SPLIT_CODES[name]).sum()) for name in SPLIT_NAMES}


def n_shards(n_clusters: int, shard_size: int) -> int:
    """Shards needed for ``n_clusters`` (at least one, possibly empty)."""
    return max(1, -(-int(n_clusters) // int(shard_size)))


def _split_galaxies(clusters_path, cluster_ids):
    """x, y, v and cluster ids of the galaxies of ``cluster_ids`` (sorted ascending).

    The galaxy table is sorted by cluster id, so only the row range between the first and
    the last wanted cluster is read (memory ~ one shard's share of the table).
    """
    want = np.asarray(cluster_ids)
    ids, _ = read_table(clusters_path, group="galaxies", columns=["cluster_id"])
    lo = int(np.searchsorted(ids["cluster_id"], want.min(), side="left"))
    hi = int(np.searchsorted(ids["cluster_id"], want.max(), side="right"))
    del ids
    g, _ = read_table(clusters_path, group="galaxies", rows=slice(lo, hi),
                      columns=["cluster_id", "x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"],
                      finite=["x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"])
    keep = np.isin(g["cluster_id"], want)
    return {k: v[keep] for k, v in g.items()}


def kde_shard(*, config, clusters, split_name, shard, out, threads=1, progress=True):
    """Rule ``kde_shard``: cubes of one shard of one split.

    The shard holds clusters ``shard * shard_size`` to ``(shard + 1) * shard_size`` of the
    split, in cluster-id order; cubes are computed and written ``batch_size`` at a time.
    """
    import numba
    from tqdm.auto import tqdm

    from .io.cubes import CubeWriter
    from .kde import Grid3D, KDEInputError, kde_cubes
    from .settings import SPLIT_CODES

    s = _settings(config)
    k = s.kde
    cl, attrs = read_table(clusters, group="clusters",
                           columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members"])
    sel = np.flatnonzero(cl["split"] == SPLIT_CODES[split_name])
    sel = sel[shard * k.shard_size:(shard + 1) * k.shard_size]
    rows = {c: cl[c][sel] for c in ("cluster_id", "log10_m200c", "n_gal", "n_members")}
    gal = _split_galaxies(clusters, rows["cluster_id"]) if len(sel) else None
    grid = Grid3D(n=k.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                  v_max_kms=s.window.v_max_kms)
    file_attrs = dict(n_grid=k.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                      v_max_kms=s.window.v_max_kms, h0=k.h0, truncation=k.truncation,
                      normalisation="each cube sums to 1", split=split_name,
                      axes="x_proj_mpc_h, y_proj_mpc_h, v_los_kms")
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    with CubeWriter(out, len(sel), k.n_grid, file_attrs) as w:
        if len(sel):
            offsets = galaxy_offsets(rows["cluster_id"], gal["cluster_id"])
            bar = tqdm(total=len(sel), desc=f"kde {split_name}[{shard}]", unit="cube",
                       disable=not progress)
            buf = np.empty((k.batch_size,) + grid.shape, dtype=np.float32)
            for b0 in range(0, len(sel), k.batch_size):
                b1 = min(b0 + k.batch_size, len(sel))
                o = offsets[b0:b1 + 1]
                r = slice(int(o[0]), int(o[-1]))
                try:
                    cubes = kde_cubes(gal["x_proj_mpc_h"][r], gal["y_proj_mpc_h"][r],
                                      gal["v_los_kms"][r], o - o[0], grid=grid, h0=k.h0,
                                      truncation=k.truncation, min_galaxies=3,
                                      ids=rows["cluster_id"][b0:b1].tolist(),
                                      out=buf[:b1 - b0])
                except KDEInputError as err:
                    raise CatalogueError(clusters, "galaxies", str(err),
                                         "rebuild the mock (mock.min_galaxies >= 3) or drop "
                                         "the cluster") from err
                w.write(cubes, {c: v[b0:b1] for c, v in rows.items()})
                bar.update(b1 - b0)
            bar.close()
    log.info("kde %s shard %d: %d cubes of %d^3", split_name, shard, len(sel), k.n_grid)


def kde_gather(*, shards, out):
    """Rule ``kde_gather``: one cube file per split from its shards (chunks copied as is)."""
    from .io.cubes import gather_shards

    gather_shards(list(shards), out)
    log.info("gathered %d shards into %s", len(shards), out)


# -- training and summaries ------------------------------------------------------------

def _train_settings(s):
    from .training import TrainSettings

    t = {k: v for k, v in s.train.items() if v is not None}
    return TrainSettings.from_dict(dict(t, seed=stage_seed(s.seed, "train") % (2 ** 31)))


def train_network(*, config, train_cubes, validation_cubes, model_out):
    """Rule ``train``: the CNN, early-stopped on the validation split; resumes if killed."""
    from .training import train

    s = _settings(config)
    result = train(train_cubes, validation_cubes, Path(model_out).parent, _train_settings(s))
    log.info("train: %d parameters, best epoch %d of %d (val MSE %.4g, standardised), "
             "stopped early: %s, resumed from epoch %d", result.n_params, result.best_epoch,
             result.epochs_run, result.best_val_loss, result.stopped_early,
             result.resumed_from_epoch)


PREDICTION_SCHEMA = io.Schema({
    "cluster_id": ("i8", "", "projected cluster"),
    "log10_m200c_true": ("f8", "log10(h^-1 Msun)", "true M200c"),
    "log10_m200c_pred": ("f8", "log10(h^-1 Msun)", "network point prediction (summary d~)"),
    "n_gal": ("i8", "", "galaxies in the window"),
    "n_members": ("i8", "", "of those, bound to the halo"),
})


def predict_split(*, config, model, cubes, out, split_name):
    """Rule ``summaries``: the network's predictions d~ for one split."""
    from .training import predict

    s = _settings(config)
    pred = predict(Path(model).parent, cubes, batch_size=int(s.train.get("batch_size") or 100))
    write_table(out, pred, group="predictions", schema=PREDICTION_SCHEMA,
                attrs=dict(split=split_name, model=str(model)))
    if len(pred["cluster_id"]):
        res = pred["log10_m200c_true"] - pred["log10_m200c_pred"]
        log.info("%s: %d predictions, residual log10(M_true/M_pred) mean %.3f, sd %.3f dex "
                 "(predicting the mean mass: sd %.3f dex)", split_name, len(res),
                 res.mean(), res.std(), pred["log10_m200c_true"].std())


def training_plots(*, history, loss_png):
    """Rule ``training_plots``: the loss curve."""
    from .training import plot_history

    plot_history(history, loss_png)


# -- calibration and evaluation -------------------------------------------------------

def calibrate(*, config, test_predictions, out):
    """Rule ``calibrate``: the joint PDF P(d~, log M) of the test set, tabulated once."""
    from .calibration import tabulate_joint_pdf

    s = _settings(config)
    c = s.calibration
    pred, _ = read_table(test_predictions, group="predictions",
                         finite=["log10_m200c_true", "log10_m200c_pred"])
    if len(pred["cluster_id"]) < 10:
        raise CatalogueError(test_predictions, "log10_m200c_pred",
                             f"only {len(pred['cluster_id'])} test clusters to calibrate on",
                             "raise splits.fractions.test or sightlines.target_per_bin")
    pdf = tabulate_joint_pdf(pred["log10_m200c_pred"], pred["log10_m200c_true"],
                             bandwidth=c.get("bandwidth", 0.2),
                             n_d=c.get("n_grid_pred", 1000), n_m=c.get("n_grid_mass", 1000),
                             meta=dict(source=str(test_predictions)))
    pdf.save(out)
    log.info("calibration: joint PDF of %d test pairs on %dx%d nodes", pdf.n_pairs,
             pdf.d_grid.size, pdf.m_grid.size)


POSTERIOR_SCHEMA_UNITS = {
    "log10_m200c_true": "log10(h^-1 Msun)", "log10_m200c_pred": "log10(h^-1 Msun)",
    "map": "log10(h^-1 Msun)", "mean": "log10(h^-1 Msun)", "median": "log10(h^-1 Msun)",
    "point": "log10(h^-1 Msun)", "sd": "dex", "lo68": "log10(h^-1 Msun)",
    "hi68": "log10(h^-1 Msun)", "lo95": "log10(h^-1 Msun)", "hi95": "log10(h^-1 Msun)",
}


def _predictions(path):
    pred, attrs = read_table(path, group="predictions")
    return pred


def _baselines_for(s, clusters, pred, redshift, cosmo):
    from .evaluation import baseline_table

    ids = pred["cluster_id"]
    if len(ids) == 0:
        return {}
    gal = _split_galaxies(clusters, ids)
    return baseline_table(gal, ids, redshift, cosmo,
                          interlopers=s.baselines.get("interlopers", "none"),
                          min_galaxies=s.baselines.get("min_galaxies", 5))


def evaluate(*, config, joint_pdf, test_predictions, eval_predictions, clusters, metrics_out,
             posteriors_out):
    """Rule ``evaluate``: posteriors and metrics of the network and baselines (eval set)."""
    from .calibration import JointPDF
    from .evaluation import evaluate as run_evaluation

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    pdf = JointPDF.load(joint_pdf)
    test_pred = _predictions(test_predictions)
    eval_pred = _predictions(eval_predictions)
    if len(eval_pred["cluster_id"]) == 0:
        raise CatalogueError(eval_predictions, "cluster_id", "the eval split is empty",
                             "raise splits.fractions.eval")
    cl, attrs = read_table(clusters, group="clusters")
    row = np.searchsorted(cl["cluster_id"], eval_pred["cluster_id"])
    eval_rows = {k: v[row] for k, v in cl.items()}
    z = attrs["redshift"]
    metrics, post, curves = run_evaluation(
        pdf=pdf, test_pred=test_pred, eval_pred=eval_pred, eval_clusters=eval_rows,
        test_baselines=_baselines_for(s, clusters, test_pred, z, cosmo),
        eval_baselines=_baselines_for(s, clusters, eval_pred, z, cosmo),
        point=s.calibration.get("point_estimate", "map"))
    metrics = dict(run=s.run, prior="test-set prior (flat in log M by construction)",
                   **metrics)
    io.write_json(metrics_out, _jsonable(metrics))
    post["extrapolated"] = post["extrapolated"].astype(np.int8)
    schema = io.Schema({k: (np.asarray(v).dtype.str, POSTERIOR_SCHEMA_UNITS.get(k, ""), k)
                        for k, v in post.items()})
    with TableWriter(posteriors_out) as w:
        w.add_group("posteriors", schema, dict(
            prior="test-set prior (flat in log M): the paper's posterior",
            point_estimate=s.calibration.get("point_estimate", "map")))
        w.append("posteriors", post)
        w.add_group("grid", io.Schema({"log10_m200c": ("f8", "log10(h^-1 Msun)",
                                                        "mass grid of the curves")}))
        w.append("grid", {"log10_m200c": pdf.m_grid})
        w.add_array("curves", curves, unit="dex^-1", description=(
            "posterior density per eval cluster on grid/log10_m200c; rows as posteriors/"))
    log.info("eval: n=%d, mean residual %.3f dex, scatter %.3f dex, coverage 68%% %.3f, "
             "95%% %.3f, sigma_N %.3f, sigma_0 %.3f; M-sigma (gapper) scatter %.3f",
             metrics["n_eval"], metrics["mean_residual_dex"], metrics["scatter_dex"],
             metrics["coverage_68"], metrics["coverage_95"], metrics["sigma_N_dex"],
             metrics["sigma_0_dex"], metrics["msigma_gapper_scatter_dex"])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def evaluation_plots(*, joint_pdf, test_predictions, metrics, posteriors, joint_png,
                     predictions_png, calibration_png, interlopers_png, baselines_png):
    """Rule ``evaluation_plots``: paper Figs. 4-6, the calibration curve, baselines."""
    import json

    from . import plots
    from .calibration import JointPDF

    m = json.loads(Path(metrics).read_text())
    post, _ = read_table(posteriors, group="posteriors")
    plots.joint_pdf_figure(JointPDF.load(joint_pdf), _predictions(test_predictions), joint_png)
    plots.predictions_figure(post, m, predictions_png)
    plots.calibration_figure(m, calibration_png)
    plots.interloper_figure(post, interlopers_png)
    plots.baselines_figure(m, baselines_png)
