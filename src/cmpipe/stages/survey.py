"""Survey rules and ``cmpipe infer``: sky catalogues, cubes, posteriors, mass function."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import io
from ..cosmology import make_cosmology
from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, TableWriter, read_table
from ..settings import ConfigError, Settings, stage_seed
from ._common import _jsonable, _settings, log


SURVEY_POSTERIOR_KEYS = ("map", "median", "mean", "sd", "lo68", "hi68", "lo95", "hi95")
#: Column-name prefixes of the two priors in ``survey/posteriors.ecsv``.
SURVEY_PRIORS = {
    "flat": "test-set prior (flat in log M by construction): the paper's calibrated posterior",
    "pop": "population prior: the flat posterior re-weighted by the Tinker et al. (2008) "
           "mass function at the cluster redshift over the test-set prior "
           "(cmpipe.massfunction.population_prior_posterior)",
}

SURVEY_PHASE_SPACE_CLUSTER_SCHEMA = io.Schema({
    "cluster_id": ("i8", "", "survey cluster id"),
    "ra_deg": ("f8", "deg", "cluster centre right ascension"),
    "dec_deg": ("f8", "deg", "cluster centre declination"),
    "z": ("f8", "", "cluster redshift"),
    "d_a_mpc_h": ("f8", "h^-1 Mpc (proper)", "angular-diameter distance of the cluster"),
    "n_gal": ("i8", "", "galaxies in the window"),
    "n_members": ("i8", "", "of those, listed as members of this cluster in the galaxy "
                            "table (-1: no membership column)"),
    "n_mem": ("i8", "", "catalogue member count (-1 if none)"),
    "log10_m_cat": ("f8", "log10(h^-1 Msun)", "catalogue M200c (NaN if none)"),
    "log10_m_cat_err": ("f8", "dex", "uncertainty of the catalogue mass (NaN if none)"),
    "skipped": ("i1", "", "1: fewer than min_galaxies galaxies in the window (no cube, NaN "
                          "posterior)"),
})

SURVEY_PHASE_SPACE_GALAXY_SCHEMA = io.Schema({
    "cluster_id": ("i8", "", "the cluster whose window holds the galaxy"),
    "galaxy_id": ("i8", "", "id in the galaxy table (-1: phase-space input without ids)"),
    "x_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "offset from the centre along +RA (east)"),
    "y_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "offset from the centre along +Dec (north)"),
    "v_los_kms": ("f8", "km/s", "c (z - z_cl) / (1 + z_cl): line-of-sight velocity in the "
                                "cluster frame"),
    "is_member": ("i1", "", "1 listed as a member of this cluster, 0 not, -1 unknown"),
})

#: Candidate column names of a phase-space galaxy table (``cmpipe infer --phase-space``).
PHASE_SPACE_INPUT_COLUMNS = {
    "cluster_id": ("cluster_id",),
    "x_proj_mpc_h": ("x_proj", "x_proj_mpc_h"),
    "y_proj_mpc_h": ("y_proj", "y_proj_mpc_h"),
    "v_los_kms": ("v_los", "v_los_kms"),
    "galaxy_id": ("galaxy_id",),
}


def _survey_cfg(s) -> dict:
    """The ``survey`` config section (a resolved config always has it; {} otherwise)."""
    return dict(s.survey or {})


def _survey_min_galaxies(s) -> int:
    v = _survey_cfg(s).get("min_galaxies")
    return max(3, int(v if v is not None else s.mock.min_galaxies))


def write_resolved_config(*, config, out, run_dir=None):
    """Rule ``resolved_config``: the run's config (overlays merged, defaults filled) as YAML.

    ``cmpipe infer --run-dir results/{run}`` reads it to rebuild the window, the KDE and the
    cosmology the model was trained with. The rule runs after the model, its config record
    (``model/config.json``) and the calibration are made, so a run that fails earlier
    leaves the previous file; with ``run_dir``, the SHA-256 of those products goes under the
    top-level key ``products`` (:func:`cmpipe.io.artefacts.run_products`), which ``cmpipe
    infer`` checks.
    """
    import json

    import yaml

    from ..io.artefacts import PRODUCTS_KEY, run_products

    plain = json.loads(json.dumps(dict(config), default=str))
    plain.pop(PRODUCTS_KEY, None)
    if run_dir is not None:
        plain[PRODUCTS_KEY] = run_products(run_dir)
    text = ("# Resolved config of this run (config.yaml + --configfile overlays, schema "
            "defaults filled).\n# Written by rule resolved_config; read by `cmpipe infer "
            "--run-dir`. Do not edit.\n# 'products': SHA-256 of the model, its config record "
            "and the calibration this config describes (not a config key).\n"
            + yaml.safe_dump(plain, sort_keys=False))
    with io.atomic_output(out) as tmp:
        tmp.write_text(text)
    log.info("resolved config of run %s written to %s", plain.get("run"), out)


def write_model_record(*, config, model, out):
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
    from ..io.survey import (SURVEY_TRUTH_SCHEMA, read_survey_clusters, read_survey_galaxies,
                            write_survey_clusters, write_survey_galaxies, write_survey_truth)

    s = _settings(config)
    sv = _survey_cfg(s)
    cosmo = make_cosmology(s.cosmology)
    source = sv.get("source", "synthetic")
    if source == "synthetic":
        from ..survey import make_synthetic_survey

        if halos is None or galaxies is None:
            raise ConfigError("survey.source: synthetic needs catalogue/halos.h5 and "
                              "catalogue/galaxies.h5 (run the catalogue rule)")
        syn = dict(sv.get("synthetic", {}))
        h, attrs = io.read_halos(halos)
        g, _ = io.read_galaxies(galaxies)
        seed = stage_seed(s.seed, "survey")
        sur = make_synthetic_survey(h, g, attrs, cosmo, seed=seed, **syn)
        del h, g
        cl, gal, truth = sur.clusters, sur.galaxies, sur.truth
        m = dict(sur.meta)
        shifts = m.pop("replica_shifts", [])
        m["volume_mpc_h3"] = sur.volume_mpc_h3
        meta = dict(source="synthetic", has_truth=True, **m, n_replicas=len(shifts),
                    theory=dict(kind="snapshot", z=float(attrs["redshift"]),
                                note="the synthetic box is one snapshot: its halos follow "
                                     "Tinker (2008) at the box redshift at every distance"),
                    z_range=None)
        meta["seed"] = int(seed)
        meta["cosmology"] = cosmo.name
    elif source == "catalogue":
        unit = sv.get("angle_unit", "auto")
        cl = read_survey_clusters(sv["clusters"], sv.get("cluster_columns") or None,
                                  angle_unit=unit)
        gal = read_survey_galaxies(sv["galaxies"], sv.get("galaxy_columns") or None,
                                   angle_unit=unit)
        cat = dict(sv.get("catalogue_volume", {}))
        z_min, z_max = float(cat.get("z_min", 0.01)), float(cat.get("z_max", 0.2))
        if not z_max > z_min:
            raise ConfigError(f"survey.catalogue_volume: z_max ({z_max}) must exceed z_min "
                              f"({z_min})")
        area = float(cat.get("area_deg2", 8250.0))
        r1, r2 = (float(cosmo.comoving_distance_mpc_h(z)) for z in (z_min, z_max))
        omega = area * (np.pi / 180.0) ** 2
        volume = omega * (r2 ** 3 - r1 ** 3) / 3.0
        truth = {k: np.zeros(0, dtype=v[0]) for k, v in SURVEY_TRUTH_SCHEMA.items()}
        meta = dict(source="catalogue", has_truth=False, volume_mpc_h3=volume,
                    area_deg2=area, z_range=[z_min, z_max],
                    comoving_distance_range_mpc_h=[r1, r2],
                    theory=dict(kind="volume_average", r_min_mpc_h=r1, r_max_mpc_h=r2,
                                note="Tinker (2008) averaged over the comoving shell"),
                    clusters_file=str(sv["clusters"]), galaxies_file=str(sv["galaxies"]),
                    cosmology=cosmo.name)
    else:
        raise ConfigError(f"survey.source: unknown source {source!r} (synthetic or "
                          "catalogue)")
    meta.update(n_clusters=int(len(cl["cluster_id"])), n_galaxies=int(len(gal["ra_deg"])))
    header = dict(source=source, cosmology=cosmo.name, run=s.run)
    write_survey_clusters(clusters_out, cl, meta=header)
    write_survey_galaxies(galaxies_out, gal, meta=header)
    write_survey_truth(truth_out, truth, meta=dict(header, has_truth=meta["has_truth"]))
    io.write_json(meta_out, _jsonable(meta))
    log.info("survey (%s): %d clusters, %d galaxies, volume %.4g (h^-1 Mpc)^3%s", source,
             meta["n_clusters"], meta["n_galaxies"], meta["volume_mpc_h3"],
             "" if meta["has_truth"] else "; no true masses (truth table empty)")
    if meta["n_clusters"] == 0:
        raise CatalogueError(clusters_out, "cluster_id", "the survey holds no cluster",
                             "lower survey.synthetic.log10_m_min or raise radius_mpc_h / "
                             "area_deg2" if source == "synthetic" else
                             "check survey.catalogue.clusters")


def _read_phase_space_input(path, clusters, cosmo, s):
    """Galaxies given directly in phase space (``cmpipe infer --phase-space``).

    Columns (names in :data:`PHASE_SPACE_INPUT_COLUMNS`): cluster_id, x_proj and y_proj
    (proper h^-1 Mpc, east / north), v_los (km/s, cluster frame), optional galaxy_id.
    Rows outside the window are dropped (and counted).
    """
    from ..io.survey import _float_column, _int_column, _read, _resolve

    t = _read(path)
    found = {k: _resolve(t, path, k, c, False, "") for k, c in
             PHASE_SPACE_INPUT_COLUMNS.items()}
    for k, c in PHASE_SPACE_INPUT_COLUMNS.items():
        if found[k] is None and k != "galaxy_id":
            raise CatalogueError(path, c[0], f"required column not found (looked for "
                                 f"{', '.join(c)}; the file has {', '.join(t.colnames)})",
                                 "give cluster_id, x_proj, y_proj [h^-1 Mpc, proper] and "
                                 "v_los [km/s] columns")
    n = len(t)
    cid = _int_column(t, found["cluster_id"], path, "cluster_id")
    cols = {}
    for k, ok_unit in (("x_proj_mpc_h", "Mpc"), ("y_proj_mpc_h", "Mpc"),
                       ("v_los_kms", "km / s")):
        col = t[found[k]]
        unit = getattr(col, "unit", None)
        if unit is not None and str(unit) not in ("", ok_unit):
            raise CatalogueError(path, found[k], f"unit '{unit}' given",
                                 "give x_proj, y_proj in h^-1 Mpc (proper) and v_los in "
                                 "km/s, without units or with Mpc and km / s")
        vals = _float_column(t, found[k], path)
        bad = ~np.isfinite(vals)
        if bad.any():
            raise CatalogueError(path, found[k], f"{int(bad.sum())} non-finite value(s), "
                                 f"first at row {int(np.flatnonzero(bad)[0])}",
                                 "remove or repair those rows")
        cols[k] = vals
    W, V = s.window.half_width_mpc_h, s.window.v_max_kms
    big = max(np.abs(cols["x_proj_mpc_h"]).max(initial=0.0),
              np.abs(cols["y_proj_mpc_h"]).max(initial=0.0))
    if big > 20.0 * W:
        raise CatalogueError(path, f"{found['x_proj_mpc_h']}/{found['y_proj_mpc_h']}",
                             f"offsets up to {big:.4g}: far beyond the {W:g} h^-1 Mpc window "
                             "(kpc?)", "give x_proj and y_proj in h^-1 Mpc (proper)")
    vabs = np.abs(cols["v_los_kms"])
    if vabs.size and np.median(vabs) > 20.0 * V:
        raise CatalogueError(path, found["v_los_kms"], f"median |v_los| {np.median(vabs):.4g}: "
                             f"far beyond the {V:g} km/s window ({int((vabs > V).sum())} of "
                             f"{vabs.size} galaxies outside it; m/s?)",
                             "give v_los in km/s (divide m/s by 1000), as c (z - z_cl) / "
                             "(1 + z_cl) in the cluster frame")
    known = np.isin(cid, clusters["cluster_id"])
    if not known.all():
        bad = np.unique(cid[~known])
        raise CatalogueError(path, found["cluster_id"], f"{bad.size} cluster id(s) not in "
                             f"the cluster table, e.g. {', '.join(str(int(b)) for b in bad[:5])}",
                             "list every cluster in --clusters (id, RA, Dec, z)")
    gid = (_int_column(t, found["galaxy_id"], path, "galaxy_id")
           if found["galaxy_id"] is not None else np.full(n, -1, dtype=np.int64))
    inside = ((np.abs(cols["x_proj_mpc_h"]) <= W) & (np.abs(cols["y_proj_mpc_h"]) <= W)
              & (np.abs(cols["v_los_kms"]) <= V))
    if (~inside).any():
        (log.warning if (~inside).sum() > 0.5 * n else log.info)(
            "%s: %d of %d galaxies outside the window (|x|,|y| <= %g h^-1 Mpc, |v| <= "
                 "%g km/s) dropped", path, int((~inside).sum()), n, W, V)
    order = np.argsort(cid[inside], kind="stable")
    g = dict(cluster_id=cid[inside][order], galaxy_id=gid[inside][order],
             **{k: v[inside][order] for k, v in cols.items()})
    g["is_member"] = np.full(len(order), -1, dtype=np.int8)
    # clusters are sorted by id (survey_cubes sorts them)
    n_gal = np.bincount(np.searchsorted(clusters["cluster_id"], g["cluster_id"]),
                        minlength=len(clusters["cluster_id"])).astype(np.int64)
    d_a = np.asarray(cosmo.angular_diameter_distance_mpc_h(clusters["z"]), dtype=float)
    counts = dict(n_clusters=int(len(n_gal)), n_galaxies_in=int(n),
                  n_window_pairs=int(len(order)))
    return g, n_gal, np.atleast_1d(d_a), counts


def _survey_windows(s, cosmo, clusters, galaxies, *, galaxy_columns, angle_unit,
                    cluster_table, galaxy_table):
    """Sky -> phase space with the mock's window; galaxy rows in the phase-space schema."""
    from ..io.survey import read_survey_galaxies
    from ..sky import sky_to_phase_space

    gal = read_survey_galaxies(galaxies, galaxy_columns, angle_unit=angle_unit)
    labels = gal["cluster_id"]
    pair = bool(_survey_cfg(s).get("pair_by_cluster_id", False))
    win = sky_to_phase_space(clusters["cluster_id"], clusters["ra_deg"], clusters["dec_deg"],
                             clusters["z"], gal["ra_deg"], gal["dec_deg"], gal["z"], cosmo,
                             half_width_mpc_h=s.window.half_width_mpc_h,
                             v_max_kms=s.window.v_max_kms, min_galaxies=1,
                             galaxy_cluster_id=labels if pair else None, angle_unit="deg",
                             cluster_table=cluster_table, galaxy_table=galaxy_table)
    rows = win.galaxies["galaxy_row"]
    has_labels = bool(np.any(labels >= 0))
    member = (labels[rows] == win.galaxies["cluster_id"]).astype(np.int8) if has_labels \
        else np.full(rows.size, -1, dtype=np.int8)
    g = dict(cluster_id=win.galaxies["cluster_id"], galaxy_id=gal["galaxy_id"][rows],
             x_proj_mpc_h=win.galaxies["x_proj_mpc_h"],
             y_proj_mpc_h=win.galaxies["y_proj_mpc_h"], v_los_kms=win.galaxies["v_los_kms"],
             is_member=member)
    return g, win.clusters["n_gal"], win.clusters["d_a_mpc_h"], dict(win.counts), has_labels


def _warn_degenerate(ids, g, path):
    """Warn about clusters whose window galaxies are degenerate: all identical (duplicated
    rows) or all at one velocity (e.g. every galaxy given the cluster redshift). Their KDE
    is a kernel-sized blob and the mass says nothing about the cluster."""
    if not ids.size:
        return
    o = galaxy_offsets(ids, g["cluster_id"])
    start, stop = o[:-1], o[1:]
    has = stop > start
    if not has.any():
        return
    same = {}
    for k in ("x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"):
        a = g[k]
        lo = np.minimum.reduceat(a, start[has]) if a.size else a
        hi = np.maximum.reduceat(a, start[has]) if a.size else a
        same[k] = hi - lo == 0
    identical = same["x_proj_mpc_h"] & same["y_proj_mpc_h"] & same["v_los_kms"]
    one_v = same["v_los_kms"] & ~identical
    for mask, what in ((identical, "all their window galaxies identical (duplicated rows?)"),
                       (one_v, "all their window galaxies at one velocity (v_los "
                               "= c (z - z_cl) / (1 + z_cl) constant: every galaxy given the "
                               "cluster redshift?)")):
        if mask.any():
            bad = ids[has][mask]
            log.warning("%s: %d cluster(s) have %s; their masses are meaningless: ids %s%s",
                        path, bad.size, what, ", ".join(str(int(i)) for i in bad[:20]),
                        " ..." if bad.size > 20 else "")


def survey_cubes(*, config, clusters, cubes_out, phase_space_out, galaxies=None,
                 phase_space_in=None, cluster_columns=None, galaxy_columns=None,
                 angle_unit="auto", threads=1, progress=False):
    """Rule ``survey_cubes``: survey clusters -> the mock's window -> KDE cubes.

    Reads the cluster table (and either the galaxy table on the sky, ``galaxies``, or
    galaxies already in phase space, ``phase_space_in``), converts to phase space with
    :func:`cmpipe.sky.sky_to_phase_space` and the config's ``window``, and computes the
    cubes with the config's ``kde`` settings, ``kde.batch_size`` at a time. Clusters with
    fewer than ``survey.min_galaxies`` window galaxies are skipped (logged, counted, kept in
    ``phase_space.h5`` with ``skipped = 1``). The cube file's ``log10_m200c`` is NaN (no
    true mass at ingestion) and ``n_members`` is -1 when the galaxy table has no
    membership column.
    """
    import numba
    from tqdm.auto import tqdm

    from ..io.cubes import CubeWriter
    from ..io.survey import read_survey_clusters
    from ..kde import Grid3D, KDEInputError, kde_cubes

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    k = s.kde
    W, V = s.window.half_width_mpc_h, s.window.v_max_kms
    if (galaxies is None) == (phase_space_in is None):
        raise ConfigError("survey_cubes: give exactly one of a galaxy table on the sky "
                          "(galaxies) or galaxies in phase space (phase_space_in)")
    min_gal = _survey_min_galaxies(s)
    cl = read_survey_clusters(clusters, cluster_columns, angle_unit=angle_unit)
    order = np.argsort(cl["cluster_id"], kind="stable")
    cl = {c: v[order] for c, v in cl.items()}
    if phase_space_in is None:
        g, n_gal, d_a, counts, has_labels = _survey_windows(
            s, cosmo, cl, galaxies, galaxy_columns=galaxy_columns, angle_unit=angle_unit,
            cluster_table=str(clusters), galaxy_table=str(galaxies))
    else:
        g, n_gal, d_a, counts = _read_phase_space_input(phase_space_in, cl, cosmo, s)
        has_labels = False
    n_cl = len(cl["cluster_id"])
    kept = n_gal >= min_gal
    keep_g = np.isin(g["cluster_id"], cl["cluster_id"][kept])
    g = {c: v[keep_g] for c, v in g.items()}
    if has_labels:
        row = np.searchsorted(cl["cluster_id"], g["cluster_id"])
        n_members = np.bincount(row[g["is_member"] == 1], minlength=n_cl).astype(np.int64)
    else:
        n_members = np.full(n_cl, -1, dtype=np.int64)
    skipped = cl["cluster_id"][~kept]
    counts.update(n_clusters=int(n_cl), n_clusters_kept=int(kept.sum()),
                  n_skipped=int((~kept).sum()), n_window_galaxies_kept=int(keep_g.sum()))
    if skipped.size:
        log.warning("survey: %d of %d clusters skipped, fewer than %d galaxies in the window "
                    "(|x|,|y| <= %g h^-1 Mpc, |v| <= %g km/s): ids %s%s", skipped.size,
                    n_cl, min_gal, W, V, ", ".join(str(int(i)) for i in skipped[:20]),
                    " ..." if skipped.size > 20 else "")
    ps_attrs = dict(half_width_mpc_h=W, v_max_kms=V, min_galaxies=min_gal, counts=counts,
                    skipped_ids=[int(i) for i in skipped], cosmology=cosmo.name,
                    clusters_file=str(clusters),
                    galaxies_file=str(galaxies if galaxies is not None else phase_space_in),
                    input="sky" if phase_space_in is None else "phase space")
    with TableWriter(phase_space_out) as w:
        w.add_group("clusters", SURVEY_PHASE_SPACE_CLUSTER_SCHEMA, ps_attrs)
        w.append("clusters", dict(cluster_id=cl["cluster_id"], ra_deg=cl["ra_deg"],
                                  dec_deg=cl["dec_deg"], z=cl["z"], d_a_mpc_h=d_a,
                                  n_gal=n_gal, n_members=n_members, n_mem=cl["n_mem"],
                                  log10_m_cat=cl["log10_m_cat"],
                                  log10_m_cat_err=cl["log10_m_cat_err"],
                                  skipped=(~kept).astype(np.int8)))
        w.add_group("galaxies", SURVEY_PHASE_SPACE_GALAXY_SCHEMA)
        w.append("galaxies", g)

    ids = cl["cluster_id"][kept]
    _warn_degenerate(ids, g, galaxies if galaxies is not None else phase_space_in)
    rows = dict(cluster_id=ids, log10_m200c=np.full(ids.size, np.nan), n_gal=n_gal[kept],
                n_members=n_members[kept])
    grid = Grid3D(n=k.n_grid, half_width_mpc_h=W, v_max_kms=V)
    file_attrs = dict(n_grid=k.n_grid, half_width_mpc_h=W, v_max_kms=V, h0=k.h0,
                      truncation=k.truncation, normalisation="each cube sums to 1",
                      split="survey", axes="x_proj_mpc_h, y_proj_mpc_h, v_los_kms")
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    with CubeWriter(cubes_out, ids.size, k.n_grid, file_attrs) as w:
        if ids.size:
            offsets = galaxy_offsets(ids, g["cluster_id"])
            bar = tqdm(total=ids.size, desc="kde survey", unit="cube", disable=not progress)
            buf = np.empty((k.batch_size,) + grid.shape, dtype=np.float32)
            for b0 in range(0, ids.size, k.batch_size):
                b1 = min(b0 + k.batch_size, ids.size)
                o = offsets[b0:b1 + 1]
                r = slice(int(o[0]), int(o[-1]))
                try:
                    cubes = kde_cubes(g["x_proj_mpc_h"][r], g["y_proj_mpc_h"][r],
                                      g["v_los_kms"][r], o - o[0], grid=grid, h0=k.h0,
                                      truncation=k.truncation, min_galaxies=3,
                                      ids=ids[b0:b1].tolist(), out=buf[:b1 - b0])
                except KDEInputError as err:
                    raise CatalogueError(clusters, "galaxies", str(err),
                                         "drop that cluster or raise survey.min_galaxies"
                                         ) from err
                w.write(cubes, {c: v[b0:b1] for c, v in rows.items()})
                bar.update(b1 - b0)
            bar.close()
    log.info("survey cubes: %d of %d clusters (%d skipped), %d window galaxies, %d^3 voxels",
             ids.size, n_cl, skipped.size, int(keep_g.sum()), k.n_grid)


def _survey_posterior_schema():
    # the cluster columns of the phase-space product (less D_A), then the network outputs
    cols = {k: v for k, v in SURVEY_PHASE_SPACE_CLUSTER_SCHEMA.items() if k != "d_a_mpc_h"}
    cols["comoving_distance_mpc_h"] = ("f8", "h^-1 Mpc (comoving)",
                                       "comoving distance of the cluster redshift")
    cols["beyond_mock_depth"] = ("i1", "", "1: farther than the mock's observers "
                                 "(mock.observer_radius_mpc_h): the flux limit leaves it "
                                 "fewer galaxies than the training windows of its mass had")
    cols["log10_m_pred"] = ("f8", "log10(h^-1 Msun)", "network point prediction d~")
    cols["extrapolated"] = ("i1", "", "1: d~ outside the calibrated range (edge row used)")
    what = {"map": "posterior peak (MAP)", "median": "posterior median",
            "mean": "posterior mean", "sd": "posterior standard deviation",
            "lo68": "15.87% quantile (lower end of the 68.27% interval, '16%')",
            "hi68": "84.13% quantile (upper end of the 68.27% interval, '84%')",
            "lo95": "2.5% quantile", "hi95": "97.5% quantile"}
    for p, name in (("flat", "test-set (flat) prior"), ("pop", "population (Tinker) prior")):
        for key in SURVEY_POSTERIOR_KEYS:
            unit = "dex" if key == "sd" else "log10(h^-1 Msun)"
            cols[f"{p}_{key}"] = ("f8", unit, f"log10 M200c {what[key]}, {name}")
    return io.Schema(cols)


def posterior_table_base(s, cosmo, cl) -> dict:
    """The cluster columns of a survey posterior table (``survey/posteriors.ecsv`` and the
    flow's), with each cluster's comoving distance and whether it lies beyond the mock's
    observers (logged: the calibration has no training window that faint-sampled)."""
    table = {c: cl[c] for c in ("cluster_id", "ra_deg", "dec_deg", "z", "n_gal", "n_members",
                                "n_mem", "log10_m_cat", "log10_m_cat_err", "skipped")}
    r = np.asarray(cosmo.comoving_distance_mpc_h(np.asarray(cl["z"], dtype=float)),
                   dtype=float).reshape(-1)
    depth = float(s.mock.observer_radius_mpc_h)
    table["comoving_distance_mpc_h"] = r
    table["beyond_mock_depth"] = (r > depth).astype(np.int8)
    n_far = int(table["beyond_mock_depth"].sum())
    if n_far:
        log.warning("%d of %d survey cluster(s) lie beyond the mock's observers (comoving "
                    "distance > mock.observer_radius_mpc_h = %g h^-1 Mpc, z up to %.3f): the "
                    "network and its calibration never saw clusters that far, so their "
                    "posteriors are extrapolated (column beyond_mock_depth); raise "
                    "mock.observer_radius_mpc_h to the survey's depth and rerun", n_far,
                    r.size, depth, float(np.nanmax(np.asarray(cl["z"], dtype=float))))
    return table


def survey_posteriors(*, config, model, joint_pdf, cubes, phase_space, out, csv_out=None):
    """Rule ``survey_posteriors``: d~ per cluster and its posteriors under both priors.

    Network predictions of the survey cubes (:func:`cmpipe.training.predict` with the run's
    model), then the calibrated posterior (the joint-PDF slice: test-set prior, what the
    paper reports; columns ``flat_*``) and the population-prior posterior (re-weighted by
    Tinker 2008 at the cluster redshift over the test-set prior from the joint PDF; columns
    ``pop_*``). One row per survey cluster, sorted by id; skipped clusters have NaN.
    ``out`` (and ``csv_out``) format from the extension: .ecsv (units, descriptions and
    metadata kept), .csv (plain) or .fits.
    """
    from ..calibration import JointPDF, is_extrapolated
    from ..calibration import _rows as pdf_rows
    from ..io.survey import _write
    from ..massfunction import prior_from_joint_pdf, summaries_under_priors
    from ..training import predict

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    cl, attrs = read_table(phase_space, group="clusters",
                           required=list(SURVEY_PHASE_SPACE_CLUSTER_SCHEMA))
    n = len(cl["cluster_id"])
    pdf = JointPDF.load(joint_pdf)
    pred = predict(Path(model).parent, cubes,
                   batch_size=int(s.train.get("batch_size") or 100))
    d = np.full(n, np.nan)
    if len(pred["cluster_id"]):
        row = np.searchsorted(cl["cluster_id"], pred["cluster_id"])
        if np.any(row >= n) or np.any(cl["cluster_id"][np.minimum(row, n - 1)]
                                      != pred["cluster_id"]):
            raise CatalogueError(cubes, "cluster_id", "cube ids differ from the phase-space "
                                 "cluster table", "rerun survey_cubes")
        d[row] = pred["log10_m200c_pred"]
    ok = np.isfinite(d)
    table = posterior_table_base(s, cosmo, cl)
    table["log10_m_pred"] = d
    table["extrapolated"] = (is_extrapolated(pdf, np.where(ok, d, pdf.d_grid[0]))
                             & ok).astype(np.int8)
    for p in ("flat", "pop"):
        for key in SURVEY_POSTERIOR_KEYS:
            table[f"{p}_{key}"] = np.full(n, np.nan)
    prior = prior_from_joint_pdf(pdf)
    m_range = _population_mass_range(s, pdf.calibrated_mass_range)
    idx = np.flatnonzero(ok)
    for c0 in range(0, idx.size, 2048):
        sel = idx[c0:c0 + 2048]
        su = summaries_under_priors(pdf.m_grid, pdf_rows(pdf, d[sel]), cl["z"][sel], cosmo,
                                    prior, log10_m_range=m_range)
        for p, name in (("flat", "test_prior"), ("pop", "population_prior")):
            for key in SURVEY_POSTERIOR_KEYS:
                table[f"{p}_{key}"][sel] = su[name][key]
    meta = dict(
        run=s.run, model=str(model), joint_pdf=str(joint_pdf),
        prior_flat=SURVEY_PRIORS["flat"], prior_pop=SURVEY_PRIORS["pop"],
        population_log10_m_range=list(m_range),
        n_clusters=int(n), n_with_posterior=int(np.isfinite(table["flat_median"]).sum()),
        n_skipped=int(cl["skipped"].sum()), n_extrapolated=int(table["extrapolated"].sum()),
        n_beyond_mock_depth=int(table["beyond_mock_depth"].sum()),
        comments=["flat_*: posterior under the test-set prior (flat in log M): "
                  "the paper's calibrated posterior",
                  "pop_*: posterior under the Tinker (2008) mass function at the cluster "
                  f"redshift (population prior), truncated to log10 M in [{m_range[0]:.3f}, "
                  f"{m_range[1]:.3f}]",
                  "masses log10(M200c / h^-1 Msun); *_sd in dex; lo68/hi68 = 15.87/84.13%, "
                  "lo95/hi95 = 2.5/97.5% quantiles",
                  "skipped = 1: fewer than survey.min_galaxies galaxies in the window (NaN)"])
    schema = _survey_posterior_schema()
    _write(out, table, schema, meta)
    if csv_out is not None:
        _write(csv_out, table, schema, meta)
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


def _population_mass_range(s, measured_range, measured_what: str = "the calibrated range "
                           "of the joint PDF") -> tuple[float, float]:
    """True-mass range of the population prior: the sample's (config, or the synthetic
    survey's mass threshold) clipped to ``measured_range``, the masses the estimator's
    likelihood was measured on (:attr:`JointPDF.calibrated_mass_range`, or the neural
    flow's training masses)."""
    sv = _survey_cfg(s)
    pp = dict(sv.get("population_prior") or {})
    cal_lo, cal_hi = (float(v) for v in measured_range)
    lo = pp.get("log10_m_min")
    if lo is None and sv.get("source", "synthetic") == "synthetic":
        lo = (sv.get("synthetic") or {}).get("log10_m_min")
    hi = pp.get("log10_m_max")
    lo = cal_lo if lo is None else max(float(lo), cal_lo)
    hi = cal_hi if hi is None else min(float(hi), cal_hi)
    if not lo < hi:
        raise ConfigError(f"survey.population_prior: the mass range [{lo}, {hi}] is empty "
                          f"inside {measured_what} [{cal_lo:.3f}, {cal_hi:.3f}]; widen "
                          "log10_m_min/log10_m_max or set them to null")
    return float(lo), float(hi)


def _post_meta(path) -> dict:
    from astropy.table import Table

    try:
        return dict(Table.read(path).meta)
    except Exception:                                   # CSV/FITS without the ECSV header
        return {}


def _read_astropy_columns(path):
    from ..io.survey import _read

    t = _read(path)
    return {c: np.ma.filled(np.ma.asarray(t[c]), np.nan) if t[c].dtype.kind == "f"
            else np.asarray(t[c]) for c in t.colnames}


def _tinker_callable(meta, cosmo):
    """Tinker (2008) dn/dlog10M the survey should see, and a redshift for its slope."""
    from ..massfunction import tinker08_dndlog10m, tinker08_survey_average

    th = meta.get("theory") or {}
    if th.get("kind") == "volume_average":
        r1, r2 = float(th["r_min_mpc_h"]), float(th["r_max_mpc_h"])

        def n_of_m(m):
            a2 = tinker08_survey_average(m, r2, cosmo)
            if r1 <= 0:
                return a2
            a1 = tinker08_survey_average(m, r1, cosmo)
            return (r2 ** 3 * a2 - r1 ** 3 * a1) / (r2 ** 3 - r1 ** 3)
        z_mid = float(cosmo.z_at_comoving_distance(((r1 ** 3 + r2 ** 3) / 2.0) ** (1 / 3)))
        return n_of_m, z_mid, f"Tinker (2008) averaged over the shell {r1:.0f}-{r2:.0f} " \
                              "h^-1 Mpc"
    z = float(th.get("z", 0.1))
    return (lambda m: tinker08_dndlog10m(m, z, cosmo)), z, f"Tinker (2008) at z = {z:g}"


def _pull_stats(est, sigma, ref, ref_err, lo, hi):
    """Pulls ``(est - ref) / sqrt(sigma^2 + ref_err^2)`` and their summary."""
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


def _survey_sigma_lin(info, z, cosmo, cells: int = 128):
    """rms linear contrast of the survey's window and how it was computed: the synthetic
    survey's cap inside its periodic box (the modes the synthetic universe has), or for a
    catalogue the cap-shaped shell of ``catalogue_volume`` in a zero-padded box."""
    from ..massfunction import sphere_sigma_lin, survey_window_weights, window_sigma_lin

    if info.get("source") == "synthetic" and info.get("observer_mpc_h") is not None:
        L = float(info["box_size_mpc_h"])
        w = survey_window_weights(
            box_size_mpc_h=L, cells=cells, observer_mpc_h=info["observer_mpc_h"],
            radius_mpc_h=float(info["radius_mpc_h"]), area_deg2=float(info["area_deg2"]),
            pole_ra_deg=float(info["pole_ra_deg"]), pole_dec_deg=float(info["pole_dec_deg"]),
            periodic=True)
        what = (f"the survey cap ({info['area_deg2']:g} deg^2, R = {info['radius_mpc_h']:g} "
                f"h^-1 Mpc) in the periodic {L:g} h^-1 Mpc box, {cells}^3 cells: the modes "
                "of the synthetic universe")
    elif info.get("comoving_distance_range_mpc_h"):
        r1, r2 = (float(v) for v in info["comoving_distance_range_mpc_h"])
        L = 2.6 * r2                                  # the whole sphere, zero-padded
        w = survey_window_weights(
            box_size_mpc_h=L, cells=cells, observer_mpc_h=[L / 2] * 3, radius_mpc_h=r2,
            inner_radius_mpc_h=r1, area_deg2=float(info.get("area_deg2", 8250.0)),
            pole_ra_deg=0.0, pole_dec_deg=90.0, periodic=False)
        what = (f"a cap of {info.get('area_deg2', 8250.0):g} deg^2 between {r1:.0f} and "
                f"{r2:.0f} h^-1 Mpc (the catalogue_volume; the real footprint's shape is "
                f"not modelled) in a zero-padded {L:.0f} h^-1 Mpc box, {cells}^3 cells")
    else:
        w, what = None, "top-hat sphere of the survey volume (colossus sigma(R))"
    if w is not None and w.sum() == 0:
        w, what = None, "top-hat sphere of the survey volume (colossus sigma(R)): the " \
                        "window holds no cell centre"
    if w is None:
        return sphere_sigma_lin(float(info["volume_mpc_h3"]), z, cosmo), what
    return window_sigma_lin(w, L, z, cosmo), what


def _test_set_pit(pdf, test_predictions, mock_clusters):
    """PIT of the test set's own predictions in its joint PDF, their true masses and the
    mock's observer distances (comoving h^-1 Mpc): the reference for the survey's."""
    pred, _ = read_table(test_predictions, group="predictions",
                         columns=["cluster_id", "log10_m200c_pred", "log10_m200c_true"])
    cl, _ = read_table(mock_clusters, group="clusters",
                       columns=["cluster_id", "observer_distance_mpc_h"])
    from ..massfunction import likelihood_pit

    order = np.argsort(cl["cluster_id"])
    row = order[np.searchsorted(cl["cluster_id"], pred["cluster_id"], sorter=order)]
    if np.any(cl["cluster_id"][row] != pred["cluster_id"]):
        raise CatalogueError(test_predictions, "cluster_id", "test predictions name clusters "
                             f"that {mock_clusters} does not hold",
                             "rerun the summaries rule on this run's mock")
    u = likelihood_pit(pdf, pred["log10_m200c_pred"], pred["log10_m200c_true"])
    return (u, np.asarray(pred["log10_m200c_true"], dtype=float),
            np.asarray(cl["observer_distance_mpc_h"], dtype=float)[row])


def _likelihood_check(pdf, post, ref, use, cosmo, test_predictions=None, mock_clusters=None):
    """PIT of the survey's predictions in the test set's P(d~ | M) at the true masses
    (:func:`cmpipe.massfunction.likelihood_pit`): uniform overall and in true-mass bins if
    the survey is observed as the mock is. In distance bins neither is uniform (the flux
    limit makes nearby clusters richer, and the network reads richness), so there the
    survey is compared with the test set's own PIT at the same mass and distance."""
    from scipy import stats

    from ..massfunction import likelihood_pit

    u = likelihood_pit(pdf, post["log10_m_pred"], ref)
    ok = use & np.isfinite(u)
    if ok.sum() < 2:
        return None

    def summary(x):
        n = int(x.size)
        if n < 2:
            return dict(n=n)
        return dict(n=n, mean=float(x.mean()), mean_err=float(np.sqrt(1 / 12 / n)),
                    frac_below_16=float(np.mean(x < 0.1587)),
                    frac_above_84=float(np.mean(x > 0.8413)),
                    ks_p_value=float(stats.kstest(x, "uniform").pvalue))

    edges = [-np.inf, 14.0, 14.3, 14.6, np.inf]
    by_mass = {f"{max(a, 13.0):.1f}-{min(b, 16.0):.1f}":
               summary(u[ok & (ref >= a) & (ref < b)]) for a, b in zip(edges[:-1], edges[1:])}
    out = dict(all=summary(u[ok]), by_true_mass=by_mass,
               note="u = P(d~' <= d~ | M_true) in the calibration joint PDF: uniform (mean "
                    "0.5 +- mean_err, 15.9% below 0.159 and above 0.841) if the survey's "
                    "predictions follow the test set's likelihood")
    r = np.asarray(cosmo.comoving_distance_mpc_h(post["z"]), dtype=float)
    if test_predictions is not None and mock_clusters is not None:
        u_t, m_t, r_t = _test_set_pit(pdf, test_predictions, mock_clusters)
        good = np.isfinite(u_t)
        # the test set's PIT at each survey cluster's (true mass, distance): a Gaussian
        # kernel regression over the test clusters (0.1 dex, 20 h^-1 Mpc)
        expect = np.full(u.shape, np.nan)
        idx = np.flatnonzero(ok)
        for c0 in range(0, idx.size, 512):
            i = idx[c0:c0 + 512]
            k = np.exp(-0.5 * (((ref[i, None] - m_t[None, good]) / 0.1) ** 2
                               + ((r[i, None] - r_t[None, good]) / 20.0) ** 2))
            ksum = k.sum(axis=1)
            expect[i] = np.where(ksum > 1e-3, (k @ u_t[good]) / np.maximum(ksum, 1e-300),
                                 np.nan)
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
        by_mass_m = {f"{max(a, 13.0):.1f}-{min(b, 16.0):.1f}":
                     matched(ok & (ref >= a) & (ref < b)) for a, b in zip(edges[:-1], edges[1:])}
        out["matched_to_test_set"] = dict(
            all=matched(ok), by_distance=rows, by_true_mass=by_mass_m,
            note="the test set's own PIT at the survey cluster's true mass and comoving "
                 "distance (Gaussian kernel regression, 0.1 dex x 20 h^-1 Mpc, over the "
                 "test clusters at their mock observer distances): the PIT depends on "
                 "distance (the flux limit makes nearby clusters richer, and the network "
                 "reads richness), so by distance the survey is compared with the test set "
                 "at the same mass and distance; difference ~ 0 within difference_err if "
                 "the survey is observed as the mock is")
    return out


NULL_NOTE = ("null_surveys mock surveys of a Tinker universe (Poisson counts, one "
             "sample-variance fluctuation b(M) sigma_lin g each) observed through the "
             "calibration and measured like the data: the distribution of the band-count "
             "fraction a correct pipeline gives. p_value = P(null fraction <= observed); "
             "null_prob_at_least_two_thirds = how often a correct pipeline reaches 2/3")


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


def survey_mass_function(*, config, posteriors, meta, truth, out, pulls_out,
                         mass_function_png, pulls_png, joint_pdf=None, test_predictions=None,
                         mock_clusters=None):
    """Rule ``mass_function``: the survey's dn/dlog10M, Tinker (2008), pulls and figures.

    The estimator of :func:`cmpipe.massfunction.estimate_mass_function` (inverse-uncertainty
    weighted KDE, bootstrap band) on the ``survey.mass_function.prior`` posteriors'
    ``estimate`` with their standard deviations; Tinker (2008) as the survey should see it
    (snapshot redshift for the synthetic box, the comoving-shell average for a real
    catalogue), and forward-modelled through the measured scatter and the kernel
    (:func:`cmpipe.massfunction.forward_model`), and, given the calibration ``joint_pdf``,
    forward-modelled through the calibrated likelihood P(d~ | M) and the same posteriors
    and estimator (:func:`cmpipe.massfunction.forward_model_calibrated`; the comparison
    uses this one). Pulls against true masses (synthetic) or catalogue masses where they
    exist (docs/data-products.md for every definition).
    """
    import json

    from .. import plots
    from ..calibration import JointPDF
    from ..massfunction import (LN10, band_chi2, estimate_mass_function, forward_in_band,
                                forward_model,
                                forward_model_calibrated, forward_model_from_masses,
                                local_slope, sample_variance_fraction)

    s = _settings(config)
    cosmo = make_cosmology(s.cosmology)
    sv = _survey_cfg(s)
    mf = dict(sv.get("mass_function", {}))
    info = json.loads(Path(meta).read_text())
    post = _read_astropy_columns(posteriors)
    p = {"flat": "flat", "population": "pop"}[mf.get("prior", "flat")]
    est_key = mf.get("estimate", "median")
    m_est = post[f"{p}_{est_key}"]
    sd = post[f"{p}_sd"]
    use = np.isfinite(m_est) & np.isfinite(sd) & (sd > 0)
    if info.get("z_range"):
        z0, z1 = info["z_range"]
        use &= (post["z"] >= z0) & (post["z"] <= z1)
    if use.sum() < 2:
        raise CatalogueError(posteriors, f"{p}_{est_key}", f"only {int(use.sum())} cluster(s) "
                             "with a posterior for the mass function",
                             "enlarge the survey (survey.synthetic.radius_mpc_h, area_deg2) "
                             "or lower survey.min_galaxies")
    grid = np.linspace(float(mf.get("log10_m_lo", 13.0)), float(mf.get("log10_m_hi", 15.8)),
                       int(mf.get("n_grid", 57)))
    volume = float(info["volume_mpc_h3"])
    bw = mf.get("bandwidth_dex", "scott")
    boot = mf.get("bootstrap", "poisson")
    est = estimate_mass_function(m_est[use], sd[use], volume, grid, bandwidth_dex=bw,
                                 n_boot=int(mf.get("n_boot", 500)), bootstrap=boot,
                                 seed=stage_seed(s.seed, "mass_function") % (2 ** 32),
                                 return_draws=True)
    n_of_m, z_th, theory_label = _tinker_callable(info, cosmo)
    tinker = np.asarray(n_of_m(grid), dtype=float)

    # reference masses: truths (synthetic) or catalogue masses
    ref = np.full(len(post["cluster_id"]), np.nan)
    ref_err = np.full(ref.shape, np.nan)
    reference = "none"
    tr = _read_astropy_columns(truth)
    if info.get("has_truth") and len(tr["cluster_id"]):
        row = np.searchsorted(tr["cluster_id"], post["cluster_id"])
        row = np.minimum(row, len(tr["cluster_id"]) - 1)
        hit = tr["cluster_id"][row] == post["cluster_id"]
        ref[hit] = tr["log10_m200c"][row[hit]]
        reference = "truth"
    elif np.isfinite(post["log10_m_cat"]).any():
        ref = np.asarray(post["log10_m_cat"], dtype=float)
        ref_err = np.asarray(post["log10_m_cat_err"], dtype=float)
        reference = "catalogue"

    matched = use & np.isfinite(ref)
    if reference != "none" and matched.sum() > 1:
        scatter = float(np.std(m_est[matched] - ref[matched], ddof=1))
        scatter_from = f"std of ({p}_{est_key} - {reference} mass) over {int(matched.sum())}"\
                       " clusters"
    else:
        scatter = float(np.median(sd[use]))
        scatter_from = f"median posterior sd ({p}_sd): no reference masses"
    kernel = float(np.median(est.bandwidth_dex))
    if info.get("source") == "synthetic":
        m_true_min = float(info.get("log10_m_min", sv.get("synthetic", {}).get(
            "log10_m_min", 13.7)))
    else:
        m_true_min = 12.0
    forward_gauss = np.asarray(forward_model(grid, z_th, cosmo, scatter_dex=scatter,
                                             kernel_dex=kernel, log10_m_true_min=m_true_min,
                                             dndlog10m=n_of_m), dtype=float)
    pdf, t_range = None, (m_true_min, 16.0)
    forward, forward_info = forward_gauss, dict(
        method="gaussian", note=f"Tinker convolved with a Gaussian of {scatter_from} and "
        "the estimator's kernel (no joint PDF given)")
    if joint_pdf is not None:
        pdf = JointPDF.load(joint_pdf)
        cal_lo, cal_hi = pdf.calibrated_mass_range
        t_range = (max(m_true_min, cal_lo), cal_hi)
        fw = forward_model_calibrated(
            pdf, grid, cosmo, volume_mpc_h3=volume, log10_m_true_range=t_range,
            bandwidth_dex=kernel if bw == "scott" else bw, z_clusters=post["z"][use],
            z_mass_function=z_th, prior=mf.get("prior", "flat"), estimate=est_key,
            dndlog10m=n_of_m, scale=float(mf.get("forward_scale", 20.0)),
            seed=stage_seed(s.seed, "mass_function_forward") % (2 ** 32))
        forward = np.asarray(fw["dn_dlog10m"], dtype=float)
        forward_info = dict(
            method="calibrated", log10_m_true_range=list(t_range),
            n_expected=fw["n_expected"], n_simulated=fw["n_simulated"],
            note="Tinker masses in log10_m_true_range drawn at forward_scale x the survey "
                 "volume; d~ drawn from the joint PDF's P(d~ | M); the same posteriors, "
                 "point estimate, sd weights and kernel as the data")
        m_true_min = t_range[0]

    m_c = mf.get("log10_m_complete")
    if m_c is None:
        m_c = m_true_min if info.get("source") == "synthetic" else \
            float(grid[int(np.argmax(est.dn_dlog10m))])
        m_c_from = "survey.synthetic.log10_m_min" if info.get("source") == "synthetic" \
            else "peak of the measured dn/dlog10M"
    else:
        m_c_from = "survey.mass_function.log10_m_complete"
    m_c = float(m_c)
    m_top = float(m_est[use].max())
    compared = (grid >= m_c) & (grid <= m_top)
    tinker_in = compared & (est.lo68 <= tinker) & (tinker <= est.hi68)
    n_cmp = int(compared.sum())
    # the survey's sample variance (one fluctuation, all masses): added to the band when
    # comparing with Tinker, which a single survey volume need not follow
    sigma_lin, sv_window = _survey_sigma_lin(info, z_th, cosmo)
    sv = sample_variance_fraction(grid, z_th, cosmo, volume, sigma_lin=sigma_lin) * forward
    in_band, in_band_sv = forward_in_band(est, forward, sv, compared)
    chi2 = band_chi2(est, forward, sv, compared, kernel, float(mf.get("forward_scale", 20.0)))
    # how often a correct pipeline on a Tinker universe passes the band count
    null = None
    n_null = int(mf.get("null_surveys", 200))
    if pdf is not None and n_null > 0 and n_cmp:
        from ..calibration import QUANTILE_LEVELS
        from ..massfunction import null_band_fractions

        nb = null_band_fractions(
            pdf, grid, cosmo, forward=forward, volume_mpc_h3=volume,
            log10_m_true_range=t_range, bandwidth_dex=kernel if bw == "scott" else bw,
            log10_m_complete=m_c, z_clusters=post["z"][use], z_mass_function=z_th,
            sigma_lin=sigma_lin, prior=mf.get("prior", "flat"), estimate=est_key,
            dndlog10m=n_of_m, n_surveys=n_null, n_boot=min(int(mf.get("n_boot", 500)), 200),
            bootstrap=boot, seed=stage_seed(s.seed, "mass_function_null") % (2 ** 32))
        null = dict(n_surveys=n_null, note=NULL_NOTE)
        for key, obs in (("fraction_in_band", in_band.sum() / n_cmp),
                         ("fraction_in_band_with_sample_variance", in_band_sv.sum() / n_cmp)):
            f = nb[key][np.isfinite(nb[key])]
            null[key] = dict(observed=float(obs), null_median=float(np.median(f)),
                             null_lo68=float(np.quantile(f, QUANTILE_LEVELS["lo68"])),
                             null_hi68=float(np.quantile(f, QUANTILE_LEVELS["hi68"])),
                             null_prob_at_least_two_thirds=float(np.mean(f >= 2 / 3 - 1e-9)),
                             p_value=float(np.mean(f <= obs + 1e-9)))
    # the survey's own true masses through the same calibration: no sample variance
    truth_forward = np.full(grid.shape, np.nan)
    truth_in = np.zeros(grid.shape, dtype=bool)
    if joint_pdf is not None and reference == "truth" and matched.sum() > 1:
        truth_forward = forward_model_from_masses(
            pdf, ref[use & np.isfinite(ref)], grid, cosmo, volume_mpc_h3=volume,
            bandwidth_dex=kernel if bw == "scott" else bw,
            z_clusters=post["z"][use & np.isfinite(ref)], prior=mf.get("prior", "flat"),
            estimate=est_key, log10_m_range=t_range,
            seed=stage_seed(s.seed, "mass_function_truth") % (2 ** 32))
        truth_forward *= use.sum() / max(int((use & np.isfinite(ref)).sum()), 1)
        truth_in = compared & (est.lo68 <= truth_forward) & (truth_forward <= est.hi68)

    # do the survey's predictions follow the test set's P(d~ | M)? (truth only)
    likelihood = None
    if pdf is not None and reference == "truth":
        likelihood = _likelihood_check(pdf, post, ref, use, cosmo, test_predictions,
                                       mock_clusters)

    # pulls under both priors, both definitions (PULL_DEFINITIONS; mean_sd is the primary)
    pulls = {}
    per_cluster = {}
    for name, q in (("flat", "flat"), ("population", "pop")):
        lo, hi = post[f"{q}_lo68"], post[f"{q}_hi68"]
        for defn, (key, _) in PULL_DEFINITIONS.items():
            est_q = post[f"{q}_{key}"]
            sig = post[f"{q}_sd"] if key == "mean" else 0.5 * (hi - lo)
            stats, pull = _pull_stats(est_q, sig, ref, ref_err, lo, hi)
            sel = np.isfinite(est_q) & (est_q >= m_c)
            stats_sel, _ = _pull_stats(np.where(sel, est_q, np.nan), sig, ref, ref_err, lo,
                                       hi)
            if defn == "mean_sd":
                pulls[name] = dict(all=stats, selected_on_estimate=stats_sel)
                per_cluster[name] = pull
            else:
                pulls[name][defn] = dict(all=stats, selected_on_estimate=stats_sel)
    edd = None
    fm = post["flat_mean"]
    sel = np.isfinite(fm) & np.isfinite(ref) & (fm >= m_c)
    if reference != "none" and np.sum(np.isfinite(fm) & np.isfinite(ref)) > 1:
        both = np.isfinite(fm) & np.isfinite(ref)
        sig_flat = float(np.std(fm[both] - ref[both], ddof=1))
        base = sel if sel.any() else both
        alpha = float(np.mean(local_slope(fm[base], z_th, cosmo)))
        shift = -alpha * sig_flat ** 2
        med_sig = float(np.median(post["flat_sd"][base]))
        edd = dict(
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
    result = dict(
        run=s.run, source=info.get("source"), reference=reference,
        estimate="posterior mean", sigma="posterior standard deviation; catalogue mass "
        "errors added in quadrature",
        pull_definition=PULL_DEFINITIONS["mean_sd"][1],
        pull_definition_median_half68=PULL_DEFINITIONS["median_half68"][1] + " (keys "
        "flat.median_half68, population.median_half68)",
        population_log10_m_range=_post_meta(posteriors).get("population_log10_m_range"),
        n_clusters=int(len(post["cluster_id"])), n_with_posterior=int(
            np.isfinite(post["flat_median"]).sum()),
        n_matched=int(np.sum(np.isfinite(fm) & np.isfinite(ref))),
        log10_m_complete=m_c, log10_m_complete_from=m_c_from,
        flat=pulls["flat"], population=pulls["population"], eddington=edd,
        likelihood_check=likelihood,
        mass_function=dict(
            prior=mf.get("prior", "flat"), estimate=est_key, n_clusters=int(use.sum()),
            volume_mpc_h3=volume, kernel_dex=kernel, bandwidth=bw, n_boot=est.n_boot,
            theory=theory_label, forward_scatter_dex=scatter, forward_scatter_from=
            scatter_from, forward_log10_m_true_min=m_true_min, forward=forward_info,
            forward_scale=float(mf.get("forward_scale", 20.0)),
            compared_log10_m_range=[m_c, m_top], n_bins_compared=n_cmp,
            n_bins_forward_in_band=int(in_band.sum()),
            fraction_forward_in_band=float(in_band.sum() / n_cmp) if n_cmp else None,
            fraction_tinker_in_band=float(tinker_in.sum() / n_cmp) if n_cmp else None,
            n_bins_forward_in_band_with_sample_variance=int(in_band_sv.sum()),
            fraction_forward_in_band_with_sample_variance=float(in_band_sv.sum() / n_cmp)
            if n_cmp else None,
            bootstrap=boot,
            sample_variance_sigma_lin=sigma_lin, sample_variance_window=sv_window,
            sample_variance_note="relative sd b(M) sigma_lin: Tinker (2010) bias times the "
            "rms linear density contrast of the survey window (sample_variance_window), "
            "added in quadrature to half the bootstrap band; fully correlated across "
            "masses",
            chi2=chi2, band_count_null=null,
            n_clusters_expected_tinker=forward_info.get("n_expected"),
            n_bins_truth_forward_in_band=int(truth_in.sum()) if reference == "truth"
            else None,
            fraction_truth_forward_in_band=float(truth_in.sum() / n_cmp)
            if n_cmp and reference == "truth" else None,
            truth_forward_note="the survey's own true masses, each observed 20 times "
            "through the joint PDF and the same posteriors and estimator: the calibration "
            "and estimator checked without sample variance"))
    table = dict(log10_m=grid, dn_dlog10m=est.dn_dlog10m, lo68=est.lo68, hi68=est.hi68,
                 boot_sd=est.boot_sd, tinker08=tinker, tinker08_forward=forward,
                 tinker08_forward_gaussian=forward_gauss, sample_variance_sd=sv,
                 truth_forward=truth_forward, forward_in_band_sv=in_band_sv.astype(np.int8),
                 compared=compared.astype(np.int8), forward_in_band=in_band.astype(np.int8))
    from astropy.table import Table

    with io.atomic_output(out) as tmp:
        Table(table).write(tmp, format="ascii.csv", overwrite=True)
    io.write_json(pulls_out, _jsonable(result))
    plots.survey_mass_function_figure(table, result, mass_function_png, truth=tr if
                                      reference == "truth" else None)
    plots.survey_pulls_figure(post, ref, per_cluster, result, pulls_png)
    f, pp = pulls["flat"]["all"], pulls["population"]["all"]
    log.info("mass function: %d clusters (Tinker expects %.0f); of %d bins above 10^%.2f "
             "the forward-modelled Tinker is inside the bootstrap band in %d (%d with the "
             "sample variance), the survey's true masses forward-modelled in %d; pulls vs %s: "
             "flat %s, population %s", use.sum(), forward_info.get("n_expected", np.nan),
             n_cmp, m_c, int(in_band.sum()), int(in_band_sv.sum()), int(truth_in.sum()),
             reference,
             f"{f['pull_mean']:.3f} +- {f['pull_sd']:.3f}" if f.get("n", 0) > 1 else "n/a",
             f"{pp['pull_mean']:.3f} +- {pp['pull_sd']:.3f}" if pp.get("n", 0) > 1 else "n/a")


# -- cmpipe infer ------------------------------------------------------------------------

RESOLVED_CONFIG = "config.resolved.yaml"


def load_run_config(run_dir, schema=None) -> dict:
    """The resolved config of a run (``results/{run}/config.resolved.yaml``).

    Validated against ``schema`` when given (fills defaults of sections added later).

    Raises
    ------
    ConfigError
        The file is missing or not valid YAML.
    """
    import yaml

    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: no resolved config; the run directory must be a "
                          "finished run (snakemake ... makes results/{run}/"
                          f"{RESOLVED_CONFIG} with the model)")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: not a config mapping; rerun the workflow to rewrite it")
    from ..io.artefacts import PRODUCTS_KEY
    cfg.pop(PRODUCTS_KEY, None)
    if schema is not None and Path(schema).exists():
        import copy

        from ..settings import validate_config
        try:
            cfg = validate_config(copy.deepcopy(cfg), schema)
        except ConfigError as err:
            log.warning("%s does not validate against the current schema (a run made by "
                        "another cmpipe version?); using it as written: %s", path, err)
    return cfg


def infer(*, run_dir, clusters, out, galaxies=None, phase_space=None, cluster_columns=None,
          galaxy_columns=None, angle_unit="auto", min_galaxies=None, threads=1,
          keep_dir=None, schema=None, progress=False):
    """``cmpipe infer``: apply a trained run to a user's catalogue, without Snakemake.

    The run directory supplies the resolved config (window, KDE, cosmology), the model
    (``model/``) and the calibration (``calibration/joint_pdf.h5``); the same stage
    functions as the workflow (:func:`survey_cubes`, :func:`survey_posteriors`) make
    ``cubes.h5`` and ``phase_space.h5`` (in ``keep_dir``, or a temporary directory) and the
    posterior table ``out`` (.ecsv, .csv or .fits).
    """
    import tempfile

    import yaml

    from ..calibration import JointPDF
    from ..io.artefacts import (PRODUCTS_KEY, check_keras_file, check_run_consistency,
                                read_json_artefact)

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, schema)
    model = run_dir / "model" / "cnn3d.keras"
    norm = run_dir / "model" / "normalisation.json"
    joint = run_dir / "calibration" / "joint_pdf.h5"
    for p, what in ((model, "trained model"), (norm, "target normalisation"),
                    (joint, "calibration joint PDF")):
        if not p.exists():
            raise ConfigError(f"{p}: {what} missing; finish the run (snakemake --configfile "
                              "...) before cmpipe infer")
    # model, calibration and config must be one run's, and readable, before any work
    raw = yaml.safe_load((run_dir / RESOLVED_CONFIG).read_text()) or {}
    check_run_consistency(run_dir, {k: v for k, v in raw.items() if k != PRODUCTS_KEY},
                          raw.get(PRODUCTS_KEY))
    fix = ("rerun the rule that makes it (snakemake --cores N --configfile ... "
           "--forcerun train); the file is truncated or corrupt")
    check_keras_file(model, fix)
    read_json_artefact(norm, fix)
    JointPDF.load(joint)
    out_dir = Path(out).resolve().parent
    if out_dir.exists() and not os.access(out_dir, os.W_OK):
        raise CatalogueError(out, "(file)", f"output directory {out_dir} is not writable",
                             "choose a writable -o path")
    if min_galaxies is not None:
        cfg.setdefault("survey", {})["min_galaxies"] = int(min_galaxies)
    s = Settings.from_config(cfg)
    from ..io.survey import table_format
    table_format(out)                      # unknown output extension: fail before the work
    with tempfile.TemporaryDirectory(prefix="cmpipe-infer-") as tmp:
        work = Path(keep_dir) if keep_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        survey_cubes(config=s, clusters=clusters, galaxies=galaxies,
                     phase_space_in=phase_space, cubes_out=work / "cubes.h5",
                     phase_space_out=work / "phase_space.h5",
                     cluster_columns=cluster_columns, galaxy_columns=galaxy_columns,
                     angle_unit=angle_unit, threads=threads, progress=progress)
        survey_posteriors(config=s, model=model, joint_pdf=joint, cubes=work / "cubes.h5",
                          phase_space=work / "phase_space.h5", out=out)
    log.info("cmpipe infer: posteriors of %s written to %s (run %s)", clusters, out, s.run)


