"""Train / validation / test / eval split by halo, stratified in log M.

All projections of one halo land in one set (otherwise the network would be evaluated on
other views of clusters it was trained on). Halos are assigned within narrow log-mass bins
so every set spans the whole mass range in the requested proportions; a validation share
of the training halos is held out for early stopping. Because the sightline allocation has
already flattened log M, every set inherits a roughly flat mass distribution.
"""
from __future__ import annotations

import numpy as np

from .selection import mass_bins
from ..settings import SPLIT_CODES

__all__ = ["split_halos", "assign_splits"]


def _apportion(n: int, fractions: np.ndarray, offset: float) -> np.ndarray:
    """Integer counts summing to ``n`` in proportion to ``fractions``; ``offset`` in [0,1)
    staggers the rounding between bins so small bins do not all favour the first set."""
    edges = np.floor(np.cumsum(np.r_[0.0, fractions]) * n + offset).astype(np.int64)
    edges[0], edges[-1] = 0, n
    return np.diff(np.clip(edges, 0, n))


def split_halos(halo_ids: np.ndarray, log10_m: np.ndarray, *, train: float, test: float,
                eval: float, validation_fraction: float, bin_width_dex: float,
                rng: np.random.Generator) -> dict:
    """Assign each halo to a set.

    Parameters
    ----------
    halo_ids : ndarray of int
        Unique halo ids.
    log10_m : ndarray
        Their log10 M200c (h^-1 Msun).
    train, test, eval : float
        Shares of halos (sum to 1).
    validation_fraction : float
        Share of the training halos moved to the validation set.
    bin_width_dex : float
        Stratification bin width.
    rng : numpy.random.Generator

    Returns
    -------
    dict
        halo id -> split code (:data:`cmpipe.settings.SPLIT_CODES`).
    """
    total = train + test + eval
    if not np.isclose(total, 1.0, atol=1e-6):
        raise ValueError(f"splits.fractions must sum to 1 (train + test + eval = {total:g})")
    fr = np.array([train * (1 - validation_fraction), train * validation_fraction, test,
                   eval])
    codes = np.array([SPLIT_CODES[k] for k in ("train", "validation", "test", "eval")])
    halo_ids = np.asarray(halo_ids)
    out = {}
    if len(halo_ids) == 0:
        return out
    bins = mass_bins(log10_m, float(np.min(log10_m)), bin_width_dex)
    offset = rng.random()
    for b in np.unique(bins):
        idx = rng.permutation(np.flatnonzero(bins == b))
        counts = _apportion(len(idx), fr, offset)
        offset = (offset + 0.618033988749895) % 1.0
        start = 0
        for code, c in zip(codes, counts):
            for h in halo_ids[idx[start:start + c]]:
                out[int(h)] = int(code)
            start += c
    return out


def assign_splits(clusters: dict, settings_splits, rng: np.random.Generator) -> np.ndarray:
    """Split code of every projected cluster (by its halo).

    Parameters
    ----------
    clusters : dict of ndarray
        Must hold ``halo_id`` and ``log10_m200c``.
    settings_splits : cmpipe.settings.SplitSettings
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int8
    """
    hid = np.asarray(clusters["halo_id"])
    uniq, first = np.unique(hid, return_index=True)
    s = settings_splits
    table = split_halos(uniq, np.asarray(clusters["log10_m200c"])[first], train=s.train,
                        test=s.test, eval=s.eval, validation_fraction=s.validation_fraction,
                        bin_width_dex=s.bin_width_dex, rng=rng)
    return np.array([table[int(h)] for h in hid], dtype=np.int8)
