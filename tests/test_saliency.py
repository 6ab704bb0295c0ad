"""Saliency: analytic gradients of one-voxel models, finite differences of a CNN, binning."""
import keras
import numpy as np
import pytest

from cmpipe.cnn.model import build_cnn
from cmpipe.cnn.saliency import binned_saliency, input_gradients, projections, weighted_extent

N = 10
NORM = {"input": {"scale": float(N ** 3)}, "target": {"mean": 14.2, "std": 0.35}}
VOXEL = (3, 7, 5)


def one_voxel_model(w=0.8, b=0.1, activation="tanh"):
    """z = act(w * x[VOXEL] + b): depends on a single voxel of the (scaled) input."""
    model = keras.Sequential([keras.Input((N, N, N)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation=activation)])
    kernel = np.zeros((N ** 3, 1), np.float32)
    kernel[np.ravel_multi_index(VOXEL, (N, N, N)), 0] = w
    model.layers[-1].set_weights([kernel, np.array([b], np.float32)])
    return model


def cubes(rng, n):
    c = rng.random((n, N, N, N)).astype(np.float32)
    return c / c.sum(axis=(1, 2, 3), keepdims=True)


def test_saliency_of_a_one_voxel_model_is_that_voxel():
    w, b = 0.8, 0.1
    c = cubes(np.random.default_rng(0), 6)
    g = input_gradients(one_voxel_model(w, b), NORM, c)
    assert g.shape == c.shape and g.dtype == np.float32
    mask = np.zeros((N, N, N), bool)
    mask[VOXEL] = True
    assert np.all(g[:, ~mask] == 0.0)
    s, std = NORM["input"]["scale"], NORM["target"]["std"]
    u = w * c[(slice(None), *VOXEL)] * s + b
    want = std * s * w * (1 - np.tanh(u) ** 2)                         # chain rule
    np.testing.assert_allclose(g[(slice(None), *VOXEL)], want, rtol=1e-5)
    assert np.all(want != 0)


def test_gradients_match_finite_differences_of_a_cnn():
    keras.utils.set_random_seed(1)
    model = build_cnn((N, N, N), [{"conv": 3, "kernel": 3}, {"pool": 2, "type": "average"},
                                  {"dense": 6}])
    c = cubes(np.random.default_rng(2), 2).astype(np.float64)
    g = input_gradients(model, NORM, c.astype(np.float32))

    def dlogm(x):                             # log10 M - mean: keeps float32 digits
        z = np.asarray(model.predict_on_batch((x * NORM["input"]["scale"]).astype(np.float32)))
        return z[:, 0].astype(np.float64) * NORM["target"]["std"]

    h = 2e-5                    # voxel values ~1e-3 (x 1000 scaled); ReLU kinks are rare
    rng = np.random.default_rng(3)
    for _ in range(6):
        idx = tuple(rng.integers(0, N, 3))
        d = np.zeros_like(c)
        d[(slice(None), *idx)] = h
        fd = (dlogm(c + d) - dlogm(c - d)) / (2 * h)
        np.testing.assert_allclose(g[(slice(None), *idx)], fd, rtol=2e-2, atol=1e-2)


def test_gradients_of_a_distance_input_cnn_hold_the_distance_fixed():
    """With the distance input the gradient is d log M / d cube at each cluster's own
    distance: finite differences of the cube with the distance held, and another distance
    gives another gradient."""
    keras.utils.set_random_seed(5)
    model = build_cnn((N, N, N), [{"conv": 3, "kernel": 3}, {"pool": 2, "type": "average"},
                                  {"dense": 6, "activation": "tanh"}], distance_input=True)
    norm = dict(NORM, distance={"mean": 150.0, "std": 60.0})
    c = cubes(np.random.default_rng(6), 2).astype(np.float64)
    dist = np.array([60.0, 240.0])
    g = input_gradients(model, norm, c.astype(np.float32), dist)
    dz = ((dist - 150.0) / 60.0).astype(np.float32)[:, None]

    def dlogm(x):
        z = np.asarray(model.predict_on_batch(
            {"kde": (x * NORM["input"]["scale"]).astype(np.float32), "distance": dz}))
        return z[:, 0].astype(np.float64) * NORM["target"]["std"]

    h = 2e-5
    rng = np.random.default_rng(7)
    for _ in range(4):
        idx = tuple(rng.integers(0, N, 3))
        d = np.zeros_like(c)
        d[(slice(None), *idx)] = h
        fd = (dlogm(c + d) - dlogm(c - d)) / (2 * h)
        np.testing.assert_allclose(g[(slice(None), *idx)], fd, rtol=2e-2, atol=1e-2)
    g_other = input_gradients(model, norm, c.astype(np.float32), dist[::-1])
    assert not np.allclose(g, g_other)
    with pytest.raises(ValueError, match="distance input"):
        input_gradients(model, norm, c.astype(np.float32))
    # binned: the distance travels with its batch
    sal = binned_saliency(model, norm, [(c.astype(np.float32), np.array([14.0, 14.6]), dist)],
                          [13.5, 14.3, 15.0])
    np.testing.assert_allclose(sal["mean"][0], g[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sal["mean"][1], g[1], rtol=1e-6, atol=1e-9)


def test_batch_gradients_are_per_cluster_and_binned_means_are_averages():
    model = one_voxel_model()
    rng = np.random.default_rng(4)
    c = cubes(rng, 20)
    logm = np.r_[np.full(7, 13.8), np.full(9, 14.5), np.full(3, 15.9), [14.0]]  # 14.0: bin 1
    batches = [(c[i:i + 6], logm[i:i + 6]) for i in range(0, 20, 6)]
    sal = binned_saliency(model, NORM, batches, [13.7, 14.0, 15.0, 15.5])
    np.testing.assert_array_equal(sal["n"], [7, 10, 0])
    assert sal["n_outside"] == 3
    single = np.concatenate([input_gradients(model, NORM, c[i:i + 1]) for i in range(20)])
    for b, sel in enumerate([logm < 14.0, (logm >= 14.0) & (logm < 15.0)]):
        np.testing.assert_allclose(sal["mean"][b], single[sel].mean(axis=0), rtol=1e-6,
                                   atol=1e-9)
        np.testing.assert_allclose(sal["mean_abs"][b], np.abs(single[sel]).mean(axis=0),
                                   rtol=1e-6, atol=1e-9)
    assert np.isnan(sal["mean"][2]).all()
    with pytest.raises(ValueError, match="no cluster"):
        binned_saliency(model, NORM, batches, [16.0, 16.5])


def test_projections_and_extent():
    m = np.zeros((N, N, N))
    m[VOXEL] = 2.0
    p = projections(m)
    assert p["xy"][VOXEL[0], VOXEL[1]] == 2.0 and p["xv"][VOXEL[0], VOXEL[2]] == 2.0
    assert p["yv"][VOXEL[1], VOXEL[2]] == 2.0
    assert all(a.sum() == 2.0 for a in p.values())
    c = (np.arange(N) + 0.5) / N * 3.2 - 1.6
    e = weighted_extent(m, c, c, c * 1000)
    assert e["mean_r_proj_mpc_h"] == pytest.approx(np.hypot(c[3], c[7]))
    assert e["mean_abs_v_kms"] == pytest.approx(abs(c[5]) * 1000)
