"""Projection, flux limit, sightline allocation and splits on hand-built catalogues."""
import numpy as np
import pytest

from cmpipe.cosmology import apparent_magnitudes
from cmpipe.mock.fluxlimit import draw_observer_distances, flux_limit
from cmpipe.mock.projection import Projector, phase_space_distance, v200c_kms
from cmpipe.mock.selection import allocate_sightlines, mass_bins
from cmpipe.settings import SPLIT_CODES, SplitSettings
from cmpipe.mock.sightlines import basis_for
from cmpipe.mock.splits import assign_splits, split_halos

L = 200.0
Z = 0.1


def _halos(rows):
    keys = ("halo_id", "upid", "log10_m200c", "r200c_mpc_h", "c200c", "x_mpc_h", "y_mpc_h",
            "z_mpc_h", "vx_kms", "vy_kms", "vz_kms")
    return {k: np.array([r[i] for r in rows]) for i, k in enumerate(keys)}


def _galaxies(rows):
    keys = ("galaxy_id", "halo_id", "is_central", "x_mpc_h", "y_mpc_h", "z_mpc_h", "vx_kms",
            "vy_kms", "vz_kms", "mag_r")
    return {k: np.array([r[i] for r in rows]) for i, k in enumerate(keys)}


def _projector(cosmo, halos, galaxies, box=L, **kw):
    return Projector(halos, galaxies, box_size_mpc_h=box, redshift=Z,
                     hubble_kms_per_mpc_h=cosmo.hubble_kms_per_mpc_h(Z), **kw)


def test_projection_matches_hand_computation(cosmo):
    # cluster at the box edge so that neighbours wrap around the periodic boundary
    c = np.array([199.5, 100.0, 100.0])
    vc = np.array([100.0, -50.0, 30.0])
    halos = _halos([
        (1, -1, 14.5, 1.0, 5.0, *c, *vc),
        (2, -1, 14.8, 1.2, 5.0, 0.8, 100.5, 103.0, 0.0, 0.0, 0.0),   # wraps in x
        (3, -1, 13.0, 0.4, 8.0, 100.0, 20.0, 20.0, 0.0, 0.0, 0.0),   # far away
    ])
    g = _galaxies([
        (10, 1, 1, *c, *vc, -22.0),
        (11, 1, 0, 0.3, 100.2, 100.5, 600.0, -50.0, 30.0, -19.0),    # wraps: dx = +0.8
        (12, 2, 1, 0.8, 100.5, 103.0, 0.0, 0.0, 0.0, -20.0),        # interloper halo 2
        (13, 3, 1, 100.0, 20.0, 20.0, 0.0, 0.0, 0.0, -20.0),        # outside
    ])
    p = _projector(cosmo, halos, g)
    a = 1 / (1 + Z)
    H = cosmo.hubble_kms_per_mpc_h(Z)
    n = np.array([0.0, 0.0, 1.0])
    rec = p.project_halo(1, n[None, :])[0]
    assert set(rec["galaxy_id"]) == {10, 11, 12}
    e1, e2 = (np.asarray(e) for e in basis_for(n))
    for gid, d, dv in [(11, np.array([0.8, 0.2, 0.5]), np.array([500.0, 0.0, 0.0])),
                       (12, np.array([1.3, 0.5, 3.0]), -vc)]:
        k = list(rec["galaxy_id"]).index(gid)
        assert rec["x_proj_mpc_h"][k] == pytest.approx(a * d @ e1, abs=1e-9)
        assert rec["y_proj_mpc_h"][k] == pytest.approx(a * d @ e2, abs=1e-9)
        assert rec["v_los_kms"][k] == pytest.approx(dv @ n + H * a * d @ n, abs=1e-6)
        assert rec["los_offset_mpc_h"][k] == pytest.approx(d @ n, abs=1e-9)
    mem = dict(zip(rec["galaxy_id"], rec["is_member"]))
    assert mem == {10: 1, 11: 1, 12: 0}
    # halo 2 is the interloper cluster: mass ratio and eq. (6) distance by hand
    assert rec["interloper_halo_id"] == 2
    assert rec["interloper_mass_ratio"] == pytest.approx(10 ** 0.3)
    d = np.array([1.3, 0.5, 3.0])
    dv = -vc @ n + H * a * d @ n
    expect = phase_space_distance(a * d @ e1, a * d @ e2, dv, 1.0, 1.2,
                                  v200c_kms(14.5, 1.0), v200c_kms(14.8, 1.2))
    assert rec["interloper_distance"] == pytest.approx(expect, rel=1e-9)


def test_v200c_against_astropy_constants():
    from astropy import constants as const
    from astropy import units as u
    m = 1e15 * u.Msun
    r = 1.6 * u.Mpc
    ref = np.sqrt(const.G * m / r).to(u.km / u.s).value
    assert v200c_kms(15.0, 1.6) == pytest.approx(ref, rel=1e-5)


def test_window_cuts_and_velocity_limit(cosmo):
    halos = _halos([(1, -1, 14.0, 0.8, 5.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0)])
    H = cosmo.hubble_kms_per_mpc_h(Z)
    a = 1 / (1 + Z)
    dz_edge = 2200.0 / (H * a)   # comoving offset at exactly the velocity limit
    e1 = np.asarray(basis_for(np.array([0.0, 0.0, 1.0]))[0])
    p_in = 50.0 + 1.59 / a * e1
    p_out = 50.0 + 1.61 / a * e1
    g = _galaxies([
        (1, 1, 1, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0, -21.0),
        (2, 1, 0, *p_in, 0.0, 0.0, 0.0, -19.0),     # inside along the sky axis e1
        (3, 1, 0, *p_out, 0.0, 0.0, 0.0, -19.0),    # just outside
        (4, 1, 0, 50.0, 50.0, 50.0 + 0.99 * dz_edge, 0.0, 0.0, 0.0, -19.0),
        (5, 1, 0, 50.0, 50.0, 50.0 + 1.01 * dz_edge, 0.0, 0.0, 0.0, -19.0),
        (6, 1, 0, 50.0, 50.0, 50.0 + 1.01 * dz_edge, 0.0, 0.0, -100.0, -19.0),  # pulled in
    ])
    p = _projector(cosmo, halos, g)
    rec = p.project_halo(1, np.array([[0.0, 0.0, 1.0]]))[0]
    assert sorted(rec["galaxy_id"].tolist()) == [1, 2, 4, 6]


def test_apparent_magnitude_against_astropy_distmod(cosmo):
    dc = np.array([30.0, 120.0, 250.0])
    m = apparent_magnitudes(np.full(3, -20.0), dc, cosmo)
    z = cosmo.z_at_comoving_distance(dc)
    h = cosmo.h
    ref = -20.0 + 5 * np.log10(h) + cosmo.astropy.distmod(z).value
    np.testing.assert_allclose(m, ref, atol=2e-4)
    # and z(D_c) inverts astropy's comoving distance
    np.testing.assert_allclose(cosmo.astropy.comoving_distance(z).value * h, dc, rtol=1e-5)


def test_observer_distances_uniform_in_ball():
    d = draw_observer_distances(200000, 250.0, np.random.default_rng(3))
    assert d.max() <= 250.0
    # P(D < r) = (r/R)^3
    for r in (100.0, 175.0, 225.0):
        assert np.mean(d < r) == pytest.approx((r / 250.0) ** 3, abs=0.004)


def test_flux_limit_counts_and_drops(cosmo):
    clusters = dict(cluster_id=np.array([0, 1]), halo_id=np.array([5, 6]),
                    log10_m200c=np.array([14.0, 14.5]))
    galaxies = dict(cluster_id=np.array([0, 0, 0, 1, 1]),
                    los_offset_mpc_h=np.array([0.0, 1.0, -1.0, 0.0, -60.0]),
                    mag_r=np.array([-22.0, -21.0, -14.0, -22.0, -22.0]),
                    is_member=np.array([1, 1, 0, 1, 0], dtype=np.int8))
    dist = np.array([100.0, 50.0])
    c, g, counts = flux_limit(clusters, galaxies, dist, cosmology=cosmo, mag_r_limit=18.0,
                              min_galaxies=2)
    # cluster 0: -14 at 100 Mpc/h is m ~ 21 -> dropped; keeps 2 -> survives
    # cluster 1: the second galaxy is behind the observer -> 1 galaxy -> dropped
    assert c["cluster_id"].tolist() == [0]
    assert c["n_gal"].tolist() == [2] and c["n_members"].tolist() == [2]
    assert counts["n_behind_observer"] == 1 and counts["n_dropped_too_few"] == 1
    assert g["cluster_id"].tolist() == [0, 0]
    assert np.all(g["mag_r_app"] < 18.0)


def test_allocate_sightlines_flattens_bins():
    rng = np.random.default_rng(1)
    # steep mass function: many low-mass halos, few massive ones
    lm = np.concatenate([np.full(1000, 13.75), np.full(100, 14.05), np.full(9, 14.55),
                         np.full(2, 15.05)])
    counts = allocate_sightlines(lm, lo=13.7, bin_width_dex=0.1, target_per_bin=200,
                                 max_per_halo=25, rng=rng)
    b = mass_bins(lm, 13.7, 0.1)
    per_bin = {int(k): int(counts[b == k].sum()) for k in np.unique(b)}
    assert per_bin[0] == 200 and per_bin[3] == 200 and per_bin[8] == 200
    assert per_bin[13] == 50            # capped: 2 halos x 25 sightlines
    assert counts.max() == 25
    assert set(np.unique(counts[b == 0])) == {0, 1}


def test_splits_by_halo_no_overlap_and_fractions():
    rng = np.random.default_rng(5)
    hid = np.repeat(np.arange(3000), 3)
    lm = np.repeat(rng.uniform(13.7, 15.0, 3000), 3)
    s = SplitSettings(train=0.40, test=0.47, eval=0.13, validation_fraction=0.10, bin_width_dex=0.1)
    codes = assign_splits(dict(halo_id=hid, log10_m200c=lm), s, np.random.default_rng(9))
    # every projection of a halo in the same split
    per_halo = codes.reshape(-1, 3)
    assert np.all(per_halo == per_halo[:, :1])
    frac = {k: np.mean(per_halo[:, 0] == v) for k, v in SPLIT_CODES.items()}
    assert frac["train"] == pytest.approx(0.40 * 0.9, abs=0.01)
    assert frac["validation"] == pytest.approx(0.04, abs=0.01)
    assert frac["test"] == pytest.approx(0.47, abs=0.01)
    assert frac["eval"] == pytest.approx(0.13, abs=0.01)
    # stratified: the eval set spans the mass range like the whole sample
    ev = lm[codes == SPLIT_CODES["eval"]]
    assert abs(np.median(ev) - np.median(lm)) < 0.05


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        split_halos(np.arange(3), np.ones(3) * 14, train=0.5, test=0.4, eval=0.2,
                    validation_fraction=0.1, bin_width_dex=0.1,
                    rng=np.random.default_rng(0))


def test_tube_search_finds_exactly_the_brute_force_window(cosmo):
    """The KD-tree tube search misses nothing: same window as projecting every galaxy."""
    rng = np.random.default_rng(11)
    n = 40000
    box = 120.0
    pos = rng.uniform(0, box, (n, 3))
    vel = rng.normal(0, 400, (n, 3))
    vel[:400] *= 8.0                                   # a few very fast galaxies
    # a dense clump of members around the cluster, to fill the window
    c = np.array([5.0, 60.0, 118.0])
    pos[400:1400] = np.mod(c + rng.normal(0, 0.7, (1000, 3)), box)
    gal = dict(galaxy_id=np.arange(n), halo_id=np.full(n, 2), is_central=np.zeros(n, int),
               x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2], vx_kms=vel[:, 0],
               vy_kms=vel[:, 1], vz_kms=vel[:, 2], mag_r=np.full(n, -20.0))
    gal["halo_id"][400:1400] = 1
    gal["is_central"][400] = 1
    gal["x_mpc_h"][400], gal["y_mpc_h"][400], gal["z_mpc_h"][400] = c
    halos = _halos([(1, -1, 14.5, 1.0, 5.0, *c, 0.0, 0.0, 0.0),
                    (2, -1, 12.0, 0.2, 5.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0)])
    p = _projector(cosmo, halos, gal, box=box)
    dirs = np.array([[0, 0, 1.0], [1, 1, 1.0], [-0.3, 0.9, 0.1], [1, 0, 0.0]])
    recs = p.project_halo(1, dirs)
    a = 1 / (1 + Z)
    aH = a * cosmo.hubble_kms_per_mpc_h(Z)
    vc = vel[400]
    for nvec, rec in zip(dirs, recs):
        nvec = nvec / np.linalg.norm(nvec)
        e1, e2 = (np.asarray(e) for e in basis_for(nvec))
        d = pos - c
        d -= box * np.round(d / box)
        x, y = a * d @ e1, a * d @ e2
        v = (vel - vc) @ nvec + aH * d @ nvec
        brute = np.flatnonzero((np.abs(x) <= 1.6) & (np.abs(y) <= 1.6) & (np.abs(v) <= 2200))
        assert len(brute) > 200
        np.testing.assert_array_equal(np.sort(rec["galaxy_id"]), brute)


def test_project_batches_the_same_for_any_number_of_processes(cosmo):
    """Rule project's batches (issue 31: forked processes side by side) hold exactly the
    windows of Projector.project_halo, halo by halo in sightline order, for 1 and 2
    processes and any batch size; cluster ids run over the sightline rows."""
    from cmpipe.mock.projection import project_batches

    rng = np.random.default_rng(5)
    box, n = 80.0, 6000
    pos = rng.uniform(0, box, (n, 3))
    vel = rng.normal(0, 300, (n, 3))
    centres = rng.uniform(10, 70, (5, 3))
    hid = np.repeat(np.arange(1, 6), 60)
    pos[:300] = centres[hid - 1] + rng.normal(0, 0.5, (300, 3))
    gal = dict(galaxy_id=np.arange(n), halo_id=np.r_[hid, np.full(n - 300, 99)],
               is_central=np.zeros(n, int), x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1],
               z_mpc_h=pos[:, 2], vx_kms=vel[:, 0], vy_kms=vel[:, 1], vz_kms=vel[:, 2],
               mag_r=rng.uniform(-22, -18, n))
    halos = _halos([(k, -1, 14.0 + 0.1 * k, 1.0, 5.0, *centres[k - 1], 0.0, 0.0, 0.0)
                    for k in range(1, 6)])
    p = _projector(cosmo, halos, gal, box=box)
    per_halo = [1, 3, 2, 1, 2]
    sl_hid = np.repeat(np.arange(1, 6), per_halo)
    dirs = rng.normal(size=(sl_hid.size, 3))
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    sl = dict(halo_id=sl_hid, sightline=np.concatenate([np.arange(k) for k in per_halo]),
              nx=dirs[:, 0], ny=dirs[:, 1], nz=dirs[:, 2])
    hosts = dict(halo_id=halos["halo_id"], log10_m200c=halos["log10_m200c"],
                 r200c_mpc_h=halos["r200c_mpc_h"])
    expect = np.concatenate([rec["galaxy_id"] for k in range(1, 6)
                             for rec in p.project_halo(k, dirs[sl_hid == k])])
    assert expect.size > 100
    runs = {}
    for workers, bs in ((1, 2), (2, 1), (2, 2)):
        out = list(project_batches(p, sl, hosts, batch_size=bs, progress=False,
                                   workers=workers))
        assert len(out) == -(-5 // bs)
        runs[workers, bs] = ({k: np.concatenate([c[k] for c, _ in out]) for k in out[0][0]},
                             {k: np.concatenate([g[k] for _, g in out]) for k in out[0][1]})
    ref_cl, ref_gal = runs[1, 2]
    np.testing.assert_array_equal(ref_gal["galaxy_id"], expect)
    np.testing.assert_array_equal(ref_cl["cluster_id"], np.arange(sl_hid.size))
    for cl, g in runs.values():
        for k in ref_cl:
            np.testing.assert_array_equal(cl[k], ref_cl[k])
        for k in ref_gal:
            np.testing.assert_array_equal(g[k], ref_gal[k])
