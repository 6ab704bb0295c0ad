"""One-command check of the CNN3D's GPU path (``make gpu-check``): build small training
cubes, train the CNN3D through the ``train`` rule's code with ``configs/gpu.yaml`` (mixed
precision, XLA, large batch) on whatever device TensorFlow finds, and compare its
throughput with the CPU's.

Usage: ``python benchmarks/gpu_check.py [--workdir DIR] [--epochs N] [--cpu-reference S]``

Steps (a few minutes on a GPU node; the cube-making runs on the CPU):

1. ``snakemake`` in a scratch directory (``--workdir``, default a temporary one): the tiny
   config with 32^3 cubes (``kde.n_grid: 32``, the default run's grid), up to
   ``cubes/train.h5`` and ``cubes/validation.h5`` (run ``gpu-check``).
2. ``benchmarks/bench_train.py --pipeline`` on those cubes with ``config.yaml``,
   ``configs/tiny.yaml``, the 32^3 overlay and ``configs/gpu.yaml``: the real training code
   path (:func:`cmpipe.cnn.training.train`, in memory), ``--epochs`` epochs, beside the
   in-memory rate of the same network and batch.

Prints one JSON object: ``device`` (TensorFlow's), ``samples_per_s`` (training steps of
the same network and batch on batches in memory, with the overlay's precision),
``ratio_to_cpu_reference`` against ``cpu_reference_samples_per_s`` (the default run's
training on the 2-core development machine at 32^3, in memory: 487 samples/s),
``pipeline_samples_per_s`` (the training run itself after the first epoch's graph
tracing: on the tiny run's ~100 training cubes mostly per-epoch overhead, so a check that
the path trains rather than a rate), the wall time of each step, and the ``bench_train``
output.
Exit status 1 if a step fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Training samples/s of the CNN3D inside the default run on the 2-core CPU machine (32^3
#: cubes, in memory; README "Run time per rule").
CPU_REFERENCE = 487.0
RUN = "gpu-check"


def _run(cmd, cwd, what):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"gpu_check: {what} failed (exit {proc.returncode}): "
                         f"{' '.join(map(str, cmd))}")
    return proc, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="scratch directory (default: temporary)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument("--cpu-reference", type=float, default=CPU_REFERENCE,
                   help=f"CPU samples/s to compare with (default {CPU_REFERENCE:g})")
    args = p.parse_args(argv)

    bin_dir = Path(sys.executable).parent
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="cmpipe-gpu-check-")
    wd = Path(args.workdir or tmp)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy(ROOT / "config.yaml", wd / "config.yaml")
        shutil.copytree(ROOT / "configs", wd / "configs", dirs_exist_ok=True)
        overlay = wd / "grid32.yaml"
        overlay.write_text(f"run: {RUN}\nkde:\n  n_grid: 32\n")
        configs = ["config.yaml", "configs/tiny.yaml", str(overlay)]
        targets = [f"results/{RUN}/cubes/train.h5", f"results/{RUN}/cubes/validation.h5"]
        _, t_cubes = _run([bin_dir / "snakemake", "--snakefile", ROOT / "Snakefile",
                           "--directory", wd, "--cores", str(os.cpu_count() or 2), *targets,
                           "--configfile", *configs], wd, "making the training cubes")
        proc, t_train = _run([sys.executable, ROOT / "benchmarks/bench_train.py", "--pipeline",
                              wd / "results" / RUN, "--config",
                              *[wd / c for c in configs], ROOT / "configs/gpu.yaml",
                              "--epochs", str(args.epochs), "--skip-streamed"],
                             wd, "training with configs/gpu.yaml")
        bench = json.loads(proc.stdout)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    run = bench["pipeline"]
    pipe = float(run.get("samples_per_s_after_first_epoch") or run["samples_per_s"])
    rate = float(bench["in_memory"]["samples_per_s"])
    out = {
        "check": "CNN3D training with configs/gpu.yaml (tiny config, 32^3 cubes)",
        "device": bench.get("device"),
        "samples_per_s": round(rate, 2),
        "ratio_to_cpu_reference": round(rate / args.cpu_reference, 2),
        "cpu_reference_samples_per_s": args.cpu_reference,
        "pipeline_samples_per_s": round(pipe, 2),
        "pipeline_note": (f"the train rule's code path trained {args.epochs} epochs on the "
                          f"tiny run's {bench['n_train']} training cubes (batch "
                          f"{bench['batch_size']}): a check that mixed precision and XLA "
                          "train, its rate dominated by per-epoch overhead; samples_per_s is "
                          "the same network and batch on batches in memory"),
        "epochs": args.epochs,
        "seconds": {"cubes": round(t_cubes, 1), "training_benchmark": round(t_train, 1)},
        "bench_train": bench,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
