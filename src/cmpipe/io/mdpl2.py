"""The ``mdpl2`` catalogue source: MultiDark-Planck 2 halos (ROCKSTAR) and SAG galaxies.

MDPL2 (Klypin et al. 2016) is a 1 h^-1 Gpc box in the Planck cosmology (colossus
``multidark-planck``: h = 0.6777, Omega_m = 0.307115). This module turns two public products
of one snapshot into the two cmpipe tables (:data:`~cmpipe.io.catalogues.HALO_SCHEMA`,
:data:`~cmpipe.io.catalogues.GALAXY_SCHEMA`):

* **Halos**: a ROCKSTAR + consistent-trees ``hlist_<scale>.list`` ASCII file. Its first
  header line names every column with its 0-based index (``#scale(0) id(1) ... upid(6)
  ...``); further ``#`` lines give the cosmology (``#Omega_M = ...; h0 = ...``), the box
  (``#Full box size = ... Mpc/h``) and the units: masses h^-1 Msun, positions comoving
  h^-1 Mpc, velocities physical peculiar km/s, ``rvir`` and ``rs`` comoving h^-1 kpc. The
  file is read with halotools' :class:`~halotools.sim_manager.TabularAsciiReader`, keeping
  only the mapped columns; every mapped index is checked against the name the header gives
  it, so a file written by another consistent-trees version (whose columns after index 34
  sit elsewhere) fails with the index to use instead of silently reading the wrong column.
* **Galaxies**: a galaxy table in HDF5 (a group of 1-D datasets, as in the MultiDark-Galaxies
  files, or one compound dataset, as written by astropy) or CSV (as exported by the CosmoSim
  database), with column names mapped in the config. Defaults follow the SAG model
  (Knebe et al. 2018) as documented for the CosmoSim ``MDPL2.SAG`` table.

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
* Galaxies are attached to *host* halos (``upid == -1``) by :func:`attach_hosts`: a galaxy
  whose halo id is a subhalo is moved to that subhalo's ``upid`` (the most massive host, so
  one step suffices) and becomes a satellite; galaxies whose halo (or its host) is not in
  the halo table are dropped and counted.

The galaxy default ``halo_id -> MainHaloID`` (the SAG "main host dark matter halo") is used
rather than ``HostHaloID`` ("host DM halo to which this galaxy last belonged"): the latter is
the galaxy's own subhalo for satellites and, for orphan galaxies, a subhalo that may no
longer exist at this snapshot, so orphans would be lost. Mapping ``halo_id`` to
``HostHaloID`` also works for satellites with a surviving subhalo, through
:func:`attach_hosts`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .catalogues import GALAXY_SCHEMA, HALO_SCHEMA
from .tables import CatalogueError

__all__ = [
    "DEFAULT_HLIST_COLUMNS",
    "DEFAULT_GALAXY_COLUMNS",
    "C200C_RANGE",
    "read_hlist_halos",
    "read_galaxy_table",
    "attach_hosts",
    "load_mdpl2",
]

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

_GAL_REQUIRED = ("halo_id", "x", "y", "z", "vx", "vy", "vz", "mag_r")
_GAL_OPTIONAL = ("galaxy_id", "galaxy_type", "is_central")

_POS = ("x", "y", "z")
_VEL = ("vx", "vy", "vz")
# Fraction of the box a raw position may lie outside [0, box) and still be wrapped.
_BOX_SLACK = 0.05
# Largest |z_file - z_config| accepted (MDPL2 snapshots near z = 0.1 are ~0.012 apart).
_Z_TOL = 0.01
_HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf", ".he5")
_CSV_SUFFIXES = (".csv", ".csv.gz")
_HEADER_TOKEN = re.compile(r"^(.+)\((\d+)\)$")
_BOX_LINE = re.compile(r"Full box size\s*=\s*([0-9.eE+-]+)")
_COSMO_LINE = re.compile(r"Omega_M\s*=\s*([0-9.eE+-]+);\s*Omega_L\s*=\s*([0-9.eE+-]+);"
                         r"\s*h0\s*=\s*([0-9.eE+-]+)")


# --------------------------------------------------------------------------------------
# hlist halos
# --------------------------------------------------------------------------------------

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


def _first_bad(values):
    bad = ~np.isfinite(values)
    return int(bad.sum()), (int(np.flatnonzero(bad)[0]) if bad.any() else -1)


def _wrap_positions(path, cols, box, names):
    """Wrap positions into [0, box); raise if they look like other units."""
    out = {}
    for k in _POS:
        v = np.asarray(cols[k], dtype=float)
        if v.size and (v.min() < -_BOX_SLACK * box or v.max() > (1 + _BOX_SLACK) * box):
            raise CatalogueError(
                path, names[k], f"positions range {v.min():.6g} to {v.max():.6g}, outside "
                f"the periodic box [0, {box:g}) h^-1 Mpc",
                "positions must be comoving h^-1 Mpc: a range ~1000x the box means h^-1 kpc "
                "(divide by 1000), ~1/h times the box means Mpc without h (multiply by h); "
                "else check box_size_mpc_h")
        w = np.mod(v, box)
        w[w >= box] -= box
        out[k] = w
    return out


def _r200c_proper_mpc_h(m200c, redshift, cosmology):
    """Proper R200c in h^-1 Mpc for M200c in h^-1 Msun (colossus rho_crit, h^2 Msun/kpc^3)."""
    rho_c = cosmology.colossus.rho_c(redshift)
    return (3.0 * m200c / (4.0 * np.pi * 200.0 * rho_c)) ** (1.0 / 3.0) / 1000.0


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
        their host by :func:`attach_hosts`.
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
                          "multidark-planck)", UserWarning, stacklevel=2)

    cut_min = {} if log10_m_min is None else {"m200c": 10.0 ** float(log10_m_min)}
    cut_eq = {"upid": -1} if hosts_only else {}
    arr = _read_ascii(path, mapping, len(names), cut_min, cut_eq)
    field = {k: f"{k} (column {i} '{names[i]}')" for k, i in mapping.items()}
    n_read = len(arr)
    logger.info("%s: read %d halos (%s%s)", path, n_read,
                "hosts only" if hosts_only else "hosts and subhalos",
                "" if log10_m_min is None else f", log10 M200c > {float(log10_m_min):g}")

    for k in mapping:
        if k in _HLIST_INT:
            continue
        nbad, first = _first_bad(arr[k])
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

    pos = _wrap_positions(path, arr, box, field)
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
    ids = out["halo_id"]
    if np.unique(ids).size != ids.size:
        raise CatalogueError(path, field["halo_id"], "halo ids are not unique",
                             "check halo_columns.halo_id (hlist column 'id')")
    if len(ids) == 0:
        logger.warning("%s: no halos left after the cuts", path)
    return {k: out[k] for k in HALO_SCHEMA}


# --------------------------------------------------------------------------------------
# galaxy tables
# --------------------------------------------------------------------------------------

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
    field = {k: f"{n} (galaxy_columns.{k})" for k, n in names.items()}
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
        nbad, first = _first_bad(raw[k].astype(float))
        if nbad:
            raise CatalogueError(path, field[k], f"{nbad} non-finite value(s) (NaN or inf), "
                                 f"first at row {first}",
                                 "remove or repair those rows before running cmpipe")

    def as_id(k):
        v = raw[k]
        if v.dtype.kind == "f":
            if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                raise CatalogueError(path, field[k], "ids are not all integers",
                                     f"map galaxy_columns.{k} to an integer id column")
        return v.astype(np.int64)

    halo_id = as_id("halo_id")
    if "galaxy_id" in raw:
        galaxy_id = as_id("galaxy_id")
        if np.unique(galaxy_id).size != n:
            raise CatalogueError(path, field["galaxy_id"], "galaxy ids are not unique",
                                 "map galaxy_columns.galaxy_id to a unique id column, or to "
                                 "null to number the rows")
    else:
        galaxy_id = np.arange(n, dtype=np.int64)
        logger.info("%s: no galaxy_id column mapped; galaxies numbered by row", path)
    pos = _wrap_positions(path, raw, float(box_size_mpc_h), field)
    mag = raw["mag_r"].astype(float)
    if "is_central" in raw:
        is_central = raw["is_central"] != 0
        rule = f"column '{names['is_central']}'"
    elif "galaxy_type" in raw:
        is_central = as_id("galaxy_type") == 0
        rule = f"column '{names['galaxy_type']}' == 0"
    else:
        is_central = _brightest_per_group(halo_id, mag)
        rule = "brightest galaxy of each halo_id"
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


def load_mdpl2(halo_path, galaxy_path, *, redshift, box_size_mpc_h, cosmology,
               halo_columns: Mapping[str, int | None] = DEFAULT_HLIST_COLUMNS,
               galaxy_columns: Mapping[str, str | None] = DEFAULT_GALAXY_COLUMNS,
               log10_m_min=None, hdf5_path=None):
    """Read an MDPL2 hlist and galaxy table into cmpipe's halo and galaxy tables.

    Parameters
    ----------
    halo_path, galaxy_path : path-like
        See :func:`read_hlist_halos` and :func:`read_galaxy_table`.
    redshift : float
        Snapshot redshift.
    box_size_mpc_h : float
        Box side, comoving h^-1 Mpc.
    cosmology : cmpipe.cosmology.Cosmology
    halo_columns, galaxy_columns : mapping
        Column maps (:data:`DEFAULT_HLIST_COLUMNS`, :data:`DEFAULT_GALAXY_COLUMNS`).
    log10_m_min : float, optional
        Halo mass cut, log10(M200c / (h^-1 Msun)).
    hdf5_path : str, optional
        Group or dataset of the galaxy table inside an HDF5 file.

    Returns
    -------
    halos, galaxies : dict
        All halos (hosts and subhalos) and the galaxies attached to host halos, ready for
        :func:`cmpipe.io.write_halos` and :func:`cmpipe.io.write_galaxies`.

    Raises
    ------
    CatalogueError
        Any reader error, or no galaxy matching a halo (wrong id column or snapshot).
    """
    halos = read_hlist_halos(halo_path, redshift=redshift, box_size_mpc_h=box_size_mpc_h,
                             cosmology=cosmology, columns=halo_columns,
                             log10_m_min=log10_m_min)
    raw = read_galaxy_table(galaxy_path, columns=galaxy_columns,
                            box_size_mpc_h=box_size_mpc_h, hdf5_path=hdf5_path)
    galaxies = attach_hosts(raw, halos)
    if len(galaxies["galaxy_id"]) == 0:
        raise CatalogueError(galaxy_path, f"{galaxy_columns.get('halo_id')} "
                             "(galaxy_columns.halo_id)",
                             f"none of the {len(raw['galaxy_id'])} galaxies has a halo id "
                             f"found among the host halos of {halo_path}",
                             "map galaxy_columns.halo_id to the column of Rockstar halo ids "
                             "(SAG: MainHaloID or HostHaloID), use files of the same "
                             "snapshot, and lower log10_m_min")
    return halos, galaxies
