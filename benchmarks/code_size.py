"""Size and layering of the package: the largest modules and functions, private names
imported across modules, import cycles, imports that run up a layer or against the DAG's
order, and rules whose script or stage function goes by another name. Prints JSON;
``tests/test_layout.py`` holds the limits.

    python benchmarks/code_size.py [--top 5]

Layers, lowest first (``docs/architecture.md`` draws them beside the DAG):

0. ``cmpipe.io``: files (read, validate, write); imports only ``io``.
1. the foundations at the top of ``src/cmpipe/`` (:data:`FOUNDATIONS`: settings, config
   sections, cosmology, devices, run state, numba kernels) and the version.
2. the science packages, one per stage of the DAG, in :data:`SCIENCE_ORDER`: a package
   imports only the ones before it (``massfunction`` precedes ``survey``: the survey's
   population prior and volume use the mass-function theory).
3. ``cmpipe.plots``: figures (the only layer that imports matplotlib).
4. ``cmpipe.stages``: one function per rule.
5. ``cmpipe.cli``.

A module imports only from its own layer or below; no two modules import each other,
directly or through others (function-level imports count).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cmpipe"
RULES = ROOT / "workflow" / "rules"
SCRIPTS = ROOT / "workflow" / "scripts"


def modules() -> dict[str, Path]:
    """Dotted module name -> path, for every module of the package."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


#: The foundation modules at the top of the package (layer 1), beside ``cli`` and the version.
FOUNDATIONS = ("settings", "sections", "cosmology", "devices", "runstate", "kernels")
#: The science packages (layer 2) in the order of the DAG: each imports only earlier ones.
SCIENCE_ORDER = ("mock", "kde", "cnn", "flow", "calibration", "massfunction", "survey",
                 "evaluation")


def layer(name: str) -> int:
    """0 io, 1 foundations, 2 science, 3 plotting, 4 stages, 5 cli."""
    parts = name.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    if sub == "io":
        return 0
    if sub in FOUNDATIONS or sub == "":
        return 1
    if sub == "plots":
        return 3
    if sub == "stages":
        return 4
    if sub == "cli":
        return 5
    return 2


def science_rank(name: str) -> int | None:
    """Position of a science module's package in :data:`SCIENCE_ORDER` (None elsewhere)."""
    parts = name.split(".")
    return SCIENCE_ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in SCIENCE_ORDER \
        else None


def _imports(name: str, path: Path):
    """(line, imported module, imported names) of every ``from ... import`` of cmpipe."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "cmpipe" or mod.startswith("cmpipe."):
                yield node.lineno, mod, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cmpipe"):
                    yield node.lineno, a.name, []


def sizes():
    """(lines, module) and (lines, module:function) for every module and function."""
    mods, funcs = [], []
    for name, path in modules().items():
        src = path.read_text()
        mods.append((len(src.splitlines()), name))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(mods, reverse=True), sorted(funcs, reverse=True)


def private_imports():
    """Private names (``_x``) imported from another module, and private modules imported."""
    bad = []
    for name, path in modules().items():
        for line, mod, names in _imports(name, path):
            priv = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if any(p.startswith("_") and not p.startswith("__") for p in mod.split(".")):
                priv.append(mod)
            if priv and mod != name:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(priv)}"
                           f" from {mod}")
    return bad


def upward_imports():
    """Imports of a higher layer, and matplotlib outside the plotting modules."""
    bad = []
    known = modules()
    for name, path in known.items():
        for line, mod, names in _imports(name, path):
            targets = {f"{mod}.{n}" if f"{mod}.{n}" in known else mod for n in names} or {mod}
            for t in sorted(targets):
                against_dag = (science_rank(t) is not None and science_rank(name) is not None
                               and science_rank(t) > science_rank(name))
                if (layer(t) > layer(name) or (layer(name) == 0 and layer(t) != 0)
                        or against_dag):
                    bad.append(f"{path.relative_to(ROOT)}:{line} ({name}) imports {t}")
        if layer(name) != 3 and re.search(r"^\s*(import|from) matplotlib", path.read_text(),
                                          re.M):
            bad.append(f"{path.relative_to(ROOT)} ({name}) imports matplotlib")
    return bad


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level or inside functions); a
    ``from pkg import name`` whose ``name`` is a module counts as an import of that module."""
    known = modules()
    graph = {}
    for name, path in known.items():
        deps = set()
        for _, mod, names in _imports(name, path):
            subs = {f"{mod}.{n}" for n in names if f"{mod}.{n}" in known}
            deps |= subs if subs and len(subs) == len(names) else subs | {mod}
        graph[name] = {d for d in deps if d in known and d != name}
    return graph


def import_cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (strongly
    connected components of :func:`import_graph` with more than one module; Tarjan)."""
    graph = import_graph()
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def top_level_modules() -> list[str]:
    """The modules at the top of ``src/cmpipe/`` beside the subpackages (not ``__init__``)."""
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def unresolved_imports():
    """``from cmpipe... import name`` statements (module level or inside functions, where
    most stage imports sit) whose module or name does not exist: a moved name leaves no
    caller behind. Imports every module it names (TensorFlow and torch too: seconds)."""
    import importlib

    bad = []
    for name, path in modules().items():
        for line, mod, names in _imports(name, path):
            try:
                m = importlib.import_module(mod)
            except ImportError as err:
                bad.append(f"{path.relative_to(ROOT)}:{line} {mod}: {err}")
                continue
            for n in names:
                if n != "*" and not hasattr(m, n):
                    try:
                        importlib.import_module(f"{mod}.{n}")
                    except ImportError:
                        bad.append(f"{path.relative_to(ROOT)}:{line} {mod} has no {n}")
    return bad


def rule_scripts() -> dict[str, str]:
    """Rule name -> script file name (without .py) for every rule with a ``script:``."""
    out = {}
    for smk in sorted(RULES.glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            m = re.match(r"(?:rule|checkpoint) (\w+):", line)
            if m:
                rule = m.group(1)
            m = re.search(r'"\.\./scripts/(\w+)\.py"', line)
            if m and rule:
                out[rule] = m.group(1)
    return out


def name_mismatches():
    """Rules whose script or the stage function the script runs has another name."""
    bad = []
    for rule, script in rule_scripts().items():
        text = (SCRIPTS / f"{script}.py").read_text()
        m = re.search(r"run_rule\(\s*(\w+)", text)
        func = m.group(1) if m else None
        if not (rule == script == func):
            bad.append(f"rule {rule}: script {script}.py, stage function {func}")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args(argv)
    mods, funcs = sizes()
    print(json.dumps({
        "largest_modules": [{"module": m, "lines": n} for n, m in mods[:a.top]],
        "largest_functions": [{"function": f, "lines": n} for n, f in funcs[:a.top]],
        "top_level_modules": top_level_modules(),
        "import_cycles": import_cycles(),
        "private_imports": private_imports(),
        "upward_imports": upward_imports(),
        "rule_name_mismatches": name_mismatches(),
        "unresolved_imports": unresolved_imports(),
    }, indent=2))


if __name__ == "__main__":
    main()
