"""Dimensionality ablation: the 1D and 2D inputs are the marginals of the 3D input.

The references are independent of cmpipe.kde: the kernel mass a 3-D (or 2-D) Gaussian
kernel puts outside the window comes from scipy's normal CDFs, and the ring marginal of
the 3-D KDE is integrated numerically from scipy.stats.gaussian_kde.
"""
import math

import numpy as np
import pytest
from scipy import stats

from cmpipe.evaluation.ablation import ablation_inputs, input_shape, method_entry, precision_order
from cmpipe.kde import Grid3D, axis_centres, kde_1d, kde_2d, kde_cube

H0 = 0.175
L, V, N = 1.6, 2200.0, 32


def cluster(rng, n_mem=60, n_int=40, sx=0.3, sv=500.0):
    """Members: Gaussian in (x, y, v); interlopers: uniform over the window."""
    x = np.concatenate([rng.normal(0, sx, n_mem), rng.uniform(-L, L, n_int)])
    y = np.concatenate([rng.normal(0, sx, n_mem), rng.uniform(-L, L, n_int)])
    v = np.concatenate([rng.normal(0, sv, n_mem), rng.uniform(-V, V, n_int)])
    keep = (np.abs(x) < L) & (np.abs(y) < L) & (np.abs(v) < V)
    return x[keep], y[keep], v[keep]


def mass_inside_square(x, y):
    """Mean over galaxies of the kernel mass (x, y marginal, h0^2 cov) inside |x|,|y|<=L."""
    H = H0 ** 2 * np.cov(np.vstack([x, y]))
    out = []
    for xi, yi in zip(x, y):
        mvn = stats.multivariate_normal([xi, yi], H)
        out.append(mvn.cdf([L, L]) - mvn.cdf([-L, L]) - mvn.cdf([L, -L]) + mvn.cdf([-L, -L]))
    return float(np.mean(out))


def test_1d_input_is_the_v_marginal_of_the_3d_cube_for_a_compact_cluster():
    """Kernels at least a voxel wide in x, y (so the voxel sum over x, y is the integral
    to ~exp(-2 pi^2) = 3e-9) and far inside the sky window: the v marginal of the cube is
    the 1D input to float32 rounding (same v grid, same bandwidth h0^2 var(v))."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1.1, 1.1, (2, 80))
    v = rng.normal(0, 500.0, 80)
    assert H0 * min(np.std(x, ddof=1), np.std(y, ddof=1)) > 2 * L / N       # >= 1 voxel
    cube = kde_cube(x, y, v, grid=Grid3D(n=N, half_width_mpc_h=L, v_max_kms=V), h0=H0)
    assert mass_inside_square(x, y) > 1 - 1e-6
    np.testing.assert_allclose(cube.sum(axis=(0, 1)), kde_1d(v, n=N, v_max_kms=V, h0=H0),
                               atol=2e-7, rtol=0)


@pytest.mark.parametrize("seed", [2, 3])
def test_1d_input_vs_3d_marginal_is_bounded_by_the_mass_off_the_sky_window(seed):
    """With interlopers at the window edge the 3D cube drops kernel mass beyond |x|,|y| = L;
    the L1 distance of the normalised marginals is at most twice the dropped share (plus
    the voxel-sum error of kernels narrower than a voxel, negligible for these clusters)."""
    rng = np.random.default_rng(seed)
    x, y, v = cluster(rng)
    cube = kde_cube(x, y, v, grid=Grid3D(n=N, half_width_mpc_h=L, v_max_kms=V), h0=H0)
    l1 = np.abs(cube.sum(axis=(0, 1)) - kde_1d(v, n=N, v_max_kms=V, h0=H0)).sum()
    bound = 2 * (1 - mass_inside_square(x, y))
    assert 0 < l1 <= bound + 1e-5, (l1, bound)


def test_2d_input_v_marginal_is_the_1d_input_up_to_mass_below_r_zero():
    """The (R, v) kernel has v variance h0^2 var(v), as the 1D kernel; they differ only by
    the kernel mass kde_2d drops at R < 0 (and R > sqrt(2) L), from the normal CDF."""
    rng = np.random.default_rng(4)
    x, y, v = cluster(rng)
    img = kde_2d(x, y, v, n=N, half_width_mpc_h=L, v_max_kms=V, h0=H0)
    r = np.hypot(x, y)
    sd_r = H0 * np.std(r, ddof=1)
    inside = stats.norm.cdf(math.sqrt(2) * L, r, sd_r) - stats.norm.cdf(0.0, r, sd_r)
    l1 = np.abs(img.sum(axis=0) - kde_1d(v, n=N, v_max_kms=V, h0=H0)).sum()
    assert l1 <= 2 * (1 - inside.mean()) + 1e-5


def ring_marginal(x, y, v, n_theta=360):
    """Numerical (R, v) marginal of scipy's 3D KDE over rings, restricted to the sky
    window, at the 2D input's voxel centres (R dtheta weight), normalised."""
    kde = stats.gaussian_kde(np.vstack([x, y, v]), bw_method=H0)
    rc = axis_centres(0.0, math.sqrt(2) * L, N)
    vc = axis_centres(-V, V, N)
    th = (np.arange(n_theta) + 0.5) * 2 * np.pi / n_theta
    R, T, VV = np.meshgrid(rc, th, vc, indexing="ij")
    X, Y = R * np.cos(T), R * np.sin(T)
    dens = kde(np.vstack([X.ravel(), Y.ravel(), VV.ravel()])).reshape(X.shape)
    ring = (R * dens * ((np.abs(X) <= L) & (np.abs(Y) <= L))).sum(axis=1)
    return ring / ring.sum()


def test_2d_input_is_the_ring_marginal_of_the_3d_kde_to_the_bandwidth_scale():
    """kde_2d smooths radii with h0 sd(R), the 3D KDE's ring marginal with the (x, y)
    kernel: the two agree to the bandwidth scale (L1 < 0.15; 0.07-0.12 measured on the
    demo run's clusters), their v marginals to the edge losses, and each is far closer
    to its own cluster's marginal than to another cluster's."""
    rng = np.random.default_rng(5)
    a = cluster(rng)
    b = cluster(rng, sx=0.6, sv=900.0)
    img_a = kde_2d(*a, n=N, half_width_mpc_h=L, v_max_kms=V, h0=H0)
    ring_a, ring_b = ring_marginal(*a), ring_marginal(*b)
    l1_own = np.abs(img_a - ring_a).sum()
    l1_other = np.abs(img_a - ring_b).sum()
    assert l1_own < 0.15
    assert l1_other > 3 * l1_own
    assert np.abs(img_a.sum(axis=0) - ring_a.sum(axis=0)).sum() < 0.03
    rc = axis_centres(0.0, math.sqrt(2) * L, N)
    mean_r = [(m.sum(axis=1) * rc).sum() for m in (img_a, ring_a)]
    assert mean_r[0] == pytest.approx(mean_r[1], abs=0.05)           # h^-1 Mpc


@pytest.mark.parametrize("dim", ["1d", "2d"])
def test_ablation_inputs_are_the_single_cluster_kdes(dim):
    rng = np.random.default_rng(6)
    parts = [cluster(rng, n_mem=m, n_int=10) for m in (20, 50, 8)]
    cols = [np.concatenate([p[i] for p in parts]) for i in range(3)]
    offsets = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])])
    got = ablation_inputs(*cols, offsets, dim, n=N, half_width_mpc_h=L, v_max_kms=V, h0=H0)
    assert got.shape == (3, *input_shape(dim, N)) and got.dtype == np.float32
    for k, (x, y, v) in enumerate(parts):
        want = kde_1d(v, n=N, v_max_kms=V, h0=H0) if dim == "1d" else \
            kde_2d(x, y, v, n=N, half_width_mpc_h=L, v_max_kms=V, h0=H0)
        np.testing.assert_array_equal(got[k], want)
        assert got[k].sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="dimensionality"):
        input_shape("3d", N)


def _report(sd, n=400, seed=0):
    from cmpipe.evaluation.metrics import evaluation_report
    rng = np.random.default_rng(seed)
    t = rng.uniform(13.7, 15.0, n)
    p = t + rng.normal(0, sd, n)
    return evaluation_report(t, {"point": p}, n_mem=rng.integers(10, 200, n), point="point")


def test_method_entry_and_precision_order():
    reps = {"cnn1d": _report(0.30), "cnn2d": _report(0.20, seed=1), "cnn3d": _report(0.12, seed=2)}
    methods = {k: method_entry(r, label=k, kind="network") for k, r in reps.items()}
    for k, m in methods.items():
        assert m["scatter_dex"] == pytest.approx(reps[k]["overall"]["std"])
        assert m["coverage_68"] is None                      # point estimates only
        assert sum(m["per_bin"]["n"]) <= m["n"]
    order = precision_order(methods)
    assert order["monotonic"] is True
    assert [s["scatter_change_dex"] < 0 for s in order["steps"]] == [True, True]
    methods["cnn3d"] = method_entry(_report(0.25, seed=3), label="3d", kind="network")
    assert precision_order(methods)["monotonic"] is False


# -- seeds (ablation.seeds) -----------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _seed63(master, label):
    """stage_seed by hand: SeedSequence([seed, crc32(label)]), first 64-bit word >> 1."""
    import zlib
    ss = np.random.SeedSequence([master, zlib.crc32(label.encode())])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def test_seed_index_reads_the_seeddir_wildcard():
    from cmpipe.evaluation.ablation import seed_index
    assert seed_index("") == 0 and seed_index(None) == 0
    assert seed_index("seeds/1/") == 1 and seed_index("seeds/12/") == 12
    assert seed_index("seeds/3") == 3
    for bad in ("seeds/0/", "seeds/01/", "seed/1/", "seeds/x/", "1/", "seeds/-1/"):
        with pytest.raises(ValueError, match="seeds/<k>/"):
            seed_index(bad)


def test_training_seed_derives_from_the_master_seed():
    from cmpipe.evaluation.ablation import training_seed
    # seed 0: the single-run products' seeds (the CNN3D's is rule train's)
    assert training_seed(7, "3d", 0) == _seed63(7, "train") % 2 ** 31
    assert training_seed(7, "1d", 0) == _seed63(7, "ablation_train_1d") % 2 ** 31
    assert training_seed(7, "2d", 2) == _seed63(7, "ablation_train_2d_seed2") % 2 ** 31
    assert training_seed(7, "3d", 1) == _seed63(7, "ablation_train_3d_seed1") % 2 ** 31
    seeds = {training_seed(7, d, k) for d in ("1d", "2d", "3d") for k in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2 ** 31 for s in seeds)
    assert training_seed(8, "1d", 1) != training_seed(7, "1d", 1)
    with pytest.raises(ValueError, match="dimensionality"):
        training_seed(7, "4d", 1)
    with pytest.raises(ValueError, match="seed number"):
        training_seed(7, "1d", -1)


def test_seed_statistics_by_hand():
    from cmpipe.evaluation.ablation import seed_statistics
    st = seed_statistics([0.10, 0.12, 0.14])
    assert st["n"] == 3 and st["mean"] == pytest.approx(0.12)
    assert st["sd"] == pytest.approx(0.02)                  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert st["sem"] == pytest.approx(0.02 / math.sqrt(3))
    st = seed_statistics([None, 0.1, float("nan"), 0.3])     # non-finite values left out
    assert st["n"] == 2 and st["mean"] == pytest.approx(0.2)
    assert st["sd"] == pytest.approx(math.sqrt(0.02)) and st["sem"] == pytest.approx(0.1)
    assert seed_statistics([0.2]) == dict(n=1, mean=0.2, sd=None, sem=None)
    assert seed_statistics([]) == dict(n=0, mean=None, sd=None, sem=None)


def _row(scatter, bias=0.01, c68=0.68, c95=0.95):
    return dict(scatter_dex=scatter, mean_residual_dex=bias, coverage_68=c68,
                coverage_95=c95, label="x", n=100)


def test_network_seeds_lists_every_seed_and_the_spread():
    from cmpipe.evaluation.ablation import network_seeds
    ns = network_seeds([_row(0.15, bias=0.02), _row(0.15, c68=0.7), _row(0.18, c95=0.9)])
    assert ns["n_seeds"] == 3
    assert ns["seeds"] == [
        dict(seed=0, scatter_dex=0.15, mean_residual_dex=0.02, coverage_68=0.68,
             coverage_95=0.95),
        dict(seed=1, scatter_dex=0.15, mean_residual_dex=0.01, coverage_68=0.7,
             coverage_95=0.95),
        dict(seed=2, scatter_dex=0.18, mean_residual_dex=0.01, coverage_68=0.68,
             coverage_95=0.9)]
    assert ns["scatter_mean_dex"] == pytest.approx(0.16)
    assert ns["scatter_sd_dex"] == pytest.approx(math.sqrt(0.0003))   # (1+1+4)e-4 / 2
    assert ns["scatter_sem_dex"] == pytest.approx(0.01)
    one = network_seeds([_row(0.2)])
    assert one["n_seeds"] == 1 and one["scatter_sd_dex"] is None
    with pytest.raises(ValueError, match="at least one seed"):
        network_seeds([])


def _seeded(*scatters):
    from cmpipe.evaluation.ablation import network_seeds
    rows = [_row(s) for s in scatters]
    return dict(rows[0], kind="network", **network_seeds(rows))


def test_precision_order_seeds_by_hand():
    from cmpipe.evaluation.ablation import precision_order_seeds
    methods = {"cnn1d": _seeded(0.30, 0.32, 0.34),      # mean 0.32, sem 0.02/sqrt(3)
               "cnn2d": _seeded(0.20, 0.21, 0.22),      # mean 0.21, sem 0.01/sqrt(3)
               "cnn3d": _seeded(0.15, 0.15, 0.18),      # mean 0.16, sem 0.01
               "virial": dict(_row(0.4), kind="baseline")}
    po = precision_order_seeds(methods)
    assert po["order"] == ["cnn3d", "cnn2d", "cnn1d"] and po["monotonic"] is True
    assert po["scatter_mean_dex"] == pytest.approx({"cnn1d": 0.32, "cnn2d": 0.21,
                                                    "cnn3d": 0.16})
    assert po["n_seeds"] == {"cnn1d": 3, "cnn2d": 3, "cnn3d": 3}
    s12, s23 = po["steps"]
    assert s12["step"] == "cnn1d -> cnn2d" and s23["step"] == "cnn2d -> cnn3d"
    assert s12["scatter_change_dex"] == pytest.approx(-0.11)
    assert s12["combined_sem_dex"] == pytest.approx(math.sqrt(0.0004 / 3 + 0.0001 / 3))
    assert s12["change_in_sem"] == pytest.approx(-0.11 / math.sqrt(0.0005 / 3))  # -8.52
    assert s23["scatter_change_dex"] == pytest.approx(-0.05)
    assert s23["combined_sem_dex"] == pytest.approx(math.sqrt(0.0001 / 3 + 0.0001))
    assert s23["change_in_sem"] == pytest.approx(-4.330127, rel=1e-6)
    assert s12["significant"] is True and s23["significant"] is True
    assert po["statement"].startswith("mean scatter over seeds (+- s.e.m.), best first: "
                                      "cnn3d 0.1600 +- 0.0100 < cnn2d 0.2100 +- 0.0058 < "
                                      "cnn1d 0.3200 +- 0.0115 dex; falls with "
                                      "dimensionality: yes")
    assert "cnn2d -> cnn3d: -0.0500 dex (-4.3 s.e.m., significant at 2)" in po["statement"]
    # not monotonic on the means; a step within the threshold is not significant
    methods["cnn3d"] = _seeded(0.20, 0.22, 0.24)        # mean 0.22, sem 0.02/sqrt(3)
    po = precision_order_seeds(methods, threshold_sem=2.0)
    assert po["order"] == ["cnn2d", "cnn3d", "cnn1d"] and po["monotonic"] is False
    assert po["steps"][1]["change_in_sem"] == pytest.approx(0.01 / math.sqrt(0.0005 / 3))
    assert po["steps"][1]["significant"] is False
    assert precision_order_seeds(methods, threshold_sem=0.5)["steps"][1]["significant"]


def test_precision_order_seeds_with_one_seed_has_no_significance():
    from cmpipe.evaluation.ablation import precision_order_seeds
    po = precision_order_seeds({"cnn1d": _seeded(0.3), "cnn2d": _seeded(0.2),
                                "cnn3d": _seeded(0.1)})
    assert po["monotonic"] is True and po["order"] == ["cnn3d", "cnn2d", "cnn1d"]
    assert [s["change_in_sem"] for s in po["steps"]] == [None, None]
    assert [s["significant"] for s in po["steps"]] == [None, None]
    assert "one seed: no spread to judge it" in po["statement"]
    assert precision_order_seeds({"cnn3d": _seeded(0.1)})["monotonic"] is None


def test_ablation_train_settings_of_every_seed():
    """The CNN3D's seeds train exactly as rule train but for the seed; the CNN1D/2D's seed 0
    keeps its single-run seed."""
    import dataclasses

    from cmpipe.evaluation.ablation import training_seed
    from cmpipe.settings import Settings, load_config
    from cmpipe.stages.ablation import ablation_train_settings
    from cmpipe.stages.train import train_settings

    s = Settings.from_config(load_config(ROOT / "config.yaml",
                                         ROOT / "src/cmpipe/data/config.schema.yaml"))
    main = train_settings(s)
    assert ablation_train_settings(s, "3d", 0) == main
    assert ablation_train_settings(s, "3d", 2) == dataclasses.replace(
        main, seed=training_seed(s.seed, "3d", 2))
    one = ablation_train_settings(s, "1d", 0)
    assert one.seed == _seed63(s.seed, "ablation_train_1d") % 2 ** 31
    assert one.augment is False and one.epochs == main.epochs
    assert ablation_train_settings(s, "1d", 1) == dataclasses.replace(
        one, seed=training_seed(s.seed, "1d", 1))
    # the cube-only CNN3D (ablation.cube_only) is the main CNN3D without the distance
    # input: same seed, layers, augmentation and schedule
    assert main.distance_input is True                      # config.yaml's network
    assert ablation_train_settings(s, "3dcube", 0) == dataclasses.replace(
        main, distance_input=False)
    from cmpipe.stages.ablation import _check_network
    with pytest.raises(ValueError, match="seed 0 only"):
        _check_network("3dcube", 1)
    with pytest.raises(ValueError, match="3dcube"):
        _check_network("4d", 0)


def _metrics_file(path, rep, n, seed=None, **extra):
    from cmpipe.io.tables import write_json
    from cmpipe.stages.common import jsonable
    m = dict(network=rep, n_eval=n, **extra)
    if seed is not None:
        m["seed"] = seed
    write_json(path, jsonable(m))
    return path


def _fake_run(tmp_path, n_seeds=3, n=300):
    """Metrics files of every network at every seed (scatter 0.25 / 0.18 / 0.12 dex, a
    few thousandths apart between seeds) and the main evaluation's, with a baseline."""
    sd = {"1d": 0.25, "2d": 0.18, "3d": 0.12}
    files = {}
    for d, base in sd.items():
        for k in range(n_seeds):
            rep = _report(base + 0.004 * (k - 1), n=n, seed=10 * k + len(files))
            thirds = _thirds(d, k)
            if d == "3d" and k == 0:
                files[d, k] = _metrics_file(tmp_path / "evaluation.json", rep, n,
                                            point_estimate="map",
                                            baselines={"virial": _report(0.3, n=n)},
                                            by_observer_distance=thirds)
            else:
                files[d, k] = _metrics_file(tmp_path / f"{d}-{k}.json", rep, n,
                                            seed=k if k or d == "1d" else None,
                                            by_observer_distance=thirds)
    return files


def _thirds(d, k):
    """Hand-made ``by_observer_distance`` of network ``d`` at seed ``k``."""
    return {lab: dict(n=100, coverage_68=0.6 + 0.01 * j + 0.02 * k + 0.001 * int(d[0]),
                      mean_residual_dex=0.01 * (j - 1) - 0.002 * k)
            for j, lab in enumerate(("10-100", "100-200", "200-250"))} | {"note": "thirds"}


def _summary_kwargs(files, n_seeds):
    return dict(metrics_1d=files["1d", 0], metrics_2d=files["2d", 0],
                metrics_3d=files["3d", 0],
                **{f"seeds_{d}": [files[d, k] for k in range(1, n_seeds)]
                   for d in ("1d", "2d", "3d")})


def test_ablation_summary_and_figure_over_seeds(tmp_path):
    """Rules ablation_summary and ablation_plots on hand-made metrics files: seed 0 keeps
    the single-run keys, every network lists its seeds, the ranking uses the means."""
    import json

    from cmpipe import stages
    from cmpipe.io.tables import CatalogueError
    from cmpipe.settings import load_config

    cfg = load_config(ROOT / "config.yaml", ROOT / "src/cmpipe/data/config.schema.yaml")
    files = _fake_run(tmp_path)
    out = tmp_path / "summary.json"
    stages.ablation_summary(config=cfg, out=out, **_summary_kwargs(files, 3))
    ab = json.loads(out.read_text())
    assert set(ab["methods"]) == {"cnn1d", "cnn2d", "cnn3d", "virial"}
    assert ab["n_seeds"] == 3 and ab["n_eval"] == 300
    for d in ("1d", "2d", "3d"):
        m = ab["methods"][f"cnn{d}"]
        rep = [json.loads(files[d, k].read_text())["network"] for k in range(3)]
        assert m["scatter_dex"] == pytest.approx(rep[0]["overall"]["std"])      # seed 0
        assert [s["seed"] for s in m["seeds"]] == [0, 1, 2]
        sc = [r["overall"]["std"] for r in rep]
        assert [s["scatter_dex"] for s in m["seeds"]] == pytest.approx(sc)
        assert m["scatter_mean_dex"] == pytest.approx(np.mean(sc))
        assert m["scatter_sd_dex"] == pytest.approx(np.std(sc, ddof=1))
        assert m["scatter_sem_dex"] == pytest.approx(np.std(sc, ddof=1) / math.sqrt(3))
        # each seed's distance thirds, and their mean and spread over seeds
        th = m["by_observer_distance_seeds"]
        assert list(th) == ["10-100", "100-200", "200-250"]             # nearest first
        for lab, v in th.items():
            cov = [_thirds(d, k)[lab]["coverage_68"] for k in range(3)]
            res = [_thirds(d, k)[lab]["mean_residual_dex"] for k in range(3)]
            assert v["coverage_68_seeds"] == pytest.approx(cov)
            assert v["coverage_68_mean"] == pytest.approx(np.mean(cov))
            assert v["coverage_68_sd"] == pytest.approx(np.std(cov, ddof=1))
            assert v["mean_residual_seeds_dex"] == pytest.approx(res)
            assert v["mean_residual_mean_dex"] == pytest.approx(np.mean(res))
    assert "seeds" not in ab["methods"]["virial"]
    assert ab["precision_order"]["monotonic"] is ab["matches_expectation"] is True
    po = ab["precision_order_seeds"]
    assert po["order"] == ["cnn3d", "cnn2d", "cnn1d"] and po["monotonic"] is True
    assert ab["matches_expectation_seeds"] is True
    png = tmp_path / "scatter.png"
    stages.ablation_plots(summary=out, png=png)
    assert png.stat().st_size > 10_000
    # one seed: the single-run table, no spread
    stages.ablation_summary(config=cfg, out=out, **_summary_kwargs(files, 1))
    ab = json.loads(out.read_text())
    assert ab["n_seeds"] == 1 and ab["methods"]["cnn2d"]["scatter_sd_dex"] is None
    assert ab["methods"]["cnn2d"]["by_observer_distance_seeds"]["10-100"][
        "coverage_68_sd"] is None
    # errors name the file
    kw = _summary_kwargs(files, 3)
    kw["seeds_2d"] = kw["seeds_2d"][::-1]
    with pytest.raises(CatalogueError, match="2d-2.json.*seed"):
        stages.ablation_summary(config=cfg, out=out, **kw)
    kw = _summary_kwargs(files, 3)
    kw["seeds_3d"] = kw["seeds_3d"][:1]
    with pytest.raises(ValueError, match="same seeds"):
        stages.ablation_summary(config=cfg, out=out, **kw)
    _metrics_file(files["1d", 2], _report(0.25, n=200), 200, seed=2)
    with pytest.raises(CatalogueError, match="different numbers of eval clusters"):
        stages.ablation_summary(config=cfg, out=out, **_summary_kwargs(files, 3))
