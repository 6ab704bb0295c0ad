"""One two-thread job or two one-thread jobs side by side: the packing decision, measured.

Usage: ``python benchmarks/bench_packing.py [--seconds S] [--kinds tensorflow numba torch]``

For each kind of work the default run's jobs do, the same workload runs three ways on this
machine, each in fresh processes (``OMP_NUM_THREADS`` and the library's own thread setting
as a Snakemake job gets them):

* ``one_thread_alone``: one process, one thread, nothing beside it;
* ``two_threads_alone``: one process, two threads;
* ``two_one_thread_side_by_side``: two one-thread processes at once (their rates summed).

Kinds: ``tensorflow`` (the default CNN3D's ``train_on_batch`` on 32^3 cubes, batch 32, the
``train`` and ``ablation_train`` rules), ``numba`` (:func:`cmpipe.kde.kde_cubes` of 64 clusters of 100
galaxies on a 32^3 grid, the ``kde_shard`` rule) and ``torch`` (a Deep Sets ``phi`` MLP,
64-64, forward and backward on padded sets of 100 galaxies, batch 64, as ``set_train``).

Each worker runs its workload for ``--seconds`` after a warm-up and reports units per
second. Prints one JSON object: per kind, the three rates, ``thread_speedup`` (two threads
over one, alone), ``side_by_side_speedup`` (two one-thread processes over one alone) and
``packing_gain`` (two one-thread processes over one two-thread process: above 1, two
one-thread jobs side by side do more work per second; the rules' ``threads`` follow it).
Needs a quiet machine: any other load shows up in every number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KINDS = ("tensorflow", "numba", "torch")


def _tensorflow(threads, seconds):
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from cmpipe.cnn.model import build_cnn3d

    model = build_cnn3d(32)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 32, 32, 1), dtype=np.float32)
    y = rng.random((32, 1), dtype=np.float32)
    return _loop(lambda: model.train_on_batch(x, y), 32, seconds)


def _numba(threads, seconds):
    import numba
    import numpy as np

    numba.set_num_threads(threads)
    from cmpipe.kde import Grid3D, kde_cubes

    rng = np.random.default_rng(0)
    n_cl, n_gal = 64, 100
    x, y = rng.normal(0, 0.5, (2, n_cl * n_gal))
    v = rng.normal(0, 500.0, n_cl * n_gal)
    offsets = np.arange(n_cl + 1) * n_gal
    grid = Grid3D(32)
    return _loop(lambda: kde_cubes(x, y, v, offsets, grid=grid), n_cl, seconds)


def _torch(threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    phi = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU())
    head = torch.nn.Linear(64, 1)
    opt = torch.optim.Adam([*phi.parameters(), *head.parameters()], lr=3e-4)
    x = torch.randn(64, 100, 4)
    y = torch.randn(64, 1)

    def step():
        opt.zero_grad()
        loss = ((head(phi(x).mean(dim=1)) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return _loop(step, 64, seconds)


def _loop(step, units, seconds):
    """Units per second of ``step`` over ``seconds`` after three warm-up calls."""
    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * units / (time.perf_counter() - t0)


def worker(kind, threads, seconds):
    rate = {"tensorflow": _tensorflow, "numba": _numba, "torch": _torch}[kind](threads, seconds)
    print(json.dumps({"rate": rate}))


def _spawn(kind, threads, seconds):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, __file__, "--worker", kind, str(threads),
                             "--seconds", str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _rates(procs):
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1])["rate"])
    return out


def measure(kind, seconds):
    one = _rates([_spawn(kind, 1, seconds)])[0]
    two = _rates([_spawn(kind, 2, seconds)])[0]
    pair = _rates([_spawn(kind, 1, seconds), _spawn(kind, 1, seconds)])
    return dict(unit={"tensorflow": "samples/s", "numba": "cubes/s", "torch": "sets/s"}[kind],
                one_thread_alone=one, two_threads_alone=two,
                two_one_thread_side_by_side=sum(pair), side_by_side_each=pair,
                thread_speedup=two / one, side_by_side_speedup=sum(pair) / one,
                packing_gain=sum(pair) / two)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    p.add_argument("--worker", nargs=2, metavar=("KIND", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.seconds)
        return
    out = dict(cpus=os.cpu_count(), seconds=args.seconds,
               load_before=os.getloadavg()[0],
               kinds={k: measure(k, args.seconds) for k in args.kinds})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
