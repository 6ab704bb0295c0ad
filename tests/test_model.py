"""CNN builders: shapes and parameter counts against hand arithmetic, the layer spec format."""
import logging
import math

import keras
import numpy as np
import pytest

from cmpipe.cnn.model import (DEFAULT_LAYERS, LayerSpecError, build_cnn, build_cnn1d, build_cnn2d,
                              build_cnn3d, forward_flops, parameter_count, validate_layers)


def conv_params(k, d, c_in, c_out):
    """Weights of a d-dimensional convolution with a k^d kernel, plus biases."""
    return k ** d * c_in * c_out + c_out


def dense_params(n_in, n_out):
    return n_in * n_out + n_out


def default_count_by_hand(d, n=50):
    """The authors' network in d dimensions on an n^d grid, counted from Fig. 3."""
    side = n
    side = side - 5 + 1          # conv k5 valid: 50 -> 46
    side //= 2                   # pool 2: 23
    side = side - 3 + 1          # conv k3: 21
    side //= 2                   # pool 2: 10
    side = side - 1 + 1          # conv k1: 10
    side //= 2                   # pool 2: 5
    flat = 4 * side ** d
    return (conv_params(5, d, 1, 12) + conv_params(3, d, 12, 8) + conv_params(1, d, 8, 4)
            + dense_params(flat, 128) + dense_params(128, 64) + dense_params(64, 1)), flat


def test_default_cnn3d_matches_paper_fig3():
    m = build_cnn3d(50)
    shapes = [tuple(layer.output.shape[1:]) for layer in m.layers[1:]]
    assert shapes == [
        (50, 50, 50, 1),                       # channel axis added to the bare cube
        (46, 46, 46, 12), (23, 23, 23, 12),
        (21, 21, 21, 8), (10, 10, 10, 8),
        (10, 10, 10, 4), (5, 5, 5, 4),
        (500,), (128,), (64,), (1,),
    ]
    assert 4 * 5 ** 3 == 500


def test_default_parameter_count_by_hand(caplog):
    hand, flat = default_count_by_hand(3)
    assert flat == 500
    # 1512 + 2600 + 36 + 64128 + 8256 + 65
    assert hand == 76_597
    m = build_cnn3d(50)
    with caplog.at_level(logging.INFO, logger="cmpipe.cnn.model"):
        n = parameter_count(m)
    assert n == hand
    assert "76597 trainable parameters" in caplog.text
    # the paper's "~1e5 trainable weights" (order of magnitude)
    assert 0.5e5 < n < 2e5
    assert m.count_params() == n  # no non-trainable weights


@pytest.mark.parametrize("d, builder", [(1, build_cnn1d), (2, build_cnn2d)])
def test_ablation_networks_same_pattern(d, builder):
    m = builder(50)
    hand, flat = default_count_by_hand(d)
    assert parameter_count(m, log=False) == hand
    assert tuple(m.get_layer("flatten").output.shape[1:]) == (flat,)
    assert tuple(m.input.shape[1:]) == (50,) * d
    x = np.random.default_rng(0).random((3,) + (50,) * d).astype(np.float32)
    assert m.predict_on_batch(x).shape == (3, 1)


def test_forward_flops_by_hand():
    m = build_cnn3d(50)
    hand = (2 * 5 ** 3 * 1 * 12 * 46 ** 3 + 2 * 3 ** 3 * 12 * 8 * 21 ** 3
            + 2 * 1 * 8 * 4 * 10 ** 3 + 2 * (500 * 128 + 128 * 64 + 64 * 1))
    assert forward_flops(m) == hand


def test_dense_layers_linear_conv_relu():
    m = build_cnn3d(16, [{"conv": 2, "kernel": 3}, {"pool": 2}, {"dense": 8}])
    assert m.get_layer("conv_0").activation.__name__ == "relu"
    assert m.get_layer("dense_2").activation.__name__ == "linear"
    assert m.get_layer("log10_m200c").activation.__name__ == "linear"


def test_validate_fills_defaults_and_round_trips():
    spec = validate_layers(DEFAULT_LAYERS)
    assert spec[0] == {"conv": 12, "kernel": 5, "activation": "relu", "padding": "valid",
                       "stride": 1}
    assert spec[1] == {"pool": 2, "type": "max"}
    assert spec[-1] == {"dense": 64, "activation": "linear"}
    assert validate_layers(spec) == spec


def test_custom_spec_variants():
    m = build_cnn((12, 12, 12), [
        {"conv": 3, "kernel": 3, "padding": "same"}, {"pool": 2, "type": "average"},
        {"conv": 2, "kernel": 3, "stride": 2, "activation": "tanh"}, {"dropout": 0.2},
        {"dense": 5, "activation": "relu"}])
    # same: 12 -> 12, pool 6, conv k3 s2 valid: (6 - 3)//2 + 1 = 2
    assert tuple(m.get_layer("conv_2").output.shape[1:]) == (2, 2, 2, 2)
    hand = conv_params(3, 3, 1, 3) + conv_params(3, 3, 3, 2) + dense_params(16, 5) + 6
    assert parameter_count(m, log=False) == hand
    # no dense layer at all: flatten straight into the output
    m2 = build_cnn((8, 8), [{"conv": 2, "kernel": 3}])
    assert parameter_count(m2, log=False) == conv_params(3, 2, 1, 2) + dense_params(72, 1)


def test_mixed_precision_output_float32():
    m = build_cnn((8, 8, 8), [{"conv": 2}, {"dense": 4}], dtype_policy="mixed_float16")
    assert m.get_layer("conv_0").compute_dtype == "float16"
    assert m.get_layer("log10_m200c").compute_dtype == "float32"
    assert m.output.dtype == "float32"


@pytest.mark.parametrize("layers, message", [
    ("conv", "must be a list of dicts"),
    ([{"conv": 4}, 7], r"layers\[1\]: expected a dict"),
    ([{"cnv": 4}], r"layers\[0\].*exactly one of"),
    ([{"conv": 4, "pool": 2}], r"layers\[0\].*exactly one of"),
    ([{"conv": 4, "kernal": 3}], r"unknown key\(s\) \['kernal'\] for a 'conv' layer"),
    ([{"conv": 0}], r"'conv' must be a positive integer"),
    ([{"conv": 4, "kernel": 2.5}], r"'kernel' must be a positive integer"),
    ([{"conv": True}], r"'conv' must be a positive integer"),
    ([{"dense": 8}, {"conv": 4}], r"layers\[1\]: a 'conv' layer cannot follow a dense"),
    ([{"dense": 8}, {"pool": 2}], r"layers\[1\]: a 'pool' layer cannot follow a dense"),
    ([{"conv": 4, "padding": "full"}], r"'padding' must be 'valid' or 'same'"),
    ([{"pool": 2, "type": "min"}], r"pool 'type' must be 'max' or 'average'"),
    ([{"dense": 8, "activation": "relu6x"}], r"unknown activation 'relu6x'"),
    ([{"dropout": 1.0}], r"'dropout' must be a rate in \[0, 1\)"),
])
def test_bad_specs_are_named(layers, message):
    with pytest.raises(LayerSpecError, match=message):
        validate_layers(layers)


def test_spec_too_deep_for_grid():
    with pytest.raises(LayerSpecError, match=r"layers\[2\]: conv kernel 5 is larger"):
        build_cnn((8, 8, 8), [{"conv": 2, "kernel": 3}, {"pool": 2}, {"conv": 2, "kernel": 5}])
    with pytest.raises(LayerSpecError, match=r"layers\[1\]: pool size 4 is larger"):
        build_cnn((8, 8, 8), [{"conv": 2, "kernel": 6}, {"pool": 4}])
    with pytest.raises(LayerSpecError, match="input_shape"):
        build_cnn((8, 8, 8, 8))


def test_forward_pass_shapes():
    m = build_cnn3d(20, [{"conv": 2, "kernel": 3}, {"pool": 2}, {"dense": 4}])
    x = np.random.default_rng(1).random((5, 20, 20, 20)).astype(np.float32)
    y = m.predict_on_batch(x)
    assert y.shape == (5, 1) and np.all(np.isfinite(y))
    assert math.prod(m.input.shape[1:]) == 8000


@pytest.mark.parametrize("layers", [DEFAULT_LAYERS, [{"conv": 4, "kernel": 3}, {"pool": 2}]])
def test_distance_input_joins_before_the_dense_layers(layers):
    """The distance enters once, beside the flattened features: one weight more per unit
    of the first dense layer (or of the output without one), and the output changes with
    the distance alone."""
    keras.utils.set_random_seed(2)
    blind = build_cnn((24, 24, 24), layers)
    keras.utils.set_random_seed(2)
    aware = build_cnn((24, 24, 24), layers, distance_input=True)
    first_dense = next((s["dense"] for s in layers if "dense" in s), 1)
    assert parameter_count(aware, log=False) == parameter_count(blind, log=False) + first_dense
    assert sorted(aware.input) == ["distance", "kde"]
    joined = aware.get_layer("with_distance")
    assert joined.output.shape[-1] == aware.get_layer("flatten").output.shape[-1] + 1
    x = np.random.default_rng(3).random((4, 24, 24, 24)).astype(np.float32)
    near = aware({"kde": x, "distance": np.full((4, 1), -1.0, np.float32)})
    far = aware({"kde": x, "distance": np.full((4, 1), 1.0, np.float32)})
    assert np.all(np.asarray(near) != np.asarray(far))
