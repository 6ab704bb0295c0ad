"""The set estimator (cmpipe.flow.sets; issue 29): galaxy sets, their features and files,
the Deep Sets embedding's invariances (permutation, padding), and training on a toy problem
against an oracle.

The toy problem: each cluster is a set of N ~ U{8..150} galaxies at random sky positions
with line-of-sight velocities v ~ N(0, sigma), sigma = 0.15 + 0.35 s of the window's v_max,
and log M = 13.8 + 1.2 s + 0.05 e (s ~ U(0, 1), e ~ N(0, 1)). The oracle knows this model
and reads s off the sample velocity dispersion; its scatter (set by N and the intrinsic
0.05 dex) is the independent reference the trained network must approach.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from cmpipe.flow.model import FlowModel, FlowSettings
from cmpipe.flow.sets import (GalaxySets, SetBatch, galaxy_features, read_set_file,
                              set_standardisation, write_set_file)
from cmpipe.flow.training import grid_of, train_flow
from cmpipe.io.tables import CatalogueError

W, V = 2.0, 3000.0                       # window half-width (h^-1 Mpc), v_max (km/s)
SET_SETTINGS = FlowSettings(input="set", set_features=("x", "y", "r", "v"),
                            set_phi_units=(32, 32), embedding_units=32, embedding_features=8,
                            transforms=2, hidden_features=32, epochs=150, patience=12,
                            batch_size=64, learning_rate=2e-3, augment=True,
                            distance_input=True, seed=5)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_clusters(n, rng):
    """Cluster rows and window galaxies of the toy problem, and each cluster's s."""
    s = rng.random(n)
    n_gal = rng.integers(8, 151, n)
    m = 13.8 + 1.2 * s + 0.05 * rng.standard_normal(n)
    cid = np.repeat(np.arange(n), n_gal)
    sig = np.repeat(0.15 + 0.35 * s, n_gal)
    g = dict(cluster_id=cid, x_proj_mpc_h=rng.uniform(-W, W, cid.size),
             y_proj_mpc_h=rng.uniform(-W, W, cid.size),
             v_los_kms=V * sig * rng.standard_normal(cid.size),
             mag_r_app=rng.uniform(14.0, 17.7, cid.size))
    rows = dict(cluster_id=np.arange(n), log10_m200c=m, n_gal=n_gal, n_members=n_gal,
                distance_mpc_h=rng.uniform(100.0, 400.0, n))     # unrelated to the mass
    return rows, g, s


def write_toy(path, n, rng):
    rows, g, s = toy_clusters(n, rng)
    write_set_file(path, rows, g, dict(half_width_mpc_h=W, v_max_kms=V, split="toy"))
    return rows, g, s


def random_model(settings=SET_SETTINGS, seed=0):
    torch.manual_seed(seed)
    std = dict(mass_mean=14.4, mass_sd=0.35, log_n_mean=1.7, log_n_sd=0.3,
               **{f"set_{k}_{n}": v for n in settings.set_features
                  for k, v in (("mean", 0.1), ("sd", 0.6))})
    if settings.distance_input:
        std.update(distance_mean=200.0, distance_sd=50.0)
    return FlowModel(settings, (len(settings.set_features),), std)


def test_features_are_window_units_and_mag_needs_magnitudes():
    rng = np.random.default_rng(0)
    _, g, _ = toy_clusters(5, rng)
    f = galaxy_features(g, ("x", "y", "r", "v", "mag"), W, V)
    assert f.dtype == np.float32 and f.shape == (len(g["cluster_id"]), 5)
    np.testing.assert_allclose(f[:, 0], g["x_proj_mpc_h"] / W, rtol=1e-6)
    np.testing.assert_allclose(f[:, 2], np.sqrt(g["x_proj_mpc_h"] ** 2
                                                + g["y_proj_mpc_h"] ** 2) / W, rtol=1e-6)
    np.testing.assert_allclose(f[:, 3], g["v_los_kms"] / V, rtol=1e-6)
    np.testing.assert_allclose(f[:, 4], g["mag_r_app"], rtol=1e-6)
    del g["mag_r_app"]
    with pytest.raises(CatalogueError, match="mag_r_app.*sets.features"):
        galaxy_features(g, ("v", "mag"), W, V, source="survey.h5")


def test_galaxy_sets_index_and_pad():
    f = np.arange(12, dtype=np.float32).reshape(6, 2)        # galaxies 0..5, 2 features
    gs = GalaxySets(f, np.array([0, 1, 4, 6]))               # sets of 1, 3 and 2
    np.testing.assert_array_equal(gs.counts, [1, 3, 2])
    sub = gs[[2, 0]]
    np.testing.assert_array_equal(sub.features, f[[4, 5, 0]])
    np.testing.assert_array_equal(sub.offsets, [0, 2, 3])
    np.testing.assert_array_equal(gs[1:3].features, f[1:6])
    with pytest.raises(ValueError, match="offsets"):
        GalaxySets(f, np.array([0, 4, 3, 6]))


def test_permuting_a_clusters_galaxies_leaves_its_posterior_unchanged():
    rng = np.random.default_rng(1)
    model = random_model()
    f = rng.standard_normal((90, 4)).astype(np.float32)
    gs = GalaxySets(f, np.array([0, 37, 90]))
    perm = np.concatenate([rng.permutation(37), 37 + rng.permutation(53)])
    grid = np.linspace(13.0, 15.5, 64)
    d = np.array([150.0, 260.0])
    a = model.log_density(gs, grid, d)
    b = model.log_density(GalaxySets(f[perm], gs.offsets), grid, d)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)
    assert np.ptp(a[0]) > 1.0                    # not a flat density: the test can fail
    assert np.max(np.abs(a[0] - a[1])) > 1e-2    # the two clusters differ


def test_ragged_batch_equals_clusters_one_at_a_time():
    """A batch of a 7- and a 40-galaxy cluster gives each cluster's density alone: the
    segment pooling never mixes galaxies of different sets (mean and max pooling)."""
    rng = np.random.default_rng(2)
    model = random_model(replace(SET_SETTINGS, set_pooling="mean_max"))
    model.eval()
    f = rng.standard_normal((47, 4)).astype(np.float32)
    alone = []
    t = model.masses_to_tensor(np.linspace(13.5, 15.0, 16)).reshape(-1, 1, 1)
    d = model.distances_to_tensor(np.array([180.0, 320.0]))
    with torch.no_grad():
        for k, rows in enumerate((slice(0, 7), slice(7, 47))):
            x = model.sets_to_tensor(GalaxySets(f[rows], np.array([0, rows.stop - rows.start])))
            assert int(x.index.max()) == 0 and len(x) == 1
            alone.append(model.flow(model.context(x, d[k:k + 1])).log_prob(t)[:, 0])
        x = model.sets_to_tensor(GalaxySets(f, np.array([0, 7, 47])))
        assert x.features.shape == (47, 4)
        np.testing.assert_array_equal(x.index.numpy(), [0] * 7 + [1] * 40)
        both = model.flow(model.context(x, d)).log_prob(t)
    torch.testing.assert_close(both[:, 0], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[:, 1], alone[1], rtol=1e-5, atol=1e-5)
    assert torch.max(torch.abs(alone[0] - alone[1])) > 1e-2      # the two clusters differ


def test_sky_symmetries_act_on_x_and_y_only():
    model = random_model()
    rng = np.random.default_rng(3)
    x = model.sets_to_tensor(GalaxySets(rng.standard_normal((10, 4)).astype(np.float32),
                                        np.array([0, 4, 10])))
    seen = set()
    for k in range(8):
        y = model.augmented(x, k)
        torch.testing.assert_close(y.features[..., 2:], x.features[..., 2:])   # r, v intact
        torch.testing.assert_close(y.features[..., :2].abs().sort(-1).values,
                                   x.features[..., :2].abs().sort(-1).values)
        seen.add(y.features[..., :2].numpy().tobytes())
    assert len(seen) == 8
    with pytest.raises(ValueError, match="x and y"):
        replace(SET_SETTINGS, set_features=("r", "v"))


def test_standardisation_keeps_the_sky_symmetric():
    rng = np.random.default_rng(4)
    f = np.column_stack([rng.normal(0.3, 0.5, 500), rng.normal(-0.2, 0.4, 500),
                         rng.normal(0.6, 0.2, 500)])
    s = set_standardisation(f, np.array([10, 100, 1000]), ("x", "y", "v"))
    assert s["set_mean_x"] == s["set_mean_y"] == 0.0
    assert s["set_sd_x"] == s["set_sd_y"] == pytest.approx(np.sqrt(np.mean(f[:, :2] ** 2)))
    assert s["set_mean_v"] == pytest.approx(f[:, 2].mean())
    assert s["set_sd_v"] == pytest.approx(f[:, 2].std())
    assert s["log_n_mean"] == pytest.approx(2.0) and s["log_n_sd"] == pytest.approx(
        np.std([1.0, 2.0, 3.0]))


def test_set_file_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(5)
    rows, g, _ = write_toy(tmp_path / "s.h5", 6, rng)
    cols, gs, attrs = read_set_file(tmp_path / "s.h5", ("v", "r"))
    np.testing.assert_array_equal(cols["cluster_id"], rows["cluster_id"])
    np.testing.assert_array_equal(gs.counts, rows["n_gal"])
    np.testing.assert_allclose(gs.features[:, 0], g["v_los_kms"] / V, rtol=1e-6)
    assert attrs["split"] == "toy"
    write_set_file(tmp_path / "bad.h5", rows, g, dict(split="toy"))
    with pytest.raises(CatalogueError, match="bad.h5.*half_width_mpc_h"):
        read_set_file(tmp_path / "bad.h5", ("v",))


def test_toy_sets_train_to_the_oracle(tmp_path, one_thread):
    """Trained on 1,200 toy clusters, the set flow's posterior medians of 600 others scatter
    within 1.3x the oracle's (which knows the model and reads s off the sample velocity
    dispersion) and its 68% / 95% intervals cover within 0.07 / 0.04 of nominal; the same
    seed gives the same weights."""
    rng = np.random.default_rng(6)
    write_toy(tmp_path / "train.h5", 1200, rng)
    write_toy(tmp_path / "validation.h5", 300, rng)
    rows, g, _ = write_toy(tmp_path / "test.h5", 600, rng)
    r = train_flow(tmp_path / "train.h5", tmp_path / "validation.h5", tmp_path / "m",
                   SET_SETTINGS)
    assert r.best_epoch >= 5
    model, meta = FlowModel.load(tmp_path / "m")
    grid = grid_of(meta)
    cols, gs, _ = read_set_file(tmp_path / "test.h5", SET_SETTINGS.set_features)
    curves, mass = model.posterior_curves(gs, grid, cols["distance_mpc_h"])
    np.testing.assert_allclose(np.trapezoid(curves, grid, axis=1), 1.0, rtol=1e-9)
    dm = grid[1] - grid[0]
    cdf = np.cumsum(curves, axis=1) * dm
    q = lambda p: grid[np.argmax(cdf >= p, axis=1)]                              # noqa: E731
    t = cols["log10_m200c"]
    eps = t - q(0.5)
    # the oracle: s from the sample dispersion of v (the model's own relation)
    sd = np.array([g["v_los_kms"][g["cluster_id"] == k].std(ddof=1) / V
                   for k in rows["cluster_id"]])
    oracle = 13.8 + 1.2 * np.clip((sd - 0.15) / 0.35, 0, 1)
    assert eps.std() < 1.3 * (t - oracle).std()
    assert abs(eps.mean()) < 0.03
    cov68 = np.mean((t >= q(0.1587)) & (t <= q(0.8413)))
    cov95 = np.mean((t >= q(0.025)) & (t <= q(0.975)))
    assert abs(cov68 - 0.68) < 0.07 and abs(cov95 - 0.95) < 0.04
    train_flow(tmp_path / "train.h5", tmp_path / "validation.h5", tmp_path / "m2",
               replace(SET_SETTINGS, epochs=2))
    train_flow(tmp_path / "train.h5", tmp_path / "validation.h5", tmp_path / "m3",
               replace(SET_SETTINGS, epochs=2))
    a, _ = FlowModel.load(tmp_path / "m2")
    b, _ = FlowModel.load(tmp_path / "m3")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_pooled_summary_is_the_set_mean_size_and_dispersion():
    """With rho removed, the embedding's output is the mean of phi over each set, then the
    standardised log10 N, then log10 of the set's velocity dispersion (population sd of
    feature v); with max pooling, phi's maximum over each set. Each is computed here with
    numpy, set by set; the ragged batch lists the sets' galaxies out of order."""
    from cmpipe.flow.sets import SetEmbedding

    rng = np.random.default_rng(7)
    torch.manual_seed(0)
    f = rng.standard_normal((30, 3)).astype(np.float32)
    index = np.array([0] * 4 + [1] * 26)
    shuffle = rng.permutation(30)                       # galaxies of both sets interleaved
    log_n = torch.tensor([[0.3], [-0.2]])
    x = SetBatch(torch.as_tensor(f[shuffle]), torch.as_tensor(index[shuffle]),
                 torch.tensor([4, 26]), log_n)
    for pooling in ("mean", "max"):
        emb = SetEmbedding(3, phi_units=(5,), pooling=pooling, richness=True, dispersion=2)
        emb.rho = torch.nn.Identity()
        out = emb(x).detach()
        w, b = emb.phi[0].weight.detach().numpy(), emb.phi[0].bias.detach().numpy()
        for k, rows in enumerate((slice(0, 4), slice(4, 30))):
            phi = np.maximum(f[rows] @ w.T + b, 0.0)
            ref = phi.mean(axis=0) if pooling == "mean" else phi.max(axis=0)
            np.testing.assert_allclose(out[k, :5], ref, rtol=1e-5, atol=1e-6)
            assert out[k, 5] == pytest.approx(float(log_n[k, 0]))
            assert out[k, 6] == pytest.approx(np.log10(f[rows, 2].std()), rel=1e-5)
