"""Config validation, settings, and the agreement of conda envs with pyproject pins."""
import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from cmpipe.settings import (ConfigError, Settings, load_config, merge_config, stage_seed,
                             validate_config)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "cmpipe" / "data" / "config.schema.yaml"


def _merged(path):
    """What snakemake sees for `--configfile path`: config.yaml updated recursively."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    return merge_config(base, yaml.safe_load(Path(path).read_text()) or {})


def test_default_config_validates_and_builds_settings():
    cfg = load_config(ROOT / "config.yaml", SCHEMA)
    s = Settings.from_config(cfg)
    assert s.run == "demo" and s.source == "synthetic"
    assert s.window.half_width_mpc_h == 1.6 and s.window.v_max_kms == 2200.0
    assert s.mock.mag_r_limit == 18.0 and s.survey.synthetic.log10_m_min == 13.7
    # training reaches beyond the survey's mass range at both ends (issue 16): 0.3 dex
    lo, hi = s.calibration.survey_mass_range
    assert lo - s.log10_m200c_min == pytest.approx(0.3)
    assert s.tail.enabled and s.tail.log10_m_max - hi == pytest.approx(0.3)
    assert s.splits.train + s.splits.test + s.splits.eval == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_validates(name):
    cfg = validate_config(_merged(ROOT / "configs" / name), SCHEMA)
    Settings.from_config(cfg)


def test_defaults_fill_an_empty_config():
    cfg = validate_config({}, SCHEMA)
    s = Settings.from_config(cfg)
    assert s.seed == 20201 and s.sightlines.max_per_halo == 25


@pytest.mark.parametrize("path, key", [
    (("mock",), "mag_r_limt"),
    ((), "sead"),
    (("simulation", "synthetic"), "box_size"),
    (("splits", "fractions"), "validation"),
])
def test_unknown_key_is_named(path, key):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    node = cfg
    for p in path:
        node = node[p]
    node[key] = 1
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA)
    dotted = ".".join(path + (key,))
    assert f"{dotted}: unknown config key" in str(err.value)


def test_wrong_type_and_range_are_reported():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["mock"]["min_galaxies"] = 1
    with pytest.raises(ConfigError, match=r"mock\.min_galaxies"):
        validate_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["simulation"]["source"] = "millennium"
    with pytest.raises(ConfigError, match=r"simulation\.source"):
        validate_config(bad, SCHEMA)


def test_snakemake_stops_on_unknown_key(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("window:\n  half_widht_mpc_h: 2.0\n")
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-n", "--cores", "1", "--configfile", str(cfg),
                           "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode != 0
    assert "window.half_widht_mpc_h: unknown config key" in proc.stdout + proc.stderr


def test_stage_seeds_are_stable_and_distinct():
    assert stage_seed(1, "a") == stage_seed(1, "a")
    assert stage_seed(1, "a") != stage_seed(1, "b")
    assert stage_seed(1, "a") != stage_seed(2, "a")


def _pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in deps["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+)", spec.strip())
        assert m, f"pyproject dependency '{spec}' is not pinned with =="
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_conda_envs_pin_the_same_versions_as_pyproject():
    pins = _pins()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "no envs/*.yaml"
    seen = set()
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        items = []
        for dep in spec["dependencies"]:
            if isinstance(dep, dict):
                items += dep.get("pip", [])
            else:
                items.append(dep)
        for item in items:
            if item in ("pip",):
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==?\s*([^\s]+)", item)
            assert m, f"{env.name}: '{item}' is not pinned"
            name, ver = m.group(1).lower().replace("_", "-"), m.group(2)
            if name in ("python", "pip", "-e"):
                continue
            assert name in pins, f"{env.name}: {name} is not a pyproject dependency"
            assert pins[name] == ver, f"{env.name}: {name} {ver} != pyproject {pins[name]}"
            seen.add(name)
    # snakemake and its executor plugin drive the workflow; they are not needed inside envs
    missing = {p for p in set(pins) - seen if not p.startswith("snakemake")}
    assert not missing, f"pyproject pins not in any env: {sorted(missing)}"
