"""Training: learning a known mass encoding, early stopping, resume, streaming, D4, predict.

Cubes are 16^3 Gaussian blobs whose width grows with log10 M (plus noise and a random
centre), written with CubeWriter to tmp_path; networks are tiny (~1e3 weights), so the whole
file runs in about a minute on 2 cores.
"""
import itertools
import json
import tracemalloc

import h5py
import keras
import numpy as np
import pytest

from cmpipe.io.cubes import CubeReader, CubeWriter
from cmpipe.io.tables import CatalogueError
from cmpipe.plots.pipeline import loss_curve_figure
from cmpipe.cnn.training import (CHECKPOINT_FILE, HISTORY_FILE, MODEL_FILE, N_D4,
                                 NORMALISATION_FILE, CubeDataset, TrainSettings, d4_transform,
                                 predict, read_history, train)

N = 16
LM_LO, LM_HI = 13.7, 15.0
TINY = [{"conv": 4, "kernel": 3}, {"pool": 2}, {"conv": 4, "kernel": 3}, {"pool": 2},
        {"dense": 16}]


def blob_cubes(rng, logm, n=N):
    """Gaussian blobs of width 1.2-3.7 voxels rising linearly with log M, noisy, sum 1."""
    ax = np.arange(n) - (n - 1) / 2
    out = np.empty((len(logm), n, n, n), np.float32)
    for i, lm in enumerate(logm):
        s = 1.2 + 2.5 * (lm - LM_LO) / (LM_HI - LM_LO)
        c = rng.uniform(-1.5, 1.5, 3)
        x, y, v = np.meshgrid(ax - c[0], ax - c[1], ax - c[2], indexing="ij")
        cube = np.exp(-(x ** 2 + y ** 2) / (2 * s ** 2) - v ** 2 / (2 * (1.3 * s) ** 2))
        cube += np.abs(rng.normal(0, 0.03 * cube.max(), cube.shape))
        out[i] = cube / cube.sum()
    return out


def write_cubes(path, n_cubes, seed, label=None, cubes=None, n=N):
    rng = np.random.default_rng(seed)
    logm = rng.uniform(LM_LO, LM_HI, n_cubes)
    if cubes is None:
        cubes = blob_cubes(rng, logm, n)
    cols = dict(cluster_id=np.arange(n_cubes) * 7 + 1000 * seed,
                log10_m200c=logm if label is None else label(logm),
                n_gal=np.arange(n_cubes) + 20, n_members=np.arange(n_cubes) + 10,
                distance_mpc_h=np.linspace(30.0, 250.0, n_cubes))
    with CubeWriter(path, n_cubes, n, dict(n_grid=n, split="x")) as w:
        for i in range(0, n_cubes, 50):
            w.write(cubes[i:i + 50], {k: v[i:i + 50] for k, v in cols.items()})
    return cols


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cubes")
    paths = dict(train=d / "train.h5", val=d / "val.h5", val_shrunk=d / "val_shrunk.h5")
    write_cubes(paths["train"], 240, seed=1)
    write_cubes(paths["val"], 60, seed=2)
    # validation labels pulled 70% towards the middle of the mass range: the network first
    # fits them better and better, then worse as it learns the full training spread
    mid = 0.5 * (LM_LO + LM_HI)
    write_cubes(paths["val_shrunk"], 60, seed=2, label=lambda lm: mid + 0.3 * (lm - mid))
    return paths


def settings(**kw):
    base = dict(layers=TINY, epochs=12, batch_size=32, learning_rate=3e-3, patience=3,
                seed=5, verbose=0)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    return train(files["train"], files["val"], out, settings(augment=True))


def _standardised(path, norm):
    with CubeReader(path) as r:
        lm = r.column("log10_m200c")
    return (lm - norm["target"]["mean"]) / norm["target"]["std"]


def test_learns_mass_from_blob_width(files, trained):
    out = trained.model_path.parent
    norm = json.loads((out / NORMALISATION_FILE).read_text())
    # target standardisation from the TRAINING split only
    with CubeReader(files["train"]) as r:
        lm_train = r.column("log10_m200c")
    assert norm["target"]["mean"] == pytest.approx(lm_train.mean(), rel=1e-12)
    assert norm["target"]["std"] == pytest.approx(lm_train.std(), rel=1e-12)
    assert norm["input"]["scale"] == N ** 3 and norm["input"]["grid"] == [N, N, N]
    z_val = _standardised(files["val"], norm)
    # predicting the training mean scores var(z_val) (~1); the network must do far better
    assert trained.best_val_loss < 0.3 * np.mean(z_val ** 2)
    pred = predict(out, files["val"])
    rms = np.sqrt(np.mean((pred["log10_m200c_pred"] - pred["log10_m200c_true"]) ** 2))
    assert rms < 0.5 * pred["log10_m200c_true"].std()
    for f in (MODEL_FILE, HISTORY_FILE, NORMALISATION_FILE, CHECKPOINT_FILE):
        assert (out / f).exists()
    h = read_history(out / HISTORY_FILE)
    assert list(h) == ["epoch", "loss", "val_loss", "lr", "seconds"]
    np.testing.assert_array_equal(h["epoch"], np.arange(1, trained.epochs_run + 1))
    np.testing.assert_allclose(h["lr"], 3e-3, rtol=1e-6)
    assert trained.n_params == 4 * 27 + 4 + 4 * 27 * 4 + 4 + 32 * 16 + 16 + 17


def test_loss_curve_figure(trained, tmp_path):
    png = tmp_path / "loss.png"
    loss_curve_figure(trained.history_path, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_predict_columns_in_order(files, trained):
    out = trained.model_path.parent
    pred = predict(out, files["val"], batch_size=7)
    assert list(pred) == ["cluster_id", "log10_m200c_true", "log10_m200c_pred", "n_gal",
                          "n_members"]
    with CubeReader(files["val"]) as r:
        for k in ("cluster_id", "n_gal", "n_members"):
            np.testing.assert_array_equal(pred[k], r.column(k))
        np.testing.assert_array_equal(pred["log10_m200c_true"], r.column("log10_m200c"))
        cubes = r.cubes(0, len(r))
    # independent path: whole file through the saved Keras model in one call
    norm = json.loads((out / NORMALISATION_FILE).read_text())
    model = keras.saving.load_model(out / MODEL_FILE, compile=False)
    z = np.asarray(model(cubes * np.float32(N ** 3), training=False))[:, 0]
    ref = z * norm["target"]["std"] + norm["target"]["mean"]
    np.testing.assert_allclose(pred["log10_m200c_pred"], ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(predict(out, files["val"], batch_size=100)["log10_m200c_pred"],
                               pred["log10_m200c_pred"], rtol=0, atol=1e-5)


def test_early_stopping_restores_best_epoch(files, tmp_path):
    res = train(files["train"], files["val_shrunk"], tmp_path, settings(epochs=15, patience=2))
    h = read_history(tmp_path / HISTORY_FILE)
    assert res.stopped_early
    assert res.epochs_run == res.best_epoch + 2 == len(h["epoch"])
    assert res.best_epoch == int(np.argmin(h["val_loss"])) + 1
    assert h["val_loss"][-1] > res.best_val_loss
    # the saved model scores the best epoch's validation loss, not the last epoch's
    norm = json.loads((tmp_path / NORMALISATION_FILE).read_text())
    pred = predict(tmp_path, files["val_shrunk"])
    z_pred = (pred["log10_m200c_pred"] - norm["target"]["mean"]) / norm["target"]["std"]
    mse = np.mean((z_pred - _standardised(files["val_shrunk"], norm)) ** 2)
    assert mse == pytest.approx(h["val_loss"][res.best_epoch - 1], rel=1e-4)
    assert abs(mse - h["val_loss"][-1]) > 1e-3
    # and its weights are the best weights kept in the checkpoint
    model = keras.saving.load_model(tmp_path / MODEL_FILE, compile=False)
    with h5py.File(tmp_path / CHECKPOINT_FILE) as f:
        best = [f["best"][k][()] for k in sorted(f["best"])]
        state = json.loads(f.attrs["state"])
    assert state["best_epoch"] == res.best_epoch and state["stopped_early"]
    assert len(best) == len(model.variables)
    for v, b in zip(model.variables, best):
        np.testing.assert_array_equal(v.numpy(), b)
    # rerunning a finished training does not train again
    again = train(files["train"], files["val_shrunk"], tmp_path, settings(epochs=15, patience=2))
    assert again.resumed_from_epoch == res.epochs_run and again.best_epoch == res.best_epoch


class Killed(Exception):
    pass


class KillAfter(keras.callbacks.Callback):
    """Simulate a job killed right after epoch ``k`` (1-based) finished and checkpointed."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.k:
            raise Killed


def test_resume_after_kill_matches_uninterrupted(files, tmp_path):
    s = settings(epochs=4, patience=10, augment=True)
    full = train(files["train"], files["val"], tmp_path / "full", s)
    with pytest.raises(Killed):
        train(files["train"], files["val"], tmp_path / "killed", s, callbacks=[KillAfter(2)])
    assert not (tmp_path / "killed" / MODEL_FILE).exists()
    with h5py.File(tmp_path / "killed" / CHECKPOINT_FILE) as f:
        assert json.loads(f.attrs["state"])["epochs_done"] == 2
    resumed = train(files["train"], files["val"], tmp_path / "killed", s)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    h_full = read_history(tmp_path / "full" / HISTORY_FILE)
    h_res = read_history(tmp_path / "killed" / HISTORY_FILE)
    # CPU training is bit-reproducible for a fixed thread count; the tolerance allows float32
    # round-off in case a platform reorders a reduction
    np.testing.assert_allclose(h_res["loss"], h_full["loss"], rtol=1e-5)
    np.testing.assert_allclose(h_res["val_loss"], h_full["val_loss"], rtol=1e-5)
    m_full = keras.saving.load_model(full.model_path, compile=False)
    m_res = keras.saving.load_model(resumed.model_path, compile=False)
    for a, b in zip(m_full.get_weights(), m_res.get_weights()):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-7)
    # a checkpoint from other settings is ignored, not resumed
    other = train(files["train"], files["val"], tmp_path / "killed",
                  settings(epochs=1, patience=10, seed=6))
    assert other.resumed_from_epoch == 0 and other.epochs_run == 1


def test_in_memory_and_streamed_training_are_identical(files, tmp_path):
    """The in-memory loader (train.in_memory_max_mb) is a speed setting only: the same
    batches, the same augmentation, the same weights bit for bit as the streamed one."""
    base = settings(epochs=2, patience=10, augment=True)
    import dataclasses
    mem = dataclasses.replace(base, in_memory_max_mb=100.0)
    stream = dataclasses.replace(base, in_memory_max_mb=0.0)
    ds_m = CubeDataset(files["train"], 32, shuffle=True, augment=True, seed=3, memory_mb=100)
    ds_s = CubeDataset(files["train"], 32, shuffle=True, augment=True, seed=3, memory_mb=0)
    assert ds_m.in_memory and not ds_s.in_memory and ds_s.prefetch > 0
    for epoch in (0, 1):
        ds_m.set_epoch(epoch)
        ds_s.set_epoch(epoch)
        for i in range(len(ds_m)):
            (xm, zm), (xs, zs) = ds_m[i], ds_s[i]
            np.testing.assert_array_equal(xm, xs)
            np.testing.assert_array_equal(zm, zs)
    ds_s.close()
    # a budget below the split's size streams
    small = CubeDataset(files["train"], 32, memory_mb=ds_m.nbytes / 2 ** 20 * 0.99)
    assert not small.in_memory
    small.close()
    a = train(files["train"], files["val"], tmp_path / "mem", mem)
    b = train(files["train"], files["val"], tmp_path / "stream", stream)
    ha, hb = read_history(a.history_path), read_history(b.history_path)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    np.testing.assert_array_equal(ha["val_loss"], hb["val_loss"])
    wa = keras.saving.load_model(a.model_path, compile=False).get_weights()
    wb = keras.saving.load_model(b.model_path, compile=False).get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def test_changed_cubes_retrain_instead_of_resuming(files, tmp_path, caplog):
    """Issue 15, defect 1: a finished model must not be resumed (and re-saved unchanged)
    when its input cubes changed (e.g. another kde.h0), with the same settings and counts."""
    s = settings(epochs=2, patience=10)
    first = train(files["train"], files["val"], tmp_path / "m", s)
    assert first.epochs_run == 2
    w_first = keras.saving.load_model(first.model_path, compile=False).get_weights()
    # identical cubes: the finished checkpoint is reused, nothing retrains
    again = train(files["train"], files["val"], tmp_path / "m", s)
    assert again.resumed_from_epoch == 2
    # same counts, masses and grid, every cube slightly different (a wider kernel)
    with CubeReader(files["train"]) as r:
        cubes = r.cubes(0, len(r))
        cols = {k: r.column(k) for k in ("cluster_id", "log10_m200c", "n_gal", "n_members",
                                         "distance_mpc_h")}
    smoothed = 0.5 * (cubes + np.roll(cubes, 1, axis=1))
    changed = tmp_path / "train_h0.h5"
    with CubeWriter(changed, len(cubes), N, dict(n_grid=N, split="train")) as w:
        w.write(smoothed, cols)
    caplog.clear()
    with caplog.at_level("WARNING", logger="cmpipe.cnn.training"):
        redo = train(changed, files["val"], tmp_path / "m", s)
    assert redo.resumed_from_epoch == 0 and redo.epochs_run == 2
    assert "train_cubes_digest" in caplog.text and "training from scratch" in caplog.text
    norm = json.loads((tmp_path / "m" / NORMALISATION_FILE).read_text())
    from cmpipe.io.cubes import cube_digest
    assert norm["provenance"]["train_cubes_digest"] == cube_digest(changed)
    h = read_history(tmp_path / "m" / HISTORY_FILE)
    assert len(h["loss"]) == 2
    w_redo = keras.saving.load_model(redo.model_path, compile=False).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(w_first, w_redo))


def test_empty_files_raise_clear_errors(files, tmp_path):
    empty = tmp_path / "empty.h5"
    write_cubes(empty, 0, seed=3, cubes=np.zeros((0, N, N, N), np.float32))
    with pytest.raises(CatalogueError, match=r"empty\.h5.*training cube file holds no cubes"):
        train(empty, files["val"], tmp_path / "o1", settings())
    with pytest.raises(CatalogueError, match=r"empty\.h5.*validation.*splits\.validation_fraction"):
        train(files["train"], empty, tmp_path / "o2", settings())
    small = tmp_path / "small.h5"
    write_cubes(small, 3, seed=4, n=12)
    with pytest.raises(CatalogueError, match="differs from the training grid"):
        train(files["train"], small, tmp_path / "o3", settings())


def test_streaming_holds_a_few_batches(tmp_path):
    n, n_cubes, bs = 24, 200, 10
    rng = np.random.default_rng(7)
    cubes = rng.random((n_cubes, n, n, n)).astype(np.float32)
    cubes /= cubes.sum(axis=(1, 2, 3), keepdims=True)
    write_cubes(tmp_path / "big.h5", n_cubes, seed=7, cubes=cubes, n=n)
    total = cubes.nbytes
    batch_bytes = bs * n ** 3 * 4
    del cubes
    reads = []
    for shuffle, augment in ((False, False), (True, True)):
        tracemalloc.start()
        ds = CubeDataset(tmp_path / "big.h5", bs, shuffle=shuffle, augment=augment, seed=1)
        take, slab = ds._open().take, ds._open().cubes
        ds._open().take = lambda idx: (reads.append(len(idx)), take(idx))[1]
        ds._open().cubes = lambda i0, i1: (reads.append(i1 - i0), slab(i0, i1))[1]
        seen = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                x, y = ds[i]
                seen.append(len(x))
                del x, y
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ds.close()
        assert sum(seen) == 2 * n_cubes
        assert not ds.in_memory
        # the batch in use, its transform, and the ``prefetch`` batches read ahead
        assert peak < (ds.prefetch + 3) * batch_bytes and peak < total / 4, \
            (peak, batch_bytes, total)
    assert max(reads) == bs and sum(reads) == 4 * n_cubes


def test_shuffling_is_seeded_per_epoch(files):
    ds = CubeDataset(files["train"], 32, shuffle=True, seed=3)
    orders = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        idx = [ds.batch_indices(i) for i in range(len(ds))]
        assert all(np.all(np.diff(b) > 0) for b in idx)  # sorted for locality
        flat = np.concatenate(idx)
        np.testing.assert_array_equal(np.sort(flat), np.arange(ds.n_cubes))
        orders.append(flat)
    assert not np.array_equal(orders[0], orders[1])
    again = CubeDataset(files["train"], 32, shuffle=True, seed=3, epoch=1)
    np.testing.assert_array_equal(np.concatenate([again.batch_indices(i)
                                                  for i in range(len(again))]), orders[1])
    x1, y1 = again[2]
    x2, y2 = ds[2]
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    ds.close()
    again.close()


def _explicit_d4(cube):
    """The 8 maps (x, y) -> (+-x, +-y), (+-y, +-x) written as index arithmetic."""
    n = cube.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r = n - 1
    maps = [(i, j), (r - i, j), (i, r - j), (r - i, r - j),
            (j, i), (r - j, i), (j, r - i), (r - j, r - i)]
    return [cube[a, b, :] for a, b in maps]


def test_d4_transforms_are_the_sky_symmetries():
    rng = np.random.default_rng(11)
    cube = rng.random((6, 6, 5))
    out = [d4_transform(cube, t) for t in range(N_D4)]
    np.testing.assert_array_equal(out[0], cube)
    ref = _explicit_d4(cube)
    # each transform is one of the explicit maps, and all 8 are hit exactly once
    hits = [[k for k, r in enumerate(ref) if np.array_equal(o, r)] for o in out]
    assert sorted(h[0] for h in hits) == list(range(8)) and all(len(h) == 1 for h in hits)
    for o in out:
        assert o.shape == cube.shape
        # v axis untouched: the velocity profile (sum over the sky) is unchanged
        np.testing.assert_allclose(o.sum(axis=(0, 1)), cube.sum(axis=(0, 1)), rtol=1e-12)
        assert o.sum() == pytest.approx(cube.sum(), rel=1e-12)
    # closed group: composing any two elements gives an element
    for a, b in itertools.product(range(N_D4), repeat=2):
        comp = d4_transform(d4_transform(cube, a), b)
        assert any(np.array_equal(comp, o) for o in out), (a, b)
    # a cube symmetric under an element is left unchanged by it: symmetrise over the
    # cyclic subgroup the element generates
    for t in range(N_D4):
        sym, cur = np.zeros_like(cube), cube
        for _ in range(4):
            sym += cur
            cur = d4_transform(cur, t)
        np.testing.assert_allclose(d4_transform(sym, t), sym, rtol=1e-12)
    with pytest.raises(ValueError, match="0..7"):
        d4_transform(cube, 8)


def test_dataset_augmentation_is_seeded_d4(files):
    plain = CubeDataset(files["train"], 32, shuffle=True, seed=4)
    aug = CubeDataset(files["train"], 32, shuffle=True, seed=4, augment=True)
    x0, y0 = plain[1]
    xa, ya = aug[1]
    np.testing.assert_array_equal(y0, ya)
    used = set()
    for c, a in zip(x0, xa):
        k = [t for t in range(N_D4) if np.array_equal(d4_transform(c, t), a)]
        assert k, "augmented cube is not a D4 image of the original"
        used.add(k[0])
        assert a.sum() == pytest.approx(c.sum(), rel=1e-5)
    assert len(used) >= 4
    np.testing.assert_array_equal(aug[1][0], xa)   # same (seed, epoch, batch): same cubes
    aug.set_epoch(1)
    plain.set_epoch(1)
    assert not np.array_equal(aug[1][0], plain[1][0])
    # input scaling: mean voxel 1
    assert x0.mean() == pytest.approx(1.0, rel=1e-4)
    plain.close()
    aug.close()


def test_settings_validation():
    s = TrainSettings()
    assert (s.epochs, s.batch_size, s.learning_rate, s.beta_1, s.beta_2, s.patience) == \
        (50, 100, 1e-4, 0.9, 0.999, 5)
    assert TrainSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainSettings.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)
    with pytest.raises(ValueError, match="beta_2"):
        TrainSettings(beta_2=1.0)
    with pytest.raises(ValueError, match="layers"):
        TrainSettings(layers=[{"conv": -1}])


def test_log1p_input_is_recorded_and_used_by_predict(files, tmp_path):
    """train.input_transform: log1p trains on log(1 + cube * scale), records it in
    normalisation.json, and predict applies it (checked against the saved Keras model fed
    numpy's log1p of the scaled cubes)."""
    res = train(files["train"], files["val"], tmp_path, settings(epochs=2,
                                                                  input_transform="log1p"))
    norm = json.loads((tmp_path / NORMALISATION_FILE).read_text())
    assert norm["input"]["function"] == "log1p" and "log(1 +" in norm["input"]["transform"]
    with CubeReader(files["val"]) as r:
        cubes = r.cubes(0, len(r))
    model = keras.saving.load_model(res.model_path, compile=False)
    x = np.log1p(cubes.astype(np.float64) * N ** 3).astype(np.float32)
    ref = np.asarray(model(x, training=False))[:, 0] * norm["target"]["std"] + \
        norm["target"]["mean"]
    np.testing.assert_allclose(predict(tmp_path, files["val"])["log10_m200c_pred"], ref,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="input_transform"):
        CubeDataset(files["val"], 8, input_transform="sqrt")


# -- the distance input ----------------------------------------------------------------------

def write_distance_cubes(path, n_cubes, seed):
    """Blobs whose width encodes w = log M - 0.5 u, with u = (D - 140) / 110 in [-1, 1]
    carried only by the distance column. From the cube alone the best estimate E[log M | w]
    keeps a scatter sqrt(var(log M) var(0.5 u) / var(w)) = 0.18 dex (log M uniform over
    0.8 dex); the cube and its distance determine log M (as the flux limit makes a near
    cluster of one mass look unlike a far one)."""
    rng = np.random.default_rng(seed)
    logm = rng.uniform(LM_LO + 0.25, LM_HI - 0.25, n_cubes)
    dist = rng.uniform(30.0, 250.0, n_cubes)
    u = (dist - 140.0) / 110.0
    cols = dict(cluster_id=np.arange(n_cubes) + 1000 * seed, log10_m200c=logm,
                n_gal=np.full(n_cubes, 30), n_members=np.full(n_cubes, 20),
                distance_mpc_h=dist)
    with CubeWriter(path, n_cubes, N, dict(n_grid=N, split="x")) as w:
        w.write(blob_cubes(rng, logm - 0.5 * u), cols)
    return cols


@pytest.fixture(scope="module")
def distance_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("distance_cubes")
    paths = dict(train=d / "train.h5", val=d / "val.h5")
    write_distance_cubes(paths["train"], 240, seed=11)
    write_distance_cubes(paths["val"], 60, seed=12)
    return paths


def test_distance_input_learns_what_the_cube_cannot_tell(distance_files, tmp_path):
    """Same cubes, seed and settings: the network with the distance input beats the blind
    one by far (the blind one cannot go below the 0.18 dex the distance carries), stores
    the distance standardisation, and predicts from the cube file's distance column."""
    s = dict(epochs=20, patience=5)
    blind = train(distance_files["train"], distance_files["val"], tmp_path / "blind",
                  settings(**s))
    aware = train(distance_files["train"], distance_files["val"], tmp_path / "aware",
                  settings(distance_input=True, **s))
    norm = json.loads((tmp_path / "aware" / NORMALISATION_FILE).read_text())
    with CubeReader(distance_files["train"]) as r:
        d_train = r.column("distance_mpc_h")
    assert norm["distance"]["mean"] == pytest.approx(d_train.mean(), rel=1e-12)
    assert norm["distance"]["std"] == pytest.approx(d_train.std(), rel=1e-12)
    assert "distance" not in json.loads((tmp_path / "blind" / NORMALISATION_FILE).read_text())
    # the weights the distance adds: one per unit of the first dense layer
    assert aware.n_params == blind.n_params + TINY[-1]["dense"]
    rms = {}
    for name, res in (("blind", blind), ("aware", aware)):
        p = predict(res.model_path.parent, distance_files["val"], batch_size=16)
        rms[name] = np.sqrt(np.mean((p["log10_m200c_pred"] - p["log10_m200c_true"]) ** 2))
    assert rms["blind"] > 0.15                       # the cube alone: >= 0.18 dex
    assert rms["aware"] < 0.75 * rms["blind"]        # 0.125 against 0.192 when written
    # independent path: the saved model called on the dict input by hand
    model = keras.saving.load_model(aware.model_path, compile=False)
    with CubeReader(distance_files["val"]) as r:
        cubes, d = r.cubes(0, len(r)), r.column("distance_mpc_h")
    dz = ((d - norm["distance"]["mean"]) / norm["distance"]["std"]).astype(np.float32)[:, None]
    z = np.asarray(model({"kde": cubes * np.float32(N ** 3), "distance": dz},
                         training=False))[:, 0]
    p = predict(aware.model_path.parent, distance_files["val"], batch_size=16)
    np.testing.assert_allclose(p["log10_m200c_pred"],
                               z * norm["target"]["std"] + norm["target"]["mean"],
                               rtol=0, atol=1e-5)
    # a different distance alone moves the prediction
    z_far = np.asarray(model({"kde": cubes * np.float32(N ** 3), "distance": dz + 1.0},
                             training=False))[:, 0]
    assert np.abs(z_far - z).mean() > 0.05


def test_distance_input_needs_finite_distances(distance_files, tmp_path):
    with CubeReader(distance_files["val"]) as r:
        cubes = r.cubes(0, len(r))
        cols = {k: r.column(k) for k in ("cluster_id", "log10_m200c", "n_gal", "n_members",
                                         "distance_mpc_h")}
    cols["distance_mpc_h"][3] = np.nan
    bad = tmp_path / "nan_distance.h5"
    with CubeWriter(bad, len(cubes), N, dict(n_grid=N, split="train")) as w:
        w.write(cubes, cols)
    with pytest.raises(CatalogueError, match="nan_distance.h5.*distance_mpc_h.*1 of 60"):
        train(bad, distance_files["val"], tmp_path / "m",
              settings(epochs=1, distance_input=True))
    # the blind network does not read the column
    assert train(bad, distance_files["val"], tmp_path / "b", settings(epochs=1)).epochs_run == 1
