"""Time and peak memory of each mock-catalogue stage; prints one JSON object.

Each stage runs in its own fresh Python process (exactly the function its Snakemake rule
calls), so the peak resident memory reported is that stage's alone.

    python benchmarks/bench_mock.py [--config config.yaml] [--set key=value ...] [--workdir D]

``--set`` overrides config keys with dotted paths, e.g.
``--set simulation.synthetic.box_size_mpc_h=400 --set sightlines.target_per_bin=2000``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "cmpipe" / "data" / "config.schema.yaml"

STAGES = [
    ("catalogue", "catalogue", dict(halos_out="catalogue/halos.h5",
                                    galaxies_out="catalogue/galaxies.h5")),
    ("select_halos", "select_halos", dict(halos="catalogue/halos.h5", out="mock/hosts.h5")),
    ("sightlines", "sightlines", dict(hosts="mock/hosts.h5", out="mock/sightlines.h5")),
    ("project", "project", dict(halos="catalogue/halos.h5", galaxies="catalogue/galaxies.h5",
                                hosts="mock/hosts.h5", sightlines="mock/sightlines.h5",
                                out="mock/projected.h5")),
    ("flux_limit", "flux_limit", dict(projected="mock/projected.h5",
                                      out="mock/fluxlimited.h5")),
    ("split", "split", dict(fluxlimited="mock/fluxlimited.h5", out="mock/clusters.h5")),
]

#: With --kde: the cube rule on the first shard of the test split (kde.shard_size cubes).
KDE_STAGE = ("kde_shard", "kde_shard", dict(clusters="mock/clusters.h5",
                                            out="cubes/test/shard-0000.h5"))

CHILD = """
import json, sys
from cmpipe import stages
cfg = json.loads(sys.argv[1]); func = getattr(stages, sys.argv[2]); kw = json.loads(sys.argv[3])
if sys.argv[2] in ("project", "kde_shard"):
    kw["progress"] = False
if sys.argv[2] == "kde_shard":
    kw.update(split_name="test", shard=0, threads=2)
stages.run_rule(func, None, config=cfg, **kw)
"""


def _set(cfg, dotted, value):
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = yaml.safe_load(value)


def run_stage(cfg, func, kwargs, workdir):
    kw = {k: str(workdir / v) for k, v in kwargs.items()}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), func,
                             json.dumps(kw)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {func} failed:\n{err[-3000:]}")
    return dict(seconds=round(wall, 2), peak_rss_mb=round(usage.ru_maxrss / 1024.0, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--kde", action="store_true",
                    help="also run the KDE cube rule on one shard of the test split")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from cmpipe.settings import merge_config, validate_config

    cfg = yaml.safe_load(Path(args.config).read_text())
    if Path(args.config).resolve() != (ROOT / "config.yaml").resolve():
        cfg = merge_config(yaml.safe_load((ROOT / "config.yaml").read_text()), cfg)
    for item in args.set:
        k, v = item.split("=", 1)
        _set(cfg, k, v)
    cfg = validate_config(cfg, SCHEMA)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cmpipe-bench-"))
    result = dict(benchmark="mock_stages", config=args.config, overrides=args.set,
                  python=platform.python_version(), nproc=os.cpu_count(), stages={})
    for name, func, kw in STAGES + ([KDE_STAGE] if args.kde else []):
        result["stages"][name] = run_stage(cfg, func, kw, workdir)

    from cmpipe.io.tables import read_table
    cl, attrs = read_table(workdir / "mock/clusters.h5", group="clusters",
                           columns=["cluster_id", "split", "n_gal"])
    h, _ = read_table(workdir / "catalogue/halos.h5", group="halos", columns=["halo_id"])
    g, _ = read_table(workdir / "catalogue/galaxies.h5", group="galaxies",
                      columns=["galaxy_id"])
    result.update(n_halos=int(len(h["halo_id"])), n_galaxies=int(len(g["galaxy_id"])),
                  n_projected_clusters=int(len(cl["cluster_id"])),
                  flux_limit_counts=attrs.get("flux_limit_counts"),
                  total_seconds=round(sum(s["seconds"] for s in result["stages"].values()), 2),
                  max_peak_rss_mb=max(s["peak_rss_mb"] for s in result["stages"].values()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
