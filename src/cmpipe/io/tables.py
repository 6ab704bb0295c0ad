"""Column tables in HDF5: the on-disk form of every cmpipe catalogue product.

A *table* is an HDF5 group whose datasets are equal-length 1-D columns, each with a
``unit`` attribute; the group's attributes hold table-wide metadata (box size, redshift,
cosmology, source). Every writer goes through :func:`atomic_output`, so a killed job never
leaves a half-written product behind.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

__all__ = [
    "CatalogueError",
    "Schema",
    "atomic_output",
    "write_table",
    "read_table",
    "append_rows",
    "AtomicH5File",
    "TableWriter",
    "table_length",
    "write_json",
    "write_csv",
    "check_columns",
]


class CatalogueError(ValueError):
    """Bad input data: the message names the file, the field and the fix."""

    def __init__(self, path, field, problem, fix):
        self.path = str(path)
        self.field = field
        msg = f"{path}: field '{field}': {problem}. Fix: {fix}"
        super().__init__(msg)


class Schema(dict):
    """Mapping column name -> (numpy dtype str, unit str, description)."""

    def units(self):
        return {k: v[1] for k, v in self.items()}


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the block raises, so no partial output survives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _coerce(name, values, schema):
    arr = np.asarray(values)
    if schema is not None and name in schema:
        arr = arr.astype(schema[name][0], copy=False)
    if arr.ndim != 1:
        raise ValueError(f"column '{name}' must be 1-D, got shape {arr.shape}")
    return arr


def check_columns(columns: Mapping[str, np.ndarray], path, required: Iterable[str],
                  finite: Iterable[str] = ()):
    """Raise :class:`CatalogueError` for a missing required column or non-finite values."""
    for name in required:
        if name not in columns:
            raise CatalogueError(
                path, name, "required column is missing (have: "
                + ", ".join(sorted(columns)) + ")",
                "add the column, or map its name in the config's column mapping")
    for name in finite:
        col = np.asarray(columns[name])
        if col.dtype.kind == "f":
            bad = ~np.isfinite(col)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise CatalogueError(
                    path, name, f"{int(bad.sum())} non-finite value(s) (NaN or inf), "
                    f"first at row {first}",
                    "remove or repair those rows before running cmpipe")


def write_table(path, columns: Mapping[str, np.ndarray], *, group: str = "table",
                attrs: Mapping | None = None, schema: Schema | None = None,
                compression: str | None = "gzip") -> None:
    """Write equal-length columns to ``path`` (HDF5) atomically.

    Parameters
    ----------
    path : path-like
        Output file; replaced whole.
    columns : mapping of str to 1-D array
        The table. With ``schema``, columns are cast to its dtypes and must all be present.
    group : str
        HDF5 group holding the columns.
    attrs : mapping, optional
        Table-wide metadata stored as group attributes (scalars, strings or JSON-able dicts).
    """
    if schema is not None:
        missing = [k for k in schema if k not in columns]
        if missing:
            raise ValueError(f"writing {path}: columns {missing} missing from table")
    cols = {k: _coerce(k, v, schema) for k, v in columns.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise ValueError(f"writing {path}: columns differ in length: "
                         + str({k: len(v) for k, v in cols.items()}))
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(group)
            for k, v in cols.items():
                kw = {}
                if compression and len(v) > 0:
                    kw = dict(compression=compression, chunks=(min(len(v), 65536),))
                ds = g.create_dataset(k, data=v, **kw)
                if schema is not None and k in schema:
                    ds.attrs["unit"] = schema[k][1]
                    ds.attrs["description"] = schema[k][2]
            for k, v in (attrs or {}).items():
                g.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v


def read_table(path, *, group: str = "table", required: Iterable[str] = (),
               finite: Iterable[str] = (), columns: Iterable[str] | None = None,
               rows: slice | np.ndarray | None = None):
    """Read a table written by :func:`write_table`.

    Returns
    -------
    columns : dict of str to ndarray
    attrs : dict
        Group attributes; JSON strings are decoded.

    Raises
    ------
    CatalogueError
        The file is unreadable, the group or a required column is missing, or a column in
        ``finite`` holds NaN/inf.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogueError(path, group, "file does not exist",
                             "check the path in the config or rerun the rule that makes it")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CatalogueError(path, group, f"not a readable HDF5 file ({err})",
                             "regenerate the file; it may be truncated or corrupt") from err
    with f:
        if group not in f:
            raise CatalogueError(path, group, "HDF5 group missing",
                                 f"the file must hold a group '{group}' with one dataset per "
                                 "column (see docs/data-products.md)")
        g = f[group]
        names = list(g.keys()) if columns is None else list(columns)
        check_columns({k: None for k in g.keys()}, path, list(required) + [
            n for n in names if n not in required])
        out = {k: (g[k][...] if rows is None else g[k][rows]) for k in names}
        attrs = {}
        for k, v in g.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            attrs[k] = v.item() if isinstance(v, np.generic) else v
    check_columns(out, path, (), finite=[k for k in finite if k in out])
    return out, attrs


class AtomicH5File:
    """An HDF5 file written under a temporary sibling name and renamed onto ``path`` by
    :meth:`close`; :meth:`abort` (or an exception inside ``with``) removes it instead, so
    no partial product survives. Subclasses add the datasets (``self._f``)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._f = h5py.File(self.tmp, "w")

    def close(self):
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        try:
            self._f.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class TableWriter(AtomicH5File):
    """Write a table in batches (bounded memory), atomically on :meth:`close`.

    Use as a context manager; batches are dicts of equal-length columns with the same keys.
    Several groups can be written to the same file (``add_group``). If the block raises, the
    temporary file is removed and any existing ``path`` is left untouched.
    """

    def __init__(self, path, *, compression: str | None = "gzip", chunk_rows: int = 65536):
        super().__init__(path)
        self.compression = compression
        self.chunk_rows = chunk_rows
        self._schemas = {}

    def add_group(self, group: str, schema: Schema, attrs: Mapping | None = None):
        """Declare a table ``group`` with columns and dtypes from ``schema``."""
        g = self._f.create_group(group)
        for k, (dtype, unit, desc) in schema.items():
            ds = g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dtype,
                                  chunks=(self.chunk_rows,), compression=self.compression)
            ds.attrs["unit"] = unit
            ds.attrs["description"] = desc
        for k, v in (attrs or {}).items():
            g.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        self._schemas[group] = schema

    def append(self, group: str, batch: Mapping[str, np.ndarray]):
        """Append the rows of ``batch`` (all schema columns) to ``group``."""
        schema = self._schemas[group]
        cols = {k: _coerce(k, batch[k], schema) for k in schema}
        n = {len(v) for v in cols.values()}
        if len(n) != 1:
            raise ValueError(f"{self.path}: batch columns differ in length")
        n = n.pop()
        if n == 0:
            return
        g = self._f[group]
        for k, v in cols.items():
            ds = g[k]
            old = ds.shape[0]
            ds.resize((old + n,))
            ds[old:] = v

    def add_array(self, name: str, data: np.ndarray, **attrs):
        """Store an n-D array (e.g. posterior curves) beside the tables, compressed."""
        data = np.asarray(data)
        kw = {}
        if data.size:
            kw = dict(compression=self.compression,
                      chunks=(min(data.shape[0], 256),) + data.shape[1:])
        ds = self._f.create_dataset(name, data=data, **kw)
        for k, v in attrs.items():
            ds.attrs[k] = v

    def set_attrs(self, group: str, attrs: Mapping):
        for k, v in attrs.items():
            self._f[group].attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v



def table_length(path, group: str) -> int:
    """Number of rows of table ``group`` in ``path``."""
    with h5py.File(path, "r") as f:
        g = f[group]
        keys = list(g.keys())
        return int(g[keys[0]].shape[0]) if keys else 0


def append_rows(parts: Iterable[Mapping[str, np.ndarray]]) -> dict:
    """Concatenate a sequence of column dicts with the same keys."""
    parts = list(parts)
    if not parts:
        return {}
    keys = parts[0].keys()
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}


def write_csv(path, columns, rows: Iterable[Mapping]) -> None:
    """Write ``rows`` (mappings) as CSV with a header of ``columns``, atomically: floats
    with 6 significant digits, None (or a missing key) as an empty cell, anything else as
    ``str`` (the report's tables and the analyses' summaries)."""
    import csv

    def cell(v):
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)

    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for r in rows:
                w.writerow([cell(r.get(c)) for c in columns])


def write_json(path, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (numpy scalars and arrays converted)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o)}")
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=default, sort_keys=False) + "\n")
