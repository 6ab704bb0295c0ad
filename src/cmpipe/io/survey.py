"""Readers and writers of the survey input: a cluster table and a galaxy table on the sky.

Config ``survey.source: catalogue`` reads real data (the GalWeight cluster catalogue of
Abdullah et al. 2020, ApJS 246, 2, and SDSS main-sample galaxies); ``survey.source:
synthetic`` writes tables of the same schema from the synthetic box
(:mod:`cmpipe.survey.synthetic`), so the same ingestion code runs on both.

Files
-----
FITS (``.fits``, ``.fit``, ``.fits.gz``), CSV (``.csv``) or ECSV (``.ecsv``), read with
:meth:`astropy.table.Table.read`; the format comes from the extension.

Column mapping
--------------
``columns`` maps each cmpipe name to the file's column name, or to a list of candidate
names tried in order (the first present wins, case-sensitive first, then
case-insensitive). Defaults: :data:`CLUSTER_COLUMNS` and :data:`GALAXY_COLUMNS`. The
GalWeight (GalWCat19) candidates (``RA``/``RAdeg``, ``Dec``/``DEdeg``, ``z``,
``logM200``/``e_logM200``, ``N200``) are **unverified** against the published files: the
catalogue's column names could not be checked here; set the mapping explicitly for the
file you download. SDSS defaults follow CasJobs/SpecObj names (``ra``, ``dec``, ``z``).

Units
-----
An angle column with an astropy unit (deg, rad, hourangle, arcmin, ...) is converted to
degrees; a unitless one is taken as degrees and tested for being radians
(:func:`cmpipe.survey.sky.check_sky_positions`). Catalogue masses must be log10 M200c in
h^-1 Msun (values between 10 and 17).

Schema on disk
--------------
Clusters (:data:`SURVEY_CLUSTER_SCHEMA`): ``cluster_id``, ``ra_deg``, ``dec_deg``, ``z``,
``log10_m_cat``, ``log10_m_cat_err`` (NaN if absent), ``n_mem`` (-1 if absent).
Galaxies (:data:`SURVEY_GALAXY_SCHEMA`): ``galaxy_id`` (row number if absent),
``ra_deg``, ``dec_deg``, ``z``, ``cluster_id`` (:data:`NO_CLUSTER`, -2^63, if absent or
empty, so that any cluster id, -1 included, can be a label; -1 is read as "none" when no
cluster has that id), ``mag_r`` (apparent r,
NaN if absent). Writers produce ECSV (units and descriptions kept), CSV or FITS, atomically.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from .table_columns import (angle_deg, float_column, id_or_name_column, int_column,
                            labels_to_ids, read_any_table, resolve_column, table_format)
from .tables import CatalogueError, Schema, atomic_output
from .validate import check_redshifts, check_sky_positions

__all__ = [
    "SURVEY_CLUSTER_SCHEMA",
    "SURVEY_GALAXY_SCHEMA",
    "SURVEY_TRUTH_SCHEMA",
    "CLUSTER_COLUMNS",
    "GALAXY_COLUMNS",
    "NO_CLUSTER",
    "CLUSTER_NAME",
    "table_format",
    "read_survey_clusters",
    "read_survey_galaxies",
    "write_survey_clusters",
    "write_survey_galaxies",
    "write_survey_truth",
    "read_survey_truth",
    "PHASE_SPACE_INPUT_COLUMNS",
    "read_phase_space_galaxies",
]

log = logging.getLogger(__name__)

SURVEY_CLUSTER_SCHEMA = Schema({
    "cluster_id": ("i8", "", "cluster id, unique"),
    "ra_deg": ("f8", "deg", "right ascension of the cluster centre (ICRS)"),
    "dec_deg": ("f8", "deg", "declination of the cluster centre (ICRS)"),
    "z": ("f8", "", "observed redshift of the cluster"),
    "log10_m_cat": ("f8", "log10(h^-1 Msun)", "catalogue M200c (NaN if none)"),
    "log10_m_cat_err": ("f8", "dex", "uncertainty of the catalogue mass (NaN if none)"),
    "n_mem": ("i8", "", "catalogue member count (-1 if none)"),
})

SURVEY_GALAXY_SCHEMA = Schema({
    "galaxy_id": ("i8", "", "galaxy id (row number if the file has none)"),
    "ra_deg": ("f8", "deg", "right ascension (ICRS)"),
    "dec_deg": ("f8", "deg", "declination (ICRS)"),
    "z": ("f8", "", "observed (spectroscopic) redshift"),
    "cluster_id": ("i8", "", "cluster the galaxy is listed in (-1 or -2^63 if none)"),
    "mag_r": ("f8", "mag", "apparent r magnitude (NaN if none)"),
})

SURVEY_TRUTH_SCHEMA = Schema({
    "cluster_id": ("i8", "", "cluster id in the synthetic survey's cluster table"),
    "halo_id": ("i8", "", "host halo id in the synthetic box"),
    "replica": ("i8", "", "index of the periodic replica the cluster was seen in"),
    "log10_m200c": ("f8", "log10(h^-1 Msun)", "true M200c"),
    "r200c_mpc_h": ("f8", "h^-1 Mpc (proper)", "true R200c"),
    "comoving_distance_mpc_h": ("f8", "h^-1 Mpc (comoving)", "real-space distance of the "
                                "cluster centre from the observer"),
    "z_cos": ("f8", "", "cosmological redshift at that distance"),
    "z_obs": ("f8", "", "observed redshift (with the peculiar velocity)"),
    "n_mem_true": ("i8", "", "galaxies of the halo above the flux limit"),
})

#: Default column candidates of the cluster table (GalWeight-style names unverified).
CLUSTER_COLUMNS = {
    "cluster_id": ("cluster_id", "ID", "id", "GalWCat19", "Seq", "name", "Name",
                   "cluster_name"),
    "ra_deg": ("ra_deg", "RA", "RAdeg", "RA_deg", "ra", "_RA"),
    "dec_deg": ("dec_deg", "Dec", "DEC", "DEdeg", "Dec_deg", "dec", "_DE"),
    "z": ("z", "Z", "zcl", "z_cl", "redshift"),
    "log10_m_cat": ("log10_m_cat", "logM200", "log_M200", "logM200c", "lgM200"),
    "log10_m_cat_err": ("log10_m_cat_err", "e_logM200", "logM200_err", "e_logM200c"),
    "n_mem": ("n_mem", "N200", "Nmem", "N_mem", "Ngal"),
}

#: Default column candidates of the galaxy table (SDSS SpecObj-style names).
GALAXY_COLUMNS = {
    "galaxy_id": ("galaxy_id", "objID", "specObjID", "id"),
    "ra_deg": ("ra_deg", "ra", "RA", "RAdeg", "plug_ra"),
    "dec_deg": ("dec_deg", "dec", "Dec", "DEC", "DEdeg", "plug_dec"),
    "z": ("z", "Z", "redshift"),
    "cluster_id": ("cluster_id", "GalWCat19", "cluster"),
    "mag_r": ("mag_r", "petroMag_r", "modelMag_r", "rmag", "r"),
}

#: Candidate column names of a phase-space galaxy table (``cmpipe infer --phase-space``).
PHASE_SPACE_INPUT_COLUMNS = {
    "cluster_id": ("cluster_id",),
    "x_proj_mpc_h": ("x_proj", "x_proj_mpc_h"),
    "y_proj_mpc_h": ("y_proj", "y_proj_mpc_h"),
    "v_los_kms": ("v_los", "v_los_kms"),
    "galaxy_id": ("galaxy_id",),
}

_REQUIRED = ("ra_deg", "dec_deg", "z")

#: Key of the cluster names (``A2029``, ``Coma``) when a cluster table's ids are names:
#: the ids are then the row numbers, and the survey products carry the names back.
CLUSTER_NAME = "cluster_name"

#: A galaxy's ``cluster_id`` when it is listed in no cluster (an empty cell, or no
#: membership column): the smallest int64, so that every real id, -1 included, is free.
NO_CLUSTER = np.iinfo(np.int64).min

def _mapped(table, path, columns, defaults, defaults_name):
    mapping = dict(defaults)
    if columns:
        unknown = [k for k in columns if k not in defaults]
        if unknown:
            raise CatalogueError(path, unknown[0], "unknown cmpipe column in the mapping",
                                 f"use one of {', '.join(defaults)}")
        mapping.update(columns)
    return {k: resolve_column(table, path, k, v, k in _REQUIRED, defaults_name)
            for k, v in mapping.items()}


def _positions(table, path, found, angle_unit):
    ra, ra_has_unit = angle_deg(table, found["ra_deg"], path, "ra_deg")
    dec, dec_has_unit = angle_deg(table, found["dec_deg"], path, "dec_deg")
    unit = "deg" if (ra_has_unit and dec_has_unit) else angle_unit
    # raises SkyInputError, a CatalogueError naming this file and the file's columns
    ra = check_sky_positions(ra, dec, table=str(path), ra_column=found["ra_deg"],
                             dec_column=found["dec_deg"], angle_unit=unit)
    return ra, dec


def _redshift(table, path, found, allow_zero):
    z = float_column(table, found["z"], path)
    return check_redshifts(z, table=str(path), column=found["z"], allow_zero=allow_zero)


def read_survey_clusters(path, columns: Mapping[str, str | Sequence[str]] | None = None, *,
                         angle_unit: str = "auto") -> dict:
    """Read a survey cluster table (FITS, CSV or ECSV) into :data:`SURVEY_CLUSTER_SCHEMA`.

    Parameters
    ----------
    path : path-like
        The table; the format comes from the extension.
    columns : mapping, optional
        cmpipe name -> file column (or candidate list); overrides :data:`CLUSTER_COLUMNS`.
    angle_unit : {"auto", "deg"}
        For unitless RA/Dec columns: ``"auto"`` rejects values that are clearly radians.

    Returns
    -------
    dict of ndarray
        The schema's columns: ids (rows numbered 0..N-1 if no id column is found, or if
        the ids are names: then ``cluster_name`` holds the names too), RA in
        [0, 360) deg, Dec deg, z, catalogue log10 M200c [h^-1 Msun] and its error (NaN if
        absent), member count (-1 if absent).

    Raises
    ------
    CatalogueError
        Unreadable file, missing RA/Dec/z column (naming the mapping key to set), angles in
        radians, Dec outside [-90, 90], z NaN or <= 0, duplicated ids, masses not in log10.
    """
    t = read_any_table(path)
    found = _mapped(t, path, columns, CLUSTER_COLUMNS, "cluster_columns")
    n = len(t)
    if found["cluster_id"] is None:
        log.warning("%s: no cluster id column (looked for %s); numbering rows 0..%d",
                    path, ", ".join(CLUSTER_COLUMNS["cluster_id"]), n - 1)
        cid = np.arange(n, dtype=np.int64)
    else:
        cid, names = id_or_name_column(t, found["cluster_id"], path, "cluster_id")
        key = cid if names is None else names.astype(str)
        uniq, cnt = np.unique(key, return_counts=True)
        if (cnt > 1).any():
            dup = uniq[cnt > 1]
            raise CatalogueError(path, found["cluster_id"], f"{dup.size} duplicated id(s), "
                                 f"e.g. {', '.join(str(d) for d in dup[:5])}",
                                 "give every cluster a unique id (drop repeated rows)")
    ra, dec = _positions(t, path, found, angle_unit)
    z = _redshift(t, path, found, allow_zero=False)
    out = dict(cluster_id=cid, ra_deg=ra, dec_deg=dec, z=z)
    for key in ("log10_m_cat", "log10_m_cat_err"):
        out[key] = (float_column(t, found[key], path) if found[key] is not None
                    else np.full(n, np.nan))
    m = out["log10_m_cat"]
    fin = m[np.isfinite(m)]
    if fin.size and (fin.min() < 10.0 or fin.max() > 17.0):
        raise CatalogueError(path, found["log10_m_cat"], f"values {fin.min():.4g}.."
                             f"{fin.max():.4g} are not log10 M200c in h^-1 Msun",
                             "map 'log10_m_cat' to a log10 mass column (convert linear masses "
                             "or units of 1e14 Msun with log10, and Msun to h^-1 Msun)")
    if found["n_mem"] is not None:
        nm = float_column(t, found["n_mem"], path)
        out["n_mem"] = np.where(np.isfinite(nm), nm, -1).astype(np.int64)
    else:
        out["n_mem"] = np.full(n, -1, dtype=np.int64)
    log.info("%s: %d clusters (columns %s)", path, n,
             {k: v for k, v in found.items() if v is not None})
    table = {k: np.ascontiguousarray(out[k], dtype=SURVEY_CLUSTER_SCHEMA[k][0])
             for k in SURVEY_CLUSTER_SCHEMA}
    if found["cluster_id"] is not None and names is not None:
        log.info("%s: cluster ids are names (%s, ...): numbered 0..%d in row order; the "
                 "outputs carry them as cluster_name", path, ", ".join(names[:3]), n - 1)
        table[CLUSTER_NAME] = names
    return table


def read_survey_galaxies(path, columns: Mapping[str, str | Sequence[str]] | None = None, *,
                         angle_unit: str = "auto", cluster_names=None) -> dict:
    """Read a survey galaxy table (FITS, CSV or ECSV) into :data:`SURVEY_GALAXY_SCHEMA`.

    Parameters
    ----------
    path : path-like
        The table; the format comes from the extension.
    columns : mapping, optional
        cmpipe name -> file column (or candidate list); overrides :data:`GALAXY_COLUMNS`.
    angle_unit : {"auto", "deg"}
        For unitless RA/Dec columns: ``"auto"`` rejects values that are clearly radians.
    cluster_names : sequence of str, optional
        The cluster table's names (its ``cluster_name``) when its ids are names: text
        membership labels are matched to them (:func:`.table_columns.labels_to_ids`).

    Returns
    -------
    dict of ndarray
        The schema's columns (RA in [0, 360) deg, Dec deg, z >= 0).

    Raises
    ------
    CatalogueError
        Unreadable file, missing RA/Dec/z column (naming the mapping key to set), angles in
        radians, Dec outside [-90, 90], z NaN or negative.
    """
    t = read_any_table(path)
    found = _mapped(t, path, columns, GALAXY_COLUMNS, "galaxy_columns")
    n = len(t)
    ra, dec = _positions(t, path, found, angle_unit)
    z = _redshift(t, path, found, allow_zero=True)
    out = dict(ra_deg=ra, dec_deg=dec, z=z)
    out["galaxy_id"] = (int_column(t, found["galaxy_id"], path, "galaxy_id")
                        if found["galaxy_id"] is not None else np.arange(n, dtype=np.int64))
    if found["cluster_id"] is not None:
        out["cluster_id"], unknown = labels_to_ids(t, found["cluster_id"], path, cluster_names,
                                                   missing=NO_CLUSTER)
        if unknown.size:
            log.warning("%s: galaxy labels in %s name %d cluster(s) not in the cluster table "
                        "(e.g. %s); read as no membership", path, found["cluster_id"],
                        unknown.size, ", ".join(unknown[:5]))
    else:
        out["cluster_id"] = np.full(n, NO_CLUSTER, dtype=np.int64)
    out["mag_r"] = (float_column(t, found["mag_r"], path) if found["mag_r"] is not None
                    else np.full(n, np.nan))
    out = _drop_duplicate_galaxies(out, path, found["galaxy_id"] is not None)
    n = len(out["z"])
    log.info("%s: %d galaxies (columns %s)", path, n,
             {k: v for k, v in found.items() if v is not None})
    return {k: np.ascontiguousarray(out[k], dtype=SURVEY_GALAXY_SCHEMA[k][0])
            for k in SURVEY_GALAXY_SCHEMA}


def _drop_duplicate_galaxies(out, path, has_ids):
    """Rows repeated exactly (same galaxy_id, RA, Dec and z; or same RA, Dec and z when the
    file has no id column) are dropped, keeping the first, with one warning: a galaxy
    counted twice would weigh twice in every window. The same id at different positions
    stops the read."""
    keys = (["galaxy_id"] if has_ids else []) + ["ra_deg", "dec_deg", "z"]
    rec = np.rec.fromarrays([out[k] for k in keys], names=keys)
    _, first = np.unique(rec, return_index=True)
    if first.size < rec.size:
        keep = np.sort(first)
        log.warning("%s: %d duplicated galaxy row(s) dropped (same %s as an earlier row); "
                    "%d galaxies kept", path, rec.size - keep.size, "/".join(keys), keep.size)
        out = {k: v[keep] for k, v in out.items()}
    if has_ids:
        uniq, cnt = np.unique(out["galaxy_id"], return_counts=True)
        if (cnt > 1).any():
            dup = uniq[cnt > 1]
            raise CatalogueError(path, "galaxy_id", f"{dup.size} id(s) given to galaxies at "
                                 f"different positions or redshifts, e.g. "
                                 f"{', '.join(str(int(d)) for d in dup[:5])}",
                                 "give every galaxy a unique id (or drop the id column to "
                                 "number the rows)")
    return out


def _phase_space_values(t, path, found) -> dict:
    """The offsets and velocities of a phase-space table: units checked, all finite."""
    cols = {}
    for k, ok_unit in (("x_proj_mpc_h", "Mpc"), ("y_proj_mpc_h", "Mpc"),
                       ("v_los_kms", "km / s")):
        col = t[found[k]]
        unit = getattr(col, "unit", None)
        if unit is not None and str(unit) not in ("", ok_unit):
            raise CatalogueError(path, found[k], f"unit '{unit}' given",
                                 "give x_proj, y_proj in h^-1 Mpc (proper) and v_los in "
                                 "km/s, without units or with Mpc and km / s")
        vals = float_column(t, found[k], path)
        bad = ~np.isfinite(vals)
        if bad.any():
            raise CatalogueError(path, found[k], f"{int(bad.sum())} non-finite value(s), "
                                 f"first at row {int(np.flatnonzero(bad)[0])}",
                                 "remove or repair those rows")
        cols[k] = vals
    return cols


#: Smallest credible spread of window-galaxy velocities [km/s]: clusters have line-of-
#: sight dispersions above ~150 km/s, so a 90th percentile of |v_los| below this (30x
#: smaller) means another unit, e.g. redshift differences (~0.002).
V_LOS_MIN_SPREAD_KMS = 5.0


def _check_velocity_spread(vabs, v_max_kms, path, column):
    """Refuse a v_los column whose window galaxies barely move: the 90th percentile of
    |v_los| over the table's window galaxies below :data:`V_LOS_MIN_SPREAD_KMS`."""
    win = vabs[vabs <= v_max_kms]
    if win.size < 3:
        return
    spread = float(np.percentile(win, 90.0))
    if spread < V_LOS_MIN_SPREAD_KMS:
        raise CatalogueError(path, column, f"90% of the {win.size} window galaxies have "
                             f"|v_los| <= {spread:.3g}: far below any cluster's velocity "
                             f"dispersion (>~ 150 km/s); redshift differences z - z_cl, not "
                             "km/s?", "give v_los in km/s: c (z - z_cl) / (1 + z_cl), i.e. "
                             "multiply redshift differences by c / (1 + z_cl) with c = "
                             "299792.458 km/s")


def read_phase_space_galaxies(path, cluster_ids, *, half_width_mpc_h: float,
                              v_max_kms: float, cluster_names=None) -> dict:
    """Read galaxies given directly in phase space (``cmpipe infer --phase-space``).

    Parameters
    ----------
    path : path-like
        FITS, CSV or ECSV table; columns (names in :data:`PHASE_SPACE_INPUT_COLUMNS`):
        cluster_id, x_proj and y_proj (proper h^-1 Mpc, east / north), v_los (km/s,
        cluster frame), optional galaxy_id.
    cluster_ids : ndarray of int64
        The clusters of the cluster table; every row must name one of them.
    half_width_mpc_h, v_max_kms : float
        The window [proper h^-1 Mpc, km/s]: offsets or velocities far beyond it (20 times)
        are taken for wrong units.
    cluster_names : sequence of str, optional
        The cluster table's names when its ids are names: the rows' text cluster labels
        are matched to them.

    Returns
    -------
    dict of ndarray
        Every row: ``cluster_id``, ``galaxy_id`` (-1 without ids), ``x_proj_mpc_h``,
        ``y_proj_mpc_h`` [proper h^-1 Mpc], ``v_los_kms`` [km/s].

    Raises
    ------
    CatalogueError
        A required column missing, a unit other than Mpc or km / s, a non-finite value,
        offsets in kpc or velocities in m/s, a cluster id not in ``cluster_ids``.
    """
    t = read_any_table(path)
    found = {k: resolve_column(t, path, k, c, False, "") for k, c in
             PHASE_SPACE_INPUT_COLUMNS.items()}
    for k, c in PHASE_SPACE_INPUT_COLUMNS.items():
        if found[k] is None and k != "galaxy_id":
            raise CatalogueError(path, c[0], f"required column not found (looked for "
                                 f"{', '.join(c)}; the file has {', '.join(t.colnames)})",
                                 "give cluster_id, x_proj, y_proj [h^-1 Mpc, proper] and "
                                 "v_los [km/s] columns")
    n = len(t)
    if np.asarray(t[found["cluster_id"]]).dtype.kind in "USO" or cluster_names is not None:
        cid, bad = labels_to_ids(t, found["cluster_id"], path, cluster_names, missing=-1)
        if bad.size:
            raise CatalogueError(path, found["cluster_id"], f"{bad.size} cluster name(s) not "
                                 f"in the cluster table, e.g. {', '.join(bad[:5])}",
                                 "list every cluster in --clusters (name, RA, Dec, z)")
    else:
        cid = int_column(t, found["cluster_id"], path, "cluster_id")
    cols = _phase_space_values(t, path, found)
    W, V = half_width_mpc_h, v_max_kms
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
    _check_velocity_spread(vabs, V, path, found["v_los_kms"])
    known = np.isin(cid, cluster_ids)
    if not known.all():
        bad = np.unique(cid[~known])
        raise CatalogueError(path, found["cluster_id"], f"{bad.size} cluster id(s) not in "
                             f"the cluster table, e.g. {', '.join(str(int(b)) for b in bad[:5])}",
                             "list every cluster in --clusters (id, RA, Dec, z)")
    gid = (int_column(t, found["galaxy_id"], path, "galaxy_id")
           if found["galaxy_id"] is not None else np.full(n, -1, dtype=np.int64))
    return dict(cluster_id=cid, galaxy_id=gid, **cols)


def write_any_table(path, columns, schema: Schema, meta: Mapping | None):
    import astropy.units as u
    from astropy.table import Column, Table

    missing = [k for k in schema if k not in columns]
    if missing:
        raise ValueError(f"writing {path}: columns {missing} missing from the table")
    lengths = {len(np.asarray(columns[k])) for k in schema}
    if len(lengths) > 1:
        raise ValueError(f"writing {path}: columns differ in length")
    fmt = table_format(path)
    t = Table(meta=dict(meta or {}))
    for k, (dtype, unit, desc) in schema.items():
        col_unit = u.deg if unit == "deg" else None
        t[k] = Column(np.asarray(columns[k], dtype=dtype), unit=col_unit, description=desc)
    with atomic_output(path) as tmp:
        t.write(tmp, format=fmt, overwrite=True)


def write_survey_clusters(path, clusters: Mapping[str, np.ndarray], *,
                          meta: Mapping | None = None) -> None:
    """Write a cluster table in :data:`SURVEY_CLUSTER_SCHEMA` (ECSV, CSV or FITS by
    extension) atomically; ``meta`` goes to the table header (ECSV/FITS)."""
    write_any_table(path, clusters, SURVEY_CLUSTER_SCHEMA, meta)


def write_survey_galaxies(path, galaxies: Mapping[str, np.ndarray], *,
                          meta: Mapping | None = None) -> None:
    """Write a galaxy table in :data:`SURVEY_GALAXY_SCHEMA` (ECSV, CSV or FITS by
    extension) atomically."""
    write_any_table(path, galaxies, SURVEY_GALAXY_SCHEMA, meta)


def write_survey_truth(path, truth: Mapping[str, np.ndarray], *,
                       meta: Mapping | None = None) -> None:
    """Write the synthetic survey's truth table (:data:`SURVEY_TRUTH_SCHEMA`) atomically."""
    write_any_table(path, truth, SURVEY_TRUTH_SCHEMA, meta)


def read_survey_truth(path) -> dict:
    """Read a truth table written by :func:`write_survey_truth`.

    Raises
    ------
    CatalogueError
        Unreadable file or a missing column.
    """
    t = read_any_table(path)
    missing = [k for k in SURVEY_TRUTH_SCHEMA if k not in t.colnames]
    if missing:
        raise CatalogueError(path, missing[0], "truth column missing",
                             "write the file with cmpipe.io.survey.write_survey_truth")
    return {k: np.asarray(t[k], dtype=v[0]) for k, v in SURVEY_TRUTH_SCHEMA.items()}
