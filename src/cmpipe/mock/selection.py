"""Halo selection and the allocation of lines of sight that flattens log M.

The paper downsamples the steep mass function below log M ~ 14.3 and gives rarer, more
massive clusters up to 25 independent lines of sight. Here each log-mass bin asks for
``target_per_bin`` projections: a bin with more halos than that gets one sightline on a
random subset of ``target_per_bin`` halos; a bin with fewer spreads the target evenly over
its halos, at most ``max_per_halo`` each (so the rarest bins stay below the target, as in
the paper's Fig. 1).
"""
from __future__ import annotations

import logging

import numpy as np

from .sightlines import halo_sightlines

__all__ = ["select_hosts", "allocate_sightlines", "assign_sightlines", "mass_bins"]

log = logging.getLogger(__name__)


def select_hosts(halos: dict, log10_m200c_min: float) -> dict:
    """Host halos (``upid == -1``) with ``log10_m200c >= log10_m200c_min``.

    Parameters
    ----------
    halos : dict of ndarray
        Halo table (HALO_SCHEMA).
    log10_m200c_min : float
        Threshold, log10(M200c / h^-1 Msun).
    """
    keep = (halos["upid"] == -1) & (halos["log10_m200c"] >= log10_m200c_min)
    log.info("selected %d of %d halos (hosts with log10 M200c >= %.2f)",
             int(keep.sum()), len(keep), log10_m200c_min)
    return {k: v[keep] for k, v in halos.items()}


def mass_bins(log10_m: np.ndarray, lo: float, width: float) -> np.ndarray:
    """Bin index of each mass in bins ``[lo + i width, lo + (i+1) width)``."""
    return np.floor((np.asarray(log10_m) - lo) / width + 1e-9).astype(np.int64)


def allocate_sightlines(log10_m: np.ndarray, *, lo: float, bin_width_dex: float,
                        target_per_bin: int, max_per_halo: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Number of lines of sight for each halo, flattening the counts per log-M bin.

    Parameters
    ----------
    log10_m : ndarray
        log10(M200c / h^-1 Msun) of the selected halos.
    lo, bin_width_dex : float
        Bin edges ``lo + i * bin_width_dex``.
    target_per_bin : int
        Projections wanted per bin.
    max_per_halo : int
        Cap on sightlines per halo.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int
        Sightlines per halo (0 for halos dropped by the downsampling).
    """
    counts = np.zeros(len(log10_m), dtype=np.int64)
    bins = mass_bins(log10_m, lo, bin_width_dex)
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        n_h = len(idx)
        want = min(target_per_bin, n_h * max_per_halo)
        base, extra = divmod(want, n_h)
        c = np.full(n_h, base, dtype=np.int64)
        c[rng.permutation(n_h)[:extra]] += 1
        counts[idx] = c
    return counts


def assign_sightlines(hosts: dict, counts: np.ndarray, seed_rng: np.random.Generator) -> dict:
    """One row per (halo, sightline): the unit line-of-sight vector of each projection.

    Each halo gets the best-packed set of ``counts[i]`` lines (largest smallest angle
    between lines), randomly rotated, so its projections are as independent as possible.

    Returns
    -------
    dict of ndarray
        ``halo_id``, ``sightline`` (0-based index within the halo), ``nx``, ``ny``, ``nz``.
    """
    rows_h, rows_s, dirs = [], [], []
    for hid, n in zip(hosts["halo_id"], counts):
        if n == 0:
            continue
        d = halo_sightlines(int(n), seed_rng)
        rows_h.append(np.full(n, hid, dtype=np.int64))
        rows_s.append(np.arange(n, dtype=np.int64))
        dirs.append(d)
    if not dirs:
        return {k: np.zeros(0) for k in ("halo_id", "sightline", "nx", "ny", "nz")}
    d = np.concatenate(dirs)
    return dict(halo_id=np.concatenate(rows_h), sightline=np.concatenate(rows_s),
                nx=d[:, 0], ny=d[:, 1], nz=d[:, 2])
