"""The simulator's nuisance parameters (cmpipe.mock.nuisance; issue 28), each against an
independent expectation: uniform priors (Kolmogorov-Smirnov), completeness f removes a
binomial fraction, velocity bias b scales the members' peculiar dispersion by b exactly,
the central's offset shifts every other galaxy by one N(0, alpha sigma_DM) draw, the field
scale thins binomially or adds Poisson extra interlopers uniform on the sky, the magnitude
shift moves every magnitude by delta, fibre collisions leave a hard-core, maximal set of
targets, and the infall fraction adds Poisson members on an NFW shell with the infall
kinematics. Seeds fixed; statistical bounds are 4 sigma."""
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cmpipe.cosmology import make_cosmology
from cmpipe.mock import nuisance
from cmpipe.mock.fluxlimit import flux_limit
from cmpipe.sections import NuisanceSettings, WindowSettings

WINDOW = WindowSettings(half_width_mpc_h=1.6, v_max_kms=2200.0)
A_H = 100.0 / 1.1 * 1.05   # km/s per comoving h^-1 Mpc: any positive number serves
A = 1.0 / 1.1              # scale factor (proper = A x comoving)


def settings(sample=False, fixed=None, **ranges):
    base = dict(sample=sample, mag_shift_mag=(-0.03, 0.33), completeness=(0.7, 1.0),
                fibre_collision_loss=(0.0, 0.7), fibre_collision_arcsec=55.0,
                velocity_bias=(0.85, 1.15), central_velocity_frac=(0.0, 0.3),
                field_scale=(0.75, 1.5), infall_fraction=(0.4, 0.8),
                infall_radius_r200c=2.0, fixed=fixed or {})
    base.update(ranges)
    return NuisanceSettings(**base)


def windows(n_clusters=200, n_members=60, n_inter=40, seed=1, sigma=600.0):
    """Clusters 0..n-1 with a central at the origin, members and interlopers."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(n_clusters):
        n = 1 + n_members + n_inter
        d = np.concatenate([[0.0], rng.normal(0, 0.5, n_members), rng.uniform(-30, 30, n_inter)])
        vpec = np.concatenate([[0.0], rng.normal(0, sigma, n_members),
                               rng.normal(0, 300, n_inter)])
        v = A_H * d + vpec
        v[0] = 0.0
        x = np.concatenate([[0.0], rng.uniform(-1.6, 1.6, n - 1)])
        y = np.concatenate([[0.0], rng.uniform(-1.6, 1.6, n - 1)])
        parts.append(dict(cluster_id=np.full(n, c), galaxy_id=np.arange(n) + 1000 * c,
                          x_proj_mpc_h=x, y_proj_mpc_h=y, v_los_kms=v, los_offset_mpc_h=d,
                          mag_r=rng.uniform(-22, -18, n),
                          is_member=np.r_[np.ones(1 + n_members), np.zeros(n_inter)]
                          .astype(np.int8)))
    gal = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    clusters = dict(cluster_id=np.arange(n_clusters), log10_m200c=np.full(n_clusters, 14.5),
                    r200c_mpc_h=np.full(n_clusters, 0.9))
    return clusters, gal


def nu_of(n, **values):
    out = {nuisance.column(k): np.full(n, v) for k, v in nuisance.FIDUCIAL.items()}
    out.update({nuisance.column(k): np.full(n, float(v)) for k, v in values.items()})
    return out


def perturb(clusters, gal, nu, seed=2, v_max=1e9, sigma=600.0):
    return nuisance.perturb_window(clusters, gal, nu, a_h=A_H,
                                   sigma_dm_kms=np.full(len(clusters["cluster_id"]), sigma),
                                   v_max_kms=v_max, half_width_mpc_h=1.6,
                                   rng=np.random.default_rng(seed), scale_factor=A,
                                   infall_radius_r200c=2.0)


def test_fiducial_is_inactive_and_draws_fiducial_values():
    s = settings()
    assert not nuisance.is_active(s)
    assert not nuisance.is_active(settings(fixed={"completeness": 1.0}))
    assert nuisance.is_active(settings(fixed={"completeness": 0.7}))
    assert nuisance.is_active(settings(sample=True))
    d = nuisance.draw(5, s, np.random.default_rng(0))
    for k, v in nuisance.FIDUCIAL.items():
        np.testing.assert_array_equal(d[nuisance.column(k)], v)


def test_sampled_nuisances_are_uniform_on_their_ranges_and_fixed_overrides():
    s = settings(sample=True, fixed={"velocity_bias": 1.1})
    d = nuisance.draw(4000, s, np.random.default_rng(3))
    for name in ("mag_shift_mag", "completeness", "fibre_collision_loss",
                 "central_velocity_frac", "field_scale"):
        lo, hi = getattr(s, name)
        x = d[nuisance.column(name)]
        assert x.min() >= lo and x.max() <= hi
        assert stats.kstest(x, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3, name
    np.testing.assert_array_equal(d["nu_velocity_bias"], 1.1)
    with pytest.raises(ValueError, match="unknown nuisance"):
        nuisance.draw(3, settings(fixed={"richness": 1.0}), np.random.default_rng(0))


def test_fiducial_values_leave_the_window_unchanged():
    cl, gal = windows(20)
    out, offset = perturb(cl, gal, nu_of(20))
    for k in gal:
        np.testing.assert_array_equal(out[k], gal[k], err_msg=k)
    np.testing.assert_array_equal(offset, 0.0)


@pytest.mark.parametrize("b", [0.85, 1.15])
def test_velocity_bias_scales_the_members_dispersion_by_b(b):
    cl, gal = windows(50)
    out, _ = perturb(cl, gal, nu_of(50, velocity_bias=b))
    mem = (gal["is_member"] == 1) & (gal["x_proj_mpc_h"] != 0)
    pec0 = gal["v_los_kms"] - A_H * gal["los_offset_mpc_h"]
    pec1 = out["v_los_kms"] - A_H * out["los_offset_mpc_h"]
    np.testing.assert_allclose(pec1[mem], b * pec0[mem], rtol=1e-12, atol=1e-9)
    assert np.std(pec1[mem]) == pytest.approx(b * np.std(pec0[mem]), rel=1e-12)
    np.testing.assert_array_equal(out["v_los_kms"][~mem], gal["v_los_kms"][~mem])


def test_central_offset_shifts_every_other_galaxy_by_one_gaussian_draw():
    n, alpha, sigma = 2000, 0.3, 800.0
    cl, gal = windows(n, n_members=5, n_inter=3)
    out, offset = perturb(cl, gal, nu_of(n, central_velocity_frac=alpha), sigma=sigma)
    central = nuisance.central_mask(gal)
    np.testing.assert_array_equal(out["v_los_kms"][central], 0.0)
    shift = gal["v_los_kms"] - out["v_los_kms"]
    np.testing.assert_allclose(shift[~central], offset[gal["cluster_id"][~central]], atol=1e-9)
    # the offsets are N(0, alpha sigma): their s.d. to 4 sigma of its sampling error
    assert np.std(offset) == pytest.approx(alpha * sigma, rel=4 / np.sqrt(2 * n))
    assert abs(np.mean(offset)) < 4 * alpha * sigma / np.sqrt(n)


def test_velocity_window_is_applied_again():
    cl, gal = windows(50)
    out, _ = perturb(cl, gal, nu_of(50, velocity_bias=1.15), v_max=1000.0)
    assert np.abs(out["v_los_kms"]).max() <= 1000.0
    assert out["v_los_kms"].size < gal["v_los_kms"].size


def test_field_scale_thins_binomially():
    n, s = 300, 0.6
    cl, gal = windows(n)
    out, _ = perturb(cl, gal, nu_of(n, field_scale=s))
    n0 = int((gal["is_member"] == 0).sum())
    n1 = int((out["is_member"] == 0).sum())
    assert abs(n1 - s * n0) < 4 * np.sqrt(n0 * s * (1 - s))
    assert (out["is_member"] == 1).sum() == (gal["is_member"] == 1).sum()


def test_field_scale_adds_poisson_interlopers_uniform_in_the_window():
    n, s = 300, 1.5
    cl, gal = windows(n)
    out, _ = perturb(cl, gal, nu_of(n, field_scale=s))
    n0 = int((gal["is_member"] == 0).sum())
    extra = out["galaxy_id"] == -1
    assert abs(extra.sum() - (s - 1) * n0) < 4 * np.sqrt((s - 1) * n0)
    assert np.all(out["is_member"][extra] == 0)
    assert np.all(np.diff(out["cluster_id"]) >= 0)            # still grouped by cluster
    for axis in ("x_proj_mpc_h", "y_proj_mpc_h"):
        x = out[axis][extra]
        assert stats.kstest(x, stats.uniform(-1.6, 3.2).cdf).pvalue > 1e-3
    # velocities and depths are those of the same cluster's own interlopers
    for c in (0, 17, 299):
        own = (gal["cluster_id"] == c) & (gal["is_member"] == 0)
        mine = extra & (out["cluster_id"] == c)
        assert set(out["v_los_kms"][mine]) <= set(gal["v_los_kms"][own])


def test_infall_members_on_an_nfw_shell_with_infall_kinematics():
    """infall_fraction f adds Poisson(f x satellites) members between R200c and 2 R200c:
    the count, the radii against the NFW shell's mass fraction (c = 2.9, by quadrature),
    the velocities against the model (mean radial speed 0 -> -0.5 V200, dispersion
    0.6 -> 0.5 V200, V200 = sqrt(G M / R) from G), magnitudes of their own satellites."""
    from scipy import integrate

    n, f, n_sat, r200 = 400, 0.5, 60, 0.9
    cl, gal = windows(n, n_members=n_sat)
    row = np.searchsorted(cl["cluster_id"], gal["cluster_id"])
    new = nuisance.infall_members(cl, gal, row, np.full(n, f), x_out=2.0, a_h=A_H,
                                  scale_factor=A, half_width_mpc_h=1e9,
                                  rng=np.random.default_rng(3))
    assert abs(new["galaxy_id"].size - f * n * n_sat) < 4 * np.sqrt(f * n * n_sat)
    assert np.all(new["is_member"] == 1) and np.all(new["galaxy_id"] == -1)
    los_proper = A * new["los_offset_mpc_h"]
    r = np.sqrt(new["x_proj_mpc_h"] ** 2 + new["y_proj_mpc_h"] ** 2 + los_proper ** 2)
    x = r / r200
    assert x.min() >= 1.0 - 1e-12 and x.max() <= 2.0 + 1e-12

    def shell(xx):
        return integrate.quad(lambda t: t * t / (t * 2.9 * (1 + 2.9 * t) ** 2), 1.0, xx)[0]
    grid = np.linspace(1.0, 2.0, 41)
    cdf = np.array([shell(g) for g in grid]) / shell(2.0)
    assert stats.kstest(x, lambda v: np.interp(v, grid, cdf)).pvalue > 1e-3
    v200 = np.sqrt(4.30091727e-9 * 10 ** 14.5 / r200)
    ramp = x - 1.0
    pec = new["v_los_kms"] - A_H * new["los_offset_mpc_h"]
    z = (pec - (-0.5 * ramp * v200) * los_proper / r) / ((0.6 - 0.1 * ramp) * v200)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    # infall: peculiar velocities point back at the cluster (against the offset's sign)
    assert np.mean(pec * np.sign(los_proper)) < -0.1 * v200
    for c in (0, 123, 399):
        sats = (gal["cluster_id"] == c) & (gal["is_member"] == 1) & (gal["x_proj_mpc_h"] != 0)
        assert set(new["mag_r"][new["cluster_id"] == c]) <= set(gal["mag_r"][sats])


def test_infall_members_join_the_window_and_fiducial_adds_none():
    n = 200
    cl, gal = windows(n)
    out, _ = perturb(cl, gal, nu_of(n, infall_fraction=0.6))
    extra = out["galaxy_id"] == -1
    assert extra.sum() > 0 and np.all(out["is_member"][extra] == 1)
    assert np.all(np.abs(out["x_proj_mpc_h"]) <= 1.6) and np.all(np.abs(out["y_proj_mpc_h"]) <= 1.6)
    assert np.all(np.diff(out["cluster_id"]) >= 0)
    # the window on the sky cuts the shell's corners: fewer than f x satellites remain
    assert extra.sum() < 0.6 * n * 60
    same, _ = perturb(cl, gal, nu_of(n, infall_fraction=0.0))
    assert not (same["galaxy_id"] == -1).any()
    assert same["v_los_kms"].size == gal["v_los_kms"].size


def test_magnitude_shift_moves_every_magnitude():
    cl, gal = windows(10)
    out, _ = perturb(cl, gal, nu_of(10, mag_shift_mag=0.2))
    np.testing.assert_allclose(out["mag_r"], gal["mag_r"] + 0.2, atol=1e-12)


def test_completeness_removes_a_binomial_fraction():
    n, f = 200, 0.7
    cl, gal = windows(n)
    row = gal["cluster_id"]
    visible = np.ones(row.size, dtype=bool)
    keep = nuisance.spectroscopic_selection(gal, row, visible, nu_of(n, completeness=f),
                                            angular_distance_mpc_h=np.full(n, 200.0),
                                            fibre_arcsec=55.0,
                                            rng=np.random.default_rng(5))
    N = row.size
    assert abs(keep.sum() - f * N) < 4 * np.sqrt(N * f * (1 - f))
    # invisible galaxies are never kept
    visible[::3] = False
    keep = nuisance.spectroscopic_selection(gal, row, visible, nu_of(n, completeness=f),
                                            angular_distance_mpc_h=np.full(n, 200.0),
                                            fibre_arcsec=55.0, rng=np.random.default_rng(5))
    assert not keep[::3].any()


def test_fibre_collisions_leave_a_hard_core_maximal_set():
    """With loss 1 the kept targets of a window are a maximal set with no two closer than
    the fibre radius: no kept pair collides, and every lost target has a kept neighbour
    within it (the defining properties, independent of the order they were assigned)."""
    from scipy.spatial.distance import cdist

    n, d_a = 20, 150.0
    cl, gal = windows(n, n_members=150, n_inter=50, seed=9)
    row = gal["cluster_id"]
    keep = nuisance.spectroscopic_selection(gal, row, np.ones(row.size, bool),
                                            nu_of(n, fibre_collision_loss=1.0),
                                            angular_distance_mpc_h=np.full(n, d_a),
                                            fibre_arcsec=55.0, rng=np.random.default_rng(4))
    r = d_a * np.radians(55.0 / 3600.0)                    # proper h^-1 Mpc
    lost_somewhere = False
    for c in range(n):
        sel = row == c
        xy = np.column_stack([gal["x_proj_mpc_h"][sel], gal["y_proj_mpc_h"][sel]])
        k = keep[sel]
        dk = cdist(xy[k], xy[k])
        np.fill_diagonal(dk, np.inf)
        assert dk.min() >= r
        if (~k).any():
            lost_somewhere = True
            assert np.all(cdist(xy[~k], xy[k]).min(axis=1) < r)
    assert lost_somewhere


def test_fibre_loss_fraction_of_collided_targets():
    """With loss p, of the targets that collide p are lost (binomial)."""
    n, d_a, p = 40, 120.0, 0.5
    cl, gal = windows(n, n_members=200, n_inter=20, seed=11)
    row = gal["cluster_id"]
    args = dict(angular_distance_mpc_h=np.full(n, d_a), fibre_arcsec=55.0)
    all_lost = ~nuisance.spectroscopic_selection(gal, row, np.ones(row.size, bool),
                                                 nu_of(n, fibre_collision_loss=1.0),
                                                 rng=np.random.default_rng(4), **args)
    some_lost = ~nuisance.spectroscopic_selection(gal, row, np.ones(row.size, bool),
                                                  nu_of(n, fibre_collision_loss=p),
                                                  rng=np.random.default_rng(4), **args)
    m = all_lost.sum()
    assert m > 200
    assert abs(some_lost.sum() - p * m) < 4 * np.sqrt(m * p * (1 - p))


def test_window_nuisances_through_the_flux_limit():
    """The stage's path: drawn nuisances, the perturbed windows and the spectroscopic
    selection inside flux_limit; the counts add up and the nu_ columns travel along."""
    cosmo = make_cosmology("planck18")
    n = 60
    cl, gal = windows(n)
    dist = np.full(n, 150.0)
    w = nuisance.WindowNuisances(settings(fixed={"completeness": 0.5}), WINDOW, cosmo,
                                 log10_m200c=cl["log10_m200c"], redshift=0.1,
                                 observer_distance_mpc_h=dist, rng=np.random.default_rng(0))
    clusters = dict(cl, halo_id=cl["cluster_id"])
    c1, g1, select = w.apply(slice(0, n), clusters, gal)
    out_c, out_g, counts = flux_limit(c1, g1, dist, cosmology=cosmo, mag_r_limit=30.0,
                                      min_galaxies=3, select=select)
    np.testing.assert_array_equal(out_c["nu_completeness"], 0.5)
    N = g1["cluster_id"].size
    assert abs(counts["n_galaxies_kept"] - 0.5 * N) < 4 * np.sqrt(N * 0.25)
    np.testing.assert_array_equal(out_c["n_gal"], np.bincount(
        np.searchsorted(out_c["cluster_id"], out_g["cluster_id"]), minlength=out_c["n_gal"].size))


def test_inverted_prior_range_is_a_config_error():
    from cmpipe.settings import semantic_errors

    errs = semantic_errors({"run": "x", "nuisance": {"completeness": [1.0, 0.7]}})
    assert len(errs) == 1
    assert any(e.startswith("nuisance.completeness: [1.0, 0.7] is not an increasing range")
               for e in errs), errs
    assert not semantic_errors({"run": "x", "nuisance": {"completeness": [0.7, 1.0]}})


# ------------------------------------------------------------ the misspecification matrix

def test_variants_are_the_prior_edges_and_the_beyond_values():
    from cmpipe.evaluation.misspecification import variants

    vs = variants(settings(), {"completeness": 0.5})
    names = [v.name for v in vs]
    assert names[:2] == ["fiducial", "prior"] and vs[0].fixed == vs[1].fixed == {}
    assert [v.kind for v in vs[:2]] == ["fiducial", "prior"]
    # ends equal to the fiducial value (completeness 1, fibre loss 0, central 0) are the
    # fiducial universe itself
    # (the infall fraction's fiducial 0 lies outside its prior: both ends are edges)
    assert names[2:14] == ["mag_shift_mag=-0.03", "mag_shift_mag=0.33", "completeness=0.7",
                         "fibre_collision_loss=0.7", "velocity_bias=0.85", "velocity_bias=1.15",
                         "central_velocity_frac=0.3", "field_scale=0.75", "field_scale=1.5",
                         "infall_fraction=0.4", "infall_fraction=0.8", "completeness=0.5"]
    # then each moved value again, the other nuisances drawn from the prior
    assert names[14:] == [n + "|prior" for n in names[2:14]]
    assert {v.others for v in vs[2:14]} == {"fiducial"} and {v.others for v in vs[14:]} == {"prior"}
    assert [v.kind for v in vs].count("edge") == 22 and vs[-1].kind == "beyond"
    assert vs[-1].fixed == {"completeness": 0.5}
    with pytest.raises(ValueError, match="inside the prior"):
        variants(settings(), {"completeness": 0.8})
    with pytest.raises(ValueError, match="unknown nuisance"):
        variants(settings(), {"richness": 2.0})


def test_variant_metrics_against_direct_counts():
    """Mean residual, scatter and coverage are the plain sample statistics; the halo
    bootstrap error of the mean is the s.d. of group-resampled means (checked against
    a direct resampling with 40 halos of 5 sightlines)."""
    from cmpipe.evaluation.misspecification import variant_metrics

    rng = np.random.default_rng(12)
    halo = np.repeat(np.arange(40), 5)
    t = rng.uniform(14, 15, halo.size)
    med = t - rng.normal(0.02, 0.1, halo.size) - rng.normal(0, 0.05, 40)[halo]
    summ = dict(median=med, lo68=med - 0.1, hi68=med + 0.1, lo95=med - 0.2, hi95=med + 0.2)
    m = variant_metrics(t, summ, halo, n_boot=2000, seed=3)
    eps = t - med
    assert m["n"] == 200 and m["n_halos"] == 40
    assert m["mean_residual_dex"] == pytest.approx(eps.mean(), abs=1e-12)
    assert m["scatter_dex"] == pytest.approx(eps.std(), abs=1e-12)
    assert m["coverage_68"] == pytest.approx(np.mean(np.abs(eps) <= 0.1), abs=1e-12)
    assert m["coverage_95"] == pytest.approx(np.mean(np.abs(eps) <= 0.2), abs=1e-12)
    boot = [eps[np.concatenate([np.flatnonzero(halo == h) for h in
                                rng.integers(0, 40, 40)])].mean() for _ in range(2000)]
    assert m["mean_residual_dex_err"] == pytest.approx(np.std(boot), rel=0.15)
    assert m["coverage_68_pull"] == pytest.approx(
        (m["coverage_68"] - 0.6827) / m["coverage_68_err"], rel=1e-3)


def test_fiducial_run_needs_a_marginalised_run_beside_a_fiducial_one():
    """compare.fiducial_run names another run, and only from a run whose mock draws its
    nuisances (nuisance.sample: true); the fiducial overlay itself sets it null."""
    from cmpipe.settings import semantic_errors

    ok = {"run": "demo", "nuisance": {"sample": True},
          "compare": {"pure_run": "demo-pure", "fiducial_run": "demo-fiducial"}}
    assert not semantic_errors(ok)
    for bad in ({**ok, "nuisance": {"sample": False}},
                {**ok, "compare": {"pure_run": "demo-pure", "fiducial_run": "demo"}},
                {**ok, "compare": {"pure_run": "demo-pure", "fiducial_run": "demo-pure"}},
                {**ok, "compare": {"pure_run": None, "fiducial_run": "a b"}}):
        errs = semantic_errors(bad)
        assert len(errs) >= 1 and all(e.startswith("compare.fiducial_run") for e in errs), errs
        assert all("Fix" in e for e in errs)


def test_fiducial_overlay_is_a_valid_fiducial_run():
    """configs/fiducial.yaml over config.yaml: the fiducial universe, no companions; the
    default config is marginalised with demo-fiducial beside it."""
    from cmpipe.settings import load_config

    root = Path(__file__).resolve().parents[1]
    schema = root / "src/cmpipe/data/config.schema.yaml"
    base = load_config(root / "config.yaml", schema)
    fid = load_config(root / "config.yaml", schema, overlays=[root / "configs/fiducial.yaml"])
    assert base["nuisance"]["sample"] is True
    assert base["compare"]["fiducial_run"] == fid["run"] == "demo-fiducial"
    assert fid["nuisance"]["sample"] is False and fid["compare"]["fiducial_run"] is None
    # everything upstream of the nuisances is the default run's
    for key in ("seed", "simulation", "selection", "sightlines", "window", "mock", "kde",
                "splits", "train", "calibration"):
        assert fid[key] == base[key], key
