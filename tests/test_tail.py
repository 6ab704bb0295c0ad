"""The training tail (cmpipe.mock.tail): massive halos for training only, placed in the box's
own fields and projected as ghosts.

References: the box generated without the tail (it must not change), the requested mass
range and count (flat in log M), the box's own clustering (tail halos have the largest
bias, so they sit in denser places than random points and than lighter box halos), and a
hand-built catalogue for the ghost rule of the projection. Fixed seeds throughout.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cmpipe.mock.projection import Projector
from cmpipe.mock.tail import TailSettings, tail_masses
from cmpipe.mock.universe import UniverseSettings, generate_universe, make_halos

POS = ("x_mpc_h", "y_mpc_h", "z_mpc_h")
TAIL = TailSettings(log10_m_min=14.8, log10_m_max=15.4, halos_per_dex=100.0)


pytestmark = pytest.mark.usefixtures("fixed_global_seed")


@pytest.fixture(scope="module")
def box(cosmo):
    settings = UniverseSettings(box_size_mpc_h=150.0, log10_m_min=12.5, grid_cells=32)
    return settings, *generate_universe(settings, cosmo, 7, tail=TAIL)


def test_tail_masses_are_flat_in_log_m():
    m = tail_masses(TAIL, np.random.default_rng(1))
    assert m.size == TAIL.n_halos == 60
    assert np.all((m >= 14.8) & (m < 15.4))
    assert np.all(np.diff(m) <= 0)                      # decreasing, as make_halos sorts
    counts, _ = np.histogram(m, bins=np.linspace(14.8, 15.4, 7))
    np.testing.assert_array_equal(counts, 10)           # stratified: exactly 10 per 0.1 dex


@pytest.mark.parametrize("bad", [dict(log10_m_min=15.5, log10_m_max=15.4),
                                 dict(halos_per_dex=0.0)])
def test_tail_settings_reject_bad_values(bad):
    with pytest.raises(ValueError, match="simulation.tail"):
        TailSettings(**bad)


def test_box_is_the_same_with_and_without_the_tail(cosmo):
    settings = UniverseSettings(box_size_mpc_h=100.0, log10_m_min=12.5, grid_cells=32)
    plain = make_halos(settings, cosmo, 5)
    halos, tail = make_halos(settings, cosmo, 5, TAIL)
    for k in plain:
        np.testing.assert_array_equal(plain[k], halos[k], err_msg=k)
    np.testing.assert_array_equal(tail["halo_id"],
                                  np.arange(1, tail["halo_id"].size + 1) + plain["halo_id"].max())
    assert np.all(tail["upid"] == -1)
    pos = np.column_stack([tail[k] for k in POS])
    assert np.all((pos >= 0) & (pos < 100.0))
    # R200c and c200c follow the box's relations: R200c ~ M^(1/3) exactly
    r = tail["r200c_mpc_h"] / 10 ** (tail["log10_m200c"] / 3)
    np.testing.assert_allclose(r, r[0], rtol=1e-10)


def test_tail_galaxies_continue_the_box_ids(box):
    _, halos, galaxies, tail, tail_gal = box
    assert tail_gal["galaxy_id"].min() == galaxies["galaxy_id"].max() + 1
    assert np.all(np.diff(tail_gal["galaxy_id"]) == 1)
    assert set(np.unique(tail_gal["halo_id"])) <= set(tail["halo_id"].tolist())
    # one central per tail halo, and ~10^3 satellites per 10^15 halo brighter than -18
    cen = tail_gal["is_central"].astype(bool)
    np.testing.assert_array_equal(np.sort(tail_gal["halo_id"][cen]), np.sort(tail["halo_id"]))
    n_per = np.bincount(np.searchsorted(np.sort(tail["halo_id"]), tail_gal["halo_id"]))
    assert 200 < np.median(n_per) < 5000


def test_tail_halos_sit_in_the_box_density_field(box):
    """Tail halos (b ~ 4-6) have more box halos around them than random points do, and
    more than the box's own group-mass halos (b ~ 1.5): they trace the same field."""
    settings, halos, _, tail, _ = box
    L = settings.box_size_mpc_h
    pos_h = np.column_stack([halos[k] for k in POS])
    tree = cKDTree(pos_h, boxsize=L)

    def mean_neighbours(points, r=8.0):
        return float(np.mean([len(n) for n in tree.query_ball_point(points, r)]))

    pos_t = np.column_stack([tail[k] for k in POS])
    rand = np.random.default_rng(3).random((2000, 3)) * L
    groups = (halos["log10_m200c"] > 13.0) & (halos["log10_m200c"] < 13.5)
    n_tail, n_rand = mean_neighbours(pos_t), mean_neighbours(rand)
    n_group = mean_neighbours(pos_h[groups]) - 1.0            # not counting itself
    assert n_tail > 2.0 * n_rand
    assert n_tail > n_group > n_rand


def _proj(cosmo, halos, galaxies, **kw):
    return Projector(halos, galaxies, box_size_mpc_h=150.0, redshift=0.1,
                     hubble_kms_per_mpc_h=cosmo.hubble_kms_per_mpc_h(0.1), **kw)


def test_ghosts_are_seen_only_by_their_own_windows(cosmo, box):
    _, halos, galaxies, tail, tail_gal = box
    both_h = {k: np.concatenate([halos[k], tail[k]]) for k in halos}
    both_g = {k: np.concatenate([galaxies[k], tail_gal[k]]) for k in galaxies}
    plain = _proj(cosmo, halos, galaxies)
    ghost = _proj(cosmo, both_h, both_g, ghost_halo_ids=tail["halo_id"])
    seen = _proj(cosmo, both_h, both_g)                 # the tail as ordinary halos
    dirs = np.eye(3)
    # box clusters near a tail halo: identical windows and interloper halos with ghosts
    pos_h = np.column_stack([halos[k] for k in POS])
    near = cKDTree(pos_h, boxsize=150.0).query_ball_point(
        np.column_stack([tail[k] for k in POS]), 3.0)
    box_ids = sorted({int(halos["halo_id"][i]) for n in near for i in n
                      if halos["log10_m200c"][i] >= 13.0})[:10]
    assert box_ids, "no box cluster near a tail halo: the test would check nothing"
    changed = 0
    for hid in box_ids:
        for a, b, c in zip(plain.project_halo(hid, dirs), ghost.project_halo(hid, dirs),
                           seen.project_halo(hid, dirs)):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            changed += len(c["galaxy_id"]) != len(a["galaxy_id"])
    assert changed > 0          # without the ghost rule the tail would enter these windows
    # a tail cluster's window: all its own members in the window, plus box galaxies
    tid = int(tail["halo_id"][0])
    rec = ghost.project_halo(tid, dirs[:1])[0]
    own = rec["is_member"].astype(bool)
    assert own.sum() > 50 and (~own).sum() > 0
    others = np.isin(rec["galaxy_id"], tail_gal["galaxy_id"]) & ~own
    assert not others.any()                             # no other ghost's galaxies
    assert rec["interloper_halo_id"] not in set(tail["halo_id"].tolist())
