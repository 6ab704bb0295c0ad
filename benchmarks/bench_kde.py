"""Throughput of cmpipe.kde against scipy.stats.gaussian_kde on the default 50^3 grid.

Usage: ``python benchmarks/bench_kde.py [--quick] [--seed SEED]``

Prints one JSON object to stdout (progress goes to stderr through ``logging``). For each
cluster size it reports cubes per second of

* ``kde_cube``: one cluster per call, single thread (the function is not parallel; the
  time includes input checks, covariance and normalisation);
* ``kde_cubes``: one batch call over all clusters, clusters spread over all numba threads
  (``threads`` in the output; set ``NUMBA_NUM_THREADS`` to change);
* scipy: ``gaussian_kde(data, bw_method=0.175).evaluate(grid_points)`` plus normalisation,
  timed on only a few clusters because it is slow, on one thread: its BLAS thread pools
  are limited to one thread while it runs (``threadpoolctl.threadpool_limits(1)``; numpy's
  OpenBLAS otherwise takes every core for the kernel sums, so "one thread" would be
  several). ``scipy_blas_threads`` reports the limit seen inside the timed region.

``speedup_single_thread`` = kde_cube / scipy, both on one thread: the like-for-like figure.
``speedup_all_threads`` = kde_cubes / scipy (scipy still on one thread).
``*_cpu_time`` figures use process CPU time instead of wall time (robust on a busy machine).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numba
import numpy as np
import scipy
from scipy.stats import gaussian_kde

from cmpipe.kde import DEFAULT_H0, Grid3D, grid_points, kde_cube, kde_cubes

logger = logging.getLogger("bench_kde")

SIZES = (10, 50, 100, 300)


def make_clusters(rng, n_gal, n_clusters, grid):
    """Realistic mock clusters: x, y ~ N(0, 0.5) h^-1 Mpc, v ~ N(0, 600) km/s, clipped."""
    L, V = grid.half_width_mpc_h, grid.v_max_kms
    return [(np.clip(rng.normal(0, 0.5, n_gal), -L, L),
             np.clip(rng.normal(0, 0.5, n_gal), -L, L),
             np.clip(rng.normal(0, 600.0, n_gal), -V, V)) for _ in range(n_clusters)]


def time_single(clusters, grid, min_seconds):
    """Cubes per wall second and per CPU second of kde_cube, looping over the clusters
    until ``min_seconds`` of wall time have passed."""
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for x, y, v in clusters:
            kde_cube(x, y, v, grid=grid)
        done += len(clusters)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed, done / (time.process_time() - c0)


def time_batch(clusters, grid, repeats):
    """Best-of-``repeats`` cubes/s of one kde_cubes call over all clusters."""
    x, y, v = (np.concatenate([c[i] for c in clusters]) for i in range(3))
    offsets = np.concatenate([[0], np.cumsum([c[0].size for c in clusters])])
    out = np.empty((len(clusters),) + grid.shape, dtype=np.float32)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        kde_cubes(x, y, v, offsets, grid=grid, out=out)
        best = min(best, time.perf_counter() - t0)
    return len(clusters) / best


def time_scipy(clusters, grid, points):
    """Cubes per wall second and per CPU second of scipy gaussian_kde (construction +
    evaluate + normalisation) with every BLAS/OpenMP pool limited to one thread, and the
    largest pool size seen inside the limit (1 when the pin holds)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=1):
        seen = max((p["num_threads"] for p in threadpool_info()), default=1)
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y, v in clusters:
            vals = gaussian_kde(np.stack([x, y, v]), bw_method=DEFAULT_H0).evaluate(points)
            (vals / vals.sum()).reshape(grid.shape)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(clusters) / wall, len(clusters) / cpu, seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clusters and repeats")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")

    grid = Grid3D()
    points = grid_points(grid)
    rng = np.random.default_rng(args.seed)
    n_batch = 32 if args.quick else 128
    n_scipy = 1 if args.quick else 3
    min_seconds = 0.5 if args.quick else 2.0
    threads = numba.get_num_threads()

    # compile (or load the numba cache) outside the timed region
    warm = make_clusters(rng, 20, 2, grid)
    t0 = time.perf_counter()
    kde_cube(*warm[0], grid=grid)
    x, y, v = (np.concatenate([c[i] for c in warm]) for i in range(3))
    kde_cubes(x, y, v, [0, 20, 40], grid=grid)
    compile_s = time.perf_counter() - t0

    results = []
    for n_gal in SIZES:
        clusters = make_clusters(rng, n_gal, n_batch, grid)
        single, single_cpu = time_single(clusters[:16], grid, min_seconds)
        batch = time_batch(clusters, grid, repeats=2 if args.quick else 3)
        sp, sp_cpu, blas_threads = time_scipy(clusters[:n_scipy], grid, points)
        row = {
            "n_gal": n_gal,
            "kde_cube_cubes_per_s_1thread": round(single, 2),
            "kde_cubes_cubes_per_s": round(batch, 2),
            "kde_cubes_threads": threads,
            "scipy_cubes_per_s_1thread": round(sp, 3),
            "scipy_clusters_timed": n_scipy,
            "scipy_blas_threads": blas_threads,
            "speedup_single_thread": round(single / sp, 1),
            "speedup_all_threads": round(batch / sp, 1),
            "kde_cube_cubes_per_cpu_s": round(single_cpu, 2),
            "scipy_cubes_per_cpu_s": round(sp_cpu, 3),
            "speedup_single_thread_cpu_time": round(single_cpu / sp_cpu, 1),
        }
        logger.info("%s", row)
        results.append(row)

    report = {
        "benchmark": "cmpipe.kde vs scipy.stats.gaussian_kde, 3-D cubes",
        "grid": {"n": grid.n, "half_width_mpc_h": grid.half_width_mpc_h,
                 "v_max_kms": grid.v_max_kms},
        "h0": DEFAULT_H0,
        "truncation": 6.5,
        "quick": args.quick,
        "seed": args.seed,
        "first_call_s_compile_or_cache_load": round(compile_s, 2),
        "results": results,
        "note": ("speedup_single_thread compares kde_cube on one thread with scipy on one "
                 "thread (wall clock); speedup_single_thread_cpu_time the same in process CPU "
                 "time, robust when other jobs share the cores (see loadavg); "
                 "speedup_all_threads uses kde_cubes on kde_cubes_threads threads"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__, "scipy": scipy.__version__},
        "nproc": os.cpu_count(),
        "nproc_affinity": len(os.sched_getaffinity(0)),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
