"""Statistics of the mock catalogue, written to ``results/{run}/mock/summary.json``.

The plotting rule draws its figures from these numbers and the cluster table, so nothing
is computed twice and every plotted value can be read in the JSON.
"""
from __future__ import annotations

import numpy as np

from ..settings import SPLIT_CODES

__all__ = ["box_mass_function", "mock_summary"]


def box_mass_function(log10_m200c, box_size_mpc_h, redshift, cosmology, *,
                      bin_width_dex=0.2, lo=None, hi=None):
    """Halo mass function of a box, dn/dlnM in (h^-1 Mpc)^-3, beside Tinker et al. 2008.

    Returns
    -------
    dict of lists
        ``log10_m_lo``, ``log10_m_hi``, ``log10_m_mid``, ``n_halos``, ``dndlnm_box``,
        ``dndlnm_box_err`` (Poisson), ``dndlnm_tinker08`` (bin average from colossus).
    """
    from ..cosmology import tinker08_dndlnm

    m = np.asarray(log10_m200c)
    lo = np.floor(m.min() * 10) / 10 if lo is None else lo
    hi = np.ceil(m.max() * 10) / 10 if hi is None else hi
    edges = np.arange(lo, hi + bin_width_dex * 0.5, bin_width_dex)
    counts, _ = np.histogram(m, edges)
    vol = box_size_mpc_h ** 3
    dlnm = bin_width_dex * np.log(10.0)
    tinker = []
    for a, b in zip(edges[:-1], edges[1:]):
        mm = np.linspace(a, b, 33)
        f = tinker08_dndlnm(mm, redshift, cosmology)
        tinker.append(float(np.trapezoid(f, mm) / (b - a)))
    return dict(log10_m_lo=edges[:-1].tolist(), log10_m_hi=edges[1:].tolist(),
                log10_m_mid=(0.5 * (edges[:-1] + edges[1:])).tolist(),
                n_halos=counts.tolist(), dndlnm_box=(counts / vol / dlnm).tolist(),
                dndlnm_box_err=(np.sqrt(counts) / vol / dlnm).tolist(),
                dndlnm_tinker08=tinker)


def _per_bin(values, bins, nbins, func):
    out = []
    for b in range(nbins):
        v = values[bins == b]
        out.append(float(func(v)) if len(v) else None)
    return out


def mock_summary(*, halos, hosts, clusters, galaxies, box_size_mpc_h, redshift, cosmology,
                 flux_counts, log10_m_min, bin_width_dex=0.1):
    """Numbers that describe the mock catalogue.

    Parameters
    ----------
    halos : dict of ndarray
        The full halo table (for the mass function of the box).
    hosts : dict of ndarray
        The selected hosts.
    clusters, galaxies : dict of ndarray
        The split cluster table and its window galaxies (``cluster_id``, ``is_member``).
    flux_counts : dict
        Counts from the flux-limit stage.
    log10_m_min, bin_width_dex : float
        Mass binning of the per-bin statistics.
    """
    lm = np.asarray(clusters["log10_m200c"])
    top = max(float(np.max(hosts["log10_m200c"])), float(lm.max(initial=log10_m_min)))
    edges = np.arange(log10_m_min, top + bin_width_dex, bin_width_dex)
    nb = len(edges) - 1
    cbin = np.clip(np.floor((lm - log10_m_min) / bin_width_dex + 1e-9).astype(int), 0, nb - 1)
    hbin = np.clip(np.floor((hosts["log10_m200c"] - log10_m_min) / bin_width_dex + 1e-9)
                   .astype(int), 0, nb - 1)

    cid = np.asarray(clusters["cluster_id"])
    row = np.searchsorted(cid, galaxies["cluster_id"])
    n_int = np.bincount(row, weights=1 - np.asarray(galaxies["is_member"]),
                        minlength=len(cid))
    n_all = np.bincount(row, minlength=len(cid)).astype(float)

    split = np.asarray(clusters["split"])
    names = {v: k for k, v in SPLIT_CODES.items()}
    per_split = {names[c]: int((split == c).sum()) for c in sorted(names)}
    per_split_bin = {names[c]: np.bincount(cbin[split == c], minlength=nb).tolist()
                     for c in sorted(names) if (split == c).any()}
    halo_sets = {}
    for c in sorted(names):
        hs = set(np.asarray(clusters["halo_id"])[split == c].tolist())
        if hs:
            halo_sets[names[c]] = hs
    overlap = sum(len(a & b) for i, a in enumerate(halo_sets.values())
                  for j, b in enumerate(halo_sets.values()) if i < j)

    return dict(
        box=dict(box_size_mpc_h=box_size_mpc_h, redshift=redshift,
                 n_halos=int(len(halos["halo_id"])), n_hosts_selected=int(len(hbin))),
        mass_bins=dict(log10_m_lo=edges[:-1].tolist(), log10_m_hi=edges[1:].tolist()),
        halos_per_bin=np.bincount(hbin, minlength=nb).tolist(),
        clusters_per_bin=np.bincount(cbin, minlength=nb).tolist(),
        clusters_per_split=per_split,
        clusters_per_split_per_bin=per_split_bin,
        halos_per_split={k: len(v) for k, v in halo_sets.items()},
        halos_in_two_splits=int(overlap),
        n_clusters=int(len(cid)),
        n_window_galaxies=int(len(row)),
        interloper_fraction=float(n_int.sum() / max(n_all.sum(), 1.0)),
        interloper_fraction_per_bin=[
            (float(n_int[cbin == b].sum() / n_all[cbin == b].sum())
             if n_all[cbin == b].sum() > 0 else None) for b in range(nb)],
        median_n_gal_per_bin=_per_bin(np.asarray(clusters["n_gal"]), cbin, nb, np.median),
        median_n_members_per_bin=_per_bin(np.asarray(clusters["n_members"]), cbin, nb,
                                          np.median),
        flux_limit=flux_counts,
        mass_function=box_mass_function(halos["log10_m200c"][halos["upid"] == -1],
                                        box_size_mpc_h, redshift, cosmology),
    )
