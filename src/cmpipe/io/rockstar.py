"""ROCKSTAR halos: a consistent-trees ``hlist_<scale>.list`` file -> cmpipe's halo table.

The first header line of an hlist names every column with its 0-based index (``#scale(0)
id(1) ... upid(6) ...``); further ``#`` lines give the cosmology (``#Omega_M = ...; h0 =
...``), the box (``#Full box size = ... Mpc/h``) and the units: masses h^-1 Msun, positions
comoving h^-1 Mpc, velocities physical peculiar km/s, ``rvir`` and ``rs`` comoving h^-1 kpc.
The file is read with halotools' :class:`~halotools.sim_manager.TabularAsciiReader`, keeping
only the mapped columns; every mapped index is checked against the name the header gives
it, so a file written by another consistent-trees version (whose columns after index 34 sit
elsewhere) fails with the index to use instead of silently reading the wrong column.

Conventions and choices
-----------------------
* ``log10_m200c = log10(M200c)`` with M200c the ROCKSTAR mass inside 200 rho_crit(z), h^-1
  Msun.
* ``r200c_mpc_h`` is the *proper* R200c computed from M200c:
  R200c = [3 M200c / (4 pi 200 rho_crit(z))]^(1/3), with rho_crit(z) from the colossus
  cosmology passed in (the same number ``colossus.halo.mass_so.M_to_R(M, z, '200c')`` gives,
  without relying on colossus' global current cosmology). The hlist ``rvir`` is *not* R200c:
  it is the comoving radius of the Bryan & Norman (1998) virial overdensity (about 100-110
  rho_crit at z = 0-0.1, so R200c is about 0.75-0.8 of it in proper units) and it matches
  ``mvir``, not ``M200c``. ``rvir`` is read only to check the radius units.
* ``c200c = R200c / r_s`` with r_s the ROCKSTAR NFW scale radius converted to proper h^-1
  Mpc, ``rs_proper = rs[comoving h^-1 kpc] / (1 + z) / 1000``. It is clipped to [1, 50] (a
  stripped subhalo can have r_s of a few kpc, a disturbed halo an r_s close to its radius);
  the clipped counts are logged.
* Halos with M200c = 0 (ROCKSTAR writes 0 when too few particles lie inside R200c) are
  dropped and counted. All other halos, hosts and subhalos, are kept unless ``hosts_only``;
  selection happens downstream.
* Positions are wrapped into ``[0, box)``; a range far outside the box is an error, since it
  means other units (h^-1 kpc, or Mpc without h).

:mod:`cmpipe.io.mdpl2` reads an MDPL2 snapshot with this module and
:mod:`cmpipe.io.galaxy_tables`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .catalogues import HALO_SCHEMA
from .tables import CatalogueError
from .validate import first_nonfinite, wrap_box_positions

__all__ = ["DEFAULT_HLIST_COLUMNS", "C200C_RANGE", "read_hlist_halos"]

logger = logging.getLogger(__name__)

#: 0-based hlist column index of each quantity cmpipe reads, for the MDPL2 hlists
#: (consistent-trees layout without the Tidal_Force/Tidal_ID columns:
#: ``... Last_mainleaf_depthfirst_ID(34) Rs_Klypin(35) Mmvir_all(36) M200b(37) M200c(38) ...``).
#: Indices 0-34 are the same in every consistent-trees version; later ones are not (the
#: Bolshoi-Planck hlists have ``M200c(40)``), which is why each index is checked against the
#: file header. ``scale`` and ``rvir`` are optional (map them to ``None`` to skip their
#: checks). Read-only; build a new dict to change it.
DEFAULT_HLIST_COLUMNS: Mapping[str, int] = MappingProxyType({
    "scale": 0,
    "halo_id": 1,
    "upid": 6,
    "rvir": 11,
    "rs": 12,
    "x": 17,
    "y": 18,
    "z": 19,
    "vx": 20,
    "vy": 21,
    "vz": 22,
    "m200c": 38,
})

#: Range c200c is clipped to.
C200C_RANGE = (1.0, 50.0)

# Names the hlist header may give each mapped column (compared case-insensitively).
_HLIST_NAMES = {
    "scale": ("scale",), "halo_id": ("id",), "upid": ("upid",), "m200c": ("M200c",),
    "rvir": ("rvir",), "rs": ("rs",), "x": ("x",), "y": ("y",), "z": ("z",),
    "vx": ("vx",), "vy": ("vy",), "vz": ("vz",),
}
_HLIST_REQUIRED = ("halo_id", "upid", "m200c", "rs", "x", "y", "z", "vx", "vy", "vz")
_HLIST_INT = ("halo_id", "upid")
# Largest |z_file - z_config| accepted (MDPL2 snapshots near z = 0.1 are ~0.012 apart).
_Z_TOL = 0.01
_HEADER_TOKEN = re.compile(r"^(.+)\((\d+)\)$")
_BOX_LINE = re.compile(r"Full box size\s*=\s*([0-9.eE+-]+)")
_COSMO_LINE = re.compile(r"Omega_M\s*=\s*([0-9.eE+-]+);\s*Omega_L\s*=\s*([0-9.eE+-]+);"
                         r"\s*h0\s*=\s*([0-9.eE+-]+)")


def _check_hlist_mapping(path, columns):
    """Validate the index mapping; return ``{key: index}`` without the ``None`` entries."""
    unknown = [k for k in columns if k not in _HLIST_NAMES]
    if unknown:
        raise CatalogueError(path, f"halo_columns.{unknown[0]}", "unknown cmpipe name",
                             "use only " + ", ".join(_HLIST_NAMES))
    out = {}
    for key in _HLIST_NAMES:
        idx = columns.get(key)
        if idx is None:
            if key in _HLIST_REQUIRED:
                raise CatalogueError(path, f"halo_columns.{key}", "required column not mapped",
                                     f"give the 0-based hlist index of '{_HLIST_NAMES[key][0]}'")
            continue
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or idx < 0:
            raise CatalogueError(path, f"halo_columns.{key}",
                                 f"index {idx!r} is not a non-negative integer",
                                 "give the 0-based column index listed in the hlist header")
        out[key] = int(idx)
    seen = {}
    for key, idx in out.items():
        if idx in seen:
            raise CatalogueError(path, f"halo_columns.{key}",
                                 f"index {idx} is also mapped to '{seen[idx]}'",
                                 "map each quantity to its own hlist column")
        seen[idx] = key
    return out


def _parse_column_header(text):
    """Column names from a ``scale(0) id(1) ...`` header line, or ``None``."""
    names = []
    for tok in text.split():
        m = _HEADER_TOKEN.match(tok)
        if m is None or int(m.group(2)) != len(names):
            return None
        names.append(m.group(1))
    return names or None


def _inspect_hlist(path):
    """Read the header and first data line of an hlist; check the file's tail.

    Returns a dict with ``names`` (header column names), ``box`` and ``cosmo`` (from the
    header, or ``None``).
    """
    size = path.stat().st_size
    if size == 0:
        raise CatalogueError(path, "file", "the file is empty (0 bytes)",
                             "download or copy the hlist again")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"\x1f\x8b":
        raise CatalogueError(path, "format", "gzip-compressed file",
                             "decompress it first (gunzip); halotools' reader needs plain "
                             "ASCII")
    if head[:8] == b"\x89HDF\r\n\x1a\n" or b"\x00" in head:
        raise CatalogueError(path, "format", "binary file, not a ROCKSTAR/consistent-trees "
                             "hlist ASCII table",
                             "point the halo catalogue path at the hlist_<scale>.list file")
    names = box = cosmo = None
    first_data = None
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("#"):
                text = line[1:].strip()
                if names is None:
                    names = _parse_column_header(text)
                m = _BOX_LINE.search(text)
                if m:
                    box = float(m.group(1))
                m = _COSMO_LINE.search(text)
                if m:
                    cosmo = dict(Om0=float(m.group(1)), h=float(m.group(3)))
            elif line.strip():
                first_data = line
                break
    if names is None:
        raise CatalogueError(path, "header", "no consistent-trees column header line "
                             "('#scale(0) id(1) desc_scale(2) ...')",
                             "use the hlist file as distributed, with its '#' header; it "
                             "is needed to check the column indices")
    if first_data is None:
        raise CatalogueError(path, "file", "the file holds a header but no data rows",
                             "the file is truncated or is the wrong file; download it again")
    nf = len(first_data.split())
    if nf != len(names):
        raise CatalogueError(path, "file", f"the first data row has {nf} fields but the "
                             f"header lists {len(names)} columns",
                             "the file is corrupt or not an hlist; download it again")
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if not tail.endswith(b"\n") or len(last.split()) != len(names):
        raise CatalogueError(path, "file", f"the last line has {len(last.split())} of "
                             f"{len(names)} fields" + ("" if tail.endswith(b"\n") else
                                                       " and no final newline"),
                             "the file is truncated (interrupted download or copy); "
                             "download it again")
    return dict(names=names, box=box, cosmo=cosmo)


def _check_header_names(path, mapping, names):
    lower = [n.lower() for n in names]
    for key, idx in mapping.items():
        want = tuple(w.lower() for w in _HLIST_NAMES[key])
        if idx >= len(names):
            raise CatalogueError(path, f"halo_columns.{key}",
                                 f"index {idx} is beyond the {len(names)} columns of the file",
                                 f"use the index the header gives "
                                 f"'{_HLIST_NAMES[key][0]}'")
        if lower[idx] not in want:
            where = [i for i, n in enumerate(lower) if n in want]
            fix = (f"set halo_columns.{key}: {where[0]} (the header lists '{names[where[0]]}' "
                   f"as column {where[0]})" if where else
                   f"the file has no '{_HLIST_NAMES[key][0]}' column; use an hlist that "
                   "has one"
                   + (f" or set halo_columns.{key}: null" if key not in _HLIST_REQUIRED
                      else ""))
            raise CatalogueError(path, f"halo_columns.{key}",
                                 f"column {idx} is '{names[idx]}' in the file header, "
                                 f"not '{_HLIST_NAMES[key][0]}'", fix)


def _find_bad_row(path, ncols, mapping):
    """First data line that cannot be parsed: ``(line number, key or None, problem)``."""
    with open(path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("#") or line == "\n":
                continue
            fields = line.split()
            if len(fields) != ncols:
                return lineno, None, f"line {lineno} has {len(fields)} of {ncols} fields"
            for key, idx in mapping.items():
                conv = int if key in _HLIST_INT else float
                try:
                    conv(fields[idx])
                except ValueError:
                    return lineno, key, (f"line {lineno}: '{fields[idx]}' is not "
                                         f"{'an integer' if conv is int else 'a number'}")
    return None


def _read_ascii(path, mapping, ncols, row_cut_min, row_cut_eq):
    from halotools.sim_manager import TabularAsciiReader

    cols = {k: (i, "i8" if k in _HLIST_INT else "f8") for k, i in mapping.items()}
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            reader = TabularAsciiReader(str(path), cols, row_cut_min_dict=row_cut_min,
                                        row_cut_eq_dict=row_cut_eq)
            arr = reader.read_ascii()
    except (ValueError, IndexError, TypeError, OSError, UnicodeDecodeError) as err:
        bad = _find_bad_row(path, ncols, mapping)
        if bad is None:
            raise CatalogueError(path, "file", f"halotools could not read the file ({err})",
                                 "check that the file is an unmodified hlist") from err
        lineno, key, problem = bad
        field = f"{key} (column {mapping[key]})" if key else "file"
        raise CatalogueError(path, field, problem,
                             "the file is corrupt or truncated; download it again") from err
    logger.debug("halotools TabularAsciiReader output:\n%s", chatter.getvalue().strip())
    return arr


def _r200c_proper_mpc_h(m200c, redshift, cosmology):
    """Proper R200c in h^-1 Mpc for M200c in h^-1 Msun (colossus rho_crit, h^2 Msun/kpc^3)."""
    rho_c = cosmology.colossus.rho_c(redshift)
    return (3.0 * m200c / (4.0 * np.pi * 200.0 * rho_c)) ** (1.0 / 3.0) / 1000.0


def _check_header_box_cosmology(path, info, box, cosmology):
    """The hlist header's box (must match ``box``, h^-1 Mpc) and cosmology (else a warning)."""
    if info["box"] is not None and abs(info["box"] - box) > 1e-3 * box:
        raise CatalogueError(path, "box_size_mpc_h", f"the header gives a box of "
                             f"{info['box']:g} h^-1 Mpc, the config {box:g}",
                             "set box_size_mpc_h to the simulation's box (MDPL2: 1000)")
    if info["cosmo"] is not None:
        hc = info["cosmo"]
        om, h = float(cosmology.colossus.Om0), float(cosmology.h)
        if abs(hc["Om0"] - om) > 2e-3 or abs(hc["h"] - h) > 2e-3:
            warnings.warn(f"{path}: field 'cosmology': the hlist header gives Omega_M = "
                          f"{hc['Om0']}, h = {hc['h']} but the cosmology "
                          f"'{getattr(cosmology, 'name', '?')}' has Omega_m = {om:.6g}, "
                          f"h = {h:.6g}. Fix: use the simulation's cosmology (MDPL2: "
                          "multidark-planck)", UserWarning, stacklevel=3)


def _checked_halo_rows(path, arr, mapping, field, redshift):
    """Check the values read; drop the halos with M200c = 0.

    ``arr`` holds the mapped columns (masses h^-1 Msun, radii comoving h^-1 kpc); ``field``
    names each in error messages. Returns ``arr`` without the M200c = 0 rows.
    """
    for k in mapping:
        if k in _HLIST_INT:
            continue
        nbad, first = first_nonfinite(arr[k])
        if nbad:
            raise CatalogueError(path, field[k], f"{nbad} non-finite value(s) (NaN or inf), "
                                 f"first in halo id {arr['halo_id'][first]}",
                                 "repair or remove those rows; hlist values are always finite")
    m = arr["m200c"]
    if (m < 0).any():
        raise CatalogueError(path, field["m200c"], f"{int((m < 0).sum())} negative mass(es)",
                             "the column is not a mass; check halo_columns.m200c")
    positive = m[m > 0]
    if positive.size and positive.max() < 100.0:
        raise CatalogueError(path, field["m200c"], f"values {positive.min():.4g} to "
                             f"{positive.max():.4g} look like log10 masses",
                             "hlist masses are linear h^-1 Msun; point halo_columns.m200c at "
                             "the linear M200c column")
    keep = m > 0
    if (~keep).any():
        logger.info("%s: dropped %d halos with M200c = 0 (unresolved at 200c)", path,
                    int((~keep).sum()))
        arr = arr[keep]
    for k, lim in (("rvir", 10.0), ("rs", 1.0)):
        if k in mapping and len(arr) and np.max(arr[k]) < lim:
            raise CatalogueError(path, field[k], f"all values are below {lim:g}, which is "
                                 "implausible in h^-1 kpc",
                                 "hlist radii are comoving h^-1 kpc; the column looks like "
                                 "h^-1 Mpc or is the wrong column")
    if "scale" in mapping and len(arr):
        z_file = 1.0 / float(np.median(arr["scale"])) - 1.0
        if abs(z_file - float(redshift)) > _Z_TOL:
            raise CatalogueError(path, "redshift", f"the file's scale factor "
                                 f"{np.median(arr['scale']):.5f} is z = {z_file:.4f}, the "
                                 f"config gives z = {float(redshift):g}",
                                 f"set redshift to {z_file:.4f}, or use the hlist of the "
                                 "intended snapshot")
    return arr


def _halo_columns(path, arr, pos, redshift, cosmology):
    """The ``HALO_SCHEMA`` columns of the halos read (``pos``: wrapped positions, h^-1 Mpc).

    R200c (proper h^-1 Mpc) from M200c and rho_crit(z); c200c = R200c / r_s (r_s converted
    to proper h^-1 Mpc), clipped to :data:`C200C_RANGE` (the counts logged).
    """
    z = float(redshift)
    r200c = _r200c_proper_mpc_h(arr["m200c"], z, cosmology)
    rs_proper = arr["rs"] / (1.0 + z) / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        c = r200c / rs_proper
    c = np.where(np.isfinite(c), c, np.inf)
    lo, hi = C200C_RANGE
    n_lo, n_hi = int((c < lo).sum()), int((c > hi).sum())
    if n_lo or n_hi:
        logger.info("%s: c200c clipped to [%g, %g] for %d halos below and %d above "
                    "(of %d)", path, lo, hi, n_lo, n_hi, len(c))
    out = {
        "halo_id": arr["halo_id"].astype(np.int64),
        "upid": arr["upid"].astype(np.int64),
        "log10_m200c": np.log10(arr["m200c"]),
        "r200c_mpc_h": r200c,
        "c200c": np.clip(c, lo, hi),
        "x_mpc_h": pos["x"], "y_mpc_h": pos["y"], "z_mpc_h": pos["z"],
        "vx_kms": arr["vx"].astype(float), "vy_kms": arr["vy"].astype(float),
        "vz_kms": arr["vz"].astype(float),
    }
    return out


def read_hlist_halos(path, *, redshift, box_size_mpc_h, cosmology,
                     columns: Mapping[str, int | None] = DEFAULT_HLIST_COLUMNS,
                     log10_m_min=None, hosts_only=False) -> dict:
    """Read a ROCKSTAR/consistent-trees hlist into the columns of ``HALO_SCHEMA``.

    Parameters
    ----------
    path : path-like
        ``hlist_<scale>.list`` ASCII file (uncompressed).
    redshift : float
        Snapshot redshift; must agree with the file's ``scale`` column to 0.01 when
        ``columns`` maps ``scale``.
    box_size_mpc_h : float
        Box side in comoving h^-1 Mpc; must agree with the header's ``Full box size``.
    cosmology : cmpipe.cosmology.Cosmology
        The simulation's cosmology; gives rho_crit(z) for R200c. A header cosmology that
        differs by more than 0.002 in Omega_m or h triggers a ``UserWarning``.
    columns : mapping of str to int or None
        cmpipe name -> 0-based hlist column index (see :data:`DEFAULT_HLIST_COLUMNS`).
    log10_m_min : float, optional
        Keep halos with log10(M200c / (h^-1 Msun)) strictly above this (cut while reading).
        Note that galaxies keyed by the id of a subhalo below the cut cannot be attached to
        their host by :func:`~cmpipe.io.galaxy_tables.attach_hosts`.
    hosts_only : bool
        Keep only host halos (``upid == -1``).

    Returns
    -------
    dict of str to ndarray
        ``halo_id``, ``upid``; ``log10_m200c`` (log10 h^-1 Msun); ``r200c_mpc_h`` (proper
        h^-1 Mpc); ``c200c``; ``x_mpc_h``, ``y_mpc_h``, ``z_mpc_h`` (comoving h^-1 Mpc in
        ``[0, box)``); ``vx_kms``, ``vy_kms``, ``vz_kms`` (peculiar km/s).

    Raises
    ------
    CatalogueError
        Missing, empty, truncated, corrupt or non-hlist file; a mapped index whose header name
        is not the expected quantity; NaN/inf in a read column; masses that look like log10;
        radii that look like h^-1 Mpc; positions outside the box; box or redshift that
        disagree with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(path, "file", "file does not exist",
                             "check the halo catalogue path in the config")
    mapping = _check_hlist_mapping(path, columns)
    if log10_m_min is not None and not 5.0 <= float(log10_m_min) <= 17.0:
        raise CatalogueError(path, "log10_m_min", f"{log10_m_min} is not a log10 mass in "
                             "h^-1 Msun", "give log10(M200c / (h^-1 Msun)), e.g. 13.5")
    info = _inspect_hlist(path)
    names = info["names"]
    _check_header_names(path, mapping, names)
    box = float(box_size_mpc_h)
    _check_header_box_cosmology(path, info, box, cosmology)

    cut_min = {} if log10_m_min is None else {"m200c": 10.0 ** float(log10_m_min)}
    cut_eq = {"upid": -1} if hosts_only else {}
    arr = _read_ascii(path, mapping, len(names), cut_min, cut_eq)
    field = {k: f"{k} (column {i} '{names[i]}')" for k, i in mapping.items()}
    n_read = len(arr)
    logger.info("%s: read %d halos (%s%s)", path, n_read,
                "hosts only" if hosts_only else "hosts and subhalos",
                "" if log10_m_min is None else f", log10 M200c > {float(log10_m_min):g}")

    arr = _checked_halo_rows(path, arr, mapping, field, redshift)
    pos = wrap_box_positions(path, arr, box, field)
    out = _halo_columns(path, arr, pos, redshift, cosmology)
    ids = out["halo_id"]
    if np.unique(ids).size != ids.size:
        raise CatalogueError(path, field["halo_id"], "halo ids are not unique",
                             "check halo_columns.halo_id (hlist column 'id')")
    if len(ids) == 0:
        logger.warning("%s: no halos left after the cuts", path)
    return {k: out[k] for k in HALO_SCHEMA}
