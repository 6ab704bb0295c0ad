"""Training throughput, FLOP efficiency and streaming memory of cmpipe.cnn.training.

Usage: ``python benchmarks/bench_train.py [--quick] [--seed SEED] [--skip-memory]
[--tmpdir DIR]``, or the pipeline mode
``python benchmarks/bench_train.py --pipeline RUN_DIR [--config FILE ...] [--epochs N]``

Prints one JSON object to stdout (progress goes to stderr through ``logging``):

* ``device``: GPU name if TensorFlow sees one, else the CPU model and core count.
* ``matmul_peak_gflops``: best of 3 ``tf.linalg.matmul`` of two float32 n x n matrices
  (n = 4096, 2048 with ``--quick``), 2 n^3 FLOPs each: the machine's practical peak.
* ``model``: the default CNN3D on 50^3 cubes: parameters, forward FLOPs per sample (counted
  analytically from the layer shapes by :func:`cmpipe.cnn.model.forward_flops`: a multiply-add is
  2 FLOPs, conv = 2 k^3 c_in c_out x output voxels, dense = 2 n_in n_out; bias, ReLU and
  pooling not counted) and training FLOPs per sample, taken as 3x forward (backward =
  gradients w.r.t. activations + w.r.t. weights, each about one forward).
* ``throughput``: training samples/s with batch 100, Adam, MSE, float32:
  ``streamed``: ``model.fit`` on a :class:`cmpipe.cnn.training.CubeDataset` reading a file of
  random cubes (gzip chunks decompressed on the fly), the first epoch (warm-up: graph
  tracing) excluded, mean over the timed epochs; ``in_memory``: ``train_on_batch`` on one
  batch already in memory (pure compute); ``in_memory_32``: the same network on 32^3 cubes.
  Each with the achieved training FLOP/s and its fraction of the matmul peak.
* ``memory``: peak resident memory (``ru_maxrss`` from ``os.wait4``) of a fresh subprocess
  that runs :func:`cmpipe.cnn.training.train` in streamed mode (``in_memory_max_mb=0``: batches
  read from the file with the prefetch thread) for one full epoch over a cube file of about
  1 GB and one of about 5 GB on disk (0.2 / 0.6 GB with ``--quick``), plus a 64-cube
  validation file. The files are built by copying the compressed chunks of a 64-cube shard
  (:func:`cmpipe.io.cubes.gather_shards`), so they cost disk bandwidth only; random cubes
  barely compress, so the uncompressed size is close to the file size. ``rss_growth`` is
  ``rss(big) / rss(small) - 1``; streaming means it stays within 10%. Linux carries the
  parent's high-water RSS at fork into the child's ``ru_maxrss``, so these runs come first,
  before the parent imports TensorFlow (``parent_max_rss_mb`` shows it is small); the child
  also reports its own ``VmHWM`` from ``/proc/self/status`` (a fresh counter after exec).

Pipeline mode (``--pipeline results/demo``): the real ``train`` rule code path
(:func:`cmpipe.stages.train.train`'s settings from the run's config, i.e.
:func:`cmpipe.cnn.training.train` with its in-memory / streamed loader) on the run's own
``cubes/train.h5`` and ``cubes/validation.h5`` for ``--epochs`` epochs (default 3, a fresh
output directory), beside the in-memory rate of the same network, grid and batch size
(``train_on_batch`` on one batch already in memory), and their ratio. ``pipeline``: training
cubes x epochs / the epochs' seconds from ``history.csv`` (validation included, as the run's
own figure), and the same without the first epoch (graph tracing). ``streamed_pipeline``:
the same code path with ``train.in_memory_max_mb: 0`` (the file streamed with the prefetch
thread). If the run has a ``model/history.csv``, ``run_history`` gives the throughput of the
run's own ``train`` job and its ratio to the in-memory rate measured here.

Big files are written to a temporary directory (``--tmpdir``, default the system's) that is
deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

logger = logging.getLogger("bench_train")

BATCH = 100
SHARD = 64


def random_cubes(rng, n_cubes, n):
    """Random positive cubes, each normalised to sum 1 (the cube file convention)."""
    c = rng.random((n_cubes, n, n, n), dtype=np.float32) + np.float32(1e-3)
    c /= c.sum(axis=(1, 2, 3), keepdims=True)
    return c


def write_random(path, n_cubes, n, rng):
    from cmpipe.io.cubes import CubeWriter
    with CubeWriter(path, n_cubes, n, dict(n_grid=n, split="bench")) as w:
        for i in range(0, n_cubes, 32):
            b = min(32, n_cubes - i)
            w.write(random_cubes(rng, b, n),
                    dict(cluster_id=np.arange(i, i + b), log10_m200c=rng.uniform(13.7, 15.0, b),
                         n_gal=np.full(b, 50), n_members=np.full(b, 40),
                         distance_mpc_h=np.linspace(20.0, 250.0, b)))


def device_info():
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"kind": "GPU", "name": details.get("device_name", gpus[0].name),
                "n_gpus": len(gpus)}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kind": "CPU", "name": cpu, "cores": os.cpu_count()}


def matmul_peak(n):
    import tensorflow as tf
    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    tf.linalg.matmul(a, b).numpy()
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def compiled_model(n):
    import keras
    from cmpipe.cnn.model import build_cnn3d
    m = build_cnn3d(n)
    m.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", jit_compile=False)
    return m


def in_memory_rate(n, rng, steps):
    """Samples/s of train_on_batch on one in-memory batch (2 warm-up steps)."""
    m = compiled_model(n)
    x = random_cubes(rng, BATCH, n) * np.float32(n ** 3)
    y = rng.normal(size=(BATCH, 1)).astype(np.float32)
    for _ in range(2):
        m.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_on_batch(x, y)
    return BATCH * steps / (time.perf_counter() - t0)


def streamed_rate(path, n, epochs):
    """Samples/s of model.fit streaming ``path``; the first epoch is a warm-up."""
    import keras
    from cmpipe.cnn.training import CubeDataset

    ds = CubeDataset(path, BATCH, shuffle=True, seed=0)
    m = compiled_model(n)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            ds.set_epoch(epoch)
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    m.fit(ds, epochs=epochs + 1, shuffle=False, verbose=0, callbacks=[Timer()])
    ds.close()
    return ds.n_cubes / float(np.mean(times[1:])), times


def flops_entry(rate, train_flops, peak):
    achieved = rate * train_flops
    return {"samples_per_s": round(rate, 2), "train_gflops_per_s": round(achieved / 1e9, 2),
            "fraction_of_matmul_peak": round(achieved / peak, 3)}


def build_big_file(path, target_bytes, shard):
    """Concatenate copies of ``shard`` until the file reaches ``target_bytes`` on disk."""
    from cmpipe.io.cubes import gather_shards
    per_cube = shard.stat().st_size / SHARD
    copies = max(1, int(round(target_bytes / per_cube / SHARD)))
    t0 = time.perf_counter()
    gather_shards([shard] * copies, path)
    logger.info("wrote %s: %d cubes, %.2f GB in %.0f s", path, copies * SHARD,
                path.stat().st_size / 1e9, time.perf_counter() - t0)
    return copies * SHARD


def child_train(train_path, val_path, out_dir, result_path):
    """Run one epoch of cmpipe.cnn.training.train (in a fresh process) and record its timing."""
    from cmpipe.cnn.training import TrainSettings, read_history, train
    # streamed (in_memory_max_mb 0): memory must not grow with the file
    res = train(train_path, val_path, out_dir, TrainSettings(epochs=1, verbose=0,
                                                             in_memory_max_mb=0.0))
    h = read_history(res.history_path)
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    Path(result_path).write_text(json.dumps({"epoch_seconds": float(h["seconds"][0]),
                                             "child_vmhwm_mb": hwm}))


def memory_run(train_path, val_path, workdir, tag):
    out_dir = workdir / f"out-{tag}"
    result = workdir / f"result-{tag}.json"
    log = workdir / f"child-{tag}.log"
    cmd = [sys.executable, __file__, "--child", str(train_path), str(val_path), str(out_dir),
           str(result)]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"training subprocess for {train_path} failed "
                           f"(exit {proc.returncode}):\n{tail}")
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "parent_max_rss_mb": round(parent / 1024, 1),
            "wall_s": round(time.perf_counter() - t0, 1),
            **json.loads(result.read_text())}


def config_of(run_dir, config_files):
    """The run's config: ``config.resolved.yaml`` of the run, else the given config files
    merged in order (as Snakemake merges --configfile), validated against the package's
    schema (which fills the defaults)."""
    from cmpipe.sections import CONFIG_SCHEMA
    from cmpipe.settings import Settings, load_config, read_config_file

    resolved = Path(run_dir) / "config.resolved.yaml"
    if not config_files and resolved.exists():
        from cmpipe.io.artefacts import PRODUCTS_KEY

        cfg = read_config_file(resolved)
        cfg.pop(PRODUCTS_KEY, None)
        return Settings.from_config(cfg)
    files = [Path(f) for f in (config_files or ["config.yaml"])]
    return Settings.from_config(load_config(files[0], CONFIG_SCHEMA, overlays=files[1:]))


def pipeline_mode(args):
    """Throughput of the real train code path on a run's cubes vs in memory (see docstring)."""
    import dataclasses

    import keras
    import tensorflow as tf
    from cmpipe.io.cubes import CubeReader
    from cmpipe.cnn.model import build_cnn
    from cmpipe.stages.train import train_settings
    from cmpipe.cnn.training import read_history, train, transform_inputs

    run_dir = Path(args.pipeline)
    s = config_of(run_dir, args.config)
    settings = dataclasses.replace(train_settings(s), epochs=args.epochs, patience=10 ** 6)
    train_path, val_path = run_dir / "cubes" / "train.h5", run_dir / "cubes" / "validation.h5"
    with CubeReader(train_path) as r:
        n_train, grid = len(r), tuple(r.shape[1:])
        batch = r.cubes(0, min(settings.batch_size, n_train))
    with CubeReader(val_path) as r:
        n_val = len(r)
    result = {"benchmark": "cmpipe.cnn.training pipeline", "run_dir": str(run_dir),
              "device": device_info(), "tensorflow": tf.__version__,
              "keras": keras.__version__, "grid": list(grid), "batch_size": settings.batch_size,
              "n_train": n_train, "n_validation": n_val, "epochs": args.epochs,
              "input_transform": settings.input_transform,
              "load_average_1min_at_start": round(os.getloadavg()[0], 2)}

    def run_train(tag, **changes):
        with tempfile.TemporaryDirectory(prefix=f"cmpipe-bench-{tag}-", dir=args.tmpdir) as d:
            t0 = time.perf_counter()
            train(train_path, val_path, d, dataclasses.replace(settings, **changes))
            wall = time.perf_counter() - t0
            h = read_history(Path(d) / "history.csv")
        sec = h["seconds"]
        return {"samples_per_s": round(n_train * len(sec) / float(sec.sum()), 2),
                "samples_per_s_after_first_epoch":
                    round(n_train * (len(sec) - 1) / float(sec[1:].sum()), 2)
                    if len(sec) > 1 else None,
                "epoch_seconds": [round(float(x), 2) for x in sec],
                "wall_s": round(wall, 1)}

    result["pipeline"] = run_train("mem")
    logger.info("pipeline (in memory): %s", result["pipeline"])
    if not args.skip_streamed:
        result["streamed_pipeline"] = run_train("stream", in_memory_max_mb=0.0)
        logger.info("pipeline (streamed): %s", result["streamed_pipeline"])

    # the same network, grid and batch on one batch already in memory: pure compute
    keras.utils.set_random_seed(args.seed)
    m = build_cnn(grid, settings.layers)
    m.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse")
    x = transform_inputs(np.ascontiguousarray(batch, dtype=np.float32), float(np.prod(grid)),
                         settings.input_transform)
    y = np.random.default_rng(args.seed).normal(size=(len(x), 1)).astype(np.float32)
    for _ in range(3):
        m.train_on_batch(x, y)
    steps = max(10, int(round(3 * n_train / len(x) / 4)))
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_on_batch(x, y)
    rate = len(x) * steps / (time.perf_counter() - t0)
    result["in_memory"] = {"samples_per_s": round(rate, 2), "steps": steps,
                           "method": "train_on_batch on one in-memory batch of the run's "
                                     "cubes (3 warm-up steps)"}
    result["ratio_pipeline_to_in_memory"] = round(result["pipeline"]["samples_per_s"] / rate, 3)
    if "streamed_pipeline" in result:
        result["ratio_streamed_to_in_memory"] = round(
            result["streamed_pipeline"]["samples_per_s"] / rate, 3)
    hist = run_dir / "model" / "history.csv"
    if hist.exists():
        h = read_history(hist)
        run_rate = n_train * len(h["seconds"]) / float(h["seconds"].sum())
        result["run_history"] = {"path": str(hist), "epochs": len(h["seconds"]),
                                 "train_seconds": round(float(h["seconds"].sum()), 1),
                                 "samples_per_s": round(run_rate, 2),
                                 "ratio_to_in_memory": round(run_rate / rate, 3)}
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-memory", action="store_true", help="skip the 1 GB / 5 GB runs")
    p.add_argument("--tmpdir", default=None, help="where the temporary cube files go")
    p.add_argument("--pipeline", metavar="RUN_DIR", default=None,
                   help="pipeline mode: the train rule's code path on RUN_DIR/cubes")
    p.add_argument("--config", nargs="*", default=None,
                   help="pipeline mode: config files (default the run's config.resolved.yaml)")
    p.add_argument("--epochs", type=int, default=3, help="pipeline mode: epochs per run")
    p.add_argument("--skip-streamed", action="store_true",
                   help="pipeline mode: skip the streamed (in_memory_max_mb: 0) run")
    p.add_argument("--child", nargs=4, metavar=("TRAIN", "VAL", "OUT", "RESULT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.child:
        child_train(*args.child)
        return
    if args.pipeline:
        pipeline_mode(args)
        return

    rng = np.random.default_rng(args.seed)
    n = 50
    n_cubes = 200 if args.quick else 400
    epochs = 1 if args.quick else 2
    sizes_gb = (0.2, 0.6) if args.quick else (1.0, 5.0)
    t_start = time.perf_counter()
    result = {"benchmark": "cmpipe.cnn.training", "quick": args.quick}

    with tempfile.TemporaryDirectory(prefix="cmpipe-bench-train-", dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        # memory first: this process must not have loaded TensorFlow yet (see docstring)
        if not args.skip_memory:
            assert "tensorflow" not in sys.modules
            shard = tmp / "shard.h5"
            write_random(shard, SHARD, n, rng)
            runs = []
            for gb in sizes_gb:
                big = tmp / f"train-{gb:g}GB.h5"
                count = build_big_file(big, gb * 1e9, shard)
                entry = {"target_gb": gb, "file_gb": round(big.stat().st_size / 1e9, 3),
                         "n_cubes": count,
                         "uncompressed_cube_gb": round(count * n ** 3 * 4 / 1e9, 3)}
                entry.update(memory_run(big, shard, tmp, f"{gb:g}"))
                entry["train_samples_per_s"] = round(count / entry["epoch_seconds"], 2)
                logger.info("%s", entry)
                runs.append(entry)
                big.unlink()
            growth = runs[-1]["max_rss_mb"] / runs[0]["max_rss_mb"] - 1
            result["memory"] = {"runs": runs, "rss_growth": round(growth, 4),
                                "within_10pct": bool(abs(growth) <= 0.10),
                                "method": "ru_maxrss of a fresh subprocess (os.wait4) "
                                          "running train() for one epoch, batch 100 "
                                          "(epoch_seconds includes graph tracing and the "
                                          "64-cube validation)"}

        import keras
        import tensorflow as tf
        from cmpipe.cnn.model import forward_flops, parameter_count

        keras.utils.set_random_seed(args.seed)
        result.update({"device": device_info(), "tensorflow": tf.__version__,
                       "keras": keras.__version__, "python": platform.python_version(),
                       "intra_op_threads":
                           tf.config.threading.get_intra_op_parallelism_threads()
                           or os.cpu_count(),
                       "load_average_1min_at_start": round(os.getloadavg()[0], 2)})
        peak_n = 2048 if args.quick else 4096
        peak = matmul_peak(peak_n)
        result["matmul_peak_gflops"] = round(peak / 1e9, 2)
        result["matmul_n"] = peak_n
        logger.info("matmul peak %.1f GFLOP/s", peak / 1e9)

        m = compiled_model(n)
        fwd = forward_flops(m)
        train_flops = 3 * fwd
        result["model"] = {"name": "default CNN3D (authors' public architecture)",
                           "grid": n, "parameters": parameter_count(m, log=False),
                           "forward_flops_per_sample": fwd,
                           "train_flops_per_sample": train_flops,
                           "flop_convention": "multiply-add = 2 FLOPs; conv 2*k^3*c_in*c_out*"
                                              "out_voxels, dense 2*n_in*n_out; bias/ReLU/pool "
                                              "not counted; training = 3 x forward"}
        del m

        thr = {}
        rate = in_memory_rate(n, rng, steps=3 if args.quick else 6)
        thr["in_memory"] = flops_entry(rate, train_flops, peak)
        logger.info("in-memory 50^3: %.1f samples/s", rate)
        m32 = compiled_model(32)
        fwd32 = forward_flops(m32)
        del m32
        rate32 = in_memory_rate(32, rng, steps=5 if args.quick else 15)
        thr["in_memory_32"] = {**flops_entry(rate32, 3 * fwd32, peak),
                               "train_flops_per_sample": 3 * fwd32}
        logger.info("in-memory 32^3: %.1f samples/s", rate32)
        path = tmp / "throughput.h5"
        write_random(path, n_cubes, n, rng)
        rate, times = streamed_rate(path, n, epochs)
        thr["streamed"] = {**flops_entry(rate, train_flops, peak), "n_cubes": n_cubes,
                           "timed_epochs": epochs,
                           "epoch_seconds": [round(t, 2) for t in times]}
        logger.info("streamed 50^3: %.1f samples/s (epochs %s s)", rate,
                    [round(t, 1) for t in times])
        path.unlink()
        result["throughput"] = {"batch_size": BATCH, **thr}
        result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
