"""Simulation-based calibration: the joint density of network predictions and true masses.

Pipeline step 8 (``docs/science.md``; paper section 3.1 and 4.1). The trained network maps
every *test-set* cluster to a point prediction ``d~`` (log10 h^-1 Msun); together with the
true ``log10 M200c`` these pairs define the joint density ``P(d~, log M)``, estimated by a
bivariate Gaussian KDE and tabulated once on a fine grid. The posterior of any cluster is
the slice of that table at its own prediction, renormalised over ``log M``.

Modules
-------
``joint_pdf``
    :func:`tabulate_joint_pdf` and the table :class:`JointPDF` (units, bandwidth, grid and
    error bound in its docstring; the file format is :mod:`cmpipe.io.joint_pdf`), and
    :func:`posterior_rows`, the table's interpolated slices.
``posterior``
    :func:`posterior`, :func:`summarise` (MAP, mean, median, intervals),
    :func:`posterior_cdf_at` (PIT) and the row helpers the mass function shares; each takes
    ``distance=`` for a distance-aware calibration.
``crossval``
    :func:`cross_validated_pit` and :func:`cv_fold_tables`: K-fold calibrations over whole
    host halos, the test pairs' out-of-sample coverage.
``distance``
    :func:`tabulate_by_distance` and :class:`DistanceJointPDF`: ``P(d~, log M | D)`` at
    distance nodes, blended at each cluster's observer distance ``D``;
    :func:`load_calibration` reads either kind.
``tails``
    :func:`select_tail` and :func:`with_tail`: the outlier component mixed into every table
    (:func:`tail_mixture`), its weight and width chosen by the test split's cross-validated
    log score.
"""
from .joint_pdf import (DEFAULT_BANDWIDTH, DEFAULT_GRID_SIZE, DEFAULT_TAIL_WIDTH,
                        DEFAULT_TRUNCATION, MAX_TAIL_WEIGHT, JointPDF, core_scale,
                        is_extrapolated, kernel_covariance, posterior_rows, tabulate_joint_pdf,
                        tail_mixture)
from .posterior import (QUANTILE_LEVELS, calibration_rows, cdf_quantiles, normalise_rows,
                        posterior, posterior_cdf, posterior_cdf_at, posterior_density_at,
                        posterior_map, summarise)
from .crossval import cross_validated_pit, cv_fold_tables
from .distance import (DEFAULT_DISTANCE_NODES, DEFAULT_DISTANCE_WINDOW,
                       DistanceJointPDF, load_calibration, tabulate_by_distance)
from .tails import (TAIL_WEIGHTS, TAIL_WIDTHS, select_tail, selection_json, tail_of,
                    tail_record, with_tail)

__all__ = [
    "DEFAULT_BANDWIDTH",
    "DEFAULT_GRID_SIZE",
    "DEFAULT_TRUNCATION",
    "QUANTILE_LEVELS",
    "JointPDF",
    "tabulate_joint_pdf",
    "kernel_covariance",
    "posterior",
    "summarise",
    "posterior_cdf_at",
    "is_extrapolated",
    "cross_validated_pit",
    "posterior_rows",
    "normalise_rows",
    "posterior_cdf",
    "cdf_quantiles",
    "posterior_map",
    "calibration_rows",
    "DistanceJointPDF",
    "tabulate_by_distance",
    "load_calibration",
    "DEFAULT_DISTANCE_NODES",
    "DEFAULT_DISTANCE_WINDOW",
    "DEFAULT_TAIL_WIDTH",
    "tail_mixture",
    "core_scale",
    "MAX_TAIL_WEIGHT",
    "posterior_density_at",
    "cv_fold_tables",
    "TAIL_WEIGHTS",
    "TAIL_WIDTHS",
    "select_tail",
    "selection_json",
    "with_tail",
    "tail_of",
    "tail_record",
]
