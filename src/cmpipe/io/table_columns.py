"""Reading survey tables column by column: the file (format from its extension; empty,
directory and one-column CSV files named), the column mapping, and values parsed with the
row named when one is bad (numbers, integer ids, angles with units or sexagesimal).

Used by :mod:`cmpipe.io.survey` (cluster, galaxy and phase-space tables).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tables import CatalogueError

__all__ = ["table_format", "read_any_table", "strip_bom", "resolve_column", "float_column",
           "angle_deg", "int_column"]

_FORMATS = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
            ".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}


def table_format(path) -> str:
    """astropy format name of a survey file from its extension.

    Raises
    ------
    CatalogueError
        Unknown extension.
    """
    name = Path(path).name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise CatalogueError(path, "(file)", "unknown file extension",
                         "use .fits, .fit, .fits.gz, .csv or .ecsv")


def read_any_table(path):
    from astropy.table import Table

    path = Path(path)
    fmt = table_format(path)
    if not path.exists():
        raise CatalogueError(path, "(file)", "file does not exist",
                             "check the path (survey.clusters / survey.galaxies in the "
                             "config; --clusters / --galaxies / --phase-space of cmpipe "
                             "infer)")
    if path.is_dir():
        raise CatalogueError(path, "(file)", "is a directory, not a table",
                             "give the path of a .fits, .csv or .ecsv file")
    if path.stat().st_size == 0:
        raise CatalogueError(path, "(file)", "the file is empty (0 bytes)",
                             "write the table (a header line and one row per object)")
    try:
        t = Table.read(path, format=fmt)
    except Exception as err:  # astropy raises many types for malformed files
        raise CatalogueError(path, "(file)", f"cannot be read as {fmt} ({err})",
                             "check the file is a valid table of that format") from err
    t = strip_bom(t)
    if fmt == "ascii.csv" and len(t.colnames) == 1:
        sep = next((c for c in ";\t|" if c in t.colnames[0]), None)
        raise CatalogueError(
            path, t.colnames[0], "only one column found" + (
                f": the file may use {sep!r} as delimiter" if sep else ""),
            "write the CSV with ',' between columns (e.g. pandas.read_csv(path, sep=';')"
            ".to_csv(new_path, index=False))")
    return t


def strip_bom(table):
    """Drop a UTF-8 byte-order mark (and surrounding blanks) from column names, as
    spreadsheet programs write it before the first header of a CSV file; the table is
    renamed in place and returned."""
    for name in list(table.colnames):
        clean = name.lstrip("\ufeff").strip()
        if clean != name and clean and clean not in table.colnames:
            table.rename_column(name, clean)
    return table


def resolve_column(table, path, key, candidates, required, defaults_name):
    names = list(table.colnames)
    cands = [candidates] if isinstance(candidates, str) else list(candidates)
    for c in cands:
        if c in names:
            return c
    lower = {n.lower(): n for n in names}
    for c in cands:
        if c.lower() in lower:
            return lower[c.lower()]
    if required:
        raise CatalogueError(
            path, key, f"required column not found (looked for {', '.join(cands)}; the file "
            f"has {', '.join(names)})",
            f"set the column mapping for '{key}' (columns={{'{key}': '<file column>'}}, "
            f"config survey.{defaults_name}.{key})")
    return None


def _first_non_number(col):
    """Row and value of the first entry of a text column that is not a number (None if
    every unmasked entry is one)."""
    mask = np.ma.getmaskarray(col)
    for i, v in enumerate(np.asarray(col)):
        if mask[i]:
            continue
        try:
            float(str(v).strip())
        except ValueError:
            return i, v
    return None


def float_column(table, name, path=None):
    """Column as float64 with masked entries as NaN.

    Raises
    ------
    CatalogueError
        A non-numeric entry (named by row and value) or a non-numeric column.
    """
    col = table[name]
    try:
        data = np.ma.asarray(col).astype(float)
    except (TypeError, ValueError) as err:
        bad = _first_non_number(col)
        n_bad = sum(1 for v, m in zip(np.asarray(col), np.ma.getmaskarray(col))
                    if not m and _first_non_number(np.ma.asarray([v])) is not None)
        if bad is not None and n_bad < len(col):
            raise CatalogueError(path, name, f"{n_bad} non-numeric value(s), first at row "
                                 f"{bad[0]} (data row {bad[0] + 1} after the header): "
                                 f"{str(bad[1])!r}",
                                 "repair or remove that row (missing values may be left "
                                 "empty)") from err
        raise CatalogueError(path, name, f"not numeric (dtype {np.asarray(col).dtype})",
                             "map this key to a numeric column") from err
    return np.ma.filled(data, np.nan)


def angle_deg(table, name, path, key):
    """Angle column in degrees: converted through its astropy unit (True), parsed from
    sexagesimal text (True), or plain numbers without a unit (False: taken as degrees)."""
    import astropy.units as u

    col = table[name]
    unit = getattr(col, "unit", None)
    if np.asarray(col).dtype.kind in "US" and unit is None:
        sexa = _sexagesimal_deg(col, path, name, key)
        if sexa is not None:
            return sexa, True
    vals = float_column(table, name, path)
    if unit is None or unit == u.dimensionless_unscaled:
        return vals, False
    try:
        return (vals * unit).to_value(u.deg), True
    except u.UnitConversionError as err:
        raise CatalogueError(path, name, f"unit '{unit}' is not an angle ({err})",
                             f"map '{key}' to an angle column (deg or rad)") from err


def _sexagesimal_deg(col, path, name, key):
    """Sexagesimal angles (``12:30:49.4``, ``12h30m49.4s``, ``+12:23:28``, ``12d23m28s``)
    in degrees, parsed by :class:`astropy.coordinates.Angle`: RA (``key`` ``ra_deg``) in
    hours, Dec in degrees. None when the column holds plain numbers."""
    import astropy.units as u
    from astropy.coordinates import Angle

    vals = [str(v).strip() for v in np.asarray(col)]
    if not any(c in v for v in vals for c in ":hdms "):
        return None
    if np.any(np.ma.getmaskarray(col)):
        raise CatalogueError(path, name, "missing (empty) sexagesimal angles",
                             "fill every position or drop those rows")
    unit = u.hourangle if key == "ra_deg" else u.deg
    try:
        return np.asarray(Angle(vals, unit=unit).deg, dtype=float)
    except (ValueError, TypeError) as err:
        raise CatalogueError(path, name, f"cannot parse as a sexagesimal angle ({err})",
                             "give decimal degrees, or RA as HH:MM:SS.s and Dec as "
                             "+DD:MM:SS.s") from err


def int_column(table, name, path, key):
    col = table[name]
    arr = np.asarray(col)
    if hasattr(col, "mask") and np.any(np.ma.getmaskarray(col)):
        raise CatalogueError(path, name, "masked (missing) ids",
                             f"fill the ids or map '{key}' to a complete integer column")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
    else:
        try:
            return np.array([int(str(s).strip()) for s in arr], dtype=np.int64)
        except ValueError:
            pass
    raise CatalogueError(path, name, f"ids are not integers (dtype {arr.dtype}, e.g. "
                         f"{arr[:3].tolist()})",
                         f"map '{key}' to an integer id column, or drop the mapping to "
                         "number the rows")


def _texts(table, name):
    """A text column as stripped str (an object array) and its mask (masked cells are
    '')."""
    col = table[name]
    mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(len(col), bool)
    text = np.array(["" if m else (s.decode() if isinstance(s, bytes) else str(s)).strip()
                     for s, m in zip(np.asarray(col), mask)], dtype=object)
    return text, mask


def id_or_name_column(table, name, path, key):
    """Cluster ids that may be names (``A2029``, ``Coma``): integer ids as int64 and None;
    names (a text column that is not all integers) as ids 0..N-1 in row order and the
    stripped names (an object array of str), which the outputs carry back as
    ``cluster_name``.

    Raises
    ------
    CatalogueError
        Masked or empty names, naming the rows.
    """
    if np.asarray(table[name]).dtype.kind not in "USO":
        return int_column(table, name, path, key), None
    names, mask = _texts(table, name)
    if mask.any():
        raise CatalogueError(path, name, "masked (missing) ids",
                             f"give every row a name or id in '{name}'")
    try:
        return np.array([int(s) for s in names], dtype=np.int64), None
    except ValueError:
        pass
    empty = np.flatnonzero(names == "")
    if empty.size:
        raise CatalogueError(path, name, f"{empty.size} empty name(s), e.g. row(s) "
                             f"{', '.join(str(int(i) + 1) for i in empty[:5])} (1 = first "
                             "data row)", f"give every cluster a name or id in '{name}'")
    return np.arange(names.size, dtype=np.int64), names


def labels_to_ids(table, name, path, names=None, *, missing):
    """Galaxy membership labels or phase-space cluster labels as int64 cluster ids.

    Numeric labels are returned as they are (empty or NaN cells as ``missing``). Text
    labels are matched to the cluster table's ``names`` (:func:`id_or_name_column`):
    a name's id is its cluster's row; empty cells and names of no cluster become
    ``missing``. Text labels that are integers are read as ids.

    Returns
    -------
    ids : ndarray of int64
    unknown : ndarray of str
        The distinct non-empty text labels that name no cluster of the table.

    Raises
    ------
    CatalogueError
        Text labels that are not integers when the cluster table has numeric ids, or
        numeric labels when it has names.
    """
    text_column = np.asarray(table[name]).dtype.kind in "USO"
    if not text_column and names is not None:
        raise CatalogueError(path, name, "cluster labels are numbers but the cluster table "
                             f"names its clusters ({', '.join(list(names)[:3])}, ...)",
                             "label the galaxies with the cluster table's names")
    none = np.zeros(0, dtype=str)
    if not text_column:
        lab = float_column(table, name, path)
        return np.where(np.isfinite(lab), lab, missing).astype(np.int64), none
    text, _ = _texts(table, name)
    if names is None:
        out = np.full(text.size, missing, dtype=np.int64)
        filled = text != ""
        try:
            out[filled] = [int(s) for s in text[filled]]
        except ValueError:
            bad = [s for s in text[filled] if not s.lstrip("+-").isdigit()][:3]
            raise CatalogueError(path, name, f"cluster labels are names ({', '.join(bad)}) "
                                 "but the cluster table's ids are numbers",
                                 "give the cluster table the same names in its id column "
                                 "(cluster_id / ID / name), or numeric labels here") from None
        return out, none
    lookup = {s: i for i, s in enumerate(names)}
    out = np.array([lookup.get(s, missing) for s in text], dtype=np.int64)
    return out, np.unique(text[(text != "") & (out == missing)].astype(str))
