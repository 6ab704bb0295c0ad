"""Convolutional networks that map a phase-space KDE to log10 M200c (Keras 3).

The default network is the authors' public CNN3D (Kodi Ramanah, Wojtak & Arendse 2020,
section 3.3 and Fig. 3)::

    Conv3D(12, k=5, relu, valid) -> MaxPool(2) -> Conv3D(8, k=3, relu) -> MaxPool(2)
    -> Conv3D(4, k=1, relu) -> MaxPool(2) -> Flatten -> Dense(128) -> Dense(64) -> Dense(1)

with linear dense layers. On a 50^3 input the feature maps are 46 -> 23 -> 21 -> 10 -> 10 -> 5
voxels a side, so the flattened vector has 4 * 5^3 = 500 entries and the network holds
76,597 trainable weights (the paper quotes "~1e5"; a 'same'-padded variant would have
123,189).

The hidden layers are given in the format of :func:`cmpipe.sections.validate_layers`
(``{"conv": 12, "kernel": 5}``, ``{"pool": 2}``, ``{"dense": 128}``, ``{"dropout": 0.1}``),
which checks a specification and fills in every default.

Inputs are the bare grids, shape ``(batch, *spatial)`` (no channel axis; the model adds it).
"""
from __future__ import annotations

import logging
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from ..sections import DEFAULT_LAYERS, LAYER_KINDS, LayerSpecError, validate_layers  # noqa: E402

__all__ = [
    "build_cnn",
    "build_cnn1d",
    "build_cnn2d",
    "build_cnn3d",
    "parameter_count",
    "forward_flops",
]

logger = logging.getLogger(__name__)


_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_POOL = {
    ("max", 1): keras.layers.MaxPooling1D, ("max", 2): keras.layers.MaxPooling2D,
    ("max", 3): keras.layers.MaxPooling3D, ("average", 1): keras.layers.AveragePooling1D,
    ("average", 2): keras.layers.AveragePooling2D, ("average", 3): keras.layers.AveragePooling3D,
}


def build_cnn(input_shape, layers=DEFAULT_LAYERS, *, name: str | None = None,
              dtype_policy: str | None = None, distance_input: bool = False) -> keras.Model:
    """Build a 1D, 2D or 3D CNN regressor with a scalar linear output.

    Parameters
    ----------
    input_shape : sequence of int
        Spatial grid shape of one input without a channel axis: ``(n_v,)``,
        ``(n_r, n_v)`` or ``(n_x, n_y, n_v)`` voxels. Its length sets the dimensionality.
    layers : sequence of mapping, optional
        Hidden layers (:func:`cmpipe.sections.validate_layers`); default :data:`DEFAULT_LAYERS`.
    name : str, optional
        Model name; default ``"cnn{d}d"``.
    dtype_policy : str, optional
        Keras dtype policy of the hidden layers, e.g. ``"mixed_float16"`` on a GPU. The
        output layer always computes in float32.
    distance_input : bool
        Add a second input ``"distance"`` of shape ``(batch, 1)`` (the cluster's
        standardised comoving distance from the observer), concatenated with the flattened
        convolutional features before the first dense layer (before the output layer when
        there is none).

    Returns
    -------
    keras.Model
        Uncompiled functional model, output ``(batch, 1)``: the (standardised) log10 M200c.
        Input: ``(batch, *input_shape)`` float32; with ``distance_input`` a dict
        ``{"kde": (batch, *input_shape), "distance": (batch, 1)}``.

    Raises
    ------
    LayerSpecError
        If the specification is invalid or shrinks the grid below one voxel (the message
        names the offending entry and the grid size it received).
    """
    spec = validate_layers(layers)
    shape = tuple(int(s) for s in input_shape)
    ndim = len(shape)
    if ndim not in (1, 2, 3) or min(shape) < 1:
        raise LayerSpecError(f"input_shape must be 1, 2 or 3 positive ints, got {input_shape!r}")
    name = name or f"cnn{ndim}d"
    kw = {} if dtype_policy is None else {"dtype": dtype_policy}
    inputs = keras.Input(shape=shape, name="kde", dtype="float32")
    x = keras.layers.Reshape(shape + (1,), name="add_channel", **kw)(inputs)
    dist = keras.Input(shape=(1,), name="distance", dtype="float32") if distance_input \
        else None
    grid = shape
    flat = False

    def flatten(x):
        x = keras.layers.Flatten(name="flatten", **kw)(x)
        if dist is None:
            return x
        return keras.layers.Concatenate(name="with_distance", **kw)([x, dist])
    for i, s in enumerate(spec):
        lname = f"{next(k for k in s if k in LAYER_KINDS)}_{i}"
        if "conv" in s:
            k, st = s["kernel"], s["stride"]
            if s["padding"] == "valid":
                grid = tuple((g - k) // st + 1 for g in grid)
            else:
                grid = tuple(-(-g // st) for g in grid)
            if min(grid) < 1:
                raise LayerSpecError(f"layers[{i}]: conv kernel {k} is larger than the grid it "
                                     f"receives; reduce the kernel or the pooling before it")
            x = _CONV[ndim](s["conv"], k, strides=st, padding=s["padding"],
                            activation=s["activation"], name=lname, **kw)(x)
        elif "pool" in s:
            p = s["pool"]
            grid = tuple(g // p for g in grid)
            if min(grid) < 1:
                raise LayerSpecError(f"layers[{i}]: pool size {p} is larger than the grid it "
                                     f"receives; reduce the pooling")
            x = _POOL[(s["type"], ndim)](p, name=lname, **kw)(x)
        elif "dense" in s:
            if not flat:
                x = flatten(x)
                flat = True
            x = keras.layers.Dense(s["dense"], activation=s["activation"], name=lname, **kw)(x)
        else:
            x = keras.layers.Dropout(s["dropout"], name=lname, **kw)(x)
    if not flat:
        x = flatten(x)
    outputs = keras.layers.Dense(1, activation="linear", name="log10_m200c", dtype="float32")(x)
    if dist is not None:
        return keras.Model({"kde": inputs, "distance": dist}, outputs, name=name)
    return keras.Model(inputs, outputs, name=name)


def build_cnn3d(n_grid=50, layers=DEFAULT_LAYERS, **kwargs) -> keras.Model:
    """CNN3D on ``(x_proj, y_proj, v_los)`` KDE cubes of ``n_grid``^3 voxels (int or 3-tuple).

    Other keyword arguments go to :func:`build_cnn`.
    """
    shape = (n_grid,) * 3 if isinstance(n_grid, int) else tuple(n_grid)
    return build_cnn(shape, layers, **kwargs)


def build_cnn2d(n_grid=50, layers=DEFAULT_LAYERS, **kwargs) -> keras.Model:
    """CNN2D for the ablation: a ``(R_proj, v_los)`` KDE image of ``n_grid``^2 pixels."""
    shape = (n_grid,) * 2 if isinstance(n_grid, int) else tuple(n_grid)
    return build_cnn(shape, layers, **kwargs)


def build_cnn1d(n_grid=50, layers=DEFAULT_LAYERS, **kwargs) -> keras.Model:
    """CNN1D for the ablation: a ``v_los`` KDE profile of ``n_grid`` bins."""
    shape = (n_grid,) if isinstance(n_grid, int) else tuple(n_grid)
    return build_cnn(shape, layers, **kwargs)


def parameter_count(model: keras.Model, *, log: bool = True) -> int:
    """Number of trainable weights of ``model``; logged at INFO level when ``log``."""
    n = int(sum(math.prod(v.shape) for v in model.trainable_weights))
    if log:
        logger.info("%s: %d trainable parameters", model.name, n)
    return n


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass for ONE sample, counted analytically.

    Convention: a multiply-add is 2 FLOPs. A convolution costs
    ``2 * prod(kernel) * c_in * c_out * prod(output grid)``, a dense layer
    ``2 * n_in * n_out``; biases, activations, pooling and reshapes are not counted (they are
    below 1% here). A training step costs about 3x the forward pass (the backward pass
    computes gradients with respect to activations and to weights, each about one forward).

    Parameters
    ----------
    model : keras.Model
        A built model from :func:`build_cnn`.

    Returns
    -------
    int
        FLOPs per sample.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
            k_shape = tuple(layer.kernel.shape)  # (*kernel, c_in, c_out)
            out_grid = tuple(layer.output.shape[1:-1])
            total += 2 * math.prod(k_shape) * math.prod(out_grid)
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.kernel.shape)
    return int(total)
