"""Tests of the sky -> projected phase-space conversion (cmpipe.survey.sky).

References are independent of cmpipe's own geometry: astropy's SkyCoord separation and
position angle (rho, theta east of north; the gnomonic offsets are tan(rho) sin/cos theta),
astropy's angular-diameter distance in Mpc times h, and astropy's speed of light. All
random draws use fixed seeds.
"""
from __future__ import annotations

import logging

import astropy.units as u
import numpy as np
import pytest
from astropy.constants import c as C_LIGHT
from astropy.coordinates import CartesianRepresentation, SkyCoord

from cmpipe.survey.sky import (SkyInputError, check_sky_positions, gnomonic_offsets,
                               gnomonic_to_radec, phase_space_to_sky, radec_to_unit,
                               sky_to_phase_space)

#: Relative tolerance of the conversion against astropy (both are float64 trigonometry).
RTOL = 1e-6
W, V = 1.6, 2200.0


@pytest.fixture(autouse=True)
def _fixed_global_seed():
    state = np.random.get_state()
    np.random.seed(31)
    yield
    np.random.set_state(state)


def _clusters():
    """Clusters over z = 0.02..0.1 and Dec = -60..+80, two straddling RA = 0/360."""
    ra = np.array([0.2, 359.8, 45.0, 150.0, 210.0, 300.0, 359.95, 120.0])
    dec = np.array([-60.0, 80.0, -20.0, 0.0, 35.0, 60.0, 10.0, -45.0])
    z = np.array([0.02, 0.03, 0.045, 0.06, 0.075, 0.09, 0.1, 0.025])
    return np.arange(10, 10 + ra.size), ra, dec, z


def _field(cosmo, ra0, dec0, z0, n, rng, scale=1.6):
    """Galaxies scattered around a cluster out to ~1.6x the window radius on the sky and
    in velocity (many outside the window, to test the cuts)."""
    d_a = cosmo.angular_diameter_distance_mpc_h(z0)
    xi = rng.uniform(-scale, scale, n) * W / d_a
    eta = rng.uniform(-scale, scale, n) * W / d_a
    ra, dec = gnomonic_to_radec(ra0, dec0, xi, eta)
    v = rng.uniform(-scale, scale, n) * V
    z = z0 + v * (1 + z0) / 299792.458
    return ra, dec, z


def _reference(cosmo, ra0, dec0, z0, ra, dec, z):
    """x, y, v from astropy alone."""
    c0 = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    g = SkyCoord(ra * u.deg, dec * u.deg)
    rho = c0.separation(g).to_value(u.rad)
    theta = c0.position_angle(g).to_value(u.rad)
    d_a = cosmo.astropy.angular_diameter_distance(z0).to_value(u.Mpc) * cosmo.h
    x = d_a * np.tan(rho) * np.sin(theta)
    y = d_a * np.tan(rho) * np.cos(theta)
    v = C_LIGHT.to_value(u.km / u.s) * (z - z0) / (1 + z0)
    return x, y, v


@pytest.fixture(scope="module")
def survey(cosmo):
    rng = np.random.default_rng(2020)
    cid, ra0, dec0, z0 = _clusters()
    parts = [_field(cosmo, a, d, zz, 400, rng) for a, d, zz in zip(ra0, dec0, z0)]
    g_ra, g_dec, g_z = (np.concatenate(p) for p in zip(*parts))
    return cid, ra0, dec0, z0, g_ra, g_dec, g_z


def test_gnomonic_offsets_match_astropy_separation_and_position_angle():
    rng = np.random.default_rng(1)
    for ra0, dec0 in [(0.1, -60.0), (359.9, 80.0), (180.0, 0.0), (90.0, 45.0)]:
        ra = np.mod(ra0 + rng.uniform(-3, 3, 200) / np.cos(np.radians(dec0)), 360.0)
        dec = np.clip(dec0 + rng.uniform(-3, 3, 200), -89.9, 89.9)
        xi, eta, _ = gnomonic_offsets(ra0, dec0, ra, dec)
        c0, g = SkyCoord(ra0 * u.deg, dec0 * u.deg), SkyCoord(ra * u.deg, dec * u.deg)
        rho = c0.separation(g).rad
        th = c0.position_angle(g).rad
        np.testing.assert_allclose(xi, np.tan(rho) * np.sin(th), rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(eta, np.tan(rho) * np.cos(th), rtol=RTOL, atol=1e-12)
        # and the inverse returns the points
        ra2, dec2 = gnomonic_to_radec(ra0, dec0, xi, eta)
        sep = SkyCoord(ra2 * u.deg, dec2 * u.deg).separation(g).arcsec
        assert sep.max() < 1e-6


def test_axes_point_east_and_north():
    xi, eta, _ = gnomonic_offsets(10.0, 20.0, [10.1, 10.0], [20.0, 20.1])
    assert xi[0] > 0 and abs(eta[0]) < 1e-4          # +RA -> +x (east)
    assert eta[1] > 0 and abs(xi[1]) < 1e-12         # +Dec -> +y (north)


def test_phase_space_matches_astropy(cosmo, survey):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    out = sky_to_phase_space(cid, ra0, dec0, z0, g_ra, g_dec, g_z, cosmo,
                             half_width_mpc_h=W, v_max_kms=V)
    gal = out.galaxies
    assert np.all(np.diff(gal["cluster_id"]) >= 0)           # sorted by cluster id
    assert out.skipped == [] and out.counts["n_clusters_kept"] == cid.size
    n_checked = 0
    for k, c in enumerate(cid):
        sel = gal["cluster_id"] == c
        rows = gal["galaxy_row"][sel]
        x, y, v = _reference(cosmo, ra0[k], dec0[k], z0[k], g_ra[rows], g_dec[rows],
                             g_z[rows])
        for got, ref in ((gal["x_proj_mpc_h"][sel], x), (gal["y_proj_mpc_h"][sel], y)):
            np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * W)
        np.testing.assert_allclose(gal["v_los_kms"][sel], v, rtol=RTOL, atol=RTOL * V)
        # completeness of the KD-tree pairing: brute force over every galaxy with astropy
        xa, ya, va = _reference(cosmo, ra0[k], dec0[k], z0[k], g_ra, g_dec, g_z)
        front = SkyCoord(ra0[k] * u.deg, dec0[k] * u.deg).separation(
            SkyCoord(g_ra * u.deg, g_dec * u.deg)).deg < 90
        inside = front & (np.abs(xa) <= W) & (np.abs(ya) <= W) & (np.abs(va) <= V)
        assert set(rows.tolist()) == set(np.flatnonzero(inside).tolist())
        assert out.clusters["n_gal"][k] == inside.sum() > 0
        n_checked += inside.sum()
    assert n_checked == len(gal["cluster_id"]) > 500
    # the RA-wrap clusters (0.2, 359.8, 359.95 deg) found galaxies on both sides of 0/360
    for k in (0, 1, 6):
        rows = gal["galaxy_row"][gal["cluster_id"] == cid[k]]
        assert (g_ra[rows] < 5).any() and (g_ra[rows] > 355).any()


def test_label_pairing_restricts_to_listed_cluster(cosmo, survey):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    labels = np.repeat(cid, 400)
    out = sky_to_phase_space(cid, ra0, dec0, z0, g_ra, g_dec, g_z, cosmo,
                             galaxy_cluster_id=labels)
    assert np.all(labels[out.galaxies["galaxy_row"]] == out.galaxies["cluster_id"])


def test_mock_cluster_round_trip(cosmo, tmp_path):
    """Known (x, y, v) -> RA/Dec/z -> survey table on disk -> same (x, y, v).

    Two inverse transforms: (a) cmpipe's exact inverse gnomonic projection (tolerance
    1e-9 relative); (b) independent: galaxies placed in 3-D at the cluster's comoving
    distance with comoving transverse offsets (1 + z) x (x, y) along the local east and
    north vectors, turned into RA/Dec by astropy. (b) differs from the tangent plane by
    the small-angle terms rho^2 ~ (W / D_A)^2, so its tolerance is 2e-3 h^-1 Mpc
    (1e-3 of W; rho <= 0.04 rad at z = 0.02).
    """
    from cmpipe.io.survey import (read_survey_clusters, read_survey_galaxies,
                                  write_survey_clusters, write_survey_galaxies)

    rng = np.random.default_rng(5)
    ra0, dec0, z0 = 359.7, 52.0, 0.02
    n = 300
    x = rng.uniform(-W, W, n)
    y = rng.uniform(-W, W, n)
    v = rng.uniform(-V, V, n)
    ra, dec, z = phase_space_to_sky(ra0, dec0, z0, x, y, v, cosmo)
    write_survey_clusters(tmp_path / "cl.ecsv", dict(
        cluster_id=[7], ra_deg=[ra0], dec_deg=[dec0], z=[z0], log10_m_cat=[np.nan],
        log10_m_cat_err=[np.nan], n_mem=[-1]))
    write_survey_galaxies(tmp_path / "gal.csv", dict(
        galaxy_id=np.arange(n), ra_deg=ra, dec_deg=dec, z=z, cluster_id=np.full(n, 7),
        mag_r=np.full(n, 17.0)))
    cl = read_survey_clusters(tmp_path / "cl.ecsv")
    gal = read_survey_galaxies(tmp_path / "gal.csv")
    out = sky_to_phase_space(cl["cluster_id"], cl["ra_deg"], cl["dec_deg"], cl["z"],
                             gal["ra_deg"], gal["dec_deg"], gal["z"], cosmo,
                             half_width_mpc_h=W * (1 + 1e-9), v_max_kms=V * (1 + 1e-9))
    g = out.galaxies
    assert len(g["galaxy_row"]) == n
    rows = g["galaxy_row"]
    np.testing.assert_allclose(g["x_proj_mpc_h"], x[rows], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g["y_proj_mpc_h"], y[rows], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g["v_los_kms"], v[rows], rtol=1e-9, atol=1e-6)

    # (b) independent 3-D placement
    d_c = cosmo.astropy.comoving_distance(z0).to_value(u.Mpc) * cosmo.h
    a0, d0 = np.radians(ra0), np.radians(dec0)
    n_hat = radec_to_unit(ra0, dec0)
    east = np.array([-np.sin(a0), np.cos(a0), 0.0])
    north = np.array([-np.sin(d0) * np.cos(a0), -np.sin(d0) * np.sin(a0), np.cos(d0)])
    pos = d_c * n_hat + (1 + z0) * (x[:, None] * east + y[:, None] * north)
    sc = SkyCoord(CartesianRepresentation(*pos.T, unit=u.Mpc))
    out2 = sky_to_phase_space([7], [ra0], [dec0], [z0], sc.ra.deg, sc.dec.deg, z, cosmo,
                              half_width_mpc_h=1.01 * W, v_max_kms=1.01 * V)
    r2 = out2.galaxies["galaxy_row"]
    assert len(r2) == n
    np.testing.assert_allclose(out2.galaxies["x_proj_mpc_h"], x[r2], atol=2e-3)
    np.testing.assert_allclose(out2.galaxies["y_proj_mpc_h"], y[r2], atol=2e-3)


# ---------------------------------------------------------------------------- bad input


def test_radians_are_rejected(cosmo, survey):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    with pytest.raises(SkyInputError, match="convert to degrees") as err:
        sky_to_phase_space(cid, np.radians(ra0), np.radians(dec0), z0, g_ra, g_dec, g_z,
                           cosmo)
    assert err.value.table == "clusters" and "ra_deg" in err.value.column
    with pytest.raises(SkyInputError, match="look like radians"):
        sky_to_phase_space(cid, ra0, dec0, z0, np.radians(g_ra), np.radians(g_dec), g_z,
                           cosmo)


def test_radians_rule_spares_degree_data():
    # one or two points cannot tell; a field a few degrees from RA = Dec = 0 is let
    # through with angle_unit="deg"; ordinary degree catalogues never trip it
    check_sky_positions([1.0], [1.0])
    check_sky_positions([1.0, 2.0], [0.5, 1.0])
    field = (np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.2, 0.5, -0.4, 1.2]))
    with pytest.raises(SkyInputError):
        check_sky_positions(*field)
    check_sky_positions(*field, angle_unit="deg")
    check_sky_positions(np.array([150.0, 151.0, 152.0]), np.array([1.0, 1.2, 0.8]))
    # a tight clump (span < 0.1) is not flagged either
    check_sky_positions(np.array([3.0, 3.01, 3.02]), np.array([0.5, 0.52, 0.51]))


def test_declination_out_of_range_and_bad_redshifts(cosmo, survey):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    bad_dec = dec0.copy()
    bad_dec[2] = 95.0
    with pytest.raises(SkyInputError, match=r"outside \[-90, 90\]"):
        sky_to_phase_space(cid, ra0, bad_dec, z0, g_ra, g_dec, g_z, cosmo)
    z_nan = g_z.copy()
    z_nan[3] = np.nan
    with pytest.raises(SkyInputError, match="non-finite redshift") as err:
        sky_to_phase_space(cid, ra0, dec0, z0, g_ra, g_dec, z_nan, cosmo)
    assert err.value.table == "galaxies" and err.value.column == "z"
    z_neg = g_z.copy()
    z_neg[0] = -0.01
    with pytest.raises(SkyInputError, match="< 0"):
        sky_to_phase_space(cid, ra0, dec0, z0, g_ra, g_dec, z_neg, cosmo)
    with pytest.raises(SkyInputError, match="<= 0"):
        sky_to_phase_space(cid, ra0, dec0, np.zeros_like(z0), g_ra, g_dec, g_z, cosmo)


def test_duplicated_cluster_ids(cosmo, survey):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    dup = cid.copy()
    dup[3] = dup[1]
    with pytest.raises(SkyInputError, match="duplicated id") as err:
        sky_to_phase_space(dup, ra0, dec0, z0, g_ra, g_dec, g_z, cosmo)
    assert str(int(cid[1])) in str(err.value)


def test_clusters_without_galaxies_are_skipped_not_fatal(cosmo, survey, caplog):
    cid, ra0, dec0, z0, g_ra, g_dec, g_z = survey
    # two extra clusters: one in an empty sky region, one at a redshift with no galaxies
    cid2 = np.append(cid, [98, 99])
    ra2 = np.append(ra0, [250.0, ra0[3]])
    dec2 = np.append(dec0, [-30.0, dec0[3]])
    z2 = np.append(z0, [0.05, z0[3] + 0.03])
    with caplog.at_level(logging.WARNING, logger="cmpipe.survey.sky"):
        out = sky_to_phase_space(cid2, ra2, dec2, z2, g_ra, g_dec, g_z, cosmo)
    assert out.skipped == [98, 99]
    assert out.counts["n_skipped"] == 2
    assert out.counts["n_clusters_kept"] == cid.size
    assert not np.isin([98, 99], out.galaxies["cluster_id"]).any()
    assert "2 of 10 clusters skipped" in caplog.text
    # min_galaxies raises the bar the same way
    n_gal = out.clusters["n_gal"][:cid.size]
    out3 = sky_to_phase_space(cid, ra0, dec0, z0, g_ra, g_dec, g_z, cosmo,
                              min_galaxies=int(np.median(n_gal)) + 1)
    assert set(out3.skipped) == set(cid[n_gal <= np.median(n_gal)].tolist())
    # every cluster empty: empty output, no traceback
    empty = sky_to_phase_space(cid, ra0, dec0, z0, g_ra[:0], g_dec[:0], g_z[:0], cosmo)
    assert empty.counts["n_window_pairs"] == 0 and len(empty.skipped) == cid.size
