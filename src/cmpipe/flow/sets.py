"""The set-based estimator's inputs and embedding: each cluster's window galaxies as a
variable-size set, summarised by a permutation-invariant Deep Sets network.

Wang, Thiele & Ho (2026, arXiv:2606.12938; ML4Astro 2025, arXiv:2507.20378) estimate
cluster masses from the galaxy set itself: a Deep Sets embedding (Zaheer et al. 2017,
arXiv:1703.06114) of members and interlopers conditions a normalizing flow over ``log M``
(neural posterior estimation). Here the flow, its training, calibration and posteriors are
those of :mod:`cmpipe.flow` (``FlowSettings.input = "set"``); this module holds what is
particular to sets:

- :class:`GalaxySets`: the galaxies of many clusters, ragged (one row per galaxy, cluster
  ``k`` owning rows ``offsets[k]:offsets[k+1]``), with per-galaxy features
  (:data:`SET_FEATURES`, in window units);
- :class:`SetBatch`: a batch as the network sees it, ragged as well (every galaxy of the
  batch in one array, with the index of its set), so clusters of 10 and of 1,000 galaxies
  batch together and no work goes into padding;
- the set files (``sets/inputs/{split}.h5``): per-cluster columns (as the image files') and
  the window galaxies, written by :func:`write_set_file`, read by :func:`read_set_file`;
- :class:`SetInputs`: a set file as the flow's training loop reads it;
- :class:`SetEmbedding`: ``rho(pool_k phi(g_k), log10 N)``, ``phi`` an MLP on each galaxy's
  standardised features, ``pool`` a mean and/or max over each set's galaxies (segment
  reductions over the ragged batch), ``rho`` an MLP; with
  ``richness`` the set size (log10 of the number of window galaxies, standardised) joins the
  pooled summary, since a mean forgets how many galaxies there were; with ``dispersion`` the
  log of the set's line-of-sight velocity dispersion joins it too, so that the network need
  only learn the residual about the M-sigma relation.

Units: positions in h^-1 Mpc and velocities in km/s on disk; the features are divided by
the window half-width and ``v_max`` (``x``, ``y``, ``r``, ``v``) or are apparent r-band
magnitudes (``mag``), then standardised by the training galaxies' moments (``x`` and ``y``
about zero with one common scale, so the sky-plane symmetries stay exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.tables import CatalogueError, Schema, TableWriter, read_table

__all__ = ["SET_FEATURES", "POOLINGS", "GalaxySets", "SetBatch", "SetEmbedding",
           "SetInputs", "galaxy_features", "write_set_file", "read_set_file",
           "set_standardisation", "SET_CLUSTER_COLUMNS"]

#: Per-galaxy features a set estimator can see: name -> meaning.
SET_FEATURES = {
    "x": "x_proj / window half-width",
    "y": "y_proj / window half-width",
    "r": "R_proj = sqrt(x_proj^2 + y_proj^2) / window half-width",
    "v": "v_los / window v_max",
    "mag": "apparent r-band magnitude (mag_r_app)",
}

#: Pooling of the per-galaxy embeddings over a set.
POOLINGS = ("mean", "max", "mean_max")

#: Per-cluster columns of a set file (as the image files' :data:`cmpipe.io.cubes.CUBE_COLUMNS`).
SET_CLUSTER_COLUMNS = ("cluster_id", "log10_m200c", "n_gal", "n_members", "distance_mpc_h")

_GALAXY_SCHEMA = Schema({
    "cluster_id": ("i8", "", "cluster the galaxy is in the window of"),
    "x_proj_mpc_h": ("f8", "h^-1 Mpc", "projected offset from the cluster centre, sky x"),
    "y_proj_mpc_h": ("f8", "h^-1 Mpc", "projected offset from the cluster centre, sky y"),
    "v_los_kms": ("f8", "km/s", "line-of-sight velocity relative to the cluster"),
    "mag_r_app": ("f8", "mag", "apparent r-band magnitude (NaN where the input has none)"),
})

_CLUSTER_SCHEMA = Schema({
    "cluster_id": ("i8", "", "cluster id (the mock's or the survey's)"),
    "log10_m200c": ("f8", "log10(h^-1 Msun)", "true mass (NaN for survey clusters)"),
    "n_gal": ("i8", "", "galaxies in the window"),
    "n_members": ("i8", "", "members among them (mock; the survey's membership count)"),
    "distance_mpc_h": ("f8", "h^-1 Mpc", "comoving distance from the observer"),
})


def galaxy_features(gal, names, half_width_mpc_h: float, v_max_kms: float,
                    source=None) -> np.ndarray:
    """Per-galaxy features ``names`` (:data:`SET_FEATURES`) of the galaxy columns ``gal``,
    float32 (G, F), in window units (``x``, ``y``, ``r`` / half-width, ``v`` / v_max).

    Raises :class:`~cmpipe.io.tables.CatalogueError` naming ``source`` when ``mag`` is asked
    for and a galaxy has no finite ``mag_r_app``."""
    x = np.asarray(gal["x_proj_mpc_h"], dtype=np.float64) / half_width_mpc_h
    y = np.asarray(gal["y_proj_mpc_h"], dtype=np.float64) / half_width_mpc_h
    cols = []
    for name in names:
        if name == "x":
            cols.append(x)
        elif name == "y":
            cols.append(y)
        elif name == "r":
            cols.append(np.hypot(x, y))
        elif name == "v":
            cols.append(np.asarray(gal["v_los_kms"], dtype=np.float64) / v_max_kms)
        elif name == "mag":
            m = np.asarray(gal.get("mag_r_app", np.full(x.size, np.nan)), dtype=np.float64)
            bad = int(np.count_nonzero(~np.isfinite(m)))
            if bad:
                raise CatalogueError(source or "the galaxy sets", "mag_r_app",
                                     f"{bad} of {m.size} galaxies have no apparent magnitude, "
                                     "which sets.features 'mag' needs",
                                     "drop 'mag' from sets.features (the default) or give "
                                     "every galaxy its mag_r_app")
            cols.append(m)
        else:
            raise ValueError(f"unknown set feature {name!r}; known: {', '.join(SET_FEATURES)}")
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((x.size, 0),
                                                                           np.float32)


@dataclass(frozen=True)
class GalaxySets:
    """Galaxy sets of ``N`` clusters: ``features`` (G, F) float32, cluster ``k`` owning rows
    ``offsets[k]:offsets[k+1]`` (``offsets`` int64, length N + 1, starting at 0)."""

    features: np.ndarray
    offsets: np.ndarray

    def __post_init__(self):
        o = np.asarray(self.offsets, dtype=np.int64)
        if o.ndim != 1 or o.size < 1 or o[0] != 0 or np.any(np.diff(o) < 0) \
                or o[-1] != len(self.features):
            raise ValueError("GalaxySets: offsets must rise from 0 to the number of galaxies")
        object.__setattr__(self, "offsets", o)

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def counts(self) -> np.ndarray:
        """Galaxies per cluster."""
        return np.diff(self.offsets)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    def __getitem__(self, idx) -> "GalaxySets":
        """The sets of clusters ``idx`` (a slice or integer indices), in that order."""
        if isinstance(idx, slice):
            k0, k1, step = idx.indices(len(self))
            if step == 1:
                o = self.offsets[k0:max(k1, k0) + 1]
                return GalaxySets(self.features[o[0]:o[-1]], o - o[0])
            idx = np.arange(k0, k1, step)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        lo, n = self.offsets[idx], self.counts[idx]
        rows = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())
        return GalaxySets(self.features[rows], np.concatenate([[0], np.cumsum(n)]))



class SetBatch:
    """A batch of galaxy sets as the network sees it, without padding (torch tensors):
    ``features`` (G, F), the standardised features of every galaxy of the batch;
    ``index`` (G,) int64, the set each galaxy belongs to (0 .. b-1); ``counts`` (b,), the
    galaxies per set; ``log_n`` (b, 1), the standardised ``log10 N``."""

    def __init__(self, features: torch.Tensor, index: torch.Tensor, counts: torch.Tensor,
                 log_n: torch.Tensor):
        self.features, self.index, self.counts, self.log_n = features, index, counts, log_n

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def segment_mean(self, h: torch.Tensor) -> torch.Tensor:
        """Mean of the per-galaxy rows ``h`` (G, ...) over each set (b, ...); 0 for an empty
        set."""
        n = self.counts.clamp(min=1).to(h.dtype).reshape((-1,) + (1,) * (h.dim() - 1))
        return h.new_zeros((len(self),) + tuple(h.shape[1:])).index_add(0, self.index, h) / n

    def segment_max(self, h: torch.Tensor) -> torch.Tensor:
        """Maximum of the per-galaxy rows ``h`` (G, u) over each set (b, u); -1e30 for an
        empty set."""
        idx = self.index.unsqueeze(-1).expand_as(h)
        out = h.new_full((len(self), h.shape[1]), -torch.inf)
        return out.scatter_reduce(0, idx, h, reduce="amax", include_self=True).clamp(min=-1e30)


class SetEmbedding(nn.Module):
    """Deep Sets summary of a batch of galaxy sets (:class:`SetBatch`).

    ``phi``: ``len(phi_units)`` dense layers with ReLU on each galaxy's features; pooled over
    each set's galaxies by ``pooling``; ``rho``: a dense
    layer of ``units`` (ReLU) and a linear layer of ``features`` outputs on the pooled vector
    (with the standardised ``log10 N`` appended when ``richness``, and
    ``log10`` of the standard deviation of feature ``dispersion`` -- the velocity's index --
    over the set when ``dispersion`` is an index).
    """

    def __init__(self, n_features: int, phi_units=(64, 64), pooling: str = "mean",
                 units: int = 64, features: int = 16, richness: bool = True,
                 dispersion: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"SetEmbedding: pooling must be one of {POOLINGS}, got {pooling!r}")
        layers, c_in = [], int(n_features)
        for u in phi_units:
            layers += [nn.Linear(c_in, int(u)), nn.ReLU()]
            c_in = int(u)
        self.phi = nn.Sequential(*layers)
        self.pooling, self.richness = pooling, bool(richness)
        self.dispersion = None if dispersion is None else int(dispersion)
        n_pool = (c_in * (2 if pooling == "mean_max" else 1) + int(self.richness)
                  + int(self.dispersion is not None))
        self.rho = nn.Sequential(nn.Linear(n_pool, int(units)), nn.ReLU(),
                                 nn.Linear(int(units), int(features)))

    def forward(self, x: SetBatch) -> torch.Tensor:
        h = self.phi(x.features)                                    # (G, u)
        parts = []
        if self.pooling in ("mean", "mean_max"):
            parts.append(x.segment_mean(h))
        if self.pooling in ("max", "mean_max"):
            parts.append(x.segment_max(h))
        if self.richness:
            parts.append(x.log_n.to(h.dtype))
        if self.dispersion is not None:
            v = x.features[:, self.dispersion]
            dv = v - x.segment_mean(v)[x.index]
            var = x.segment_mean(dv * dv)
            parts.append(0.5 * torch.log10(var.clamp(min=1e-6))[:, None].to(h.dtype))
        return self.rho(torch.cat(parts, dim=1))


def set_standardisation(features: np.ndarray, counts: np.ndarray, names) -> dict:
    """Standardisation of the set inputs from the training galaxies: per feature
    ``set_mean_<name>`` and ``set_sd_<name>`` (``x`` and ``y`` about 0 with one common sd,
    the rms of both), and ``log_n_mean``, ``log_n_sd`` of log10 of the set sizes."""
    f = np.asarray(features, dtype=np.float64)
    out = {}
    xy = [i for i, n in enumerate(names) if n in ("x", "y")]
    xy_sd = float(np.sqrt(np.mean(f[:, xy] ** 2))) if xy and f.size else 1.0
    for i, name in enumerate(names):
        if name in ("x", "y"):
            mean, sd = 0.0, xy_sd
        else:
            mean, sd = (float(f[:, i].mean()), float(f[:, i].std())) if f.size else (0.0, 1.0)
        out[f"set_mean_{name}"], out[f"set_sd_{name}"] = mean, max(sd, 1e-6)
    ln = np.log10(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))
    out["log_n_mean"] = float(ln.mean()) if ln.size else 0.0
    out["log_n_sd"] = float(max(ln.std(), 1e-3)) if ln.size else 1.0
    return out


# -- set files -------------------------------------------------------------------------------

def write_set_file(out, rows: dict, gal: dict, attrs: dict) -> None:
    """Write a set file (atomically): group ``clusters`` (:data:`SET_CLUSTER_COLUMNS`, sorted
    by id) and group ``galaxies`` (their window galaxies, sorted by cluster id; a missing
    ``mag_r_app`` is written NaN); ``attrs`` (window half-width, v_max, split, ...) on the
    galaxies group."""
    n = len(gal.get("cluster_id", []))
    g = {k: np.asarray(gal[k]) if k in gal else np.full(n, np.nan)
         for k in _GALAXY_SCHEMA}
    with TableWriter(out) as w:
        w.add_group("clusters", _CLUSTER_SCHEMA)
        w.append("clusters", {k: np.asarray(rows[k]) for k in _CLUSTER_SCHEMA})
        w.add_group("galaxies", _GALAXY_SCHEMA, attrs)
        w.append("galaxies", g)


def read_set_file(path, names) -> tuple[dict, GalaxySets, dict]:
    """The clusters' columns, their galaxy sets with features ``names`` and the file's
    attributes (``half_width_mpc_h``, ``v_max_kms``, ...) of a set file."""
    from ..io.mock import galaxy_offsets

    cols, _ = read_table(path, group="clusters", required=SET_CLUSTER_COLUMNS)
    gal, attrs = read_table(path, group="galaxies", required=tuple(_GALAXY_SCHEMA),
                            finite=("x_proj_mpc_h", "y_proj_mpc_h", "v_los_kms"))
    for key in ("half_width_mpc_h", "v_max_kms"):
        if key not in attrs:
            raise CatalogueError(path, key, "not a set file (window attribute missing)",
                                 "rebuild it with rule set_inputs")
    try:
        offsets = galaxy_offsets(cols["cluster_id"], gal["cluster_id"])
    except ValueError as err:
        raise CatalogueError(path, "cluster_id", str(err), "rebuild it with rule set_inputs"
                             ) from err
    if offsets[-1] != len(gal["cluster_id"]):
        raise CatalogueError(path, "cluster_id", "galaxies of clusters not in the clusters "
                             "group", "rebuild it with rule set_inputs")
    feats = galaxy_features(gal, names, float(attrs["half_width_mpc_h"]),
                            float(attrs["v_max_kms"]), source=path)
    return cols, GalaxySets(feats, offsets), attrs


class SetInputs:
    """A set file as the flow's training loop reads it (the counterpart of an image file):
    ``log10_m``, ``distance``, ``len``, :meth:`batch`, :meth:`batches` and the input
    standardisation. Everything is held in memory (a few bytes per galaxy)."""

    kind = "set"

    def __init__(self, path, names):
        self.path = Path(path)
        cols, self.sets, _ = read_set_file(path, names)
        self.names = tuple(names)
        self.shape = (len(self.names),)
        self.log10_m = cols["log10_m200c"].astype(np.float64)
        self.distance = cols["distance_mpc_h"].astype(np.float64)

    def __len__(self) -> int:
        return len(self.sets)

    def batch(self, idx) -> GalaxySets:
        return self.sets[np.asarray(idx)]

    def batches(self, perm, batch_size: int) -> list:
        """Consecutive batches of the shuffled order ``perm``."""
        return [perm[b0:b0 + batch_size] for b0 in range(0, len(perm), batch_size)]

    def input_standardisation(self, settings) -> dict:
        return set_standardisation(self.sets.features, self.sets.counts, self.names)

    def close(self):
        pass
