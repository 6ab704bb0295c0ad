"""Schemas, readers and writers of the survey stages' products.

``survey/phase_space.h5`` (:data:`SURVEY_PHASE_SPACE_CLUSTER_SCHEMA`,
:data:`SURVEY_PHASE_SPACE_GALAXY_SCHEMA`), ``survey/posteriors.ecsv`` and the flow's
(:func:`survey_posterior_schema`), ``survey/mass_function.csv``; and the columns of the
test set the survey's likelihood check compares with. The survey's input tables (clusters
and galaxies on the sky, galaxies in phase space) are read by :mod:`cmpipe.io.survey`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .survey import SURVEY_TRUTH_SCHEMA, read_any_table
from .tables import CatalogueError, Schema, TableWriter, atomic_output, read_table

__all__ = [
    "CLUSTER_NAMES_ATTR",
    "with_cluster_names",
    "SURVEY_POSTERIOR_KEYS",
    "SURVEY_PRIORS",
    "SURVEY_PHASE_SPACE_CLUSTER_SCHEMA",
    "SURVEY_PHASE_SPACE_GALAXY_SCHEMA",
    "survey_posterior_schema",
    "write_survey_phase_space",
    "empty_survey_truth",
    "read_table_columns",
    "read_table_meta",
    "write_mass_function_table",
    "read_test_set_truth",
]

#: Summaries of each posterior in a survey posterior table (columns ``{flat,pop}_{key}``).
SURVEY_POSTERIOR_KEYS = ("map", "median", "mean", "sd", "lo68", "hi68", "lo95", "hi95")
#: Column-name prefixes of the two priors in ``survey/posteriors.ecsv``.
SURVEY_PRIORS = {
    "flat": "test-set prior (flat in log M by construction): the paper's calibrated posterior",
    "pop": "population prior: the flat posterior re-weighted by the Tinker et al. (2008) "
           "mass function at the cluster redshift over the test-set prior "
           "(cmpipe.massfunction.population_prior_posterior)",
}

SURVEY_PHASE_SPACE_CLUSTER_SCHEMA = Schema({
    "cluster_id": ("i8", "", "survey cluster id"),
    "ra_deg": ("f8", "deg", "cluster centre right ascension"),
    "dec_deg": ("f8", "deg", "cluster centre declination"),
    "z": ("f8", "", "cluster redshift"),
    "d_a_mpc_h": ("f8", "h^-1 Mpc (proper)", "angular-diameter distance of the cluster"),
    "n_gal": ("i8", "", "galaxies in the window"),
    "n_members": ("i8", "", "of those, listed as members of this cluster in the galaxy "
                            "table (-1: no membership column)"),
    "n_mem": ("i8", "", "catalogue member count (-1 if none)"),
    "log10_m_cat": ("f8", "log10(h^-1 Msun)", "catalogue M200c (NaN if none)"),
    "log10_m_cat_err": ("f8", "dex", "uncertainty of the catalogue mass (NaN if none)"),
    "skipped": ("i1", "", "1: fewer than min_galaxies galaxies in the window (no cube, NaN "
                          "posterior)"),
})

SURVEY_PHASE_SPACE_GALAXY_SCHEMA = Schema({
    "cluster_id": ("i8", "", "the cluster whose window holds the galaxy"),
    "galaxy_id": ("i8", "", "id in the galaxy table (-1: phase-space input without ids)"),
    "x_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "offset from the centre along +RA (east)"),
    "y_proj_mpc_h": ("f8", "h^-1 Mpc (proper)", "offset from the centre along +Dec (north)"),
    "v_los_kms": ("f8", "km/s", "c (z - z_cl) / (1 + z_cl): line-of-sight velocity in the "
                                "cluster frame"),
    "is_member": ("i1", "", "1 listed as a member of this cluster, 0 not, -1 unknown"),
})


def survey_posterior_schema() -> Schema:
    """Columns of a survey posterior table: the cluster columns of the phase-space product
    (less D_A), the comoving distance, the network outputs and both priors' summaries."""
    cols = {k: v for k, v in SURVEY_PHASE_SPACE_CLUSTER_SCHEMA.items() if k != "d_a_mpc_h"}
    cols["comoving_distance_mpc_h"] = ("f8", "h^-1 Mpc (comoving)",
                                       "comoving distance of the cluster redshift")
    cols["beyond_mock_depth"] = ("i1", "", "1: farther than the mock's observers "
                                 "(mock.observer_radius_mpc_h): the flux limit leaves it "
                                 "fewer galaxies than the training windows of its mass had")
    cols["nearer_than_mock"] = ("i1", "", "1: nearer than the nearest observer distance "
                                "of the calibration's test set (distance node 0's "
                                "distance_min_mpc_h): no mock cluster was seen that near")
    cols["log10_m_pred"] = ("f8", "log10(h^-1 Msun)", "network point prediction d~")
    cols["extrapolated"] = ("i1", "", "1: d~ outside the calibrated range (edge row used)")
    cols["outside_calibrated_range"] = (
        "i1", "", "1: flat-prior posterior median within 0.2 dex of an end of the "
        "calibrated mass range (the test set's true masses) or beyond it")
    what = {"map": "posterior peak (MAP)", "median": "posterior median",
            "mean": "posterior mean", "sd": "posterior standard deviation",
            "lo68": "15.87% quantile (lower end of the 68.27% interval, '16%')",
            "hi68": "84.13% quantile (upper end of the 68.27% interval, '84%')",
            "lo95": "2.5% quantile", "hi95": "97.5% quantile"}
    for p, name in (("flat", "test-set (flat) prior"), ("pop", "population (Tinker) prior")):
        for key in SURVEY_POSTERIOR_KEYS:
            unit = "dex" if key == "sd" else "log10(h^-1 Msun)"
            cols[f"{p}_{key}"] = ("f8", unit, f"log10 M200c {what[key]}, {name}")
    return Schema(cols)


#: Attribute of ``phase_space.h5``'s cluster group holding the input table's cluster names
#: (indexed by ``cluster_id``) when its ids were names.
CLUSTER_NAMES_ATTR = "cluster_names"


def with_cluster_names(table: Mapping, schema: Mapping, attrs: Mapping,
                       source=None) -> tuple[dict, Schema]:
    """A posterior table and schema with ``cluster_name`` after ``cluster_id`` when the
    phase-space clusters' ``attrs`` carry names (:data:`CLUSTER_NAMES_ATTR`); unchanged
    otherwise."""
    names = attrs.get(CLUSTER_NAMES_ATTR)
    if names is None:
        return dict(table), Schema(schema)
    ids = np.asarray(table["cluster_id"], dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(names)):
        raise CatalogueError(source, CLUSTER_NAMES_ATTR, "cluster ids outside the name list",
                             "rerun survey_cubes (cmpipe infer) on the named cluster table")
    width = max([len(n) for n in names] + [1])
    col = np.array([names[i] for i in ids], dtype=f"U{width}")
    out_t, out_s = {}, {}
    for k in schema:
        out_t[k], out_s[k] = table[k], schema[k]
        if k == "cluster_id":
            out_t["cluster_name"] = col
            out_s["cluster_name"] = (f"U{width}", "", "cluster name of the input table "
                                     "(cluster_id is its row, from 0)")
    return out_t, Schema(out_s)


def write_survey_phase_space(path, clusters: Mapping, galaxies: Mapping,
                             attrs: Mapping) -> None:
    """Write ``survey/phase_space.h5``: the cluster rows (``attrs`` on their group) and
    their window galaxies, in the two phase-space schemas."""
    with TableWriter(path) as w:
        w.add_group("clusters", SURVEY_PHASE_SPACE_CLUSTER_SCHEMA, attrs)
        w.append("clusters", clusters)
        w.add_group("galaxies", SURVEY_PHASE_SPACE_GALAXY_SCHEMA)
        w.append("galaxies", galaxies)


def empty_survey_truth() -> dict:
    """A truth table with no rows (a catalogue has no true masses)."""
    return {k: np.zeros(0, dtype=v[0]) for k, v in SURVEY_TRUTH_SCHEMA.items()}


def read_table_columns(path) -> dict:
    """Every column of a survey table (.ecsv, .csv or .fits) as an array; masked floats
    as NaN."""
    t = read_any_table(path)
    return {c: np.ma.filled(np.ma.asarray(t[c]), np.nan) if t[c].dtype.kind == "f"
            else np.asarray(t[c]) for c in t.colnames}


def read_table_meta(path) -> dict:
    """The header metadata of a survey table ({} for CSV/FITS without an ECSV header)."""
    from astropy.table import Table

    try:
        return dict(Table.read(path).meta)
    except Exception:                                   # CSV/FITS without the ECSV header
        return {}


def write_mass_function_table(path, table: Mapping) -> None:
    """Write ``survey/mass_function.csv`` (plain CSV, columns in the order given)."""
    from astropy.table import Table

    with atomic_output(path) as tmp:
        Table(table).write(tmp, format="ascii.csv", overwrite=True)


def read_test_set_truth(test_predictions, mock_clusters):
    """The test set's predictions, true masses and mock observer distances.

    Parameters
    ----------
    test_predictions : path-like
        ``summaries/test.h5`` (group ``predictions``).
    mock_clusters : path-like
        ``mock/clusters.h5`` (group ``clusters``), for the observer distances.

    Returns
    -------
    d_pred, m_true : ndarray
        Network prediction d~ and true log10(M200c / h^-1 Msun) per test cluster.
    distance : ndarray
        Comoving distance of each test cluster from its mock observer, h^-1 Mpc.

    Raises
    ------
    CatalogueError
        A predicted cluster is not in ``mock_clusters``.
    """
    pred, _ = read_table(test_predictions, group="predictions",
                         columns=["cluster_id", "log10_m200c_pred", "log10_m200c_true"])
    cl, _ = read_table(mock_clusters, group="clusters",
                       columns=["cluster_id", "observer_distance_mpc_h"])
    order = np.argsort(cl["cluster_id"])
    row = order[np.searchsorted(cl["cluster_id"], pred["cluster_id"], sorter=order)]
    if np.any(cl["cluster_id"][row] != pred["cluster_id"]):
        raise CatalogueError(test_predictions, "cluster_id", "test predictions name clusters "
                             f"that {mock_clusters} does not hold",
                             "rerun the summaries rule on this run's mock")
    return (pred["log10_m200c_pred"], pred["log10_m200c_true"],
            np.asarray(cl["observer_distance_mpc_h"], dtype=float)[row])
