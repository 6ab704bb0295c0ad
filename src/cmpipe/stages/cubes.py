"""KDE cube rules: one shard of cubes per job, gathered into one file per split."""
from __future__ import annotations

import numpy as np

from ..io.mock import galaxy_offsets
from ..io.tables import CatalogueError, read_table
from .common import settings_of, log


SPLIT_NAMES = ("train", "validation", "test", "eval")


def split_counts(clusters) -> dict:
    """Number of projected clusters in each split of ``clusters.h5``."""
    from ..settings import SPLIT_CODES

    cl, _ = read_table(clusters, group="clusters", columns=["split"])
    return {name: int((cl["split"] == SPLIT_CODES[name]).sum()) for name in SPLIT_NAMES}


def n_shards(n_clusters: int, shard_size: int) -> int:
    """Shards needed for ``n_clusters`` (at least one, possibly empty)."""
    return max(1, -(-int(n_clusters) // int(shard_size)))


def gathered_shard_size(cubes, default: int) -> int:
    """The shard size a gathered cube file ``cubes`` was made with (its ``shard_size``
    attribute), else ``default`` (no file yet, or one made before it was recorded).

    ``kde.shard_size`` is speed-only (:data:`cmpipe.sections.SPEED_ONLY_KEYS`): the
    workflow keeps the recorded size for the shards of an existing split, so a new size
    changes no job's input files and reruns nothing."""
    from pathlib import Path

    import h5py

    if not Path(cubes).is_file():
        return int(default)
    try:
        with h5py.File(cubes, "r") as f:
            return int(f.attrs.get("shard_size", default))
    except (OSError, ValueError, TypeError):
        return int(default)


def split_galaxies(clusters_path, cluster_ids, extra=()):
    """x, y, v and cluster ids (and the ``extra`` columns) of the galaxies of
    ``cluster_ids`` (sorted ascending).

    The galaxy table is sorted by cluster id, so only the row range between the first and
    the last wanted cluster is read (memory ~ one shard's share of the table).
    """
    want = np.asarray(cluster_ids)
    ids, _ = read_table(clusters_path, group="galaxies", columns=["cluster_id"])
    lo = int(np.searchsorted(ids["cluster_id"], want.min(), side="left"))
    hi = int(np.searchsorted(ids["cluster_id"], want.max(), side="right"))
    del ids
    g, _ = read_table(clusters_path, group="galaxies", rows=slice(lo, hi),
                      columns=["cluster_id", "x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms",
                               *extra],
                      finite=["x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"])
    keep = np.isin(g["cluster_id"], want)
    return {k: v[keep] for k, v in g.items()}


def cube_rows(cl, sel) -> dict:
    """The cube files' per-cube columns (:data:`cmpipe.io.cubes.CUBE_COLUMNS`) of the
    mock clusters ``sel`` of a ``clusters`` table (the distance is the observer's)."""
    rows = {c: cl[c][sel] for c in ("cluster_id", "log10_m200c", "n_gal", "n_members")}
    rows["distance_mpc_h"] = cl["observer_distance_mpc_h"][sel]
    return rows


def kde_shard(*, config, clusters, split_name, shard, out, threads=1, progress=True,
              shard_size=None):
    """Rule ``kde_shard``: cubes of one shard of one split.

    The shard holds clusters ``shard * shard_size`` to ``(shard + 1) * shard_size`` of the
    split, in cluster-id order (``shard_size``: the workflow's, :func:`gathered_shard_size`;
    None: ``kde.shard_size``); cubes are computed and written ``batch_size`` at a time.
    """
    import numba
    from ..io.cubes import CubeWriter
    from ..kde import Grid3D, KDEInputError, kde_cube_batches
    from ..settings import SPLIT_CODES

    s = settings_of(config)
    k = s.kde
    cl, attrs = read_table(clusters, group="clusters",
                           columns=["cluster_id", "split", "log10_m200c", "n_gal", "n_members",
                                    "observer_distance_mpc_h"])
    sel = np.flatnonzero(cl["split"] == SPLIT_CODES[split_name])
    size = int(shard_size) if shard_size is not None else k.shard_size
    sel = sel[shard * size:(shard + 1) * size]
    rows = cube_rows(cl, sel)
    gal = split_galaxies(clusters, rows["cluster_id"]) if len(sel) else None
    grid = Grid3D(n=k.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                  v_max_kms=s.window.v_max_kms)
    file_attrs = dict(n_grid=k.n_grid, half_width_mpc_h=s.window.half_width_mpc_h,
                      v_max_kms=s.window.v_max_kms, h0=k.h0, truncation=k.truncation,
                      normalisation="each cube sums to 1", split=split_name, shard_size=size,
                      axes="x_proj_mpc_h, y_proj_mpc_h, v_los_kms")
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    with CubeWriter(out, len(sel), k.n_grid, file_attrs) as w:
        if len(sel):
            offsets = galaxy_offsets(rows["cluster_id"], gal["cluster_id"])
            batches = kde_cube_batches(gal["x_proj_mpc_h"], gal["y_proj_mpc_h"],
                                       gal["v_los_kms"], offsets, grid=grid, h0=k.h0,
                                       truncation=k.truncation, batch_size=k.batch_size,
                                       ids=rows["cluster_id"], progress=progress,
                                       desc=f"kde {split_name}[{shard}]")
            try:
                for b0, b1, cubes in batches:
                    w.write(cubes, {c: v[b0:b1] for c, v in rows.items()})
            except KDEInputError as err:
                raise CatalogueError(clusters, "galaxies", str(err),
                                     "rebuild the mock (mock.min_galaxies >= 3) or drop "
                                     "the cluster") from err
    log.info("kde %s shard %d: %d cubes of %d^3", split_name, shard, len(sel), k.n_grid)


def kde_gather(*, shards, out):
    """Rule ``kde_gather``: one cube file per split from its shards (chunks copied as is)."""
    from ..io.cubes import gather_shards

    gather_shards(list(shards), out)
    log.info("gathered %d shards into %s", len(shards), out)


# -- training and summaries ------------------------------------------------------------

