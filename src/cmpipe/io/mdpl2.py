"""The ``mdpl2`` catalogue source: MultiDark-Planck 2 halos (ROCKSTAR) and SAG galaxies.

MDPL2 (Klypin et al. 2016) is a 1 h^-1 Gpc box in the Planck cosmology (colossus
``multidark-planck``: h = 0.6777, Omega_m = 0.307115). :func:`load_mdpl2` turns two public
products of one snapshot into the two cmpipe tables (:data:`~cmpipe.io.catalogues.HALO_SCHEMA`,
:data:`~cmpipe.io.catalogues.GALAXY_SCHEMA`):

* **Halos**: a ROCKSTAR + consistent-trees ``hlist_<scale>.list`` ASCII file, read by
  :func:`~cmpipe.io.rockstar.read_hlist_halos` (masses h^-1 Msun, positions comoving h^-1
  Mpc, velocities peculiar km/s; every mapped column index checked against the file header;
  the conventions for ``log10_m200c``, ``r200c_mpc_h`` and ``c200c`` are in
  :mod:`cmpipe.io.rockstar`).
* **Galaxies**: a galaxy table in HDF5 or CSV, read by
  :func:`~cmpipe.io.galaxy_tables.read_galaxy_table` with column names mapped in the config
  (defaults: the SAG model, Knebe et al. 2018, as in the CosmoSim ``MDPL2.SAG`` table), then
  attached to their host halos by :func:`~cmpipe.io.galaxy_tables.attach_hosts`.

The readers and column maps are importable from here too.
"""
from __future__ import annotations

from collections.abc import Mapping

from .galaxy_tables import DEFAULT_GALAXY_COLUMNS, attach_hosts, read_galaxy_table
from .rockstar import C200C_RANGE, DEFAULT_HLIST_COLUMNS, read_hlist_halos
from .tables import CatalogueError

__all__ = [
    "DEFAULT_HLIST_COLUMNS",
    "DEFAULT_GALAXY_COLUMNS",
    "C200C_RANGE",
    "read_hlist_halos",
    "read_galaxy_table",
    "attach_hosts",
    "load_mdpl2",
]


def load_mdpl2(halo_path, galaxy_path, *, redshift, box_size_mpc_h, cosmology,
               halo_columns: Mapping[str, int | None] = DEFAULT_HLIST_COLUMNS,
               galaxy_columns: Mapping[str, str | None] = DEFAULT_GALAXY_COLUMNS,
               log10_m_min=None, hdf5_path=None):
    """Read an MDPL2 hlist and galaxy table into cmpipe's halo and galaxy tables.

    Parameters
    ----------
    halo_path, galaxy_path : path-like
        See :func:`read_hlist_halos` and :func:`read_galaxy_table`.
    redshift : float
        Snapshot redshift.
    box_size_mpc_h : float
        Box side, comoving h^-1 Mpc.
    cosmology : cmpipe.cosmology.Cosmology
    halo_columns, galaxy_columns : mapping
        Column maps (:data:`DEFAULT_HLIST_COLUMNS`, :data:`DEFAULT_GALAXY_COLUMNS`).
    log10_m_min : float, optional
        Halo mass cut, log10(M200c / (h^-1 Msun)).
    hdf5_path : str, optional
        Group or dataset of the galaxy table inside an HDF5 file.

    Returns
    -------
    halos, galaxies : dict
        All halos (hosts and subhalos) and the galaxies attached to host halos, ready for
        :func:`cmpipe.io.write_halos` and :func:`cmpipe.io.write_galaxies`.

    Raises
    ------
    CatalogueError
        Any reader error, or no galaxy matching a halo (wrong id column or snapshot).
    """
    halos = read_hlist_halos(halo_path, redshift=redshift, box_size_mpc_h=box_size_mpc_h,
                             cosmology=cosmology, columns=halo_columns,
                             log10_m_min=log10_m_min)
    raw = read_galaxy_table(galaxy_path, columns=galaxy_columns,
                            box_size_mpc_h=box_size_mpc_h, hdf5_path=hdf5_path)
    galaxies = attach_hosts(raw, halos)
    if len(galaxies["galaxy_id"]) == 0:
        raise CatalogueError(galaxy_path, f"{galaxy_columns.get('halo_id')} "
                             "(galaxy_columns.halo_id)",
                             f"none of the {len(raw['galaxy_id'])} galaxies has a halo id "
                             f"found among the host halos of {halo_path}",
                             "map galaxy_columns.halo_id to the column of Rockstar halo ids "
                             "(SAG: MainHaloID or HostHaloID), use files of the same "
                             "snapshot, and lower log10_m_min")
    return halos, galaxies
