"""Every rule's conda environment (envs/*.yaml) holds what the rule's code imports.

A user running ``snakemake --sdm conda`` gets, for each job, only the packages of the rule's
``conda:`` file. Building eight conda environments is too slow for CI, so this test does the
next best thing with the packages already installed here: for every rule it imports the
rule's script's stage function and everything that function reaches (the stage modules, the
``cmpipe`` modules and third-party modules imported at module level or inside the functions
it calls, found by walking the call graph in the source) in a fresh interpreter where only
the rule's environment is importable: the standard library, ``cmpipe``, the environment's
pip packages and their installed dependencies (closure of ``Requires-Dist``). Anything else
looks absent to the import system (``importlib.util.find_spec`` returns None), as it would in
the conda environment, so optional imports that libraries guard with ``try`` behave as they
would there. A failure names the rule, the env file, the missing package and the chain of
``cmpipe`` modules that reached it.
"""
import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RULES = ROOT / "workflow" / "rules"

RULE_RE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)
CONDA_RE = re.compile(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", re.M)
SCRIPT_RE = re.compile(r"^\s+script:\s*\n\s+\"([^\"]+)\"", re.M)


def _canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def workflow_rules():
    """{rule: (env file, script file)} of every rule with a script, from workflow/rules."""
    rules = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in RULE_RE.finditer(text)]
        for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), None)]):
            block = text[start:end]
            script = SCRIPT_RE.search(block)
            if script is None:
                continue  # target rules (ablation, analyses, ...) run nothing
            conda = CONDA_RE.search(block)
            assert conda, f"{smk.name}: rule {name} runs a script but has no conda: env"
            rules[name] = ((RULES / conda.group(1)).resolve(),
                           (RULES / script.group(1)).resolve())
    return rules


def env_packages(env_file):
    """The pip package names of a conda env file (python and pip themselves left out)."""
    spec = yaml.safe_load(Path(env_file).read_text())
    names = []
    for dep in spec["dependencies"]:
        for item in (dep.get("pip", []) if isinstance(dep, dict) else [dep]):
            name = re.split(r"[=<>!~\s\[]", item, maxsplit=1)[0]
            if _canon(name) not in ("python", "pip"):
                names.append(name)
    return names


def _closure(packages):
    """The installed distributions ``packages`` need (Requires-Dist, markers evaluated)."""
    seen, todo = set(), [_canon(p) for p in packages]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_canon(req.name))
    return seen


def importable_names(packages):
    """Top-level import names an environment of ``packages`` provides (beyond the stdlib)."""
    dists = _closure(packages)
    names = {top for top, owners in md.packages_distributions().items()
             if any(_canon(d) in dists for d in owners)}
    return sorted(names | {"cmpipe"})


# -- what a rule imports: its script's stage function and the call graph below it ----------

def _module_file(module):
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


_TREES = {}


def _tree(module):
    if module not in _TREES:
        _TREES[module] = ast.parse(_module_file(module).read_text())
    return _TREES[module]


def _absolute(module, node):
    """The absolute module name of an ImportFrom node inside ``module``."""
    if not node.level:
        return node.module
    package = module if _module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _bindings(module, nodes):
    """{local name: (module, attribute or None)} bound by the import statements in nodes."""
    out = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = (a.name if a.asname else
                                                         a.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if base.startswith("cmpipe") and _module_file(sub):
                    out[a.asname or a.name] = (sub, None)
                else:
                    out[a.asname or a.name] = (base, a.name)
    return out


def reached_modules(module, name, seen=None):
    """Modules imported by function/class ``name`` of cmpipe ``module`` and what it calls."""
    seen = set() if seen is None else seen
    if (module, name) in seen or _module_file(module) is None:
        return []
    seen.add((module, name))
    tree = _tree(module)
    top = {n.name: n for n in tree.body
           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    node = top.get(name)
    module_bound = _bindings(module, [n for n in tree.body
                                      if isinstance(n, (ast.Import, ast.ImportFrom))])
    if node is None:  # a name re-exported by the module (e.g. a package __init__)
        target = module_bound.get(name)
        if target and target[1] and target[0].startswith("cmpipe"):
            return [target[0], *reached_modules(*target, seen)]
        return []
    found = [module]
    local = _bindings(module, [n for n in ast.walk(node)
                               if isinstance(n, (ast.Import, ast.ImportFrom))])
    found += [mod for mod, _ in local.values()]
    bound = {**module_bound, **local}
    # names the function binds itself (arguments, assignments) shadow module-level ones
    own = {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
           for a in (*n.posonlyargs, *n.args, *n.kwonlyargs, n.vararg, n.kwarg) if a}
    own |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Store)}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in own:
            continue
        if isinstance(n, ast.Name):
            if n.id in top and n.id != name:
                found += reached_modules(module, n.id, seen)
            elif n.id in bound and bound[n.id][1] and bound[n.id][0].startswith("cmpipe"):
                found += reached_modules(*bound[n.id], seen)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            target = bound.get(n.value.id)
            if target and target[1] is None and target[0].startswith("cmpipe"):
                found += reached_modules(target[0], n.attr, seen)
    return list(dict.fromkeys(found))


def rule_modules(script):
    """Modules a rule's script reaches: cmpipe.stages and its stage functions' call graphs."""
    tree = ast.parse(Path(script).read_text())
    modules = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "cmpipe.stages":
            modules.append("cmpipe.stages")
            for a in node.names:
                modules += reached_modules("cmpipe.stages", a.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules += [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module]
    assert modules, f"{script}: imports nothing from cmpipe.stages"
    return list(dict.fromkeys(modules))


# -- the child interpreter: only the environment's packages importable ----------------------

CHILD = r"""
import importlib, importlib.machinery, json, sys, traceback
job = json.loads(sys.stdin.read())
allowed = set(job["allowed"]) | set(sys.stdlib_module_names) | set(sys.builtin_module_names)

class EnvPathFinder(importlib.machinery.PathFinder):
    # the path finder, blind to top-level packages the environment does not hold
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is None and top not in allowed and not top.startswith(
                ("__editable__", "_sysconfigdata_")):  # the latter: stdlib, platform-named
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [EnvPathFinder if f is importlib.machinery.PathFinder else f
                 for f in sys.meta_path]
sys.path[:0] = job["path"]
# what site.py imported before the finder was in place (must be nothing of the packages)
preloaded = sorted({m.partition(".")[0] for m in sys.modules} - allowed)
failures = {}
for rule, modules in job["rules"].items():
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a package broken by a missing one
            chain = [f.filename.split("/src/")[-1] for f in traceback.extract_tb(err.__traceback__)
                     if "/src/cmpipe/" in f.filename]
            missing = getattr(err, "name", None) if isinstance(err, ImportError) else None
            failures[rule] = {"module": module, "missing": missing or repr(err),
                              "error": str(err), "chain": chain}
            break
print("RESULT " + json.dumps({"failures": failures, "preloaded": preloaded}))
"""


def import_in_env(env_file, rules):
    """{rule: failure} for rules {name: [modules]} imported with only env_file's packages."""
    job = {"allowed": importable_names(env_packages(env_file)), "rules": rules,
           "path": [str(SRC)]}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(job), capture_output=True,
        text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "tensorflow", "MPLBACKEND": "Agg",
             "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    # only import hooks of the venv's .pth files may be loaded before the finder
    assert all(m == "__main__" or m.startswith(("_distutils_hack", "__editable__"))
               for m in result["preloaded"]), result["preloaded"]
    return result["failures"]


def test_rules_are_found_with_their_envs_and_scripts():
    rules = workflow_rules()
    assert len(rules) >= 37, sorted(rules)
    for name, (env, script) in rules.items():
        assert env.is_file() and env.parent == ROOT / "envs", (name, env)
        assert script.is_file(), (name, script)


def test_the_environment_really_hides_other_packages():
    """The check itself can fail: in the KDE env astropy and torch are absent, numpy is not."""
    kde = ROOT / "envs" / "kde.yaml"
    names = importable_names(env_packages(kde))
    assert {"numpy", "scipy", "numba", "llvmlite", "h5py", "yaml", "cmpipe"} <= set(names)
    assert not {"astropy", "torch", "tensorflow", "keras", "matplotlib"} & set(names)
    failures = import_in_env(kde, {"numpy": ["numpy"], "astropy": ["astropy.table"],
                                   "torch": ["torch"], "baselines": ["cmpipe.evaluation.baselines"]})
    assert "numpy" not in failures
    assert failures["astropy"]["missing"] == "astropy"
    assert failures["torch"]["missing"] == "torch"
    assert failures["baselines"]["missing"] == "astropy"
    assert failures["baselines"]["chain"][0] == "cmpipe/evaluation/baselines.py"


def test_reached_modules_follow_lazy_imports():
    """The call-graph walk sees imports inside functions, through helpers and classes."""
    # training_plots -> (loss curve) -> matplotlib through cmpipe.plots.pipeline
    mods = rule_modules(ROOT / "workflow/scripts/training_plots.py")
    assert "cmpipe.plots.pipeline" in mods
    # evaluate -> cmpipe.evaluation.eval_set.evaluate -> baselines (module level of evaluation)
    mods = rule_modules(ROOT / "workflow/scripts/evaluate.py")
    assert {"cmpipe.evaluation.eval_set", "cmpipe.calibration"} <= set(mods)


def test_every_rule_imports_with_only_its_conda_env():
    by_env = {}
    for name, (env, script) in workflow_rules().items():
        by_env.setdefault(env, {})[name] = rule_modules(script)
    failures = {}
    for env, rules in sorted(by_env.items()):
        for rule, f in import_in_env(env, rules).items():
            failures[rule] = (f"{env.name}: importing {f['module']} needs '{f['missing']}' "
                              f"({f['error']}); via {' -> '.join(f['chain']) or 'the script'}")
    assert not failures, (f"{len(failures)} rules cannot run in their conda env:\n"
                          + "\n".join(f"  {r}: {msg}" for r, msg in sorted(failures.items())))
