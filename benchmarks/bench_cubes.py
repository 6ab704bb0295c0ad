"""Cube storage: disk size and read speed of the KDE cube file under several HDF5 layouts.

Usage: ``python benchmarks/bench_cubes.py CUBE_FILE [--batch 32] [--repeats 3]``

Rewrites the cubes of a real cube file (e.g. ``results/demo/cubes/train.h5``) under each
layout into a temporary directory and prints one JSON object:

* ``layouts``: for each layout, the file size (MB and ratio to the raw float32 bytes), the
  write time, ``read_all_s`` (one contiguous read of every cube, as the in-memory training
  loader does; best of ``--repeats``) and ``random_batch_ms`` (mean time to read one batch
  of ``--batch`` cubes at sorted random indices, as the streamed loader does), with the
  implied cubes/s.
* Layouts: ``gzip1_shuffle_1`` (gzip level 1 with the shuffle filter, one chunk per cube:
  cmpipe's format), ``lzf_shuffle_1`` (lzf, one chunk per cube), ``none_1`` (no
  compression, one chunk per cube), ``gzip1_shuffle_16`` (gzip, 16 cubes per chunk: a
  random read decompresses 16 cubes to use one).

Timings are wall clock on whatever else the machine is doing (the load average is
reported); the file cache is warm after the write, so these are decompression costs, not
disk reads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

LAYOUTS = {
    "gzip1_shuffle_1": dict(compression="gzip", compression_opts=1, shuffle=True, per_chunk=1),
    "lzf_shuffle_1": dict(compression="lzf", compression_opts=None, shuffle=True, per_chunk=1),
    "none_1": dict(compression=None, compression_opts=None, shuffle=False, per_chunk=1),
    "gzip1_shuffle_16": dict(compression="gzip", compression_opts=1, shuffle=True,
                             per_chunk=16),
}


def write_layout(path, cubes, layout):
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        f.create_dataset("cubes", data=cubes, chunks=(layout["per_chunk"],) + cubes.shape[1:],
                         compression=layout["compression"],
                         compression_opts=layout["compression_opts"],
                         shuffle=layout["shuffle"])
    return time.perf_counter() - t0


def read_all(path, repeats):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            f["cubes"][...]
        best = min(best, time.perf_counter() - t0)
    return best


def random_batches(path, n, batch, n_batches, rng):
    out = None
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["cubes"]
        out = np.empty((batch,) + ds.shape[1:], np.float32)
        for _ in range(n_batches):
            idx = np.sort(rng.choice(n, size=batch, replace=False))
            for j, i in enumerate(idx):
                ds.read_direct(out, np.s_[int(i)], np.s_[j])
    return (time.perf_counter() - t0) / n_batches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cube_file")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="random batches timed per layout")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with h5py.File(args.cube_file, "r") as f:
        cubes = f["cubes"][...]
    n = len(cubes)
    raw_mb = cubes.nbytes / 1e6
    result = {"benchmark": "cube storage", "file": args.cube_file, "n_cubes": n,
              "grid": list(cubes.shape[1:]), "raw_mb": round(raw_mb, 1),
              "batch": args.batch, "h5py": h5py.__version__,
              "hdf5": h5py.version.hdf5_version,
              "load_average_1min_at_start": round(os.getloadavg()[0], 2), "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="cmpipe-bench-cubes-") as tmp:
        for name, layout in LAYOUTS.items():
            path = Path(tmp) / f"{name}.h5"
            w = write_layout(path, cubes, layout)
            size = path.stat().st_size / 1e6
            ra = read_all(path, args.repeats)
            rb = random_batches(path, n, args.batch, args.batches,
                                np.random.default_rng(args.seed))
            result["layouts"][name] = {
                "size_mb": round(size, 1), "size_over_raw": round(size / raw_mb, 3),
                "write_s": round(w, 2), "read_all_s": round(ra, 3),
                "read_all_cubes_per_s": round(n / ra, 0),
                "random_batch_ms": round(1e3 * rb, 2),
                "random_cubes_per_s": round(args.batch / rb, 0)}
            print(name, result["layouts"][name], file=sys.stderr)
            path.unlink()
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
