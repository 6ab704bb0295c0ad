"""Gaussian kernel density estimates of a cluster's projected phase space on fixed grids.

Pipeline step 5 (``docs/science.md``): every projected cluster becomes a normalised cube
holding the 3-D Gaussian KDE of its galaxies' ``(x_proj, y_proj, v_los)``; the 2-D
``(R_proj, v_los)`` and 1-D ``v_los`` variants feed the dimensionality ablation.

Conventions
-----------
Units
    ``x_proj``, ``y_proj`` and ``R_proj = sqrt(x^2 + y^2)`` in proper h^-1 Mpc relative to the
    cluster centre; ``v_los`` in km/s.
Bandwidth
    Exactly :class:`scipy.stats.gaussian_kde` with ``bw_method=h0``: the kernel covariance is
    ``H = h0**2 * np.cov(data)`` (data covariance with ``ddof=1``), the same ``h0`` whatever
    the dimension; every galaxy has weight 1.
Grid
    Voxel *centres*. An axis spanning ``[lo, hi]`` with ``n`` voxels has edges
    ``np.linspace(lo, hi, n + 1)`` and is evaluated at the midpoints of consecutive edges
    (:func:`axis_centres`), so no centre sits on the window boundary and the cube is symmetric
    about the cluster centre. 3-D: ``x, y`` in ``[-L, L]``, ``v`` in ``[-V, V]`` (:class:`Grid3D`,
    default ``L = 1.6`` h^-1 Mpc, ``V = 2200`` km/s, ``n = 50``), axis order ``cube[ix, iy, iv]``.
    2-D: ``R_proj`` in ``[0, sqrt(2) L]`` (the corner of the square window, so no galaxy of the
    window falls off the grid) and ``v`` in ``[-V, V]``, order ``(iR, iv)``. 1-D: ``v`` in
    ``[-V, V]``.
Normalisation
    Each cube is divided by its own sum (in float64), so it sums to 1 over its voxels: kernel
    mass falling outside the grid (galaxies near the window edge, ``R < 0`` in 2-D, which is not
    reflected) is dropped *before* normalising, exactly as ``kde.evaluate(points) /
    kde.evaluate(points).sum()`` would do. No other scaling is applied (values are voxel
    probabilities, not densities; multiply by ``n_voxels`` for unit mean). Cubes are returned as
    float32.
Exact evaluation with truncation
    Nothing is binned: each galaxy adds its full-covariance Gaussian ``K_i = K0 exp(-Q / 2)``,
    ``Q = d^T H^-1 d``, at every voxel centre inside its truncation ellipsoid
    ``Q <= r_t**2`` (Mahalanobis radius ``r_t``, default 6.5). Loops run exactly over that
    ellipsoid (completing the square: x marginal, y given x, v given x and y). Values come
    without an ``exp`` per voxel: on the fast path (:mod:`cmpipe.kde.factored`, nearly every
    cluster) as products of tables shared by the cluster's galaxies and per-galaxy 1-D
    profiles, along ``v`` lines that the compiler vectorises; for kernels whose table
    factors could leave ``exp(+-100)`` (strongly correlated axes), by exact
    multiplicative recurrences along and between ``v`` lines. Both are exact up to rounding
    (~1e-13 relative) and visit the same voxels; their float32 cubes agree to the bit on
    typical clusters.
    Error bound: a neglected kernel value is at most ``exp(-r_t**2 / 2) K0``
    (``exp(-21.125) = 6.7e-10`` for ``r_t = 6.5``), so every voxel of the unnormalised KDE
    (the mean of the ``N`` kernels) is low by at most ``6.7e-10 K0``. Relative to the cube
    maximum ``f_max`` that is ``6.7e-10 K0 / f_max``; for kernels at least one voxel wide
    ``f_max >= exp(-3/8) K0 / N`` (some voxel centre lies within half a voxel diagonal of a
    galaxy), so the relative error is ``<= 1.5 N exp(-r_t**2 / 2)`` (``< 5e-7`` for 500
    galaxies) and in practice orders of magnitude smaller because kernels overlap. The
    normalising sum misses at most the mass beyond ``r_t`` (``P(chi2_3 > 42.25) = 3.6e-9``).
    Measured against scipy the float32 cubes agree to ~5e-8 of the maximum (float32 rounding).
Degenerate clusters (one rule)
    The data covariance ``C`` is measured in voxel units, ``S = C / (d_j d_k)`` with ``d_j`` the
    voxel width of axis ``j``. The cluster is *degenerate* when the smallest eigenvalue of
    ``S`` is below ``max(1e-4, 1e-10 * lambda_max)``, i.e. the galaxies have a spread below
    0.01 voxel (0.64 h^-1 kpc, 0.88 km/s on the default grid) in some direction: two galaxies,
    three galaxies in 3-D (always coplanar), identical velocities, collinear points. Only then
    every eigenvalue of ``S`` below ``1 / h0**2`` is raised to ``1 / h0**2`` (eigenvectors
    kept), so the kernel is at least one voxel wide (standard deviation) along each such
    principal direction and never falls between voxel centres; all other directions, and every
    non-degenerate cluster, are left exactly as scipy would have them. (A floor of a fixed tiny
    fraction of the window would leave kernels far narrower than a voxel, whose values at the
    voxel centres underflow to zero.)
Bad input
    Any NaN/inf, mismatched lengths or fewer than ``min_galaxies`` (default 3) galaxies raise
    :class:`KDEInputError`, naming the cluster id. So does a cluster none of whose kernel mass
    reaches a voxel centre (galaxies far outside the window).

Performance: kernels are compiled with numba (``cache=True``, ``fastmath=False``,
``nogil=True``); :func:`kde_cube` runs on the calling thread and keeps a 1 MB (for 50^3)
float64 workspace per thread; :func:`kde_cubes` spreads clusters over threads with ``prange``
(set the count with ``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``). Run
``python benchmarks/bench_kde.py`` for numbers against scipy (~350x faster on one thread
than scipy pinned to one BLAS thread, at 100 galaxies on a 50^3 grid).

Modules
-------
``grid``
    :class:`Grid3D`, voxel centres, the defaults and the checks of a cluster's columns.
``bandwidth``
    :func:`kernel_covariance` (``h0**2 cov`` with the degeneracy rule, judged in voxel units).
``accumulate``
    The compiled loops over each kernel's truncation ellipsoid (1-D runs from
    :mod:`cmpipe.kernels`) and the normalisation.
``factored``
    The 3-D fast path: the kernel as cluster-wide tables times per-galaxy profiles.
``cubes``
    :func:`kde_cube`, :func:`kde_cubes` (threads) and :func:`kde_cube_batches` (the
    pipeline's one batching loop).
``lowdim``
    :func:`kde_2d` of ``(R_proj, v_los)`` and :func:`kde_1d` of ``v_los``.
"""
from .bandwidth import kernel_covariance
from .cubes import kde_cube, kde_cube_batches, kde_cubes
from .grid import (DEFAULT_H0, DEFAULT_TRUNCATION, Grid3D, KDEInputError, axis_centres,
                   grid_points)
from .lowdim import kde_1d, kde_2d

__all__ = [
    "DEFAULT_H0",
    "DEFAULT_TRUNCATION",
    "Grid3D",
    "KDEInputError",
    "axis_centres",
    "grid_points",
    "kernel_covariance",
    "kde_cube",
    "kde_cubes",
    "kde_cube_batches",
    "kde_2d",
    "kde_1d",
]
