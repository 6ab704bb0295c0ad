"""Distance-aware calibration: the joint PDF P(d~, log M | D) at the cluster's distance.

The flux limit makes a nearby cluster richer than a distant one of the same mass, so the
network's prediction ``d~`` of a given mass drifts with the observer distance ``D``, and a
calibration averaged over distance is biased at both ends (nearby clusters come out too
heavy, distant ones too light). A cluster's redshift, hence ``D``, is always known, so the
calibration conditions on it:

* The mean drift of ``d~`` with distance is a smooth shift ``s(D)``: the least-squares fit
  of ``d~ - log M = a + b log M + c1 x + c2 x^2`` over the test pairs, ``x = (D - D_ref) /
  100 h^-1 Mpc`` with ``D_ref`` their median distance (``log M`` in the fit keeps a change
  of the mass mix with distance out of ``s``), ``s(D) = c1 x + c2 x^2``. Every prediction
  is moved to the reference distance, ``d' = d~ - s(D)``, before it is tabulated or
  sliced, so the drift is removed at every distance, the sparsely sampled nearest
  clusters included, where no node sits.
* :func:`tabulate_by_distance` tabulates one joint PDF of ``(d', log M)`` per distance node
  from the test pairs nearest to it in distance: node ``k`` of ``K`` takes the pairs whose
  distance rank
  (a quantile in [0, 1]) lies within ``window / 2`` of the node's quantile, the window
  moved inward at the ends so that every node holds the same number of pairs; the node's
  distance is the median of its pairs'. Each node is tabulated by
  :func:`~cmpipe.calibration.tabulate_joint_pdf` with the same bandwidth factor and on
  the same grids as the distance-blind table of all pairs, so the nodes can be blended.
  The nodes carry what the shift does not: how the width of ``P(d' | M)`` (and the
  test-set mix) changes with distance.
* A cluster at distance ``D`` gets the linear interpolation in ``D`` of the two nodes
  around it (:meth:`DistanceJointPDF.rows`; the edge node below the first and beyond the
  last node), sliced at its ``d' = d~ - s(D)`` and renormalised as every posterior is
  (:mod:`cmpipe.calibration.posterior`, whose functions take ``distance=``).

The distance-blind table of all pairs travels with the nodes (``blind``): the test-set
prior, the calibrated mass range and the forward models of the mass function use it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..io.joint_pdf import read_distance_nodes, write_joint_pdf
from .joint_pdf import JointPDF, posterior_rows, tabulate_joint_pdf

__all__ = ["DistanceJointPDF", "tabulate_by_distance", "load_calibration", "fit_drift", "drift",
           "DEFAULT_DISTANCE_NODES", "DEFAULT_DISTANCE_WINDOW"]

logger = logging.getLogger(__name__)

#: Distance nodes of the calibration.
DEFAULT_DISTANCE_NODES = 5
#: Fraction of the test pairs (in distance rank) each node is tabulated from.
DEFAULT_DISTANCE_WINDOW = 0.4
#: Distance unit of the drift polynomial, h^-1 Mpc.
SHIFT_SCALE_MPC_H = 100.0


def _args(pdf: JointPDF) -> dict:
    return dict(d_grid=pdf.d_grid, m_grid=pdf.m_grid, table=pdf.table,
                kernel_covariance=pdf.kernel_covariance, bandwidth=pdf.bandwidth,
                n_pairs=pdf.n_pairs, truncation=pdf.truncation, meta=pdf.meta)


@dataclass(frozen=True)
class DistanceJointPDF:
    """Joint PDFs ``P(d~, log M | D)`` at distance nodes, and the distance-blind one.

    Attributes
    ----------
    distance_mpc_h : numpy.ndarray, shape (K,)
        The nodes' observer distances (median of their pairs'), comoving h^-1 Mpc.
    nodes : tuple of JointPDF
        The nodes' joint PDFs, on the grids of ``blind``.
    blind : JointPDF
        The joint PDF of all test pairs (distance-blind): grids, test-set prior,
        calibrated mass range.
    shift : (float, float, float)
        ``(D_ref [h^-1 Mpc], c1, c2 [dex])`` of the drift ``s(D) = c1 x + c2 x^2``,
        ``x = (D - D_ref) / 100``; ``(D_ref, 0, 0)`` for none.
    meta : dict
        Provenance (window fraction, pairs per node).
    """

    distance_mpc_h: np.ndarray
    nodes: tuple
    blind: JointPDF
    shift: tuple = (0.0, 0.0, 0.0)
    meta: dict = field(default_factory=dict)

    def drift(self, distance_mpc_h) -> np.ndarray:
        """The mean drift ``s(D)`` of the predictions at distance ``D``, dex."""
        return drift(self.shift, distance_mpc_h)

    def __post_init__(self):
        dist = np.asarray(self.distance_mpc_h, dtype=np.float64)
        if dist.ndim != 1 or dist.size != len(self.nodes) or dist.size < 1 or not np.all(
                np.diff(dist) > 0):
            raise ValueError("DistanceJointPDF: distance_mpc_h must be increasing, one per "
                             "node")
        for n in self.nodes:
            if not (np.array_equal(n.d_grid, self.blind.d_grid)
                    and np.array_equal(n.m_grid, self.blind.m_grid)):
                raise ValueError("DistanceJointPDF: every node must share the blind table's "
                                 "grids")
        object.__setattr__(self, "distance_mpc_h", dist)
        object.__setattr__(self, "nodes", tuple(self.nodes))

    # the grid and provenance of the blind table, so posterior code reads either kind
    @property
    def d_grid(self) -> np.ndarray:
        return self.blind.d_grid

    @property
    def m_grid(self) -> np.ndarray:
        return self.blind.m_grid

    @property
    def d_step(self) -> float:
        return self.blind.d_step

    @property
    def m_step(self) -> float:
        return self.blind.m_step

    @property
    def n_pairs(self) -> int:
        return self.blind.n_pairs

    @property
    def calibrated_mass_range(self) -> tuple[float, float]:
        return self.blind.calibrated_mass_range

    def node_weights(self, distance_mpc_h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Linear interpolation in distance: lower node, upper node and the upper node's
        weight, per cluster (clamped to the first/last node outside their range).

        Raises
        ------
        ValueError
            A distance is not finite.
        """
        D = np.asarray(distance_mpc_h, dtype=np.float64)
        if not np.all(np.isfinite(D)):
            raise ValueError("distance-aware posterior: distances must be finite (got "
                             "NaN/inf)")
        x = self.distance_mpc_h
        if x.size == 1:
            z = np.zeros(D.shape, dtype=np.int64)
            return z, z, np.zeros(D.shape)
        k = np.clip(np.searchsorted(x, D, side="right") - 1, 0, x.size - 2)
        w = np.clip((D - x[k]) / (x[k + 1] - x[k]), 0.0, 1.0)
        return k, k + 1, w

    def rows(self, d, distance_mpc_h) -> np.ndarray:
        """Unnormalised slices at predictions ``d`` (log10 h^-1 Msun) and distances,
        shape (len(d), n_m): each node's interpolated slice, blended linearly in distance.
        """
        D = np.broadcast_to(np.asarray(distance_mpc_h, dtype=np.float64), np.shape(d))
        lo, hi, w = self.node_weights(D)
        d = np.asarray(d, dtype=np.float64) - self.drift(D)
        out = np.zeros((d.size, self.m_grid.size))
        for k, node in enumerate(self.nodes):
            wk = np.where(lo == k, 1.0 - w, 0.0) + np.where(hi == k, w, 0.0)
            use = wk > 0
            if use.any():
                out[use] += wk[use, None] * posterior_rows(node, d[use])
        return out

    def save(self, path) -> None:
        """Write blind table and nodes to one HDF5 file atomically
        (:func:`cmpipe.io.joint_pdf.write_joint_pdf`)."""
        meta = dict(self.blind.meta, **{f"distance_{k}": v for k, v in self.meta.items()},
                    distance_shift_ref_mpc_h=float(self.shift[0]),
                    distance_shift_c1_dex=float(self.shift[1]),
                    distance_shift_c2_dex=float(self.shift[2]))
        write_joint_pdf(path, **dict(_args(self.blind), meta=meta),
                        distance_mpc_h=self.distance_mpc_h,
                        nodes=[_args(n) for n in self.nodes])


def load_calibration(path, *, distance_aware: bool = True):
    """The calibration of ``path``: a :class:`DistanceJointPDF` when ``distance_aware`` and
    the file holds distance nodes, else the distance-blind :class:`JointPDF`.

    Raises
    ------
    cmpipe.io.tables.CatalogueError
        ``distance_aware`` but the file has no distance nodes (a calibration made with
        ``calibration.distance_aware: false``), or the file is damaged.
    """
    from ..io.tables import CatalogueError

    blind = JointPDF.load(path)
    if not distance_aware:
        return blind
    found = read_distance_nodes(path)
    if found is None:
        raise CatalogueError(path, "joint_pdf_distance", "no distance nodes: the "
                             "calibration was made distance-blind",
                             "rerun the calibration with calibration.distance_aware: true "
                             "(snakemake ... --forcerun calibrate), or set it to false")
    dist, nodes = found
    meta = {k[len("distance_"):]: v for k, v in blind.meta.items()
            if k.startswith("distance_") and not k.startswith("distance_shift_")}
    shift = tuple(float(blind.meta.get(f"distance_shift_{k}", 0.0))
                  for k in ("ref_mpc_h", "c1_dex", "c2_dex"))
    return DistanceJointPDF(distance_mpc_h=dist, nodes=tuple(JointPDF(**n) for n in nodes),
                            blind=blind, shift=shift, meta=meta)


def drift(shift, distance_mpc_h) -> np.ndarray:
    """``s(D) = c1 x + c2 x^2`` (dex), ``x = (D - D_ref) / 100 h^-1 Mpc``, of the drift
    ``shift = (D_ref, c1, c2)`` (:func:`fit_drift`)."""
    d_ref, c1, c2 = shift
    x = (np.asarray(distance_mpc_h, dtype=np.float64) - d_ref) / SHIFT_SCALE_MPC_H
    return c1 * x + c2 * x * x


def fit_drift(d_pred, m_true, distance_mpc_h) -> tuple[float, float, float]:
    """Least-squares drift of the predictions with distance (module docstring):
    ``(D_ref, c1, c2)`` of ``d~ - log M = a + b log M + c1 x + c2 x^2``."""
    d, m, D = (np.asarray(v, dtype=np.float64) for v in (d_pred, m_true, distance_mpc_h))
    d_ref = float(np.median(D))
    x = (D - d_ref) / SHIFT_SCALE_MPC_H
    A = np.column_stack([np.ones_like(x), m - m.mean(), x, x * x])
    coef, *_ = np.linalg.lstsq(A, d - m, rcond=None)
    return d_ref, float(coef[2]), float(coef[3])


def tabulate_by_distance(d_pred, m_true, distance_mpc_h, *,
                         n_nodes: int = DEFAULT_DISTANCE_NODES,
                         window: float = DEFAULT_DISTANCE_WINDOW, blind: JointPDF | None = None,
                         **tabulate_kw) -> DistanceJointPDF:
    """Joint PDFs of (prediction, truth) pairs at ``n_nodes`` distance nodes.

    Parameters
    ----------
    d_pred, m_true : array_like, shape (N,)
        Test-set predictions d~ and true log10 M200c, log10 h^-1 Msun.
    distance_mpc_h : array_like, shape (N,)
        Their observer distances, comoving h^-1 Mpc.
    n_nodes : int
        Distance nodes (>= 1); 1 gives the blind table's information at one node.
    window : float
        Fraction of the pairs (in distance rank) each node is tabulated from, in (0, 1].
    blind : JointPDF, optional
        The distance-blind table of the same pairs (made here if not given): its grids are
        the nodes'.
    **tabulate_kw
        Passed to :func:`~cmpipe.calibration.tabulate_joint_pdf` (bandwidth, grid sizes,
        shrink, truncation, meta).

    Returns
    -------
    DistanceJointPDF

    Raises
    ------
    ValueError
        Mismatched or non-finite inputs, ``n_nodes < 1``, ``window`` outside (0, 1], or
        fewer than 10 pairs per node.
    """
    d = np.asarray(d_pred, dtype=np.float64)
    m = np.asarray(m_true, dtype=np.float64)
    D = np.asarray(distance_mpc_h, dtype=np.float64)
    if not (d.shape == m.shape == D.shape and d.ndim == 1):
        raise ValueError("d_pred, m_true and distance_mpc_h must be 1-D of equal length")
    if not np.all(np.isfinite(D)):
        raise ValueError("distance_mpc_h must be finite")
    if int(n_nodes) < 1 or not 0.0 < float(window) <= 1.0:
        raise ValueError(f"n_nodes >= 1 and 0 < window <= 1 needed, got {n_nodes}, {window}")
    n_nodes = int(n_nodes)
    n_per = int(round(float(window) * d.size))
    if n_per < 10:
        raise ValueError(f"{d.size} pairs x window {window} = {n_per} pairs per distance "
                         "node; need at least 10 (raise the test split or the window)")
    if blind is None:
        blind = tabulate_joint_pdf(d, m, **tabulate_kw)
    shift = fit_drift(d, m, D)
    d = d - drift(shift, D)
    grid_kw = dict(tabulate_kw, n_d=blind.d_grid.size, n_m=blind.m_grid.size,
                   d_range=(blind.d_grid[0], blind.d_grid[-1]),
                   m_range=(blind.m_grid[0], blind.m_grid[-1]))
    order = np.argsort(D, kind="stable")
    nodes, dist = [], []
    for k in range(n_nodes):
        centre = (k + 0.5) / n_nodes * d.size
        start = int(np.clip(round(centre - n_per / 2), 0, d.size - n_per))
        sel = order[start:start + n_per]
        node_meta = dict(grid_kw.get("meta") or {}, distance_node=k,
                         distance_median_mpc_h=float(np.median(D[sel])),
                         distance_min_mpc_h=float(D[sel].min()),
                         distance_max_mpc_h=float(D[sel].max()))
        nodes.append(tabulate_joint_pdf(d[sel], m[sel], **dict(grid_kw, meta=node_meta)))
        dist.append(float(np.median(D[sel])))
    dist = np.asarray(dist)
    if not np.all(np.diff(dist) > 0):
        raise ValueError("distance nodes coincide (too many nodes for the distinct "
                         "distances); lower calibration.distance_nodes")
    logger.info("distance-aware calibration: %d nodes at %s h^-1 Mpc, %d pairs each",
                n_nodes, ", ".join(f"{x:.0f}" for x in dist), n_per)
    logger.info("distance drift of d~: %+.4f x %+.4f x^2 dex, x = (D - %.0f) / %.0f h^-1 Mpc",
                shift[1], shift[2], shift[0], SHIFT_SCALE_MPC_H)
    return DistanceJointPDF(distance_mpc_h=dist, nodes=tuple(nodes), blind=blind, shift=shift,
                            meta=dict(nodes=n_nodes, window=float(window),
                                      pairs_per_node=n_per))
