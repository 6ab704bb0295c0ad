"""Tests of cmpipe.kde against scipy.stats.gaussian_kde and direct Gaussian sums.

Tolerance of every cube comparison: max |ours - reference| <= 1e-6 * max(reference), both
normalised to sum 1 over the grid (our cubes are float32, ~6e-8 relative rounding).
"""
import math

import numba
import numpy as np
import pytest
from scipy.stats import gaussian_kde, multivariate_normal

from cmpipe.kde import (DEFAULT_H0, Grid3D, KDEInputError, axis_centres, grid_points,
                        kde_1d, kde_2d, kde_cube, kde_cubes, kernel_covariance)

TOL = 1e-6                    # of the reference cube's maximum
SMALL = Grid3D(n=30)          # where scipy on 50^3 would be slow
L, V = 1.6, 2200.0


def _cluster(rng, n_gal, half_width=L, v_max=V):
    """Realistic cluster: x, y ~ N(0, 0.5) h^-1 Mpc, v ~ N(0, 600) km/s, clipped to window."""
    x = np.clip(rng.normal(0.0, 0.5, n_gal), -half_width, half_width)
    y = np.clip(rng.normal(0.0, 0.5, n_gal), -half_width, half_width)
    v = np.clip(rng.normal(0.0, 600.0, n_gal), -v_max, v_max)
    return x, y, v


def _normalised(values, shape):
    values = np.asarray(values, dtype=np.float64).reshape(shape)
    return values / values.sum()


def _scipy_cube(x, y, v, grid, h0=DEFAULT_H0):
    kde = gaussian_kde(np.stack([x, y, v]), bw_method=h0)
    return _normalised(kde.evaluate(grid_points(grid)), grid.shape)


def _assert_close(ours, ref):
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    err = np.max(np.abs(ours.astype(np.float64) - ref))
    assert err <= TOL * ref.max(), f"max abs diff {err:.3g} > {TOL} * max {ref.max():.3g}"


@pytest.fixture
def rng():
    return np.random.default_rng(20200907)


# ------------------------------------------------------------------------ grid conventions

def test_grid_centres_and_point_order():
    g = Grid3D()
    d = 2 * L / 50
    np.testing.assert_allclose(g.x_centres[[0, -1]], [-L + d / 2, L - d / 2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(g.v_centres, -g.v_centres[::-1], atol=1e-9)
    np.testing.assert_allclose(np.diff(g.v_centres), 2 * V / 50, rtol=1e-12)
    np.testing.assert_array_equal(axis_centres(0.0, 1.0, 4), [0.125, 0.375, 0.625, 0.875])
    pts = grid_points(SMALL)
    assert pts.shape == (3, 30**3)
    idx = np.ravel_multi_index((3, 17, 29), SMALL.shape)
    np.testing.assert_array_equal(pts[:, idx],
                                  [SMALL.x_centres[3], SMALL.y_centres[17], SMALL.v_centres[29]])
    with pytest.raises(ValueError):
        Grid3D(n=1)


# ------------------------------------------------------------------------ 3-D vs scipy

@pytest.mark.parametrize("n_gal", [10, 50, 100, 500])
def test_cube_matches_scipy_small_grid(rng, n_gal):
    x, y, v = _cluster(rng, n_gal)
    cube = kde_cube(x, y, v, grid=SMALL)
    assert cube.dtype == np.float32 and cube.shape == SMALL.shape
    assert math.isclose(float(cube.sum(dtype=np.float64)), 1.0, rel_tol=1e-6)
    _assert_close(cube, _scipy_cube(x, y, v, SMALL))


@pytest.mark.parametrize("n_gal", [100, 500])
def test_cube_matches_scipy_default_grid(rng, n_gal):
    x, y, v = _cluster(rng, n_gal)
    _assert_close(kde_cube(x, y, v), _scipy_cube(x, y, v, Grid3D()))


def test_three_galaxies_regularised_matches_direct_sum(rng):
    # three points always lie in a plane: the 3-D covariance is singular, scipy refuses it,
    # so the reference is a direct sum of Gaussians with our (regularised) kernel covariance
    x, y, v = _cluster(rng, 3)
    data = np.stack([x, y, v])
    H, regularised = kernel_covariance(data, SMALL.spacing)
    assert regularised
    pts = grid_points(SMALL).T
    ref = sum(multivariate_normal(mean=data[:, i], cov=H).pdf(pts) for i in range(3))
    _assert_close(kde_cube(x, y, v, grid=SMALL), _normalised(ref, SMALL.shape))


def test_correlated_x_v(rng):
    x = rng.normal(0.0, 0.5, 80)
    y = rng.normal(0.0, 0.5, 80)
    v = 1000.0 * x + rng.normal(0.0, 50.0, 80)      # correlation ~0.995
    assert abs(np.corrcoef(x, v)[0, 1]) > 0.99
    _, regularised = kernel_covariance(np.stack([x, y, v]), SMALL.spacing)
    assert not regularised
    _assert_close(kde_cube(x, y, v, grid=SMALL), _scipy_cube(x, y, v, SMALL))


def test_rotated_elongated_xy(rng):
    a, b = rng.normal(0.0, 0.6, 120), rng.normal(0.0, 0.06, 120)   # 10:1 axis ratio
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    x, y = c * a - s * b, s * a + c * b
    v = rng.normal(0.0, 600.0, 120)
    _assert_close(kde_cube(x, y, v, grid=SMALL), _scipy_cube(x, y, v, SMALL))


@pytest.mark.parametrize("slope_kms_per_mpc, noise_kms, n_grid", [
    (-3000.0, 300.0, 50),   # v centre moves ~2.5 voxels per y voxel: lattice steps in v
    (-6000.0, 200.0, 50),   # > 4 voxels per line: exact start of every line
    (-5300.0, 15.0, 30),    # conditional v kernel << 1 voxel: exact start of every line
])
def test_v_gradient_along_y(rng, slope_kms_per_mpc, noise_kms, n_grid):
    x = rng.normal(0.0, 0.5, 80)
    y = rng.normal(0.0, 0.12, 80)
    v = slope_kms_per_mpc * y + rng.normal(0.0, noise_kms, 80)
    grid = Grid3D(n=n_grid)
    _assert_close(kde_cube(x, y, v, grid=grid), _scipy_cube(x, y, v, grid))


def test_points_near_window_edges(rng):
    n = 40
    x = np.concatenate([rng.uniform(1.3, 1.6, n), rng.normal(0, 0.3, 10)])
    y = np.concatenate([rng.uniform(-1.6, -1.3, n), rng.normal(0, 0.3, 10)])
    v = np.concatenate([rng.uniform(1800.0, 2200.0, n), rng.normal(0, 300, 10)])
    kde = gaussian_kde(np.stack([x, y, v]), bw_method=DEFAULT_H0)
    raw = kde.evaluate(grid_points(SMALL))
    voxel = np.prod(SMALL.spacing)
    assert raw.sum() * voxel < 0.9        # a good part of the kernel mass is off the grid
    _assert_close(kde_cube(x, y, v, grid=SMALL), _normalised(raw, SMALL.shape))


@pytest.mark.parametrize("tilted", [False, True])
def test_truncation_is_exactly_the_mahalanobis_ellipsoid(rng, tilted):
    # with a tiny r_t the truncation dominates: compare with a brute-force truncated sum
    x, y, v = _cluster(rng, 40)
    if tilted:
        y = 0.3 * x + rng.normal(0.0, 0.1, 40)
        v = -4000.0 * y + rng.normal(0.0, 300.0, 40)
    grid, r_t = Grid3D(n=24), 2.5
    data = np.stack([x, y, v])
    H, _ = kernel_covariance(data, grid.spacing)
    diff = grid_points(grid)[:, None, :] - data[:, :, None]          # (3, N, n^3)
    quad = np.einsum("anp,ab,bnp->np", diff, np.linalg.inv(H), diff)
    ref = np.where(quad <= r_t**2, np.exp(-0.5 * quad), 0.0).sum(axis=0)
    _assert_close(kde_cube(x, y, v, grid=grid, truncation=r_t), _normalised(ref, grid.shape))


def _voxel_kernel(x, y, v, grid, h0=DEFAULT_H0):
    """Galaxies in voxel units, the kernel covariance and precision, params_3d's constants."""
    from cmpipe.kde.bandwidth import kernel_cov_vox, params_3d
    lo = np.array([-grid.half_width_mpc_h, -grid.half_width_mpc_h, -grid.v_max_kms])
    d = np.array(grid.spacing)
    data = (np.stack([x, y, v]) - (lo + 0.5 * d)[:, None]) / d[:, None]
    H, prec, _ = kernel_cov_vox(np.ascontiguousarray(data), h0)
    return data, H, prec, params_3d(H, prec)


@pytest.mark.parametrize("case", ["typical", "window_edges", "mild_tilt", "rich"])
def test_factored_kernel_equals_the_recurrences(rng, case):
    # the fast path (cluster-wide tables x per-galaxy profiles, vectorised lines) against
    # the serial recurrences it replaces: same voxels, values equal to rounding (1e-12)
    from cmpipe.kde.accumulate import accumulate_3d
    from cmpipe.kde.factored import accumulate_3d_factored
    n = {"rich": 300}.get(case, 100)
    x, y, v = _cluster(rng, n)
    if case == "window_edges":
        x[:20], v[20:40] = rng.uniform(1.4, 1.6, 20), rng.uniform(-2200.0, -1900.0, 20)
    if case == "mild_tilt":
        v = v + 500.0 * x - 300.0 * y
    grid = Grid3D()
    data, H, prec, par = _voxel_kernel(x, y, v, grid)
    old, new = np.zeros(grid.shape), np.zeros(grid.shape)
    accumulate_3d(data[0], data[1], data[2], par, 6.5, old)
    assert accumulate_3d_factored(data[0], data[1], data[2], H, prec, par, 6.5, new)
    np.testing.assert_array_equal(new > 0.0, old > 0.0)
    assert np.max(np.abs(new - old)) <= 1e-12 * old.max()


def test_strongly_correlated_kernel_takes_the_recurrences(rng):
    # correlation 0.995 between x and v: a table factor would reach exp(+-100), so the
    # fast path declines without touching the workspace and kde_cube still matches scipy
    from cmpipe.kde.factored import accumulate_3d_factored
    x, y = rng.normal(0.0, 0.5, 80), rng.normal(0.0, 0.5, 80)
    v = 1000.0 * x + rng.normal(0.0, 50.0, 80)
    data, H, prec, par = _voxel_kernel(x, y, v, SMALL)
    acc = np.zeros(SMALL.shape)
    assert not accumulate_3d_factored(data[0], data[1], data[2], H, prec, par, 6.5, acc)
    assert not acc.any()
    _assert_close(kde_cube(x, y, v, grid=SMALL), _scipy_cube(x, y, v, SMALL))


def test_truncation_radius_is_the_only_approximation(rng):
    x, y, v = _cluster(rng, 60)
    loose = kde_cube(x, y, v, grid=SMALL, truncation=12.0)
    tight = kde_cube(x, y, v, grid=SMALL)
    assert np.max(np.abs(loose - tight)) <= 60 * math.exp(-6.5**2 / 2) * loose.max() + 1e-8


# ------------------------------------------------------------------------ 2-D and 1-D

@pytest.mark.parametrize("n_gal", [3, 10, 100, 500])
def test_kde_2d_matches_scipy(rng, n_gal):
    x, y, v = _cluster(rng, n_gal)
    r = np.hypot(x, y)
    rc = axis_centres(0.0, math.sqrt(2) * L, 50)
    vc = axis_centres(-V, V, 50)
    rr, vv = np.meshgrid(rc, vc, indexing="ij")
    kde = gaussian_kde(np.stack([r, v]), bw_method=DEFAULT_H0)
    ref = _normalised(kde.evaluate(np.stack([rr.ravel(), vv.ravel()])), (50, 50))
    out = kde_2d(x, y, v)
    assert out.dtype == np.float32 and out.shape == (50, 50)
    _assert_close(out, ref)


@pytest.mark.parametrize("n_gal", [3, 10, 100, 500])
def test_kde_1d_matches_scipy(rng, n_gal):
    _, _, v = _cluster(rng, n_gal)
    vc = axis_centres(-V, V, 50)
    ref = _normalised(gaussian_kde(v, bw_method=DEFAULT_H0).evaluate(vc), (50,))
    out = kde_1d(v)
    assert out.dtype == np.float32 and out.shape == (50,)
    _assert_close(out, ref)


# ------------------------------------------------------------------------ batch

def test_batch_equals_single(rng):
    sizes = [3, 7, 20, 2, 50, 120, 5, 9, 4, 60, 11, 3, 30, 8, 6, 15, 40, 3, 12, 25]
    parts = [_cluster(rng, k) for k in sizes]
    parts[3] = (np.array([0.1, -0.4]), np.array([0.3, 0.2]), np.array([150.0, 150.0]))
    x, y, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cubes = kde_cubes(x, y, v, offsets, grid=SMALL, min_galaxies=2)
    assert cubes.shape == (len(sizes),) + SMALL.shape and cubes.dtype == np.float32
    for k, (px, py, pv) in enumerate(parts):
        np.testing.assert_array_equal(cubes[k], kde_cube(px, py, pv, grid=SMALL,
                                                         min_galaxies=2))
    out = np.zeros_like(cubes)
    assert kde_cubes(x, y, v, offsets, grid=SMALL, min_galaxies=2, out=out) is out
    np.testing.assert_array_equal(out, cubes)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kde_cubes(x, y, v, offsets, grid=SMALL, min_galaxies=2)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one, cubes)
    assert kde_cubes(x, y, v, [0], grid=SMALL).shape == (0,) + SMALL.shape


def test_batch_error_names_cluster(rng):
    parts = [_cluster(rng, k) for k in (10, 10)]
    x, y, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
    v[15] = np.nan
    with pytest.raises(KDEInputError, match="halo_7"):
        kde_cubes(x, y, v, [0, 10, 20], grid=SMALL, ids=["halo_3", "halo_7"])


# ------------------------------------------------------------------------ degenerate / bad

def test_two_galaxies_identical_velocities():
    x, y, v = np.array([0.2, -0.5]), np.array([0.1, 0.4]), np.array([300.0, 300.0])
    cube = kde_cube(x, y, v, min_galaxies=2, cluster_id="pair")
    assert np.all(np.isfinite(cube))
    assert math.isclose(float(cube.sum(dtype=np.float64)), 1.0, rel_tol=1e-6)
    d = np.array(Grid3D().spacing)
    data = np.stack([x, y, v])
    H, regularised = kernel_covariance(data, d)
    assert regularised
    # rule: principal variances (voxel units) below 1/h0^2 raised to 1/h0^2, others kept
    s_data = np.linalg.eigvalsh(np.cov(data) / np.outer(d, d))
    s_kern = np.linalg.eigvalsh(H / DEFAULT_H0**2 / np.outer(d, d))
    np.testing.assert_allclose(s_kern, np.sort([1 / DEFAULT_H0**2, 1 / DEFAULT_H0**2,
                                                 s_data[-1]]), rtol=1e-10)
    ref = sum(multivariate_normal(mean=data[:, i], cov=H).pdf(grid_points(Grid3D()).T)
              for i in range(2))
    _assert_close(cube, _normalised(ref, Grid3D().shape))


def test_collinear_and_identical_points_are_regularised():
    t = np.linspace(-1.0, 1.0, 6)
    for x, y, v in [(t, 0.5 * t, 800.0 * t),                        # collinear
                    (np.zeros(4), np.zeros(4), np.zeros(4))]:       # all identical
        cube = kde_cube(x, y, v, grid=SMALL)
        assert np.all(np.isfinite(cube))
        assert math.isclose(float(cube.sum(dtype=np.float64)), 1.0, rel_tol=1e-6)
        assert kernel_covariance(np.stack([x, y, v]), SMALL.spacing)[1]
    assert np.all(np.isfinite(kde_1d(np.full(5, 100.0))))
    assert np.all(np.isfinite(kde_2d(t, t, np.full(6, 10.0))))


def test_non_degenerate_covariance_is_scipys(rng):
    data = np.stack(_cluster(rng, 25))
    H, regularised = kernel_covariance(data, Grid3D().spacing)
    assert not regularised
    np.testing.assert_allclose(H, gaussian_kde(data, bw_method=DEFAULT_H0).covariance,
                               rtol=1e-12)


@pytest.mark.parametrize("func", ["cube", "2d", "1d"])
def test_bad_input_names_cluster(rng, func):
    x, y, v = _cluster(rng, 10)
    call = {"cube": lambda *a, **k: kde_cube(*a, **k),
            "2d": lambda *a, **k: kde_2d(*a, **k),
            "1d": lambda x, y, v, **k: kde_1d(v, **k)}[func]
    v_nan = v.copy()
    v_nan[4] = np.nan
    with pytest.raises(KDEInputError, match="cluster 'A2199'"):
        call(x, y, v_nan, cluster_id="A2199")
    x_inf = x.copy()
    x_inf[0] = np.inf
    if func != "1d":
        with pytest.raises(KDEInputError, match="A2199"):
            call(x_inf, y, v, cluster_id="A2199")
    with pytest.raises(KDEInputError, match="1234"):
        call(x[:2], y[:2], v[:2], cluster_id=1234)
    with pytest.raises(ValueError, match="min_galaxies"):
        call(x[:5], y[:5], v[:5], cluster_id=9, min_galaxies=6)


def test_settings_validated():
    x, y, v = _cluster(np.random.default_rng(1), 10)
    for bad in ({"h0": 0.0}, {"truncation": 0.0}, {"truncation": 25.0}, {"min_galaxies": 1}):
        with pytest.raises(ValueError):
            kde_cube(x, y, v, **bad)


def test_all_mass_off_grid_raises():
    x = np.array([30.0, 31.0, 30.5, 30.2])
    with pytest.raises(KDEInputError, match="far"):
        kde_cube(x, np.zeros(4) + [0, 0.1, 0.2, 0.3], np.array([0.0, 10.0, 5.0, 1.0]),
                 cluster_id="far")
    # the per-thread workspace is left clean: the next cube is unaffected
    x, y, v = _cluster(np.random.default_rng(2), 30)
    _assert_close(kde_cube(x, y, v, grid=Grid3D()), _scipy_cube(x, y, v, Grid3D()))


@pytest.mark.parametrize("u, prec, i0, i1", [(17.3, 0.05, 0, 49), (0.2, 2.0, 0, 9),
                                               (48.9, 0.7, 30, 49), (-3.0, 0.3, 0, 6),
                                               (10.5, 1e-4, 4, 5), (25.0, 4.0, 25, 25)])
def test_shared_gaussian_runs_match_direct_exponentials(u, prec, i0, i1):
    """cmpipe.kernels, used by the cubes (add_line) and the joint PDF (add_gaussian_run):
    the recurrences equal one exp per node to rounding, and touch only nodes i0..i1."""
    from cmpipe.kernels import add_gaussian_run, add_line

    k = np.arange(50.0)
    inside = (k >= i0) & (k <= i1)
    q0, amp = 1.3, 0.37
    row = np.zeros(50)
    add_line(row, i0, i1, u, prec, q0, math.exp(-prec))
    ref = np.where(inside, np.exp(-0.5 * (q0 + prec * (k - u) ** 2)), 0.0)
    np.testing.assert_allclose(row, ref, rtol=1e-12, atol=0.0)
    row = np.zeros(50)
    add_gaussian_run(row, i0, i1, u, prec, amp)
    ref = np.where(inside, amp * np.exp(-0.5 * prec * (k - u) ** 2), 0.0)
    np.testing.assert_allclose(row, ref, rtol=1e-12, atol=0.0)
