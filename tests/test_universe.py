"""Tests of the synthetic universe (cmpipe.mock.universe, cmpipe.mock.lognormal).

Each physical check compares with an independent reference and an explicit tolerance:
colossus' Tinker et al. (2008) mass function and linear correlation function, the
Evrard et al. (2008) velocity dispersion, linear-theory pairwise infall and the Blanton
et al. (2003) luminosity function. All draws use fixed seeds.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cmpipe.cosmology import evrard_sigma_dm_kms, halo_bias, make_cosmology, tinker08_dndlnm
from cmpipe.io.catalogues import (GALAXY_SCHEMA, HALO_SCHEMA, read_galaxies, read_halos,
                                  write_galaxies, write_halos)
from cmpipe.mock.universe import (UniverseSettings, generate_universe, growth_rate, make_halos,
                                  populate_galaxies, sample_halo_masses)

POS = ("x_mpc_h", "y_mpc_h", "z_mpc_h")
VEL = ("vx_kms", "vy_kms", "vz_kms")


pytestmark = pytest.mark.usefixtures("fixed_global_seed")


@pytest.fixture(scope="module")
def tiny(cosmo):
    """A small box (60 h^-1 Mpc, M > 1e12) for schema and determinism checks."""
    settings = UniverseSettings(box_size_mpc_h=60.0, log10_m_min=12.0, grid_cells=32)
    halos, galaxies = generate_universe(settings, cosmo, 7)
    return settings, halos, galaxies


@pytest.fixture(scope="module")
def clusters(cosmo):
    """A 250 h^-1 Mpc box of M > 1e13 halos with their galaxies (~6e3 halos)."""
    settings = UniverseSettings(log10_m_min=13.0, grid_cells=64)
    halos = make_halos(settings, cosmo, 5)
    galaxies = populate_galaxies(halos, settings, cosmo, 6)
    return settings, halos, galaxies


def _xyz(cols, keys):
    return np.column_stack([cols[k] for k in keys])


def _host_index(halos, galaxies):
    """Row of each galaxy's host in the halo table (make_halos sorts halo_id)."""
    assert np.all(np.diff(halos["halo_id"]) > 0)
    index = np.searchsorted(halos["halo_id"], galaxies["halo_id"])
    assert np.array_equal(halos["halo_id"][index], galaxies["halo_id"])
    return index


# ------------------------------------------------------------------ mass function

def test_mass_function_matches_tinker08(cosmo):
    """Box mass function within 10% of colossus Tinker08 in every bin with >= 100 halos."""
    from colossus.lss import mass_function

    settings = UniverseSettings(box_size_mpc_h=600.0, log10_m_min=11.5)
    lgm = sample_halo_masses(settings, cosmo, np.random.default_rng(2020))
    volume = settings.box_size_mpc_h ** 3
    edges = np.arange(11.5, 16.0 + 1e-9, 0.25)
    counts = np.histogram(lgm, edges)[0]
    # reference: 16-point Gauss-Legendre integral of colossus dn/dlnM over each bin
    x, w = np.polynomial.legendre.leggauss(16)
    expected = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lnm = 0.5 * (hi - lo) * np.log(10) * x + 0.5 * (hi + lo) * np.log(10)
        dn = mass_function.massFunction(np.exp(lnm), settings.redshift, mdef="200c",
                                        model="tinker08", q_out="dndlnM")
        expected.append(volume * 0.5 * (hi - lo) * np.log(10) * np.sum(w * dn))
    expected = np.array(expected)
    use = counts >= 100
    assert use.sum() >= 10
    ratio = counts[use] / expected[use]
    tol = 0.10
    print("\nmass-function ratios (box / Tinker08), bins of 0.25 dex from 11.5:",
          np.round(ratio, 4).tolist())
    assert np.all(np.abs(ratio - 1.0) < tol), (ratio, tol)
    total = expected.sum()
    assert abs(lgm.size - total) < 4.0 * np.sqrt(total)
    # the wrapper is the colossus function
    np.testing.assert_allclose(tinker08_dndlnm(np.array([12.0, 14.0]), 0.1, cosmo),
                               mass_function.massFunction(np.array([1e12, 1e14]), 0.1,
                                                          mdef="200c", model="tinker08",
                                                          q_out="dndlnM"), rtol=1e-12)


# ------------------------------------------------------------------ clustering

@pytest.fixture(scope="module")
def massive(cosmo):
    """Halos above 10^12.5 h^-1 Msun in a 250 h^-1 Mpc box (~2e4 halos)."""
    settings = UniverseSettings(log10_m_min=12.5, grid_cells=128)
    return settings, make_halos(settings, cosmo, 3)


def _shell_mean(fn, lo, hi):
    r = np.linspace(lo, hi, 64)
    return np.sum(fn(r) * r ** 2) / np.sum(r ** 2)


def test_halo_correlation_function_matches_linear_bias(cosmo, massive):
    """xi_hh within 30% of b_eff^2 xi_lin at 5-20 h^-1 Mpc (colossus xi_lin)."""
    settings, halos = massive
    box, z = settings.box_size_mpc_h, settings.redshift
    pos = _xyz(halos, POS)
    n = len(pos)
    b_eff = float(np.mean(halo_bias(halos["log10_m200c"], z, cosmo)))
    tree = cKDTree(pos, boxsize=box)
    edges = np.geomspace(5.0, 20.0, 7)
    dd = np.diff(tree.count_neighbors(tree, edges)).astype(float)  # ordered pairs
    rr = n * (n - 1) * 4.0 / 3.0 * np.pi * np.diff(edges ** 3) / box ** 3
    xi = dd / rr - 1.0
    pred = np.array([b_eff ** 2 * _shell_mean(
        lambda r: cosmo.colossus.correlationFunction(r, z), lo, hi)
        for lo, hi in zip(edges[:-1], edges[1:])])
    ratio = xi / pred
    print(f"\nxi_hh / (b_eff^2 xi_lin), b_eff = {b_eff:.3f}, N = {n}:",
          np.round(ratio, 3).tolist())
    assert np.all(np.abs(ratio - 1.0) < 0.30), ratio


def test_pairwise_infall_matches_linear_theory(cosmo, massive):
    """Mean radial pair velocity at 10-20 h^-1 Mpc within 25% of linear theory.

    Reference: pair conservation in linear theory with unbiased velocities,
    v12(r) = -(2/3) a H f r b xibar_lin(r) / (1 + b^2 xi_lin(r)). It checks the sign
    and the a H(z) f(z) normalisation of the velocity field.
    """
    settings, halos = massive
    box, z = settings.box_size_mpc_h, settings.redshift
    pos, vel = _xyz(halos, POS), _xyz(halos, VEL)
    b = float(np.mean(halo_bias(halos["log10_m200c"], z, cosmo)))
    pairs = cKDTree(pos, boxsize=box).query_pairs(20.0, output_type="ndarray")
    d = pos[pairs[:, 1]] - pos[pairs[:, 0]]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=1)
    v12 = np.sum((vel[pairs[:, 1]] - vel[pairs[:, 0]]) * d, axis=1) / r
    a_h_f = cosmo.hubble_kms_per_mpc_h(z) / (1 + z) * growth_rate(z, cosmo)
    rg = np.linspace(0.01, 20.0, 4000)
    xi = cosmo.colossus.correlationFunction(rg, z)
    xibar = 3.0 * np.cumsum(xi * rg ** 2) * (rg[1] - rg[0]) / rg ** 3
    ratios = []
    for lo, hi in ((10.0, 12.6), (12.6, 15.9), (15.9, 20.0)):
        sel = (r >= lo) & (r < hi)
        rc = np.sqrt(lo * hi)
        pred = (-2.0 / 3.0 * a_h_f * rc * b * np.interp(rc, rg, xibar)
                / (1.0 + b ** 2 * np.interp(rc, rg, xi)))
        ratios.append(v12[sel].mean() / pred)
    print("\npairwise infall / linear theory at 10-20 h^-1 Mpc:", np.round(ratios, 3).tolist())
    assert np.all(np.abs(np.array(ratios) - 1.0) < 0.25), ratios


# ------------------------------------------------------------------ galaxies

def test_satellite_velocity_dispersion_matches_evrard(cosmo, clusters):
    """1-D satellite dispersion about the host within 15% of Evrard et al. 2008."""
    settings, halos, galaxies = clusters
    host = _host_index(halos, galaxies)
    sat = galaxies["is_central"] == 0
    dv = _xyz(galaxies, VEL)[sat] - _xyz(halos, VEL)[host[sat]]
    lgm = halos["log10_m200c"][host[sat]]
    ratios = []
    for lo, hi in ((13.0, 13.5), (13.5, 14.0), (14.0, 14.5), (14.5, 15.5)):
        sel = (lgm >= lo) & (lgm < hi)
        if sel.sum() < 300:
            continue
        sigma = np.sqrt(np.mean(dv[sel] ** 2))
        ref = np.sqrt(np.mean(evrard_sigma_dm_kms(lgm[sel], settings.redshift, cosmo) ** 2))
        ratios.append(sigma / ref)
    print("\nsatellite sigma_1D / Evrard08 in 0.5-dex bins from 13:",
          np.round(ratios, 3).tolist())
    assert len(ratios) >= 3
    assert np.all(np.abs(np.array(ratios) - 1.0) < 0.15), ratios


def test_centrals_on_halo_and_satellites_inside_r200c(clusters):
    settings, halos, galaxies = clusters
    box, z = settings.box_size_mpc_h, settings.redshift
    host = _host_index(halos, galaxies)
    cen = galaxies["is_central"] == 1
    assert np.array_equal(_xyz(galaxies, POS)[cen], _xyz(halos, POS)[host[cen]])
    assert np.array_equal(_xyz(galaxies, VEL)[cen], _xyz(halos, VEL)[host[cen]])
    assert np.bincount(galaxies["halo_id"][cen]).max() == 1  # at most one central
    sat = ~cen
    d = _xyz(galaxies, POS)[sat] - _xyz(halos, POS)[host[sat]]
    d -= box * np.round(d / box)
    r_over = np.linalg.norm(d, axis=1) / (halos["r200c_mpc_h"][host[sat]] * (1 + z))
    assert sat.sum() > 1000
    assert r_over.max() <= 1.0 + 1e-9
    assert 0.3 < np.median(r_over) < 0.6  # NFW with c ~ 4-8: median r/R200c ~ 0.4-0.5


# ------------------------------------------------------------------ tables, seeds

def test_schema_dtypes_and_box(tiny, tmp_path):
    settings, halos, galaxies = tiny
    box = settings.box_size_mpc_h
    for cols, schema in ((halos, HALO_SCHEMA), (galaxies, GALAXY_SCHEMA)):
        assert list(cols) == list(schema)
        for k, (dtype, _, _) in schema.items():
            assert cols[k].dtype == np.dtype(dtype), k
            assert np.all(np.isfinite(cols[k])), k
        p = _xyz(cols, POS)
        assert p.min() >= 0.0 and p.max() < box
    assert halos["halo_id"].size > 500 and galaxies["galaxy_id"].size > 1000
    assert np.all(halos["upid"] == -1)
    assert np.unique(halos["halo_id"]).size == halos["halo_id"].size
    assert np.unique(galaxies["galaxy_id"]).size == galaxies["galaxy_id"].size
    assert np.all(np.isin(galaxies["halo_id"], halos["halo_id"]))
    assert halos["log10_m200c"].min() >= settings.log10_m_min
    assert galaxies["mag_r"].max() <= settings.mag_r_faint
    # R200c is proper: M = 200 rho_crit(z) 4/3 pi R^3 with rho_crit in h^2 Msun Mpc^-3
    rho_c = 2.77536627e11 * make_cosmology("planck18").efunc(settings.redshift) ** 2
    m = 200 * rho_c * 4 / 3 * np.pi * halos["r200c_mpc_h"] ** 3
    np.testing.assert_allclose(np.log10(m), halos["log10_m200c"], atol=2e-3)
    # the io layer accepts both tables unchanged
    meta = dict(box_size_mpc_h=box, redshift=settings.redshift, cosmology="planck18",
                source="synthetic")
    write_halos(tmp_path / "halos.h5", halos, **meta)
    write_galaxies(tmp_path / "galaxies.h5", galaxies, **meta)
    h2, _ = read_halos(tmp_path / "halos.h5")
    g2, _ = read_galaxies(tmp_path / "galaxies.h5")
    assert np.array_equal(h2["x_mpc_h"], halos["x_mpc_h"])
    assert np.array_equal(g2["mag_r"], galaxies["mag_r"])


def test_same_seed_same_universe_other_seed_differs(cosmo, tiny):
    settings, halos, galaxies = tiny
    halos2, galaxies2 = generate_universe(settings, cosmo, np.random.SeedSequence(7))
    for a, b in ((halos, halos2), (galaxies, galaxies2)):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    halos3, galaxies3 = generate_universe(settings, cosmo, 8)
    assert not np.array_equal(halos3["x_mpc_h"][:100], halos["x_mpc_h"][:100])
    assert galaxies3["galaxy_id"].size != galaxies["galaxy_id"].size or not np.array_equal(
        galaxies3["mag_r"], galaxies["mag_r"])


def test_settings_are_validated():
    with pytest.raises(ValueError, match="grid_cells"):
        UniverseSettings(grid_cells=33)
    with pytest.raises(ValueError, match="log10_m_min"):
        UniverseSettings(log10_m_min=16.0, log10_m_max=15.0)


# ------------------------------------------------------------------ default box

@pytest.mark.slow
def test_default_box_luminosity_function(cosmo):
    """Default box (250 h^-1 Mpc, 1e11): galaxy counts within 35% of Blanton et al. 2003.

    Reference: the SDSS ^{0.1}r Schechter fit (phi* = 1.49e-2 h^3 Mpc^-3,
    M* - 5 log h = -20.44, alpha = -1.05). The CLF parameters are Cacciato et al.'s
    WMAP3 fit applied to Planck-2018 M200c halos, so agreement is at the ~20% level.
    """
    from scipy.integrate import quad

    settings = UniverseSettings()
    halos, galaxies = generate_universe(settings, cosmo, 42)
    volume = settings.box_size_mpc_h ** 3
    n_exp = volume * quad(lambda lnm: tinker08_dndlnm(lnm / np.log(10), 0.1, cosmo),
                          11.0 * np.log(10), 16.0 * np.log(10), limit=200)[0]
    assert abs(halos["halo_id"].size - n_exp) < 5 * np.sqrt(n_exp)
    ratios = []
    for mag in (-17.0, -19.0, -21.0):
        x = 10 ** (-0.4 * (mag + 20.44))
        ref = quad(lambda l: 1.49e-2 * l ** -1.05 * np.exp(-l), x, np.inf)[0]
        ratios.append(np.sum(galaxies["mag_r"] < mag) / volume / ref)
    print(f"\ndefault box: {halos['halo_id'].size} halos, {galaxies['galaxy_id'].size} "
          "galaxies; n(<M_r) / Blanton03 at -17, -19, -21:", np.round(ratios, 3).tolist())
    assert np.all(np.abs(np.array(ratios) - 1.0) < 0.35), ratios
