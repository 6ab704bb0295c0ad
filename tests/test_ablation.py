"""Dimensionality ablation: the 1D and 2D inputs are the marginals of the 3D input.

The references are independent of cmpipe.kde: the kernel mass a 3-D (or 2-D) Gaussian
kernel puts outside the window comes from scipy's normal CDFs, and the ring marginal of
the 3-D KDE is integrated numerically from scipy.stats.gaussian_kde.
"""
import math

import numpy as np
import pytest
from scipy import stats

from cmpipe.ablation import ablation_inputs, input_shape, method_entry, precision_order
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
    from cmpipe.metrics import evaluation_report
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
