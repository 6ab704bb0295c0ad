"""Checks of values read from files: sky positions, redshifts, box positions.

The readers of :mod:`cmpipe.io` (survey tables, MDPL2 catalogues) and the science modules
(:mod:`cmpipe.survey.sky`) share these checks, so a bad value gets the same message wherever it is
met: the error names the file (or table), the column and the fix.

Sky positions in radians
------------------------
Unitless angle columns are taken to be degrees. A set of positions is rejected as
"clearly radians" (:func:`check_sky_positions`) when it holds at least
:data:`RADIANS_MIN_POINTS` points, every RA lies in ``[0, 2 pi]`` and every ``|Dec|`` in
``[0, pi/2]``, and the set spans more than :data:`RADIANS_MIN_SPAN` (0.1) in RA or Dec.
Read as degrees such a set would crowd into a 6.3 deg x 3.1 deg patch at RA ~ 0, Dec ~ 0
(0.05% of the sky); read as radians it is an ordinary survey region. A real degree
catalogue confined to that patch can pass ``angle_unit="deg"`` to skip the test.
"""
from __future__ import annotations

import numpy as np

from .tables import CatalogueError

__all__ = [
    "RADIANS_MIN_POINTS",
    "RADIANS_MIN_SPAN",
    "MAX_REDSHIFT",
    "SkyInputError",
    "check_sky_positions",
    "check_redshifts",
    "first_nonfinite",
    "wrap_box_positions",
]

#: Fewest positions for which the radians test is applied (one or two points can't tell).
RADIANS_MIN_POINTS = 3
#: Smallest RA or Dec span (in the column's own numbers) that makes a set of positions
#: confined to [0, 2 pi] x [-pi/2, pi/2] "clearly radians".
RADIANS_MIN_SPAN = 0.1
#: Largest redshift accepted; larger values are taken for c z in km/s (a unit slip).
MAX_REDSHIFT = 15.0
# Fraction of the box a raw position may lie outside [0, box) and still be wrapped.
_BOX_SLACK = 0.05


class SkyInputError(CatalogueError):
    """Bad sky input: the message names the table (file), the column and the fix.

    A :class:`~cmpipe.io.tables.CatalogueError` (so ``path``/``field`` are set too).
    """

    def __init__(self, table, column, problem, fix):
        self.table = str(table)
        self.column = column
        self.problem = problem
        self.fix = fix
        super().__init__(table, column, problem, fix)


# ---------------------------------------------------------------------------- sky


def check_sky_positions(ra_deg, dec_deg, *, table: str = "input", ra_column: str = "ra",
                        dec_column: str = "dec", angle_unit: str = "auto") -> np.ndarray:
    """Validate sky positions in degrees and return RA wrapped into ``[0, 360)``.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Right ascension and declination, degrees.
    table, ra_column, dec_column : str
        Names used in error messages (file or table name, column names).
    angle_unit : {"auto", "deg"}
        ``"auto"`` applies the radians test (module docstring); ``"deg"`` skips it.

    Returns
    -------
    ndarray
        RA in degrees, wrapped into ``[0, 360)``.

    Raises
    ------
    SkyInputError
        Non-finite values, ``|Dec| > 90``, ``|RA| > 360`` or positions that are clearly in
        radians.
    """
    if angle_unit not in ("auto", "deg"):
        raise ValueError(f"angle_unit must be 'auto' or 'deg', got {angle_unit!r}")
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    if ra.shape != dec.shape or ra.ndim != 1:
        raise SkyInputError(table, ra_column, f"RA and Dec must be 1-D arrays of one length "
                            f"(got shapes {ra.shape} and {dec.shape})",
                            "pass one RA and one Dec per object")
    for col, vals in ((ra_column, ra), (dec_column, dec)):
        bad = ~np.isfinite(vals)
        if bad.any():
            raise SkyInputError(table, col, f"{int(bad.sum())} non-finite value(s), first at "
                                f"row {int(np.flatnonzero(bad)[0])}",
                                "remove or repair those rows")
    if dec.size and np.abs(dec).max() > 90.0:
        i = int(np.argmax(np.abs(dec)))
        raise SkyInputError(table, dec_column, f"declination {dec[i]:.6g} at row {i} is "
                            "outside [-90, 90] deg",
                            "give Dec in degrees (check for swapped RA/Dec columns)")
    if ra.size and np.abs(ra).max() > 360.0:
        i = int(np.argmax(np.abs(ra)))
        raise SkyInputError(table, ra_column, f"right ascension {ra[i]:.6g} at row {i} is "
                            "outside [-360, 360] deg",
                            "give RA in degrees (not arcsec or hours x 15 twice)")
    if angle_unit == "auto" and ra.size >= RADIANS_MIN_POINTS:
        in_box = (ra.min() >= 0.0 and ra.max() <= 2.0 * np.pi
                  and np.abs(dec).max() <= 0.5 * np.pi)
        spread = max(np.ptp(ra), np.ptp(dec)) > RADIANS_MIN_SPAN
        if in_box and spread:
            raise SkyInputError(
                table, f"{ra_column}/{dec_column}",
                f"all {ra.size} positions lie in RA [0, 2 pi], |Dec| <= pi/2 "
                f"(RA {ra.min():.4g}..{ra.max():.4g}, Dec {dec.min():.4g}..{dec.max():.4g}): "
                "these look like radians, not degrees",
                "convert to degrees (np.degrees), or give the column an astropy unit 'rad'; "
                "if the field really is a few degrees around RA = Dec = 0, pass "
                "angle_unit='deg'")
    return np.mod(ra, 360.0)


def check_redshifts(z, *, table: str = "input", column: str = "z",
                    allow_zero: bool = True) -> np.ndarray:
    """Validate redshifts: finite, not negative (and > 0 unless ``allow_zero``), not above
    :data:`MAX_REDSHIFT` (c z in km/s given for z).

    Raises
    ------
    SkyInputError
        NaN/inf, negative (or zero) or implausibly large (c z) values; the message names
        the first bad row.
    """
    z = np.asarray(z, dtype=float)
    bad = ~np.isfinite(z)
    if bad.any():
        raise SkyInputError(table, column, f"{int(bad.sum())} non-finite redshift(s), first "
                            f"at row {int(np.flatnonzero(bad)[0])}",
                            "drop objects without a redshift before ingestion")
    high = z > MAX_REDSHIFT
    if high.any():
        i = int(np.flatnonzero(high)[0])
        raise SkyInputError(table, column, f"{int(high.sum())} redshift(s) above "
                            f"{MAX_REDSHIFT:g}, first z = {z[i]:.6g} at row {i}: this looks "
                            "like c z in km/s, not a redshift",
                            "give dimensionless redshifts (divide c z by 299792.458 km/s) or "
                            "map the column of redshifts")
    low = (z < 0.0) if allow_zero else (z <= 0.0)
    if low.any():
        i = int(np.flatnonzero(low)[0])
        raise SkyInputError(table, column, f"{int(low.sum())} redshift(s) "
                            f"{'< 0' if allow_zero else '<= 0'}, first z = {z[i]:.6g} at "
                            f"row {i}",
                            "drop stars and blueshifted objects (e.g. keep z > 0.001); "
                            "redshifts must be heliocentric/CMB z, not velocities")
    return z


# ---------------------------------------------------------------------------- box


def first_nonfinite(values):
    """Non-finite values of a column: how many, and the row of the first.

    Parameters
    ----------
    values : ndarray
        A numeric column.

    Returns
    -------
    n_bad : int
        Number of NaN or inf values.
    first : int
        Row of the first of them, -1 if none.
    """
    bad = ~np.isfinite(values)
    return int(bad.sum()), (int(np.flatnonzero(bad)[0]) if bad.any() else -1)


def wrap_box_positions(path, cols, box, names):
    """Wrap positions into ``[0, box)``; raise if they look like other units.

    Parameters
    ----------
    path : path-like
        File the positions were read from (named in error messages).
    cols : mapping
        ``x``, ``y``, ``z`` position columns, comoving h^-1 Mpc.
    box : float
        Box side, comoving h^-1 Mpc.
    names : mapping
        Field name of each of ``x``, ``y``, ``z`` for error messages.

    Returns
    -------
    dict of str to ndarray
        ``x``, ``y``, ``z`` wrapped into ``[0, box)``, comoving h^-1 Mpc.

    Raises
    ------
    CatalogueError
        A coordinate more than 5% of the box outside ``[0, box)`` (other units).
    """
    out = {}
    for k in ("x", "y", "z"):
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
