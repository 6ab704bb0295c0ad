"""Galaxy tables: an HDF5 or CSV table of simulated galaxies -> cmpipe's galaxy table.

A galaxy table in HDF5 (a group of 1-D datasets, as in the MultiDark-Galaxies files, or one
compound dataset, as written by astropy) or CSV (as exported by the CosmoSim database), with
column names mapped in the config. Defaults follow the SAG model (Knebe et al. 2018) as
documented for the CosmoSim ``MDPL2.SAG`` table.

Galaxies are attached to *host* halos (``upid == -1``) by :func:`attach_hosts`: a galaxy
whose halo id is a subhalo is moved to that subhalo's ``upid`` (the most massive host, so
one step suffices) and becomes a satellite; galaxies whose halo (or its host) is not in the
halo table are dropped and counted.

The galaxy default ``halo_id -> MainHaloID`` (the SAG "main host dark matter halo") is used
rather than ``HostHaloID`` ("host DM halo to which this galaxy last belonged"): the latter is
the galaxy's own subhalo for satellites and, for orphan galaxies, a subhalo that may no
longer exist at this snapshot, so orphans would be lost. Mapping ``halo_id`` to
``HostHaloID`` also works for satellites with a surviving subhalo, through
:func:`attach_hosts`.

Positions are comoving h^-1 Mpc (wrapped into ``[0, box)``), velocities peculiar km/s,
``mag_r`` the absolute r magnitude M_r - 5 log10 h.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .catalogues import GALAXY_SCHEMA
from .tables import CatalogueError
from .validate import first_nonfinite, wrap_box_positions

__all__ = ["DEFAULT_GALAXY_COLUMNS", "read_galaxy_table", "attach_hosts"]

logger = logging.getLogger(__name__)

#: cmpipe name -> galaxy-table column name, for the SAG galaxies of MDPL2 (names of the
#: CosmoSim ``MDPL2.SAG`` table; matched case-insensitively when there is no exact match, so
#: the lower-case CSV export and the ``X``/``Vx`` datasets of the MultiDark-Galaxies HDF5
#: files match too). ``galaxy_id`` may be ``None`` (row index used). ``galaxy_type`` (SAG
#: ``GalaxyType``: 0 = central of the main halo, 1 = central of a subhalo, 2 = orphan) and
#: ``is_central`` (non-zero = central) are optional; see :func:`read_galaxy_table`.
#: Read-only; build a new dict to change it.
DEFAULT_GALAXY_COLUMNS: Mapping[str, str | None] = MappingProxyType({
    "galaxy_id": "GalaxyStaticID",
    "halo_id": "MainHaloID",
    "x": "x",
    "y": "y",
    "z": "z",
    "vx": "vx",
    "vy": "vy",
    "vz": "vz",
    "mag_r": "MagStarSDSSr",
    "galaxy_type": "GalaxyType",
    "is_central": None,
})

_GAL_REQUIRED = ("halo_id", "x", "y", "z", "vx", "vy", "vz", "mag_r")
_GAL_OPTIONAL = ("galaxy_id", "galaxy_type", "is_central")

_POS = ("x", "y", "z")
_VEL = ("vx", "vy", "vz")
_HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf", ".he5")
_CSV_SUFFIXES = (".csv", ".csv.gz")


def _check_galaxy_mapping(path, columns):
    unknown = [k for k in columns if k not in _GAL_REQUIRED + _GAL_OPTIONAL]
    if unknown:
        raise CatalogueError(path, f"galaxy_columns.{unknown[0]}", "unknown cmpipe name",
                             "use only " + ", ".join(_GAL_REQUIRED + _GAL_OPTIONAL))
    for k in _GAL_REQUIRED:
        if not columns.get(k):
            raise CatalogueError(path, f"galaxy_columns.{k}", "required column not mapped",
                                 "give the name of the file column holding it")
    return {k: columns.get(k) for k in _GAL_REQUIRED + _GAL_OPTIONAL if columns.get(k)}


def _resolve_names(path, mapping, available):
    """File column name for each mapped key (exact match, else unique case-insensitive)."""
    lower = {}
    for name in available:
        lower.setdefault(name.lower(), []).append(name)
    out = {}
    for key, want in mapping.items():
        if want in available:
            out[key] = want
        elif len(lower.get(want.lower(), ())) == 1:
            out[key] = lower[want.lower()][0]
        else:
            raise CatalogueError(path, f"{want} (galaxy_columns.{key})",
                                 "mapped column is missing (have: "
                                 + ", ".join(sorted(available)) + ")",
                                 f"set galaxy_columns.{key} to the file's column name")
    return out


def _galaxy_format(path):
    name = path.name.lower()
    if name.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    import h5py
    if h5py.is_hdf5(path):
        return "hdf5"
    raise CatalogueError(path, "format", f"unknown galaxy table format '{path.suffix}'",
                         "provide an HDF5 (.hdf5/.h5) or CSV (.csv) table")


def _read_hdf5_columns(path, mapping, hdf5_path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CatalogueError(path, "file", f"not a readable HDF5 file ({err})",
                             "the file is truncated or corrupt; copy it again") from err
    with f:
        where = hdf5_path or "/"
        if where not in f:
            raise CatalogueError(path, f"hdf5_path '{where}'", "no such group or dataset "
                                 "in the file (top level has: " + ", ".join(f.keys()) + ")",
                                 "set hdf5_path to the group of column datasets or to the "
                                 "table dataset")
        node = f[where]
        if isinstance(node, h5py.Group):
            columns = {k: v for k, v in node.items()
                       if isinstance(v, h5py.Dataset) and v.ndim == 1 and v.dtype.names is None}
            tables = [v for v in node.values()
                      if isinstance(v, h5py.Dataset) and v.dtype.names is not None]
            if not columns and len(tables) == 1:
                node = tables[0]
                logger.info("%s: reading the table dataset '%s'", path, node.name)
        try:
            if isinstance(node, h5py.Dataset):
                if node.dtype.names is None:
                    raise CatalogueError(path, f"hdf5_path '{where}'", "a plain dataset, not "
                                         "a table", "point hdf5_path at the group holding "
                                         "one dataset per column, or at a compound table")
                names = _resolve_names(path, mapping, list(node.dtype.names))
                data = node[...]
                raw = {k: data[n] for k, n in names.items()}
            else:
                names = _resolve_names(path, mapping, list(columns))
                raw = {k: columns[n][...] for k, n in names.items()}
        except OSError as err:
            raise CatalogueError(path, "file", f"data could not be read ({err})",
                                 "the file is truncated or corrupt; copy it again") from err
    return raw, names


def _read_csv_columns(path, mapping):
    from astropy.io.ascii import InconsistentTableError
    from astropy.table import Table

    header = None
    has_rows = False
    opener = open
    if path.name.lower().endswith(".gz"):
        import gzip
        opener = gzip.open
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not a column name
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            for row in csv.reader(fh):
                if not row or row[0].lstrip().startswith("#"):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                else:
                    has_rows = True
                    break
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CatalogueError(path, "file", f"not a readable CSV file ({err})",
                             "the file is corrupt; export it again") from err
    if not header:
        raise CatalogueError(path, "file", "the file holds no CSV header line",
                             "export the table again with a header row of column names")
    if not has_rows:
        raise CatalogueError(path, "file", "the table has no galaxy rows",
                             "check the file (or the query that exported it)")
    names = _resolve_names(path, mapping, header)
    if opener is open:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 1))
            if f.read(1) != b"\n":
                raise CatalogueError(path, "file", "the last line has no final newline",
                                     "the file is truncated (interrupted download or "
                                     "copy); export it again")
    try:
        t = Table.read(path, format="ascii.csv", include_names=list(set(names.values())),
                       encoding="utf-8-sig")
    except (InconsistentTableError, ValueError, IndexError, OSError,
            UnicodeDecodeError) as err:
        raise CatalogueError(path, "file", f"astropy could not parse the CSV ({err})",
                             "the file is truncated or corrupt; export it again") from err
    raw = {}
    for k, n in names.items():
        col = t[n]
        mask = getattr(col, "mask", None)
        if mask is not None and np.any(mask):
            raise CatalogueError(path, f"{n} (galaxy_columns.{k})",
                                 f"{int(np.sum(mask))} empty or missing value(s), first at "
                                 f"row {int(np.flatnonzero(mask)[0])}",
                                 "fill or remove those rows; a short row means a corrupt "
                                 "file")
        raw[k] = np.asarray(col)
    return raw, names


def _read_galaxy_file(path, columns, hdf5_path):
    """Check the file and the column map; read the mapped columns.

    Returns ``raw`` (cmpipe name -> column as stored) and ``names`` (cmpipe name -> file
    column name).
    """
    if not path.is_file():
        raise CatalogueError(path, "file", "file does not exist",
                             "check the galaxy catalogue path in the config")
    if path.stat().st_size == 0:
        raise CatalogueError(path, "file", "the file is empty (0 bytes)",
                             "export or copy the galaxy table again")
    mapping = _check_galaxy_mapping(path, columns)
    fmt = _galaxy_format(path)
    if fmt == "hdf5":
        raw, names = _read_hdf5_columns(path, mapping, hdf5_path)
    else:
        raw, names = _read_csv_columns(path, mapping)
    return raw, names


def _check_galaxy_values(path, raw, field):
    """Check the columns read: rows present, one value per galaxy, numeric, finite.

    Returns the number of galaxies.
    """
    n = len(raw["halo_id"])
    if n == 0:
        raise CatalogueError(path, "file", "the table has no galaxy rows",
                             "check the file (or the query that exported it)")
    for k, v in raw.items():
        if v.ndim != 1 or len(v) != n:
            raise CatalogueError(path, field[k], f"shape {v.shape} differs from the {n} rows "
                                 "of the other columns", "store one value per galaxy")
        if v.dtype.kind not in "iufb":
            raise CatalogueError(path, field[k], f"non-numeric values (dtype {v.dtype})",
                                 "store numbers; NULLs such as '\\N' must be removed")
    for k in _POS + _VEL + ("mag_r",):
        nbad, first = first_nonfinite(raw[k].astype(float))
        if nbad:
            raise CatalogueError(path, field[k], f"{nbad} non-finite value(s) (NaN or inf), "
                                 f"first at row {first}",
                                 "remove or repair those rows before running cmpipe")
    return n


def _as_id(path, raw, field, k):
    """Column ``k`` as int64 ids; float columns must hold whole numbers."""
    v = raw[k]
    if v.dtype.kind == "f":
        if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
            raise CatalogueError(path, field[k], "ids are not all integers",
                                 f"map galaxy_columns.{k} to an integer id column")
    return v.astype(np.int64)


def _central_flags(path, raw, names, field, halo_id, mag):
    """``is_central`` (bool) and the rule it was taken from (see :func:`read_galaxy_table`)."""
    if "is_central" in raw:
        is_central = raw["is_central"] != 0
        rule = f"column '{names['is_central']}'"
    elif "galaxy_type" in raw:
        is_central = _as_id(path, raw, field, "galaxy_type") == 0
        rule = f"column '{names['galaxy_type']}' == 0"
    else:
        is_central = _brightest_per_group(halo_id, mag)
        rule = "brightest galaxy of each halo_id"
    return is_central, rule


def read_galaxy_table(path, *, columns: Mapping[str, str | None] = DEFAULT_GALAXY_COLUMNS,
                      box_size_mpc_h, hdf5_path=None) -> dict:
    """Read a galaxy table (HDF5 or CSV) into the columns of ``GALAXY_SCHEMA``.

    Parameters
    ----------
    path : path-like
        ``.hdf5``/``.h5`` (or any HDF5 file): the columns are the 1-D datasets of the group
        ``hdf5_path`` (default: the file root), or the fields of the compound dataset at
        ``hdf5_path`` (astropy's ``Table.write(..., path=...)`` layout). ``.csv`` (or
        ``.csv.gz``): comma-separated with one header row.
    columns : mapping of str to str or None
        cmpipe name -> file column name (see :data:`DEFAULT_GALAXY_COLUMNS`): ``galaxy_id``,
        ``halo_id`` (Rockstar id of the galaxy's halo), ``x``, ``y``, ``z`` (comoving h^-1
        Mpc), ``vx``, ``vy``, ``vz`` (peculiar km/s), ``mag_r`` (absolute r magnitude,
        M_r - 5 log10 h), optional ``galaxy_type`` and ``is_central``.
    box_size_mpc_h : float
        Box side in comoving h^-1 Mpc; positions are wrapped into ``[0, box)``.
    hdf5_path : str, optional
        Group or dataset inside an HDF5 file.

    Returns
    -------
    dict of str to ndarray
        The ``GALAXY_SCHEMA`` columns. ``halo_id`` is still the id read from the file (it
        may be a subhalo); :func:`attach_hosts` maps it to the host.

    Notes
    -----
    ``is_central`` is taken from, in order: the ``is_central`` column (non-zero = central);
    the ``galaxy_type`` column (central where it is 0, the SAG/Croton convention); else it
    is derived as the brightest galaxy (smallest ``mag_r``; ties to the first row) of each
    ``halo_id``. :func:`attach_hosts` then makes every galaxy that sits in a subhalo a
    satellite, so a central is the galaxy whose halo is its own host.
    A missing ``galaxy_id`` mapping numbers the rows 0..N-1.

    Raises
    ------
    CatalogueError
        Missing, empty, truncated or corrupt file; unknown format; a mapped column missing
        or non-numeric; NaN in positions, velocities or magnitudes; non-integer ids;
        positions outside the box; duplicate galaxy ids.
    """
    path = Path(path)
    raw, names = _read_galaxy_file(path, columns, hdf5_path)
    field = {k: f"{n} (galaxy_columns.{k})" for k, n in names.items()}
    n = _check_galaxy_values(path, raw, field)
    halo_id = _as_id(path, raw, field, "halo_id")
    if "galaxy_id" in raw:
        galaxy_id = _as_id(path, raw, field, "galaxy_id")
        if np.unique(galaxy_id).size != n:
            raise CatalogueError(path, field["galaxy_id"], "galaxy ids are not unique",
                                 "map galaxy_columns.galaxy_id to a unique id column, or to "
                                 "null to number the rows")
    else:
        galaxy_id = np.arange(n, dtype=np.int64)
        logger.info("%s: no galaxy_id column mapped; galaxies numbered by row", path)
    pos = wrap_box_positions(path, raw, float(box_size_mpc_h), field)
    mag = raw["mag_r"].astype(float)
    is_central, rule = _central_flags(path, raw, names, field, halo_id, mag)
    logger.info("%s: read %d galaxies, %d centrals (%s)", path, n, int(is_central.sum()), rule)
    out = {
        "galaxy_id": galaxy_id,
        "halo_id": halo_id,
        "is_central": is_central.astype(np.int8),
        "x_mpc_h": pos["x"], "y_mpc_h": pos["y"], "z_mpc_h": pos["z"],
        "vx_kms": raw["vx"].astype(float), "vy_kms": raw["vy"].astype(float),
        "vz_kms": raw["vz"].astype(float),
        "mag_r": mag,
    }
    return out


def _brightest_per_group(group, mag, eligible=None):
    """Boolean mask: the brightest (smallest ``mag``) row of each ``group`` value.

    Only ``eligible`` rows compete; ties go to the first row.
    """
    idx = np.arange(len(group)) if eligible is None else np.flatnonzero(eligible)
    out = np.zeros(len(group), dtype=bool)
    if idx.size == 0:
        return out
    order = idx[np.lexsort((idx, mag[idx], group[idx]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    out[order[first]] = True
    return out


def attach_hosts(galaxies, halos) -> dict:
    """Map each galaxy's halo id to its host halo; drop galaxies with no match.

    A galaxy whose ``halo_id`` is a host halo (``upid == -1``) keeps it. One whose
    ``halo_id`` is a subhalo gets the subhalo's ``upid`` (the id of the most massive host
    containing it) and ``is_central = 0``. Galaxies whose halo is not in ``halos``, or whose
    subhalo's host is not, are dropped; the counts are logged. Where several galaxies of one
    host are flagged central, the brightest stays central (logged).

    Parameters
    ----------
    galaxies : mapping
        ``GALAXY_SCHEMA`` columns (e.g. from :func:`read_galaxy_table`).
    halos : mapping
        ``HALO_SCHEMA`` columns including the subhalos (``halo_id``, ``upid``).

    Returns
    -------
    dict of str to ndarray
        ``GALAXY_SCHEMA`` columns of the kept galaxies, ``halo_id`` now a host id.

    Raises
    ------
    ValueError
        ``halos`` has duplicate halo ids.
    """
    hid = np.asarray(halos["halo_id"], dtype=np.int64)
    upid = np.asarray(halos["upid"], dtype=np.int64)
    order = np.argsort(hid, kind="stable")
    sorted_ids = hid[order]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("attach_hosts: the halo table has duplicate halo ids. Fix: read it "
                         "with read_hlist_halos, which checks the ids")

    def lookup(ids):
        if sorted_ids.size == 0:
            return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.size - 1)
        return order[pos], sorted_ids[pos] == ids

    gid = np.asarray(galaxies["halo_id"], dtype=np.int64)
    row, found = lookup(gid)
    is_sub = np.zeros(gid.size, dtype=bool)
    host = gid.copy()
    if found.any():
        is_sub[found] = upid[row[found]] != -1
        host[is_sub] = upid[row[is_sub]]
    host_row, host_found = lookup(host)
    host_is_host = np.zeros(gid.size, dtype=bool)
    host_is_host[host_found] = upid[host_row[host_found]] == -1
    keep = found & host_found & host_is_host
    n_missing = int((~found).sum())
    n_orphan_sub = int((found & ~keep).sum())
    if n_missing or n_orphan_sub:
        logger.warning("attach_hosts: dropped %d of %d galaxies whose halo id is not in the "
                       "halo table and %d whose subhalo's host is not (a mass cut removes "
                       "them; key galaxies by their host id to keep them)", n_missing,
                       gid.size, n_orphan_sub)
    logger.info("attach_hosts: %d galaxies in host halos, %d moved from subhalos to their "
                "host", int((keep & ~is_sub).sum()), int((keep & is_sub).sum()))
    out = {k: np.asarray(galaxies[k])[keep] for k in GALAXY_SCHEMA}
    out["halo_id"] = host[keep]
    central = (np.asarray(out["is_central"]) != 0) & ~is_sub[keep]
    _, n_per_host = np.unique(out["halo_id"][central], return_counts=True)
    if np.any(n_per_host > 1):
        logger.warning("attach_hosts: %d host halos had several centrals (%d galaxies); "
                       "kept the brightest of each", int((n_per_host > 1).sum()),
                       int(n_per_host[n_per_host > 1].sum()))
        central = _brightest_per_group(out["halo_id"], np.asarray(out["mag_r"], float),
                                       central)
    out["is_central"] = central.astype(np.int8)
    n_hosts = np.unique(out["halo_id"]).size
    n_without = n_hosts - int(central.sum())
    if n_without:
        logger.info("attach_hosts: %d of %d host halos with galaxies have no central",
                    n_without, n_hosts)
    return out
