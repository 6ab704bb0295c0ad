"""Tests of the survey tables (cmpipe.io.survey) and the synthetic survey (cmpipe.survey).

The synthetic survey's cluster count is checked against the Tinker et al. (2008)
expectation V * n(>M_min) for its volume (colossus), within 3 Poisson standard deviations,
on a hand-built box of unclustered halos (so the count really is Poisson); the tiling is
checked against a brute-force enumeration of periodic images; an end-to-end run on a small
cmpipe.mock.universe box goes through the writers, the readers and the sky conversion. Seeds
are fixed.
"""
from __future__ import annotations

import logging

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from cmpipe.cosmology import C_KMS, evrard_sigma_dm_kms
from cmpipe.io.catalogues import GALAXY_SCHEMA, HALO_SCHEMA
from cmpipe.io.survey import (SURVEY_CLUSTER_SCHEMA, SURVEY_GALAXY_SCHEMA, read_survey_clusters,
                              read_survey_galaxies, read_survey_truth, write_survey_clusters,
                              write_survey_galaxies, write_survey_truth)
from cmpipe.io.tables import CatalogueError
from cmpipe.massfunction import tinker08_dndlog10m
from cmpipe.survey.sky import radec_to_unit, sky_to_phase_space
from cmpipe.survey import (FULL_SKY_DEG2, cap_cos_half_angle, in_footprint,
                           make_synthetic_survey, survey_volume_mpc_h3)
from cmpipe.mock.universe import UniverseSettings, generate_universe, sample_halo_masses


@pytest.fixture(autouse=True)
def _fixed_global_seed():
    state = np.random.get_state()
    np.random.seed(41)
    yield
    np.random.set_state(state)


# ---------------------------------------------------------------------------- readers


def _galweight_like(n=5):
    rng = np.random.default_rng(3)
    return Table(dict(
        ID=np.arange(1, n + 1), RA=rng.uniform(120, 240, n), Dec=rng.uniform(0, 60, n),
        z=rng.uniform(0.02, 0.08, n), logM200=rng.uniform(13.7, 15.0, n),
        e_logM200=np.full(n, 0.1), N200=rng.integers(10, 200, n)))


def test_read_clusters_csv_with_default_mapping(tmp_path):
    t = _galweight_like()
    t.write(tmp_path / "gw.csv")
    cl = read_survey_clusters(tmp_path / "gw.csv")
    assert list(cl) == list(SURVEY_CLUSTER_SCHEMA)
    np.testing.assert_array_equal(cl["cluster_id"], t["ID"])
    np.testing.assert_allclose(cl["ra_deg"], t["RA"])
    np.testing.assert_allclose(cl["log10_m_cat"], t["logM200"])
    np.testing.assert_array_equal(cl["n_mem"], t["N200"])


def test_read_explicit_mapping_and_units_fits(tmp_path):
    t = _galweight_like()
    t2 = Table(dict(cid=t["ID"], alpha=np.radians(t["RA"]) * u.rad,
                    delta=np.radians(t["Dec"]) * u.rad, zcmb=t["z"]))
    t2.write(tmp_path / "c.fits")
    cl = read_survey_clusters(tmp_path / "c.fits", columns=dict(
        cluster_id="cid", ra_deg="alpha", dec_deg="delta", z="zcmb"))
    np.testing.assert_allclose(cl["ra_deg"], t["RA"], rtol=1e-12)   # rad unit -> deg
    np.testing.assert_allclose(cl["dec_deg"], t["Dec"], rtol=1e-12)
    assert np.all(np.isnan(cl["log10_m_cat"])) and np.all(cl["n_mem"] == -1)


def test_writers_round_trip_ecsv_csv_fits(tmp_path):
    rng = np.random.default_rng(4)
    n = 50
    gal = dict(galaxy_id=np.arange(n), ra_deg=rng.uniform(0, 360, n),
               dec_deg=rng.uniform(-30, 70, n), z=rng.uniform(0.01, 0.1, n),
               cluster_id=rng.integers(-1, 5, n), mag_r=rng.uniform(14, 18, n))
    for ext in ("ecsv", "csv", "fits"):
        write_survey_galaxies(tmp_path / f"g.{ext}", gal, meta=dict(source="test"))
        back = read_survey_galaxies(tmp_path / f"g.{ext}")
        assert list(back) == list(SURVEY_GALAXY_SCHEMA)
        for k in gal:
            np.testing.assert_allclose(back[k], gal[k], rtol=1e-15)
    t = Table.read(tmp_path / "g.ecsv")
    assert t["ra_deg"].unit == u.deg and t.meta["source"] == "test"


def test_missing_z_column_names_file_column_and_key(tmp_path):
    Table(dict(ra=[150.0, 151.0], dec=[2.0, 2.5])).write(tmp_path / "gal.csv")
    with pytest.raises(CatalogueError) as err:
        read_survey_galaxies(tmp_path / "gal.csv")
    msg = str(err.value)
    assert "gal.csv" in msg and "'z'" in msg and "survey.galaxy_columns.z" in msg
    assert err.value.field == "z"


def test_unitless_radians_rejected_and_unit_rad_accepted(tmp_path):
    t = _galweight_like(20)
    bad = Table(dict(ID=t["ID"], RA=np.radians(t["RA"]), Dec=np.radians(t["Dec"]), z=t["z"]))
    bad.write(tmp_path / "rad.csv")
    with pytest.raises(CatalogueError, match="convert to degrees") as err:
        read_survey_clusters(tmp_path / "rad.csv")
    assert "rad.csv" in str(err.value) and "RA" in err.value.field
    bad["RA"].unit = u.rad
    bad["Dec"].unit = u.rad
    bad.write(tmp_path / "rad.ecsv")
    cl = read_survey_clusters(tmp_path / "rad.ecsv")
    np.testing.assert_allclose(cl["ra_deg"], t["RA"], rtol=1e-12)


def test_other_bad_cluster_tables(tmp_path):
    t = _galweight_like()
    dup = t.copy()
    dup["ID"][2] = dup["ID"][0]
    dup.write(tmp_path / "dup.csv")
    with pytest.raises(CatalogueError, match="duplicated id"):
        read_survey_clusters(tmp_path / "dup.csv")
    lin = t.copy()
    lin["logM200"] = 10 ** lin["logM200"] / 1e14
    lin.write(tmp_path / "lin.csv")
    with pytest.raises(CatalogueError, match="not log10 M200c"):
        read_survey_clusters(tmp_path / "lin.csv")
    zneg = t.copy()
    zneg["z"][1] = -0.001
    zneg.write(tmp_path / "zneg.csv")
    with pytest.raises(CatalogueError, match="<= 0"):
        read_survey_clusters(tmp_path / "zneg.csv")
    t.write(tmp_path / "table.txt", format="ascii.csv")
    with pytest.raises(CatalogueError, match="unknown file extension"):
        read_survey_clusters(tmp_path / "table.txt")
    with pytest.raises(CatalogueError, match="unknown cmpipe column"):
        read_survey_clusters(tmp_path / "dup.csv", columns=dict(redshift="z"))


# ---------------------------------------------------------------------------- geometry


def test_footprint_and_volume():
    assert np.isclose(np.degrees(np.arccos(cap_cos_half_angle(8250.0))), 53.13, atol=0.01)
    assert np.isclose(survey_volume_mpc_h3(250.0, FULL_SKY_DEG2), 4 / 3 * np.pi * 250 ** 3)
    omega = 8250.0 * (np.pi / 180) ** 2
    assert np.isclose(survey_volume_mpc_h3(250.0, 8250.0), omega / 3 * 250 ** 3)
    # Monte Carlo area of the cap (1e6 isotropic directions): within 4 sigma
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1_000_000, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    ra = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360
    dec = np.degrees(np.arcsin(v[:, 2]))
    frac = in_footprint(ra, dec, area_deg2=8250.0, pole_ra_deg=185.0,
                        pole_dec_deg=32.0).mean()
    p = 8250.0 / FULL_SKY_DEG2
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / v.shape[0])


def _uniform_box(cosmo, box, log10_m_min, z, seed):
    """Unclustered halos with Tinker (2008) masses (cmpipe.mock.universe's sampler) and one
    central galaxy each (bright enough for any flux limit here)."""
    settings = UniverseSettings(box_size_mpc_h=box, redshift=z, log10_m_min=log10_m_min,
                                log10_m_max=16.0)
    rng = np.random.default_rng(seed)
    lgm = sample_halo_masses(settings, cosmo, rng)
    n = lgm.size
    pos = rng.random((n, 3)) * box
    vel = rng.normal(0, 300.0, (n, 3))
    ids = np.arange(1, n + 1)
    halos = dict(halo_id=ids, upid=np.full(n, -1), log10_m200c=lgm,
                 r200c_mpc_h=np.full(n, 0.5), c200c=np.full(n, 5.0),
                 x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2],
                 vx_kms=vel[:, 0], vy_kms=vel[:, 1], vz_kms=vel[:, 2])
    gals = dict(galaxy_id=ids - 1, halo_id=ids, is_central=np.ones(n, np.int8),
                x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2],
                vx_kms=vel[:, 0], vy_kms=vel[:, 1], vz_kms=vel[:, 2],
                mag_r=np.full(n, -24.0))
    assert set(halos) == set(HALO_SCHEMA) and set(gals) == set(GALAXY_SCHEMA)
    return halos, gals, dict(box_size_mpc_h=box, redshift=z)


def test_cluster_count_matches_tinker_within_poisson(cosmo):
    box, z, m_min, R = 400.0, 0.05, 13.5, 180.0
    halos, gals, attrs = _uniform_box(cosmo, box, 13.0, z, seed=11)
    sv = make_synthetic_survey(halos, gals, attrs, cosmo, radius_mpc_h=R, area_deg2=8250.0,
                               log10_m_min=m_min, galaxy_margin_mpc_h=10.0, seed=5)
    assert not sv.meta["tiled"] and sv.meta["n_repeated_clusters"] == 0
    mg = np.linspace(m_min, 16.0, 5001)
    n_above = np.trapezoid(tinker08_dndlog10m(mg, z, cosmo), mg)
    mu = sv.volume_mpc_h3 * n_above
    n_obs = len(sv.clusters["cluster_id"])
    assert mu > 300
    assert abs(n_obs - mu) < 3 * np.sqrt(mu), (n_obs, mu)
    # the real (not flattened) mass function: KS test of the true masses against Tinker
    cdf_grid = np.concatenate([[0], np.cumsum(0.5 * np.diff(mg) * (
        tinker08_dndlog10m(mg[1:], z, cosmo) + tinker08_dndlog10m(mg[:-1], z, cosmo)))])
    cdf = lambda m: np.interp(m, mg, cdf_grid / cdf_grid[-1])   # noqa: E731
    assert stats.kstest(sv.truth["log10_m200c"], cdf).pvalue > 0.01
    # geometry of every cluster: inside R and the cap; redshift law
    t, cl = sv.truth, sv.clusters
    assert t["comoving_distance_mpc_h"].max() <= R and t["log10_m200c"].min() >= m_min
    assert in_footprint(cl["ra_deg"], cl["dec_deg"], area_deg2=8250.0, pole_ra_deg=185.0,
                        pole_dec_deg=32.0).all()
    np.testing.assert_allclose(t["z_cos"], cosmo.z_at_comoving_distance(
        t["comoving_distance_mpc_h"]), rtol=1e-12)
    row = t["halo_id"] - 1
    r = np.column_stack([halos[k][row] for k in ("x_mpc_h", "y_mpc_h", "z_mpc_h")])
    obs = np.asarray(sv.meta["observer_mpc_h"])
    d = r - obs
    d -= box * np.round(d / box)
    n_hat = d / np.linalg.norm(d, axis=1)[:, None]
    np.testing.assert_allclose(radec_to_unit(cl["ra_deg"], cl["dec_deg"]), n_hat, atol=1e-9)
    v_los = np.einsum("ij,ij->i", np.column_stack(
        [halos[k][row] for k in ("vx_kms", "vy_kms", "vz_kms")]), n_hat)
    np.testing.assert_allclose(1 + cl["z"], (1 + t["z_cos"]) * (1 + v_los / C_KMS),
                               rtol=1e-12)
    # ids by increasing distance; the observer is seeded
    assert np.all(np.diff(t["comoving_distance_mpc_h"]) >= 0)
    sv2 = make_synthetic_survey(halos, gals, attrs, cosmo, radius_mpc_h=R, log10_m_min=m_min,
                                galaxy_margin_mpc_h=10.0, seed=5)
    np.testing.assert_array_equal(sv2.clusters["ra_deg"], cl["ra_deg"])


def test_tiling_counts_every_periodic_image(cosmo, caplog):
    """One halo in a 50 h^-1 Mpc box seen to 120 h^-1 Mpc over the whole sky: as many
    clusters as lattice images within R (brute-force enumeration)."""
    box, R = 50.0, 120.0
    pos = np.array([[12.0, 40.0, 7.0]])
    halos = dict(halo_id=np.array([1]), upid=np.array([-1]), log10_m200c=np.array([14.5]),
                 r200c_mpc_h=np.array([1.0]), c200c=np.array([5.0]),
                 x_mpc_h=pos[:, 0], y_mpc_h=pos[:, 1], z_mpc_h=pos[:, 2],
                 vx_kms=np.zeros(1), vy_kms=np.zeros(1), vz_kms=np.zeros(1))
    gals = dict(galaxy_id=np.array([0, 1]), halo_id=np.array([1, 1]),
                is_central=np.array([1, 0], np.int8),
                x_mpc_h=np.array([12.0, 49.9]), y_mpc_h=np.array([40.0, 40.0]),
                z_mpc_h=np.array([7.0, 7.0]), vx_kms=np.zeros(2), vy_kms=np.zeros(2),
                vz_kms=np.zeros(2), mag_r=np.array([-23.0, -22.0]))
    # the satellite at x = 49.9 is the image of x = -0.1, next to the halo at 12 - 12.1;
    # it must be unwrapped into the same replica as its host
    gals["x_mpc_h"][1] = 49.9
    halos["x_mpc_h"][0] = 0.5
    gals["x_mpc_h"][0] = 0.5
    with caplog.at_level(logging.WARNING, logger="cmpipe.survey"):
        sv = make_synthetic_survey(halos, gals, dict(box_size_mpc_h=box), cosmo,
                                   radius_mpc_h=R, area_deg2=FULL_SKY_DEG2,
                                   log10_m_min=14.0, galaxy_margin_mpc_h=0.0, seed=1)
    obs = np.asarray(sv.meta["observer_mpc_h"])
    k = np.arange(-5, 6)
    n = np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm(np.array([0.5, 40.0, 7.0]) + n * box - obs, axis=1)
    expected = int((d <= R).sum())
    assert len(sv.clusters["cluster_id"]) == expected > 20
    assert np.all(sv.truth["halo_id"] == 1) and len(set(sv.truth["replica"])) == expected
    assert sv.meta["tiled"] and sv.meta["n_repeated_clusters"] == expected - 1
    assert "periodic replicas" in caplog.text
    # every replica keeps its satellite: labelled, 0.6 h^-1 Mpc (comoving) from the centre
    lab = sv.galaxies["cluster_id"]
    counts = np.bincount(lab[lab >= 0], minlength=expected)
    inner = sv.truth["comoving_distance_mpc_h"] < R - 1.0
    assert np.all(counts[inner] == 2)


def test_end_to_end_on_synthetic_universe(cosmo, tmp_path):
    """A small cmpipe.mock.universe box -> survey tables on disk -> readers -> phase space."""
    settings = UniverseSettings(box_size_mpc_h=60.0, log10_m_min=12.5, grid_cells=32)
    halos, gals = generate_universe(settings, cosmo, 7)
    attrs = dict(box_size_mpc_h=60.0, redshift=settings.redshift)
    sv = make_synthetic_survey(halos, gals, attrs, cosmo, radius_mpc_h=70.0,
                               area_deg2=8250.0, log10_m_min=13.0, mag_r_limit=18.0,
                               galaxy_margin_mpc_h=30.0, seed=3)
    assert sv.galaxies["mag_r"].max() < 18.0
    # like a redshift survey, only receding galaxies (the ingestion rejects z <= 0)
    assert sv.galaxies["z"].min() > 0.001
    write_survey_clusters(tmp_path / "clusters.ecsv", sv.clusters, meta=sv.meta)
    write_survey_galaxies(tmp_path / "galaxies.fits", sv.galaxies)
    write_survey_truth(tmp_path / "truth.ecsv", sv.truth)
    cl = read_survey_clusters(tmp_path / "clusters.ecsv")
    ga = read_survey_galaxies(tmp_path / "galaxies.fits")
    truth = read_survey_truth(tmp_path / "truth.ecsv")
    np.testing.assert_array_equal(truth["halo_id"], sv.truth["halo_id"])
    out = sky_to_phase_space(cl["cluster_id"], cl["ra_deg"], cl["dec_deg"], cl["z"],
                             ga["ra_deg"], ga["dec_deg"], ga["z"], cosmo)
    assert out.counts["n_clusters"] == len(cl["cluster_id"]) > 10
    g = out.galaxies
    member = ga["cluster_id"][g["galaxy_row"]] == g["cluster_id"]
    row = np.searchsorted(cl["cluster_id"], g["cluster_id"])
    # centrals brighter than the limit sit at the origin of their own window
    at_origin = (np.abs(g["x_proj_mpc_h"]) < 1e-9) & (np.abs(g["v_los_kms"]) < 1e-6)
    assert at_origin.sum() >= 0.5 * len(cl["cluster_id"])
    assert np.all(member[at_origin])
    # members lie within their halo: |x|, |y| <= 1.25 R200c and |v| within 4 sigma_DM
    # (Evrard et al. 2008) + 300 km/s. The 25% allow for satellites placed inside the
    # comoving R200c (1 + z_snap) of the z_snap = 0.1 snapshot but seen at z ~ 0.015
    # (1.1 / 1.015), and for D_A taken at the observed, not cosmological, redshift
    # (z_obs / z_cos up to ~1.07 at these distances)
    r200 = truth["r200c_mpc_h"][row[member]]
    assert np.all(np.abs(g["x_proj_mpc_h"][member]) <= 1.25 * r200)
    assert np.all(np.abs(g["y_proj_mpc_h"][member]) <= 1.25 * r200)
    sig = evrard_sigma_dm_kms(truth["log10_m200c"][row[member]], settings.redshift, cosmo)
    assert np.all(np.abs(g["v_los_kms"][member]) <= 4 * sig + 300.0)
    # most flux-limited members of a cluster are in its window
    n_in = np.bincount(row[member], minlength=len(cl["cluster_id"]))
    assert n_in.sum() >= 0.9 * cl["n_mem"].sum()


def test_synthetic_survey_infall_members(cosmo):
    """survey.synthetic.infall_fraction f: every cluster-mass host gains Poisson(f x its
    satellites) members (4 sigma, plus 1% for those falling off the survey's edges); the
    clusters stay the same; 0 leaves the survey as it was."""
    box, R, n_sat, f = 300.0, 150.0, 20, 0.5
    halos, gals, attrs = _uniform_box(cosmo, box, 13.5, 0.05, seed=3)
    rng = np.random.default_rng(8)
    n_h = len(halos["halo_id"])
    host = np.repeat(np.arange(n_h), n_sat)
    off = rng.normal(0.0, 0.15, (host.size, 3))
    sats = dict(galaxy_id=np.arange(host.size) + n_h, halo_id=halos["halo_id"][host],
                is_central=np.zeros(host.size, np.int8),
                **{k: halos[k][host] + off[:, i] for i, k in enumerate(("x_mpc_h", "y_mpc_h",
                                                                         "z_mpc_h"))},
                **{k: halos[k][host] + rng.normal(0, 500.0, host.size)
                   for k in ("vx_kms", "vy_kms", "vz_kms")},
                mag_r=np.full(host.size, -23.0))
    gals = {k: np.concatenate([gals[k], sats[k]]) for k in gals}
    kw = dict(radius_mpc_h=R, area_deg2=8250.0, log10_m_min=13.5, galaxy_margin_mpc_h=10.0,
              seed=9)
    base = make_synthetic_survey(halos, gals, attrs, cosmo, **kw)
    more = make_synthetic_survey(halos, gals, attrs, cosmo, infall_fraction=f,
                                 infall_radius_r200c=2.0, **kw)
    assert more.meta["infall_fraction"] == f and base.meta["infall_fraction"] == 0.0
    np.testing.assert_array_equal(more.clusters["ra_deg"], base.clusters["ra_deg"])
    n_cl = len(base.clusters["cluster_id"])
    gained = int(more.truth["n_mem_true"].sum() - base.truth["n_mem_true"].sum())
    lam = f * n_sat * n_cl
    assert n_cl > 50 and abs(gained - lam) < 4 * np.sqrt(lam) + 0.01 * lam, (gained, lam)
    # f = 0 draws nothing: the same survey again
    again = make_synthetic_survey(halos, gals, attrs, cosmo, **kw)
    np.testing.assert_array_equal(again.galaxies["ra_deg"], base.galaxies["ra_deg"])


def test_synthetic_survey_nuisances(cosmo):
    """The survey universe's nuisances (survey.synthetic): the magnitude shift moves every
    apparent magnitude by delta (same galaxies when the limit is far); completeness f keeps
    a binomial fraction (4 sigma); fibre collisions leave no two kept collided-and-lost
    targets within the radius and lose about the set fraction of collided targets."""
    from cmpipe.survey.synthetic import spectroscopic_targets

    box, R = 300.0, 150.0
    halos, gals, attrs = _uniform_box(cosmo, box, 12.5, 0.05, seed=3)
    kw = dict(radius_mpc_h=R, area_deg2=8250.0, log10_m_min=13.5, galaxy_margin_mpc_h=10.0,
              seed=9)
    base = make_synthetic_survey(halos, gals, attrs, cosmo, **kw)
    shifted = make_synthetic_survey(halos, gals, attrs, cosmo, mag_shift_mag=0.3, **kw)
    np.testing.assert_array_equal(shifted.galaxies["ra_deg"], base.galaxies["ra_deg"])
    np.testing.assert_allclose(shifted.galaxies["mag_r"] - base.galaxies["mag_r"], 0.3,
                               atol=1e-12)
    n = len(base.galaxies["ra_deg"])
    half = make_synthetic_survey(halos, gals, attrs, cosmo, completeness=0.5, **kw)
    k = len(half.galaxies["ra_deg"])
    assert n > 2000 and abs(k - 0.5 * n) < 4 * np.sqrt(0.25 * n), (k, n)
    assert half.meta["n_galaxies_flux_limited"] == n
    # kept members are counted per cluster; the truth keeps the flux-limited count
    np.testing.assert_array_equal(half.truth["n_mem_true"], base.clusters["n_mem"])
    assert half.clusters["n_mem"].sum() < base.clusters["n_mem"].sum()

    # fibre collisions on a dense patch of the sky: 2000 targets in a 0.2 deg square
    rng = np.random.default_rng(4)
    ra, dec = 150.0 + rng.uniform(0, 0.2, 2000), 20.0 + rng.uniform(0, 0.2, 2000)
    keep_all = spectroscopic_targets(ra, dec, completeness=1.0, fibre_collision_loss=1.0,
                                     fibre_arcsec=55.0, rng=np.random.default_rng(1))
    u = radec_to_unit(ra[keep_all], dec[keep_all])
    from scipy.spatial import cKDTree
    chord = 2 * np.sin(0.5 * np.radians(55.0 / 3600.0))
    assert len(cKDTree(u).query_pairs(chord)) == 0          # loss 1: a hard-core set
    lost = (~keep_all).sum()
    assert lost > 200
    keep_half = spectroscopic_targets(ra, dec, completeness=1.0, fibre_collision_loss=0.5,
                                      fibre_arcsec=55.0, rng=np.random.default_rng(1))
    frac = (~keep_half).sum() / lost                          # same collided set, same seed
    assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / lost), frac
