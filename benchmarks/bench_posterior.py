"""Speed of the SBI calibration step: joint-PDF tabulation and posterior look-ups.

Usage: ``python benchmarks/bench_posterior.py [--pairs 20000] [--grid 1000] [--seed SEED]``

Prints one JSON object to stdout (progress goes to stderr through ``logging``):

* ``tabulate_s``: :func:`cmpipe.calibration.tabulate_joint_pdf` of ``--pairs`` synthetic
  (prediction, truth) pairs on a ``--grid`` x ``--grid`` table, best of 3 wall-clock runs
  after a warm-up that compiles the numba kernel (``compile_s``), on all numba threads
  (``threads``); ``tabulate_cpu_s`` is the process CPU time of the best run;
* ``node_updates``: kernel evaluations actually performed (estimated from the truncation
  ellipse area), and ``ns_per_node_update`` per thread;
* ``scipy_estimate_s``: ``scipy.stats.gaussian_kde(...).evaluate`` timed on a 20 x 20 patch
  and scaled to the full grid (single thread; the brute-force reference);
* ``posterior_us``: one :func:`cmpipe.calibration.posterior` call (one cluster), mean over
  1e4 calls; ``summarise_us_per_cluster`` and ``pit_us_per_cluster``: the vectorised
  :func:`summarise` / :func:`posterior_cdf_at` over 5000 clusters, per cluster.

Synthetic pairs: true log10 M200c uniform in [13.7, 15.2] (the flat training distribution)
and predictions regressed towards the mean with 0.16 dex scatter, as in the paper.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time

import numba
import numpy as np
import scipy
from scipy.stats import gaussian_kde

from cmpipe.calibration import (DEFAULT_BANDWIDTH, DEFAULT_TRUNCATION, posterior,
                                posterior_cdf_at, summarise, tabulate_joint_pdf)

logger = logging.getLogger("bench_posterior")


def make_pairs(rng, n):
    """(prediction, truth) pairs, log10 h^-1 Msun."""
    m = rng.uniform(13.7, 15.2, n)
    d = 14.45 + 0.8 * (m - 14.45) + rng.normal(0.0, 0.16, n)
    return d, m


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--grid", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20200907)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    rng = np.random.default_rng(args.seed)
    d, m = make_pairs(rng, args.pairs)

    t0 = time.perf_counter()
    tabulate_joint_pdf(d[:200], m[:200], n_d=20, n_m=20)
    compile_s = time.perf_counter() - t0
    logger.info("warm-up (compile) %.2f s", compile_s)

    best, best_cpu, pdf = math.inf, math.nan, None
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        pdf = tabulate_joint_pdf(d, m, n_d=args.grid, n_m=args.grid)
        wall = time.perf_counter() - t0
        if wall < best:
            best, best_cpu = wall, time.process_time() - c0
    logger.info("tabulate %d pairs on %d^2: %.2f s", args.pairs, args.grid, best)

    H = pdf.kernel_covariance
    det = H[0, 0] * H[1, 1] - H[0, 1] ** 2
    updates = (args.pairs * math.pi * DEFAULT_TRUNCATION ** 2 * math.sqrt(det)
               / (pdf.d_step * pdf.m_step))

    kde = gaussian_kde(np.stack([d, m]), bw_method=DEFAULT_BANDWIDTH)
    sub = np.stack(np.meshgrid(pdf.d_grid[::50][:20], pdf.m_grid[::50][:20],
                               indexing="ij")).reshape(2, -1)
    t0 = time.perf_counter()
    kde(sub)
    scipy_s = (time.perf_counter() - t0) * pdf.table.size / sub.shape[1]

    d_obs = rng.uniform(13.8, 15.1, 10000)
    posterior(pdf, d_obs[0])
    t0 = time.perf_counter()
    for x in d_obs:
        posterior(pdf, x)
    post_us = (time.perf_counter() - t0) / d_obs.size * 1e6

    d_ev, m_ev = make_pairs(rng, 5000)
    t0 = time.perf_counter()
    summarise(pdf, d_ev)
    summ_us = (time.perf_counter() - t0) / d_ev.size * 1e6
    t0 = time.perf_counter()
    posterior_cdf_at(pdf, d_ev, m_ev)
    pit_us = (time.perf_counter() - t0) / d_ev.size * 1e6

    threads = numba.get_num_threads()
    result = dict(
        pairs=args.pairs, grid=[args.grid, args.grid], bandwidth=DEFAULT_BANDWIDTH,
        truncation=DEFAULT_TRUNCATION, threads=threads, compile_s=round(compile_s, 3),
        tabulate_s=round(best, 3), tabulate_cpu_s=round(best_cpu, 3),
        node_updates=float(f"{updates:.3g}"),
        ns_per_node_update=round(best * threads / updates * 1e9, 3),
        scipy_estimate_s=round(scipy_s, 1), speedup_vs_scipy=round(scipy_s / best, 1),
        posterior_us=round(post_us, 2), summarise_us_per_cluster=round(summ_us, 2),
        pit_us_per_cluster=round(pit_us, 2),
        python=platform.python_version(), numpy=np.__version__, scipy=scipy.__version__,
        numba=numba.__version__, machine=platform.machine(),
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
