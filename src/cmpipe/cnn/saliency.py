"""Saliency maps: which parts of projected phase space the trained CNN3D reads (talk slides).

The saliency of cluster ``c`` is the gradient of the network's predicted mass with respect
to its input cube,

    S_c[i, j, k] = d log10 M_pred / d cube[i, j, k],

in dex per unit voxel probability (cubes sum to 1, see :mod:`cmpipe.kde`), through the
input scaling and the target standardisation of :mod:`cmpipe.cnn.training`
(``S = std * dz/dcube`` through ``x = cube * scale``, or ``log(1 + cube * scale)`` for a
model trained with ``train.input_transform: log1p``, and ``log10 M = z * std + mean``).
Gradients are taken by ``tf.GradientTape`` on the Keras model (tensorflow backend) in
inference mode. The batch is differentiated as one sum, which gives each cluster's own
gradient because clusters do not interact in the network (no batch statistics at inference).

Averages over clusters in bins of true mass (:func:`binned_saliency`) give two maps per
bin: the signed mean ``<S>`` (where extra galaxy density raises (> 0) or lowers (< 0) the
predicted mass) and the mean magnitude ``<|S|>`` (where the network is sensitive at all).
:func:`projections` sums a map along one axis to give the ``(x, y)``, ``(x, v)`` and
``(y, v)`` planes: a projected signed saliency is the change of log10 M_pred when
probability is added uniformly along the summed axis. Grids and units follow the cubes:
``x, y`` in h^-1 Mpc (proper), ``v`` in km/s, axis order ``(x, y, v)``.
"""
from __future__ import annotations

import logging
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__all__ = ["input_gradients", "binned_saliency", "projections", "weighted_extent",
           "PLANES"]

logger = logging.getLogger(__name__)

#: Projection planes -> the axis summed over (cube axes ``(x, y, v)``).
PLANES = {"xy": 2, "xv": 1, "yv": 0}


def input_gradients(model, normalisation: dict, cubes: np.ndarray,
                    distance_mpc_h=None) -> np.ndarray:
    """``d log10 M_pred / d cube`` for a batch of cubes (at fixed distance, for a network
    with a distance input).

    Parameters
    ----------
    model : keras.Model
        Trained network (tensorflow backend); input ``(batch, *grid)``.
    normalisation : dict
        Contents of ``normalisation.json``: ``input.scale``, ``target.std``.
    cubes : numpy.ndarray, shape (B, *grid)
        Normalised KDE inputs (each sums to 1).
    distance_mpc_h : array_like, shape (B,), optional
        The clusters' comoving distances from the observer (h^-1 Mpc); needed when the
        network was trained with a distance input (``normalisation["distance"]``).

    Returns
    -------
    numpy.ndarray
        Shape ``(B, *grid)``, float32: dex per unit voxel probability.
    """
    import tensorflow as tf

    from .cubedata import network_inputs

    scale = np.float32(normalisation["input"]["scale"])
    function = normalisation["input"].get("function", "linear")
    std = float(normalisation["target"]["std"])
    cube = tf.convert_to_tensor(np.asarray(cubes, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(cube)
        x = cube * scale                   # cmpipe.cnn.training.transform_inputs, in TF
        if function == "log1p":
            x = tf.math.log1p(x)
        inputs = network_inputs(x, normalisation, distance_mpc_h)
        if isinstance(inputs, dict):                # Keras: all tensors, or none
            inputs = {k: tf.convert_to_tensor(v) for k, v in inputs.items()}
        z = model(inputs, training=False)
        total = tf.reduce_sum(tf.cast(z, tf.float32))
    grad = tape.gradient(total, cube)
    if grad is None:
        raise ValueError(f"{model.name}: the output does not depend on the input")
    return (grad.numpy() * np.float32(std)).astype(np.float32)


def binned_saliency(model, normalisation: dict, batches, bins) -> dict:
    """Mean signed and absolute saliency maps of clusters in bins of true mass.

    Parameters
    ----------
    model : keras.Model
    normalisation : dict
        Contents of ``normalisation.json``.
    batches : iterable of tuples
        ``(cubes, log10_m200c_true)`` or ``(cubes, log10_m200c_true, distance_mpc_h)``
        (the distance for a network with a distance input), cubes ``(B, *grid)``, masses in
        log10 h^-1 Msun; streamed, so only one batch of gradients is held at a time.
    bins : array_like
        Increasing bin edges of true log10 M200c (half-open ``[lo, hi)``, last one closed);
        clusters outside are skipped.

    Returns
    -------
    dict
        ``bin_edges``, ``n`` (clusters per bin), ``mean`` and ``mean_abs`` (float64,
        ``(n_bins, *grid)``, dex per unit voxel probability; NaN for empty bins) and
        ``n_outside`` (clusters outside every bin).
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("saliency bins must be at least two increasing edges "
                         "(log10 h^-1 Msun)")
    nb = edges.size - 1
    total = total_abs = None
    counts = np.zeros(nb, dtype=np.int64)
    outside = 0
    for cubes, logm, *distance in batches:
        dist = np.asarray(distance[0], dtype=np.float64) if distance else None
        logm = np.asarray(logm, dtype=np.float64)
        idx = np.searchsorted(edges, logm, side="right") - 1
        idx[logm == edges[-1]] = nb - 1
        idx[(logm < edges[0]) | (logm > edges[-1])] = -1
        outside += int((idx < 0).sum())
        if not (idx >= 0).any():
            continue
        g = input_gradients(model, normalisation, cubes[idx >= 0],
                            None if dist is None else dist[idx >= 0]).astype(np.float64)
        idx = idx[idx >= 0]
        if total is None:
            total = np.zeros((nb, *g.shape[1:]))
            total_abs = np.zeros_like(total)
        for b in np.unique(idx):
            sel = idx == b
            total[b] += g[sel].sum(axis=0)
            total_abs[b] += np.abs(g[sel]).sum(axis=0)
            counts[b] += int(sel.sum())
    if total is None:
        raise ValueError("no cluster falls in the saliency mass bins "
                         f"[{edges[0]}, {edges[-1]}]")
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = (nb,) + (1,) * (total.ndim - 1)
        n = counts.reshape(shape).astype(np.float64)
        mean = np.where(n > 0, total / np.where(n > 0, n, 1), np.nan)
        mean_abs = np.where(n > 0, total_abs / np.where(n > 0, n, 1), np.nan)
    return dict(bin_edges=edges, n=counts, mean=mean, mean_abs=mean_abs, n_outside=outside)


def projections(cube_map: np.ndarray) -> dict:
    """Sums of a 3-D map ``(x, y, v)`` along one axis: planes ``xy``, ``xv``, ``yv``.

    Returns
    -------
    dict of numpy.ndarray
        ``{"xy": (n_x, n_y), "xv": (n_x, n_v), "yv": (n_y, n_v)}``, first index the first
        named axis.
    """
    m = np.asarray(cube_map)
    if m.ndim != 3:
        raise ValueError(f"expected a 3-D (x, y, v) map, got shape {m.shape}")
    return {plane: m.sum(axis=axis) for plane, axis in PLANES.items()}


def weighted_extent(weights: np.ndarray, x_centres, y_centres, v_centres, *,
                    r_inner_mpc_h: float = 0.5) -> dict:
    """Where a non-negative 3-D map puts its weight: weighted mean ``R_proj`` and ``|v|``.

    Parameters
    ----------
    weights : numpy.ndarray, shape (n_x, n_y, n_v)
        Non-negative map (e.g. the mean absolute saliency).
    x_centres, y_centres : array_like
        Voxel centres, h^-1 Mpc.
    v_centres : array_like
        Voxel centres, km/s.
    r_inner_mpc_h : float
        Radius of the inner region, h^-1 Mpc.

    Returns
    -------
    dict
        ``mean_r_proj_mpc_h``, ``mean_abs_v_kms`` and ``fraction_inner`` (share of the
        weight at ``R_proj < r_inner_mpc_h``), and ``r_inner_mpc_h``.
    """
    w = np.asarray(weights, dtype=np.float64)
    X, Y, V = np.meshgrid(x_centres, y_centres, v_centres, indexing="ij")
    R = np.hypot(X, Y)
    tot = w.sum()
    if not tot > 0:
        return dict(mean_r_proj_mpc_h=np.nan, mean_abs_v_kms=np.nan, fraction_inner=np.nan,
                    r_inner_mpc_h=float(r_inner_mpc_h))
    return dict(mean_r_proj_mpc_h=float((w * R).sum() / tot),
                mean_abs_v_kms=float((w * np.abs(V)).sum() / tot),
                fraction_inner=float(w[R < r_inner_mpc_h].sum() / tot),
                r_inner_mpc_h=float(r_inner_mpc_h))
