"""Mock-catalogue rules: catalogue, halo selection, sightlines, projection, flux limit, split."""
from __future__ import annotations

from pathlib import Path

from .. import io
from ..cosmology import make_cosmology
from ..io.mock import (FLUX_CLUSTER_SCHEMA, FLUX_GALAXY_SCHEMA, PROJECTED_CLUSTER_SCHEMA,
                       SIGHTLINE_SCHEMA, SPLIT_CLUSTER_SCHEMA, WINDOW_GALAXY_SCHEMA,
                       galaxy_offsets)
from ..io.tables import (CatalogueError, Schema, TableWriter, append_rows, read_table,
                         table_length, write_table)
from ..mock.nuisance import NUISANCE_SCHEMA
from ..settings import stage_rng, stage_seed
from .common import box_attrs, settings_of, log


def catalogue(*, config, halos_out, galaxies_out, tail_halos_out, tail_galaxies_out):
    """Rule ``catalogue``: write halos.h5 and galaxies.h5 from the configured source, and
    the training tail (``simulation.tail``; empty tables when off or with MDPL2)."""
    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    tail = None
    if s.source == "synthetic":
        from ..mock.universe import TailSettings, UniverseSettings, generate_universe

        us = UniverseSettings(redshift=s.redshift, **s.synthetic.to_dict())
        if s.tail.enabled:
            tail = TailSettings(log10_m_min=s.tail.log10_m_min,
                                log10_m_max=s.tail.log10_m_max,
                                halos_per_dex=s.tail.halos_per_dex)
        made = generate_universe(us, cosmo, stage_seed(s.seed, "universe"), tail=tail)
        halos, galaxies = made[:2]
        box = us.box_size_mpc_h
    else:
        from ..io.mdpl2 import load_mdpl2

        m = s.mdpl2
        box = m.box_size_mpc_h
        kw = {}
        if m.halo_columns:
            from ..io.mdpl2 import DEFAULT_HLIST_COLUMNS
            kw["halo_columns"] = {**DEFAULT_HLIST_COLUMNS, **m.halo_columns}
        if m.galaxy_columns:
            from ..io.mdpl2 import DEFAULT_GALAXY_COLUMNS
            kw["galaxy_columns"] = {**DEFAULT_GALAXY_COLUMNS, **m.galaxy_columns}
        halos, galaxies = load_mdpl2(m.halo_file, m.galaxy_file, redshift=s.redshift,
                                     box_size_mpc_h=box, cosmology=cosmo,
                                     hdf5_path=m.galaxy_hdf5_path, **kw)
    meta = dict(box_size_mpc_h=box, redshift=s.redshift, cosmology=cosmo.as_dict(),
                source=s.source)
    log.info("catalogue: %d halos, %d galaxies (%s)", len(halos["halo_id"]),
             len(galaxies["galaxy_id"]), s.source)
    io.write_halos(halos_out, halos, **meta)
    io.write_galaxies(galaxies_out, galaxies, **meta)
    if tail is None:
        if s.source != "synthetic" and s.tail.enabled:
            log.info("simulation.tail applies to the synthetic source only: no tail with %s",
                     s.source)
        tail_h = {k: v[:0] for k, v in halos.items()}
        tail_g = {k: v[:0] for k, v in galaxies.items()}
    else:
        tail_h, tail_g = made[2:]
    tail_meta = dict(meta, source=f"{s.source} training tail")
    io.write_halos(tail_halos_out, tail_h, **tail_meta)
    io.write_galaxies(tail_galaxies_out, tail_g, **tail_meta)
    log.info("training tail: %d halos, %d galaxies", len(tail_h["halo_id"]),
             len(tail_g["galaxy_id"]))



# -- mock stages -------------------------------------------------------------------------

def select_halos(*, config, halos, tail_halos, out):
    """Rule ``select_halos``: host halos above the mass threshold, the box's and the
    training tail's (``tail_first_halo_id`` in the attributes marks where the tail's ids
    begin; -1 without a tail)."""
    from ..mock.selection import select_hosts

    s = settings_of(config)
    cols, attrs = io.read_halos(halos)
    tail, _ = io.read_halos(tail_halos)
    hosts = select_hosts(cols, s.log10_m200c_min)
    tail_hosts = select_hosts(tail, s.log10_m200c_min)
    first_tail = int(tail["halo_id"].min()) if len(tail["halo_id"]) else -1
    if len(tail_hosts["halo_id"]):
        log.info("training tail: %d hosts (halo_id >= %d), log10 M200c %.2f..%.2f",
                 len(tail_hosts["halo_id"]), first_tail, tail_hosts["log10_m200c"].min(),
                 tail_hosts["log10_m200c"].max())
        hosts = append_rows([hosts, tail_hosts])
    if len(hosts["halo_id"]) == 0:
        raise CatalogueError(halos, "log10_m200c", "no host halo reaches the selection "
                             f"threshold {s.log10_m200c_min}",
                             "lower selection.log10_m200c_min or use a larger box")
    write_table(out, hosts, group="halos", schema=io.HALO_SCHEMA,
                attrs=dict(box_attrs(attrs), tail_first_halo_id=first_tail))


def sightlines(*, config, hosts, out):
    """Rule ``sightlines``: lines of sight per host, flattening log M."""
    from ..mock.selection import allocate_sightlines, assign_sightlines

    s = settings_of(config)
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
                attrs=box_attrs(attrs))


def project(*, config, halos, galaxies, tail_halos, tail_galaxies, hosts, sightlines, out,
            progress=True, threads=1):
    """Rule ``project``: every galaxy of the box inside each cluster's window; the
    training tail's halos are ghosts (their windows see the box, no other window sees
    them). ``threads`` processes project halo batches side by side (the same file for
    any number)."""
    from ..mock.projection import Projector, project_batches

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    h, attrs = io.read_halos(halos)
    g, _ = io.read_galaxies(galaxies)
    th, _ = io.read_halos(tail_halos)
    tg, _ = io.read_galaxies(tail_galaxies)
    ghosts = th["halo_id"]
    if len(ghosts):
        h, g = append_rows([h, th]), append_rows([g, tg])
    hs, _ = io.read_halos(hosts)
    sl, _ = read_table(sightlines, group="sightlines", required=SIGHTLINE_SCHEMA)
    proj = Projector(h, g, box_size_mpc_h=attrs["box_size_mpc_h"], redshift=attrs["redshift"],
                     hubble_kms_per_mpc_h=cosmo.hubble_kms_per_mpc_h(attrs["redshift"]),
                     half_width_mpc_h=s.window.half_width_mpc_h, v_max_kms=s.window.v_max_kms,
                     interloper_log10_m_min=s.log10_m200c_min - 1.0,
                     ghost_halo_ids=ghosts)
    del h
    log.info("project: searching +-%.1f h^-1 Mpc (comoving) along each line of sight for "
             "galaxies slower than %.0f km/s; %d faster ones searched separately",
             proj.los_depth, proj.g_index.v_slow, len(proj.g_index.fast_idx))
    meta = dict(box_attrs(attrs), half_width_mpc_h=s.window.half_width_mpc_h,
                v_max_kms=s.window.v_max_kms)
    n_c = n_g = 0
    with TableWriter(out) as w:
        w.add_group("clusters", PROJECTED_CLUSTER_SCHEMA, meta)
        w.add_group("galaxies", WINDOW_GALAXY_SCHEMA)
        for cl, gal in project_batches(proj, sl, hs, batch_size=s.mock.halo_batch_size,
                                       progress=progress, workers=threads):
            w.append("clusters", cl)
            w.append("galaxies", gal)
            n_c += len(cl["cluster_id"])
            n_g += len(gal["cluster_id"])
    log.info("project: %d projected clusters, %d window galaxies", n_c, n_g)


def _cluster_chunks(n_clusters, chunk):
    for c0 in range(0, n_clusters, chunk):
        yield slice(c0, min(c0 + chunk, n_clusters))


def flux_limit(*, config, projected, out, chunk_clusters=2000):
    """Rule ``flux_limit``: observers, nuisances, apparent magnitudes, r < limit, richness cut.

    With ``mock.members: bound`` (the pure catalogue) interlopers (``is_member == 0``) are
    dropped first, so the richness cut and everything downstream see bound members only;
    the observers are the same as in the contaminated catalogue of the same seed. When the
    ``nuisance`` section departs from the fiducial universe (:func:`cmpipe.mock.nuisance.
    is_active`), every cluster's nuisances are drawn from their own random stream (the
    observers stay those of the fiducial mock) and applied to its window
    (:func:`~cmpipe.mock.nuisance.perturb_window`, then
    :func:`~cmpipe.mock.nuisance.spectroscopic_selection` after the flux limit), and the
    clusters table carries them (``nu_*`` columns).
    """
    from ..cosmology import observer_radius_mpc_h
    from ..mock import nuisance
    from ..mock.fluxlimit import draw_observer_distances, flux_limit as limit_by_flux

    s = settings_of(config)
    cosmo = make_cosmology(s.cosmology)
    clusters, attrs = read_table(projected, group="clusters", required=PROJECTED_CLUSTER_SCHEMA)
    g_cid, _ = read_table(projected, group="galaxies", columns=["cluster_id"])
    offsets = galaxy_offsets(clusters["cluster_id"], g_cid["cluster_id"])
    rng = stage_rng(s.seed, "flux_limit")
    radius = observer_radius_mpc_h(s, cosmo)
    dist = draw_observer_distances(len(clusters["cluster_id"]), radius, rng)
    active = nuisance.is_active(s.nuisance)
    schema = FLUX_CLUSTER_SCHEMA
    if active:
        schema = Schema({**FLUX_CLUSTER_SCHEMA, **nuisance.NUISANCE_SCHEMA})
        windows = nuisance.WindowNuisances(
            s.nuisance, s.window, cosmo, log10_m200c=clusters["log10_m200c"],
            redshift=float(attrs["redshift"]), observer_distance_mpc_h=dist,
            rng=stage_rng(s.seed, "nuisance"))
    totals = {}
    with TableWriter(out) as w:
        w.add_group("clusters", schema, attrs)
        w.add_group("galaxies", FLUX_GALAXY_SCHEMA)
        for sl in _cluster_chunks(len(dist), chunk_clusters):
            rows = slice(int(offsets[sl.start]), int(offsets[sl.stop]))
            gal, _ = read_table(projected, group="galaxies", rows=rows)
            if s.mock.members == "bound":
                bound = gal["is_member"] != 0
                totals["n_interlopers_dropped"] = (totals.get("n_interlopers_dropped", 0)
                                                   + int((~bound).sum()))
                gal = {k: v[bound] for k, v in gal.items()}
            cl = {k: v[sl] for k, v in clusters.items()}
            select = None
            if active:
                cl, gal, select = windows.apply(sl, cl, gal)
            c_out, g_out, counts = limit_by_flux(cl, gal, dist[sl], cosmology=cosmo,
                                                 mag_r_limit=s.mock.mag_r_limit,
                                                 min_galaxies=s.mock.min_galaxies,
                                                 select=select)
            w.append("clusters", c_out)
            w.append("galaxies", g_out)
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        record = dict(flux_limit_counts=totals, members=s.mock.members,
                      mag_r_limit=s.mock.mag_r_limit, observer_radius_mpc_h=radius,
                      min_galaxies=s.mock.min_galaxies)
        if active:
            record["nuisance"] = s.nuisance.to_dict()
        w.set_attrs("clusters", record)
    _log_flux_limit(s, totals, active)
    if totals.get("n_clusters_kept", 0) == 0:
        raise CatalogueError(projected, "n_gal", "no projected cluster survives the flux limit",
                             "raise mock.mag_r_limit, lower mock.min_galaxies or "
                             "mock.observer_radius_mpc_h")


def _log_flux_limit(s, totals, active):
    log.info("flux limit r < %.2f: kept %d of %d clusters (%d dropped with < %d galaxies), "
             "%d of %d galaxies", s.mock.mag_r_limit, totals.get("n_clusters_kept", 0),
             totals.get("n_clusters_in", 0), totals.get("n_dropped_too_few", 0),
             s.mock.min_galaxies, totals.get("n_galaxies_kept", 0),
             totals.get("n_galaxies_in", 0))
    if s.mock.members == "bound":
        log.info("pure catalogue (mock.members: bound): %d interlopers dropped before the "
                 "flux limit", totals.get("n_interlopers_dropped", 0))
    if active:
        log.info("nuisances: %s (cmpipe.mock.nuisance)",
                 "drawn from their priors" if s.nuisance.sample else "fiducial"
                 + (f", held at {dict(s.nuisance.fixed)}" if s.nuisance.fixed else ""))


def split(*, config, fluxlimited, out, chunk_rows=1_000_000):
    """Rule ``split``: train/validation/test/eval by halo; writes clusters.h5."""
    from ..mock.splits import assign_splits

    s = settings_of(config)
    clusters, attrs = read_table(fluxlimited, group="clusters", required=FLUX_CLUSTER_SCHEMA)
    codes = assign_splits(clusters, s.splits, stage_rng(s.seed, "splits"))
    clusters["split"] = codes
    n_rows = table_length(fluxlimited, "galaxies")
    # the nuisance columns of a non-fiducial mock (cmpipe.mock.nuisance) travel along
    schema = Schema({**SPLIT_CLUSTER_SCHEMA, **{k: v for k, v in NUISANCE_SCHEMA.items()
                                                 if k in clusters}})
    with TableWriter(out) as w:
        w.add_group("clusters", schema, dict(
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
    from ..mock.stats import mock_summary as summarize

    s = settings_of(config)
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

    from ..plots import pipeline as plots

    summ = json.loads(Path(summary).read_text())
    cl, _ = read_table(clusters, group="clusters")
    plots.mass_function_figure(summ, mass_function_png)
    plots.split_masses_figure(cl, summ, splits_png)
    gal, _ = read_table(clusters, group="galaxies")
    plots.phase_space_figure(cl, gal, phase_space_png)

