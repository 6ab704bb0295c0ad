"""Compare two runs' products file by file: byte-identical, or numerically identical where
only metadata that holds a time differs. Prints JSON; exit status 1 when any product differs
or is missing.

    python benchmarks/compare_products.py results/tiny-before results/tiny [--json out.json]

Used for issue 17 (a restructure must leave every product unchanged): run the tiny config
(``configs/tiny.yaml``) on the commit before and after, then compare the two run folders.

What may differ, and how each kind of file is compared when its bytes differ:

* ``logs/`` and ``benchmarks/`` (per-rule logs and timings): skipped, listed.
* HDF5: every group, dataset (dtype, shape, values, NaNs equal) and attribute.
* JSON / YAML: parsed and compared exactly, except keys that hold a time or a digest of a
  file that holds one (``TIME_KEYS``, ``DIGEST_KEYS``); each ignored key is listed.
* CSV / TSV / ECSV / HTML: line by line; ``history.csv`` ignores its wall-time columns.
* ``.keras`` (zip): ``config.json`` parsed (Keras's ``shared_object_id`` is an object's
  memory address), the weights as HDF5, ``metadata.json`` (the save date) skipped.
* HDF5 attributes holding JSON (the training checkpoint's ``state``) are parsed as JSON.
* PNG: decoded pixels.
* ``.pt`` (torch): every tensor of the state dict.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

SKIP_DIRS = ("logs", "benchmarks")
#: Keys whose values are times (seconds, dates), compared by presence only.
TIME_KEYS = re.compile(r"(^|_)(time|times|seconds|elapsed|wall|date|created|timestamp|"
                       r"duration|s_per_epoch|samples_per_s|throughput|started|finished)"
                       r"($|_)", re.I)
#: Digests of files whose bytes hold a time (the .keras archive's save date, and the model
#: record that lists that digest), and Keras's ``shared_object_id`` (a Python ``id()``).
DIGEST_KEYS = re.compile(r"(keras|model).*sha256|sha256.*(keras|model)|\.keras$|"
                         r"^model/config\.json$|^shared_object_id$", re.I)
#: CSV columns that hold wall times.
TIME_COLUMNS = re.compile(r"(time|seconds|samples_per_s|elapsed)", re.I)


def _h5_diff(a: Path, b: Path, ignored: list[str] | None = None) -> list[str]:
    import h5py

    out = []
    ignored = [] if ignored is None else ignored

    def attrs(x, y, where):
        if set(x.attrs) != set(y.attrs):
            out.append(f"{where}: attribute names {sorted(x.attrs)} != {sorted(y.attrs)}")
            return
        for k in x.attrs:
            u, v = x.attrs[k], y.attrs[k]
            if _equal(np.asarray(u), np.asarray(v)):
                continue
            if isinstance(u, str) and isinstance(v, str) and u.startswith("{"):
                out.extend(_tree_diff(json.loads(u), json.loads(v), f"{where}@{k}", ignored))
            else:
                out.append(f"{where}: attribute {k}")

    def walk(x, y, where):
        attrs(x, y, where)
        if isinstance(x, h5py.Dataset):
            if not isinstance(y, h5py.Dataset):
                out.append(f"{where}: dataset vs group")
            elif x.dtype != y.dtype or x.shape != y.shape:
                out.append(f"{where}: {x.dtype}{x.shape} != {y.dtype}{y.shape}")
            elif not _equal(x[()], y[()]):
                out.append(f"{where}: values")
            return
        if set(x) != set(y):
            out.append(f"{where}: members {sorted(x)} != {sorted(y)}")
            return
        for k in x:
            walk(x[k], y[k], f"{where}/{k}")

    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        walk(x, y, "")
    return out


def _equal(u, v) -> bool:
    u, v = np.asarray(u), np.asarray(v)
    if u.shape != v.shape or u.dtype != v.dtype:
        return False
    if u.dtype.kind in "fc":
        return bool(np.array_equal(u, v, equal_nan=True))
    if u.dtype.names:
        return all(_equal(u[n], v[n]) for n in u.dtype.names)
    return bool(np.array_equal(u, v))


def _tree_diff(x, y, where, ignored: list[str]) -> list[str]:
    """Differences of two parsed JSON/YAML trees; keys of times/digests go to ``ignored``."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        if set(x) != set(y):
            return [f"{where}: keys {sorted(set(x) ^ set(y))} in one only"]
        if list(x) != list(y):
            out.append(f"{where}: key order")
        for k in x:
            w = f"{where}.{k}" if where else str(k)
            if TIME_KEYS.search(str(k)) or DIGEST_KEYS.search(str(k)):
                if x[k] != y[k]:
                    ignored.append(w)
                continue
            out += _tree_diff(x[k], y[k], w, ignored)
        return out
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return [f"{where}: length {len(x)} != {len(y)}"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in
                _tree_diff(u, v, f"{where}[{i}]", ignored)]
    if type(x) is not type(y) or (x != y and not (x != x and y != y)):
        return [f"{where}: {x!r} != {y!r}"]
    return []


def _text_diff(a: Path, b: Path, ignored: list[str]) -> list[str]:
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    if len(la) != len(lb):
        return [f"{len(la)} lines != {len(lb)} lines"]
    skip = set()
    if a.suffix == ".csv" and la:
        head = la[0].split(",")
        skip = {i for i, h in enumerate(head) if TIME_COLUMNS.search(h)}
    out = []
    for i, (u, v) in enumerate(zip(la, lb)):
        if u == v:
            continue
        if skip:
            cu, cv = u.split(","), v.split(",")
            if len(cu) == len(cv) and all(p == q for j, (p, q) in enumerate(zip(cu, cv))
                                          if j not in skip):
                ignored.append("time columns")
                continue
        out.append(f"line {i + 1}")
        if len(out) > 5:
            break
    return out


def _keras_diff(a: Path, b: Path, ignored: list[str]) -> list[str]:
    with zipfile.ZipFile(a) as x, zipfile.ZipFile(b) as y:
        if sorted(x.namelist()) != sorted(y.namelist()):
            return ["archive members differ"]
        out = []
        for n in x.namelist():
            if x.read(n) == y.read(n):
                continue
            if n == "metadata.json":
                ignored.append("metadata.json (save date)")
            elif n.endswith(".json"):
                out += [f"{n}{d}" for d in _tree_diff(json.loads(x.read(n)), json.loads(y.read(n)),
                                                      "", ignored)]
            elif n.endswith(".h5"):
                pa, pb = (Path(f"/tmp/.cmp_{i}_{Path(n).name}") for i in (0, 1))
                pa.write_bytes(x.read(n))
                pb.write_bytes(y.read(n))
                out += [f"{n}{d}" for d in _h5_diff(pa, pb, ignored)]
            else:
                out.append(n)
        return out


def _png_diff(a: Path, b: Path) -> list[str]:
    import matplotlib.image as mpimg

    u, v = mpimg.imread(a), mpimg.imread(b)
    return [] if _equal(u, v) else [f"pixels differ ({u.shape} vs {v.shape})"]


def _pt_diff(a: Path, b: Path) -> list[str]:
    import torch

    x = torch.load(a, map_location="cpu", weights_only=False)
    y = torch.load(b, map_location="cpu", weights_only=False)

    def flat(o, pre=""):
        if isinstance(o, dict):
            for k, v in o.items():
                yield from flat(v, f"{pre}.{k}")
        elif hasattr(o, "numpy"):
            yield pre, o.detach().cpu().numpy()
        else:
            yield pre, np.asarray(o, dtype=object)

    fx, fy = dict(flat(x)), dict(flat(y))
    if set(fx) != set(fy):
        return ["state keys differ"]
    return [k for k in fx if not _equal(fx[k], fy[k])]


def compare_file(a: Path, b: Path) -> tuple[str, list[str], list[str]]:
    """('identical' | 'numerically identical' | 'different', differences, ignored)."""
    if a.read_bytes() == b.read_bytes():
        return "identical", [], []
    ignored: list[str] = []
    suffix = "".join(a.suffixes[-1:]).lower()
    if suffix in (".h5", ".hdf5"):
        diffs = _h5_diff(a, b, ignored)
    elif suffix == ".json":
        diffs = _tree_diff(json.loads(a.read_text()), json.loads(b.read_text()), "", ignored)
    elif suffix in (".yaml", ".yml"):
        import yaml

        diffs = _tree_diff(yaml.safe_load(a.read_text()), yaml.safe_load(b.read_text()), "",
                           ignored)
    elif suffix == ".keras":
        diffs = _keras_diff(a, b, ignored)
    elif suffix == ".png":
        diffs = _png_diff(a, b)
    elif suffix == ".pt":
        diffs = _pt_diff(a, b)
    elif suffix in (".csv", ".tsv", ".ecsv", ".html", ".txt", ".md"):
        diffs = _text_diff(a, b, ignored)
    else:
        diffs = ["bytes differ (no numeric comparison for this kind of file)"]
    return ("different" if diffs else "numerically identical"), diffs, ignored


def _files(d: Path) -> set:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def compare_runs(base: Path, new: Path) -> dict:
    """Compare every file of run folder ``base`` with the same path under ``new``."""
    fa, fb = _files(base), _files(new)
    out = {"base": str(base), "new": str(new), "identical": 0, "numerically_identical": {},
           "different": {}, "missing": [], "extra": [], "skipped": 0}
    for rel in sorted(fa | fb):
        if rel.split("/", 1)[0] in SKIP_DIRS or "/.snakemake" in rel:
            out["skipped"] += 1
            continue
        if rel not in fb:
            out["missing"].append(rel)
            continue
        if rel not in fa:
            out["extra"].append(rel)
            continue
        kind, diffs, ignored = compare_file(base / rel, new / rel)
        if kind == "identical":
            out["identical"] += 1
        elif kind == "numerically identical":
            out["numerically_identical"][rel] = sorted(set(ignored))
        else:
            out["different"][rel] = diffs[:10]
    out["same"] = not (out["different"] or out["missing"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path, help="run folder before (e.g. results/tiny-before)")
    ap.add_argument("new", type=Path, help="run folder after (e.g. results/tiny)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args(argv)
    for d in (a.base, a.new):
        if not d.is_dir():
            print(f"compare_products: {d} is not a run folder. Fix: pass results/RUN "
                  "folders of two finished runs", file=sys.stderr)
            return 2
    res = compare_runs(a.base, a.new)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0 if res["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
