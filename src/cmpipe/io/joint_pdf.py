"""The calibration's joint-PDF file (``calibration/joint_pdf.h5``): its HDF5 format.

One group ``joint_pdf`` holding

``d_grid``, ``m_grid``
    The grid nodes, log10 h^-1 Msun (network prediction ``d~``; true ``M200c``).
``table``
    The joint density ``P(d~, log M)`` at the nodes, dex^-2, rows ``d~``, columns ``M``
    (gzip, chunks of 64 rows).
``kernel_covariance``
    The KDE's kernel covariance in ``(d~, log M)``, dex^2.

and the attributes ``bandwidth``, ``n_pairs``, ``truncation``, ``format_version`` and one
``meta_<key>`` per provenance entry (scalars and strings).

A distance-aware calibration (``calibration.distance_aware``) adds a group
``joint_pdf_distance`` holding ``distance_mpc_h`` (the nodes' observer distances, comoving
h^-1 Mpc) and one subgroup ``node_<k>`` per node laid out as ``joint_pdf`` (the joint PDF
of the test pairs around that distance, on the same grids). Readers of the distance-blind
table (:func:`read_joint_pdf`) ignore it. The functions here move arrays
and plain values; :class:`cmpipe.calibration.JointPDF` is built from them
(``JointPDF.save`` / ``JointPDF.load``).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .tables import CatalogueError, atomic_output

__all__ = ["JOINT_PDF_FORMAT_VERSION", "JOINT_PDF_GROUP", "DISTANCE_GROUP", "write_joint_pdf",
           "read_joint_pdf", "read_distance_nodes"]

#: Version of the layout above; a file of another version is refused.
JOINT_PDF_FORMAT_VERSION = 1
#: The HDF5 group holding the joint PDF.
JOINT_PDF_GROUP = "joint_pdf"
#: The HDF5 group holding the distance nodes of a distance-aware calibration.
DISTANCE_GROUP = "joint_pdf_distance"


def write_joint_pdf(path, *, d_grid, m_grid, table, kernel_covariance, bandwidth: float,
                    n_pairs: int, truncation: float, meta: dict, distance_mpc_h=None,
                    nodes=None) -> None:
    """Write a joint PDF to HDF5 at ``path`` atomically (format in the module docstring).

    Parameters
    ----------
    path : str or Path
        Output file.
    d_grid, m_grid : ndarray, shape (n_d,), (n_m,)
        Grid nodes, log10 h^-1 Msun, float64.
    table : ndarray, shape (n_d, n_m)
        Density at the nodes, dex^-2, float64.
    kernel_covariance : ndarray, shape (2, 2)
        Kernel covariance, dex^2.
    bandwidth : float
        KDE bandwidth factor (scipy ``bw_method``), dimensionless.
    n_pairs : int
        Number of (prediction, truth) pairs.
    truncation : float
        Mahalanobis truncation radius of each kernel.
    meta : dict
        Provenance, stored as ``meta_<key>`` attributes (scalars and strings).
    distance_mpc_h : ndarray, shape (K,), optional
        Observer distances of the distance nodes, comoving h^-1 Mpc (increasing).
    nodes : sequence of dict, optional
        With ``distance_mpc_h``: one dict per node with the keyword arguments above
        (``d_grid`` ... ``meta``), the node's joint PDF on the same grids.
    """
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_group(f.create_group(JOINT_PDF_GROUP), d_grid=d_grid, m_grid=m_grid,
                         table=table, kernel_covariance=kernel_covariance,
                         bandwidth=bandwidth, n_pairs=n_pairs, truncation=truncation,
                         meta=meta)
            if nodes is not None:
                dist = np.asarray(distance_mpc_h, dtype=np.float64)
                if dist.shape != (len(nodes),) or not np.all(np.diff(dist) > 0):
                    raise ValueError("distance_mpc_h must be increasing, one per node")
                g = f.create_group(DISTANCE_GROUP)
                ds = g.create_dataset("distance_mpc_h", data=dist)
                ds.attrs["unit"] = "h^-1 Mpc (comoving), observer distance"
                for k, node in enumerate(nodes):
                    _write_group(g.create_group(f"node_{k}"), **node)


def _write_group(g, *, d_grid, m_grid, table, kernel_covariance, bandwidth, n_pairs,
                 truncation, meta) -> None:
    """One joint PDF's datasets and attributes into HDF5 group ``g``."""
    for name, data, unit in (("d_grid", d_grid, "log10 h^-1 Msun (network prediction)"),
                             ("m_grid", m_grid, "log10 h^-1 Msun (true M200c)")):
        ds = g.create_dataset(name, data=data)
        ds.attrs["unit"] = unit
    ds = g.create_dataset("table", data=table, compression="gzip",
                          chunks=(min(64, table.shape[0]), table.shape[1]))
    ds.attrs["unit"] = "dex^-2"
    ds.attrs["description"] = "joint density P(d~, log M); rows d~, columns M"
    ds = g.create_dataset("kernel_covariance", data=kernel_covariance)
    ds.attrs["unit"] = "dex^2"
    g.attrs["bandwidth"] = float(bandwidth)
    g.attrs["n_pairs"] = int(n_pairs)
    g.attrs["truncation"] = float(truncation)
    g.attrs["format_version"] = JOINT_PDF_FORMAT_VERSION
    for k, v in meta.items():
        g.attrs[f"meta_{k}"] = v


def read_joint_pdf(path) -> dict:
    """Read a joint PDF written by :func:`write_joint_pdf`.

    Returns
    -------
    dict
        ``d_grid``, ``m_grid`` (log10 h^-1 Msun), ``table`` (dex^-2),
        ``kernel_covariance`` (dex^2), ``bandwidth`` (float), ``n_pairs`` (int),
        ``truncation`` (float) and ``meta`` (dict of Python scalars and strings): the
        arguments of :class:`cmpipe.calibration.JointPDF`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    cmpipe.io.tables.CatalogueError
        (a ``ValueError``) The file is not readable HDF5 (truncated, corrupt), holds no
        ``joint_pdf`` group, has an unknown format version or misses a dataset.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: joint PDF file does not exist; rerun the "
                                "calibration rule that makes it")
    with _open(path, JOINT_PDF_GROUP) as f:
        if JOINT_PDF_GROUP not in f:
            raise CatalogueError(path, JOINT_PDF_GROUP, "group missing: not a joint PDF "
                                 "written by cmpipe.calibration.JointPDF.save", _FIX)
        return _read_group(f[JOINT_PDF_GROUP], path, _FIX)


_FIX = "rerun the calibration (snakemake --cores N --configfile ... --forcerun calibrate)"


def _open(path: Path, field: str):
    """The HDF5 file at ``path`` for reading; a damaged file names ``field`` and the fix."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CatalogueError(path, field, f"not a readable HDF5 file ({err})",
                             _FIX + "; the file is truncated or corrupt") from err


def _read_group(g, path, fix) -> dict:
    """The arguments of :class:`cmpipe.calibration.JointPDF` from HDF5 group ``g``."""
    version = int(g.attrs.get("format_version", -1))
    if version != JOINT_PDF_FORMAT_VERSION:
        raise CatalogueError(path, "format_version", f"joint PDF format version "
                             f"{version}, expected {JOINT_PDF_FORMAT_VERSION}", fix)
    meta = {}
    try:
        for k, v in g.attrs.items():
            if k.startswith("meta_"):
                v = v.decode() if isinstance(v, bytes) else v
                meta[k[5:]] = v.item() if isinstance(v, np.generic) else v
        return dict(d_grid=g["d_grid"][...], m_grid=g["m_grid"][...],
                    table=g["table"][...], bandwidth=float(g.attrs["bandwidth"]),
                    n_pairs=int(g.attrs["n_pairs"]),
                    kernel_covariance=g["kernel_covariance"][...],
                    truncation=float(g.attrs["truncation"]), meta=meta)
    except (KeyError, OSError) as err:
        raise CatalogueError(path, g.name.lstrip("/"), f"incomplete or damaged joint PDF "
                             f"({err})", fix) from err


def read_distance_nodes(path):
    """The distance nodes of a distance-aware calibration file, or None if it has none.

    Returns
    -------
    (ndarray, list of dict) or None
        The nodes' observer distances (comoving h^-1 Mpc) and each node's joint PDF as
        :func:`read_joint_pdf` returns it.

    Raises
    ------
    cmpipe.io.tables.CatalogueError
        The file is unreadable or its distance group is damaged.
    """
    path = Path(path)
    with _open(path, DISTANCE_GROUP) as f:
        if DISTANCE_GROUP not in f:
            return None
        g = f[DISTANCE_GROUP]
        try:
            dist = g["distance_mpc_h"][...]
        except KeyError as err:
            raise CatalogueError(path, DISTANCE_GROUP, "distance_mpc_h missing", _FIX) from err
        nodes = []
        for k in range(dist.size):
            if f"node_{k}" not in g:
                raise CatalogueError(path, f"{DISTANCE_GROUP}/node_{k}", "node missing", _FIX)
            nodes.append(_read_group(g[f"node_{k}"], path, _FIX))
        return dist, nodes
