"""Readers and writers of cmpipe's products and of the catalogues users bring."""
from .catalogues import (GALAXY_SCHEMA, HALO_SCHEMA, positions, read_galaxies, read_halos,
                         velocities, write_galaxies, write_halos)
from .tables import (CatalogueError, Schema, append_rows, atomic_output, check_columns,
                     read_table, write_json, write_table)

__all__ = [
    "CatalogueError", "Schema", "atomic_output", "write_table", "read_table", "append_rows",
    "write_json", "check_columns", "HALO_SCHEMA", "GALAXY_SCHEMA", "write_halos",
    "write_galaxies", "read_halos", "read_galaxies", "positions", "velocities",
]
