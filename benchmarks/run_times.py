"""Wall time and peak memory per rule of finished runs, from Snakemake's benchmark files.

Usage: ``python benchmarks/run_times.py results/demo-pure results/demo [--markdown]``

Reads every ``RUN/benchmarks/**/*.tsv`` (the rules' ``benchmark:`` files: seconds, peak RSS
in MB, CPU time) and prints one JSON object: per run, one entry per benchmark file (its path
below ``benchmarks/`` names the rule and its wildcards, e.g. ``kde/train-0000``), sharded
rules summed as ``kde/*`` (seconds, the largest peak RSS), and the run's total of benchmarked
seconds. ``--markdown`` prints a table (rules over 1 s, largest first) instead. Jobs of one
run may overlap in time (``--cores`` > a job's threads), so the total is CPU-side job time,
not the run's wall clock; Snakemake's own log gives that.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def read_run(run_dir: Path) -> dict:
    rows = {}
    for tsv in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        with open(tsv, newline="") as fh:
            recs = list(csv.DictReader(fh, delimiter="\t"))
        if not recs:
            continue
        r = recs[-1]
        name = str(tsv.relative_to(run_dir / "benchmarks").with_suffix(""))
        rows[name] = {"seconds": round(float(r["s"]), 2),
                      "max_rss_mb": round(float(r["max_rss"]), 1)
                      if r.get("max_rss") not in (None, "", "NA", "-") else None,
                      "cpu_time_s": round(float(r["cpu_time"]), 2)
                      if r.get("cpu_time") not in (None, "", "NA", "-") else None}
    grouped = {}
    for name, v in rows.items():
        key = name.split("/")[0] + "/*" if name.startswith("kde/") else name
        g = grouped.setdefault(key, {"seconds": 0.0, "max_rss_mb": None, "jobs": 0})
        g["seconds"] = round(g["seconds"] + v["seconds"], 2)
        g["jobs"] += 1
        if v["max_rss_mb"] is not None:
            g["max_rss_mb"] = max(g["max_rss_mb"] or 0.0, v["max_rss_mb"])
    return {"files": rows, "rules": grouped,
            "total_benchmarked_s": round(sum(v["seconds"] for v in rows.values()), 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    out = {Path(r).name: read_run(Path(r)) for r in args.runs}
    if not args.markdown:
        print(json.dumps(out, indent=2))
        return
    names = sorted({k for r in out.values() for k in r["rules"]},
                   key=lambda k: -max(r["rules"].get(k, {"seconds": 0})["seconds"]
                                      for r in out.values()))
    runs = list(out)
    sys.stdout.write("| rule | " + " | ".join(f"{r} s / MB" for r in runs) + " |\n")
    sys.stdout.write("|---|" + "---|" * len(runs) + "\n")
    for k in names:
        cells = []
        for r in runs:
            v = out[r]["rules"].get(k)
            cells.append("" if v is None else
                         f"{v['seconds']:.0f} / {v['max_rss_mb']:.0f}"
                         + (f" ({v['jobs']} jobs)" if v["jobs"] > 1 else ""))
        if max(out[r]["rules"].get(k, {"seconds": 0})["seconds"] for r in runs) >= 1:
            sys.stdout.write(f"| {k} | " + " | ".join(cells) + " |\n")
    sys.stdout.write("| total of benchmarked jobs | " + " | ".join(
        f"{out[r]['total_benchmarked_s']:.0f}" for r in runs) + " |\n")


if __name__ == "__main__":
    main()
