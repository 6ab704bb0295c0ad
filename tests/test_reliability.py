"""Trustworthy reruns and failures (issue 15): bad inputs stop with one line naming the file
or key, nothing partial is left; crashes resume with the plain command; a run directory
whose model, calibration and config disagree is refused.

Defects reproduced (each failed on the code before the fix): 2 (config.resolved.yaml
written by a run that then fails; infer trusting it), 3 (kill -9 needs --unlock; orphaned
temp files), 4 (a CSV with a byte-order mark loses its id column), 5 (late or unhelpful
errors: split sums, layer keys, corrupt artefacts, missing config file, unwritable output),
6 (cz for z, v_los in m/s, degenerate phase spaces without a warning), 7 (run: ..).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from cmpipe.cli import main
from cmpipe.io.artefacts import (check_keras_file, check_run_consistency, file_digest,
                                 load_keras_model, read_json_artefact, write_model_config)
from cmpipe.io.survey import read_survey_clusters, read_survey_galaxies
from cmpipe.io.tables import CatalogueError
from cmpipe.runstate import clear_stale_locks, remove_orphaned_temps
from cmpipe.sections import SPEED_ONLY_KEYS
from cmpipe.settings import ConfigError, Settings, check_output_dir, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src/cmpipe/data/config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _one_line(msg: str) -> str:
    msg = msg.strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _leftovers(d: Path):
    return sorted(p.name for p in Path(d).rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ config

CONFIG_CASES = {
    "fractions_sum": ({"splits": {"fractions": {"train": 0.5, "test": 0.5, "eval": 0.5}}},
                      "splits.fractions"),
    "empty_train": ({"splits": {"fractions": {"train": 0.0, "test": 0.87, "eval": 0.13}}},
                    "splits.fractions.train"),
    "misspelt_layer_key": ({"train": {"layers": [{"conv": 12, "kernl": 5}]}}, "train.layers"),
    "layer_not_dict": ({"train": {"layers": [12]}}, "train.layers"),
    "conv_after_dense": ({"train": {"layers": [{"dense": 8}, {"conv": 4}]}}, "train.layers"),
    "bad_activation": ({"train": {"layers": [{"dense": 8, "activation": "relux"}]}},
                       "train.layers"),
    "empty_layers": ({"train": {"layers": []}}, "train.layers"),
    "ablation_layers": ({"ablation": {"layers_1d": [{"pool": 0}]}}, "ablation.layers_1d"),
    "run_dotdot": ({"run": ".."}, "run"),
    "run_hidden": ({"run": ".hidden"}, "run"),
    "run_slash": ({"run": "a/b"}, "run"),
    "pure_run_self": ({"compare": {"pure_run": "demo"}}, "compare.pure_run"),
    "pure_run_dotdot": ({"compare": {"pure_run": ".."}}, "compare.pure_run"),
    "catalogue_volume": ({"survey": {"catalogue_volume": {"z_min": 0.2, "z_max": 0.1},
                                     "source": "catalogue", "clusters": "config.yaml",
                                     "galaxies": "config.yaml"}}, "survey.catalogue_volume"),
    "validation_fraction": ({"splits": {"validation_fraction": 0.9}}, "validation_fraction"),
    "misspelt_key": ({"mock": {"mag_r_limt": 17.0}}, "mock.mag_r_limt"),
    # issue 30, defect 8: inverted ranges passed check-config
    "tail_inverted": ({"simulation": {"tail": {"log10_m_min": 15.4, "log10_m_max": 15.0}}},
                      "simulation.tail.log10_m_min"),
    "synthetic_inverted": ({"simulation": {"synthetic": {"log10_m_min": 13.9,
                                                         "log10_m_max": 13.5}}},
                           "simulation.synthetic.log10_m_min"),
    "survey_mass_range_inverted": ({"calibration": {"survey_mass_range": [15.1, 13.7]}},
                                   "calibration.survey_mass_range"),
    "population_prior_inverted": ({"survey": {"population_prior": {"log10_m_min": 15.0,
                                                                   "log10_m_max": 14.0}}},
                                  "survey.population_prior.log10_m_min"),
    "mass_function_grid_inverted": ({"survey": {"mass_function": {"log10_m_lo": 15.0,
                                                                  "log10_m_hi": 14.0}}},
                                    "survey.mass_function.log10_m_lo"),
    "saliency_bins_unsorted": ({"saliency": {"mass_bins": [14.0, 13.7, 14.5]}},
                               "saliency.mass_bins"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_stops_check_config_with_the_key(case, tmp_path, capsys, monkeypatch):
    overlay, key = CONFIG_CASES[case]
    monkeypatch.chdir(ROOT)                  # relative file paths as in a run
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay))
    rc = main(["check-config", "config.yaml", str(tmp_path / "bad.yaml"), "--schema",
               str(SCHEMA)])
    err = capsys.readouterr().err
    assert rc == 1
    assert key in err, err
    if case not in ("misspelt_key", "layer_not_dict", "run_slash", "validation_fraction"):
        _one_line(err)
        assert "Fix" in err
    assert _leftovers(tmp_path) == ["bad.yaml"]


@pytest.mark.parametrize("content,what", [(None, "does not exist"),
                                          ("- a\n- b\n", "mapping"),
                                          ("run: [tiny\n", "not valid YAML")])
def test_missing_or_malformed_config_file_is_one_line(content, what, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["check-config", str(path), "--schema", str(SCHEMA)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert str(path) in err and what in err


def test_check_config_names_the_file_that_sets_the_value(tmp_path, capsys):
    """Issue 30: an error in an overlay named config.yaml; tail_weight: 0.5 gave "not valid
    under any of the given schemas" without the allowed range."""
    base = tmp_path / "config.yaml"
    shutil.copy(ROOT / "config.yaml", base)
    over = tmp_path / "over.yaml"
    over.write_text("calibration:\n  tail_weight: 0.5\n")
    assert main(["check-config", str(base), str(over), "--schema", str(SCHEMA)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"cmpipe: {over}: calibration.tail_weight: 0.5"), err
    assert "'auto'" in err and "[0, 0.3]" in err and "Fix" in err
    # the same value in the base file: the base is named
    base.write_text(base.read_text().replace("tail_weight: auto", "tail_weight: 0.5"))
    assert "tail_weight: 0.5" in base.read_text()
    over.write_text("seed: 3\n")
    assert main(["check-config", str(base), str(over), "--schema", str(SCHEMA)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"cmpipe: {base}: calibration.tail_weight"), err


@pytest.mark.parametrize("text,line,key", [
    ("run: tiny\nseed: 1\nrun: other\n", 3, "run"),
    ("kde:\n  h0: 0.2\n  n_grid: 24\n  h0: 0.3\n", 4, "h0")])
def test_duplicated_key_is_rejected_with_file_and_line(text, line, key, tmp_path, capsys):
    """Issue 30, defect 8: a key given twice was accepted (the last won)."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    assert main(["check-config", str(ROOT / "config.yaml"), str(path), "--schema",
                 str(SCHEMA)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"{path}, line {line}: duplicated key '{key}'" in err and "Fix" in err


def test_load_run_config_rejects_a_duplicated_key(tmp_path):
    from cmpipe.stages.infer import load_run_config

    (tmp_path / "config.resolved.yaml").write_text("run: a\nwindow: {}\nrun: b\n")
    with pytest.raises(ConfigError, match=r"line 3: duplicated key 'run'"):
        load_run_config(tmp_path)


@pytest.mark.parametrize("text", ["2e-1", "0.02e1", "0.02E+1", ".2e0", "2.0e-1"])
def test_exponent_numbers_are_floats(text, tmp_path):
    """Issue 30: PyYAML (YAML 1.1) reads 1.0e7 as a string (it needs a dot and a signed
    exponent); the strict loader reads every such number as a float."""
    from cmpipe.settings import strict_yaml_load

    assert strict_yaml_load(f"x: {text}") == {"x": pytest.approx(0.2)}
    assert strict_yaml_load("x: 1.0e+7\ny: 1.0e7\nz: '1.0e7'") == {"x": 1e7, "y": 1e7,
                                                                    "z": "1.0e7"}
    over = tmp_path / "o.yaml"
    over.write_text(f"calibration:\n  bandwidth: {text}\n")
    cfg = load_config(ROOT / "config.yaml", SCHEMA, overlays=[over])
    assert cfg["calibration"]["bandwidth"] == pytest.approx(0.2)


SNAKEMAKE_CONFIG_CASES = {
    "duplicated_key": ("run: tiny\nrun: other\n", "line 2: duplicated key 'run'"),
    "inverted_tail": (yaml.safe_dump({"simulation": {"tail": {"log10_m_min": 15.4}}}),
                      "simulation.tail.log10_m_min (15.4) must be below"),
    "tail_weight": ("calibration:\n  tail_weight: 0.5\n", "[0, 0.3]"),
    "exponent_string": ("calibration:\n  bandwidth: 2e-1\nrun: '..'\n",
                        "run: '..' is not a safe run name"),
    "catalogue_missing": (yaml.safe_dump({"survey": {"source": "catalogue", "clusters":
                                                     "no/clusters.csv", "galaxies":
                                                     "config.yaml"}}),
                          "survey.clusters: 'no/clusters.csv' does not exist"),
    "mdpl2_missing": (yaml.safe_dump({"simulation": {"source": "mdpl2", "mdpl2": {
        "halo_file": "config.yaml", "galaxy_file": "no/galaxies.h5"}}}),
        "simulation.mdpl2.galaxy_file: 'no/galaxies.h5' does not exist"),
}


@pytest.mark.parametrize("case", sorted(SNAKEMAKE_CONFIG_CASES))
def test_snakemake_config_error_is_one_line_naming_the_file(case, tmp_path):
    """Issue 30: Snakemake-side config errors named no file and printed two stack frames;
    a duplicated key, an inverted range and missing input files went on (a missing
    catalogue even exited 0 with the previous source's products: Snakemake runs nothing
    for a job whose outputs exist when its input file is missing). Each now stops at parse
    time, before any job, with one line naming the file, the key and the fix."""
    text, expect = SNAKEMAKE_CONFIG_CASES[case]
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "bad.yaml").write_text(text)
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "1", "--configfile", "bad.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("cmpipe:")]
    assert len(lines) == 1, out
    assert "bad.yaml" in lines[0] and expect in lines[0] and "Fix" in lines[0], out
    assert "Traceback" not in out and 'File "' not in out, out
    assert not (tmp_path / "results").exists()


def test_semantic_checks_run_before_the_first_job(tmp_path):
    """Defects 5 and 7 through Snakemake: the run stops at parse time naming the key, and
    nothing is made (no results/, no config.resolved.yaml)."""
    (tmp_path / "bad.yaml").write_text("run: '..'\n")
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "1", "--configfile", "bad.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "run: '..' is not a safe run name" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists() and not (ROOT.parent / "config.resolved.yaml"
                                                         ).exists()


def test_unwritable_output_directory_is_detected_up_front(tmp_path):
    (tmp_path / "results").write_text("a file where the output directory should be")
    with pytest.raises(ConfigError, match="not a directory"):
        check_output_dir(tmp_path / "results" / "tiny")
    if os.geteuid() != 0:                 # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="not writable"):
                check_output_dir(ro / "results" / "tiny")
        finally:
            ro.chmod(0o700)


# ------------------------------------------------------------------ survey catalogues

def _csv(path, header, rows, bom=False):
    text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _clusters(n=4, z=0.05):
    return [(100 + i, 150.0 + i, 20.0 + i, z) for i in range(n)]


def test_bom_csv_keeps_its_id_column(tmp_path):
    """Defect 4: a cluster CSV with a UTF-8 byte-order mark keeps its ids."""
    p = _csv(tmp_path / "cl.csv", ["cluster_id", "ra_deg", "dec_deg", "z"], _clusters(),
             bom=True)
    cl = read_survey_clusters(p)
    np.testing.assert_array_equal(cl["cluster_id"], [100, 101, 102, 103])
    g = _csv(tmp_path / "gal.csv", ["galaxy_id", "ra_deg", "dec_deg", "z", "cluster_id"],
             [(7, 150.0, 20.0, 0.05, 100), (8, 150.01, 20.0, 0.051, 100)], bom=True)
    gal = read_survey_galaxies(g)
    np.testing.assert_array_equal(gal["galaxy_id"], [7, 8])
    np.testing.assert_array_equal(gal["cluster_id"], [100, 100])


CLUSTER_CASES = {
    "cz_for_z": (["cluster_id", "ra_deg", "dec_deg", "z"], _clusters(z=15000.0), "z",
                 "c z in km/s"),
    "z_negative": (["cluster_id", "ra_deg", "dec_deg", "z"], _clusters(z=-0.01), "z", "<= 0"),
    "dec_out_of_range": (["cluster_id", "ra_deg", "dec_deg", "z"],
                         [(1, 10.0, 95.0, 0.05)], "dec", "Dec"),
    "duplicate_ids": (["cluster_id", "ra_deg", "dec_deg", "z"],
                      [(1, 10.0, 5.0, 0.05), (1, 11.0, 5.0, 0.05)], "cluster_id", "duplicated"),
    "no_z": (["cluster_id", "ra_deg", "dec_deg"], [(1, 10.0, 5.0)], "z", "required column"),
    "linear_mass": (["cluster_id", "ra_deg", "dec_deg", "z", "log10_m_cat"],
                    [(1, 10.0, 5.0, 0.05, 3e14)], "log10_m_cat", "not log10"),
    "ids_not_integers": (["cluster_id", "ra_deg", "dec_deg", "z"],
                         [(1.5, 10.0, 5.0, 0.05)], "cluster_id", "not integers"),
    "duplicate_names": (["cluster_id", "ra_deg", "dec_deg", "z"],
                        [("A1", 10.0, 5.0, 0.05), ("A1", 11.0, 5.0, 0.05)], "cluster_id",
                        "duplicated"),
}


@pytest.mark.parametrize("case", sorted(CLUSTER_CASES))
def test_bad_cluster_table_names_file_and_column(case, tmp_path):
    header, rows, field, what = CLUSTER_CASES[case]
    p = _csv(tmp_path / "clusters.csv", header, rows)
    with pytest.raises(CatalogueError) as exc:
        read_survey_clusters(p)
    msg = _one_line(str(exc.value))
    assert str(p) in msg and field in msg.lower() and what in msg and "Fix" in msg


GALAXY_CASES = {
    "cz_for_z": ([(1, 150.0, 20.0, 15300.0)], "c z in km/s"),
    "z_nan": ([(1, 150.0, 20.0, "nan")], "non-finite"),
    "z_negative": ([(1, 150.0, 20.0, -0.2)], "< 0"),
}


@pytest.mark.parametrize("case", sorted(GALAXY_CASES))
def test_bad_galaxy_table_names_file_and_column(case, tmp_path):
    rows, what = GALAXY_CASES[case]
    p = _csv(tmp_path / "galaxies.csv", ["galaxy_id", "ra_deg", "dec_deg", "z"], rows)
    with pytest.raises(CatalogueError) as exc:
        read_survey_galaxies(p)
    msg = _one_line(str(exc.value))
    assert str(p) in msg and "'z'" in msg and what in msg


@pytest.mark.parametrize("name,content,what", [
    ("clusters.txt", "cluster_id,ra_deg\n", "unknown file extension"),
    ("clusters.fits", "not a fits file", "cannot be read"),
    ("missing.csv", None, "does not exist")])
def test_unreadable_cluster_file(name, content, what, tmp_path):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(CatalogueError) as exc:
        read_survey_clusters(p)
    msg = _one_line(str(exc.value))
    assert str(p) in msg and what in msg


# ------------------------------------------------------------ phase-space input tables

@pytest.fixture(scope="module")
def tiny_settings():
    return Settings.from_config(load_config(ROOT / "config.yaml", SCHEMA,
                                            overlays=[ROOT / "configs/tiny.yaml"]))


def _phase_space(tmp_path, rows, header=("cluster_id", "x_proj", "y_proj", "v_los")):
    return _csv(tmp_path / "ps.csv", list(header), rows)


def _run_survey_cubes(s, tmp_path, ps):
    from cmpipe.stages import run_rule, survey_cubes

    cl = _csv(tmp_path / "clusters.csv", ["cluster_id", "ra_deg", "dec_deg", "z"],
              [(1, 150.0, 20.0, 0.05), (2, 160.0, 25.0, 0.06)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit) as exc:
        run_rule(survey_cubes, str(tmp_path / "rule.log"), config=s, clusters=cl,
                 phase_space_in=ps, cubes_out=out / "cubes.h5",
                 phase_space_out=out / "phase_space.h5")
    assert exc.value.code == 1
    assert not list(out.iterdir()), "partial output left"
    errors = [ln for ln in (tmp_path / "rule.log").read_text().splitlines() if " ERROR " in ln]
    assert len(errors) == 1
    return errors[0]


def _galaxies(rng, n, cid=1, v_scale=500.0):
    return [(cid, *rng.uniform(-1.0, 1.0, 2).round(4), round(rng.normal(0, v_scale), 2))
            for _ in range(n)]


PS_CASES = {
    "v_los_in_m_per_s": (lambda rng: _galaxies(rng, 30, v_scale=5e5), "v_los", "m/s"),
    "offsets_in_kpc": (lambda rng: [(1, 800.0, 300.0, 10.0)] * 3 + _galaxies(rng, 10),
                       "x_proj", "kpc"),
    "unknown_cluster": (lambda rng: _galaxies(rng, 10, cid=99), "cluster_id", "not in"),
    "v_los_nan": (lambda rng: _galaxies(rng, 5) + [(1, 0.1, 0.1, "nan")], "v_los",
                  "non-finite"),
}


@pytest.mark.parametrize("case", sorted(PS_CASES))
def test_bad_phase_space_table_stops_cleanly(case, tmp_path, tiny_settings):
    make, field, what = PS_CASES[case]
    ps = _phase_space(tmp_path, make(np.random.default_rng(3)))
    line = _run_survey_cubes(tiny_settings, tmp_path, ps)
    assert str(ps) in line and field in line and what in line


def test_phase_space_without_v_los_column(tmp_path, tiny_settings):
    ps = _phase_space(tmp_path, [(1, 0.1, 0.2)], header=("cluster_id", "x_proj", "y_proj"))
    line = _run_survey_cubes(tiny_settings, tmp_path, ps)
    assert str(ps) in line and "v_los" in line and "required column" in line


@pytest.mark.parametrize("kind", ["identical", "cluster_redshift"])
def test_degenerate_phase_space_warns(kind, tmp_path, tiny_settings, caplog):
    """Defect 6: identical galaxies, or all at the cluster redshift (v = 0), warn."""
    from cmpipe.stages import survey_cubes

    rng = np.random.default_rng(11)
    good = _galaxies(rng, 12, cid=2)
    bad = ([(1, 0.3, -0.2, 120.0)] * 12 if kind == "identical" else
           [(1, *rng.uniform(-1, 1, 2).round(4), 0.0) for _ in range(12)])
    ps = _phase_space(tmp_path, bad + good)
    cl = _csv(tmp_path / "clusters.csv", ["cluster_id", "ra_deg", "dec_deg", "z"],
              [(1, 150.0, 20.0, 0.05), (2, 160.0, 25.0, 0.06)])
    caplog.set_level("WARNING")
    try:
        survey_cubes(config=tiny_settings, clusters=cl, phase_space_in=ps,
                     cubes_out=tmp_path / "cubes.h5", phase_space_out=tmp_path / "ps.h5")
    except CatalogueError:
        pass                              # a singular KDE may also stop it: the warning came first
    warned = [r.getMessage() for r in caplog.records if "meaningless" in r.getMessage()]
    assert len(warned) == 1 and "ids 1" in warned[0] and str(ps) in warned[0]


# ------------------------------------------------------------- run-directory artefacts

def test_corrupt_joint_pdf_names_the_file(tmp_path):
    from cmpipe.calibration import JointPDF

    p = tmp_path / "joint_pdf.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)           # truncated
    with pytest.raises(CatalogueError) as exc:
        JointPDF.load(p)
    msg = _one_line(str(exc.value))
    assert str(p) in msg and "forcerun calibrate" in msg
    with h5py.File(p, "w") as f:                               # valid HDF5, no joint PDF
        f.create_group("other")
    with pytest.raises(CatalogueError, match="group missing"):
        JointPDF.load(p)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"not a zip at all"])
def test_corrupt_keras_model_names_the_file(content, tmp_path):
    p = tmp_path / "cnn3d.keras"
    p.write_bytes(content)
    with pytest.raises(CatalogueError) as exc:
        load_keras_model(p, "rerun the train rule")
    msg = _one_line(str(exc.value))
    assert str(p) in msg and "rerun the train rule" in msg


@pytest.mark.parametrize("content", ['{"target": {"mean": 14.', "", "\xff\xfe"])
def test_corrupt_json_artefact_names_the_file(content, tmp_path):
    p = tmp_path / "normalisation.json"
    p.write_text(content, encoding="latin-1")
    with pytest.raises(CatalogueError) as exc:
        read_json_artefact(p, "rerun the train rule")
    msg = _one_line(str(exc.value))
    assert str(p) in msg and "not valid JSON" in msg and "Fix: rerun the train rule" in msg


def _fake_run(tmp_path):
    """A run directory with the records the workflow writes (small stand-in files: the
    checks read bytes and config sections, not networks)."""
    import zipfile

    from cmpipe.stages import resolved_config

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "calibration").mkdir()
    with zipfile.ZipFile(run / "model/cnn3d.keras", "w") as z:
        z.writestr("config.json", "{}")
    (run / "model/normalisation.json").write_text('{"target": {"mean": 14.0, "std": 0.3}}')
    (run / "calibration/joint_pdf.h5").write_bytes(b"calibration")
    cfg = load_config(ROOT / "config.yaml", SCHEMA, overlays=[ROOT / "configs/tiny.yaml"])
    write_model_config(cfg, run / "model", run / "model/config.json")
    resolved_config(config=cfg, out=run / "config.resolved.yaml", run_dir=run)
    raw = yaml.safe_load((run / "config.resolved.yaml").read_text())
    return run, raw


def _check(run):
    raw = yaml.safe_load((run / "config.resolved.yaml").read_text())
    products = raw.pop("products", None)
    check_run_consistency(run, raw, products, ignore=SPEED_ONLY_KEYS)


def test_consistent_run_directory_passes(tmp_path):
    run, raw = _fake_run(tmp_path)
    _check(run)
    assert set(raw["products"]) == {"model/config.json", "model/cnn3d.keras",
                                    "model/normalisation.json", "calibration/joint_pdf.h5",
                                    "config.resolved.yaml#calibration",
                                    "config.resolved.yaml#survey"}


@pytest.mark.parametrize("change,culprit", [
    ("window", "model/config.json"), ("kde", "model/config.json"),
    ("model", "model/cnn3d.keras"), ("calibration", "calibration/joint_pdf.h5"),
    ("no_record", "model/config.json"), ("no_products", "config.resolved.yaml"),
    ("distance_aware", "config.resolved.yaml"), ("population_prior", "config.resolved.yaml")])
def test_inconsistent_run_directory_is_refused(change, culprit, tmp_path):
    """Defect 2: the config, the model and the calibration must be one run's."""
    run, raw = _fake_run(tmp_path)
    if change in ("window", "kde"):
        key = {"window": ("v_max_kms", 3000.0), "kde": ("h0", 0.25)}[change]
        raw[change][key[0]] = key[1]
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    elif change == "model":
        (run / "model/cnn3d.keras").write_bytes(b"PK other model")
    elif change == "calibration":
        (run / "calibration/joint_pdf.h5").write_bytes(b"another calibration")
    elif change == "distance_aware":        # issue 30: moved medians by up to +0.30 dex
        raw["calibration"]["distance_aware"] = False
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    elif change == "population_prior":      # issue 30: every population median >= 14.5
        raw["survey"]["population_prior"]["log10_m_min"] = 14.5
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    elif change == "no_record":
        (run / "model/config.json").unlink()
    else:
        raw.pop("products")
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogueError) as exc:
        _check(run)
    msg = _one_line(str(exc.value))
    assert str(run / culprit) in msg and "Fix" in msg
    if change in ("window", "kde"):
        assert change in msg
    if change in ("distance_aware", "population_prior"):
        assert {"distance_aware": "calibration", "population_prior": "survey"}[change] in msg


def _fake_flow_run(tmp_path):
    """:func:`_fake_run` with the neural flow's files, recorded by rule resolved_config."""
    from cmpipe.stages import resolved_config

    run, _ = _fake_run(tmp_path)
    (run / "flow/model").mkdir(parents=True)
    (run / "flow/model/flow.pt").write_bytes(b"PK flow weights")
    (run / "flow/model/flow.json").write_text('{"settings": {}}')
    (run / "flow/joint_pdf.h5").write_bytes(b"flow calibration")
    cfg = load_config(ROOT / "config.yaml", SCHEMA, overlays=[ROOT / "configs/tiny.yaml"])
    resolved_config(config=cfg, out=run / "config.resolved.yaml", run_dir=run)
    return run


FLOW_FILES = ["flow/model/flow.pt", "flow/model/flow.json", "flow/joint_pdf.h5"]


@pytest.mark.parametrize("change,culprit", [
    (None, None), ("flow model", "flow/model/flow.pt"),
    ("flow calibration", "flow/joint_pdf.h5"), ("no flow record", "config.resolved.yaml")])
def test_flow_products_are_recorded_and_checked(change, culprit, tmp_path):
    """cmpipe infer --estimator flow: the flow's model and calibration are one run's with
    the config (their SHA-256 under ``products``), as the CNN3D's are."""
    run = _fake_flow_run(tmp_path)
    raw = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert set(FLOW_FILES) <= set(raw["products"])
    if change == "flow model":
        (run / "flow/model/flow.pt").write_bytes(b"PK another flow")
    elif change == "flow calibration":
        (run / "flow/joint_pdf.h5").write_bytes(b"another calibration")
    elif change == "no flow record":              # a run recorded before the flow was
        for rel in FLOW_FILES:
            raw["products"].pop(rel)
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    products = raw.pop("products")
    if change in (None, "no flow record"):            # the CNN3D's files alone pass
        check_run_consistency(run, raw, products)
    if change is None:
        check_run_consistency(run, raw, products, required=FLOW_FILES)
        return
    with pytest.raises(CatalogueError) as exc:
        check_run_consistency(run, raw, products, required=FLOW_FILES)
    msg = _one_line(str(exc.value))
    assert str(run / culprit) in msg and "Fix" in msg


def test_infer_flow_refuses_a_missing_flow(tmp_path, capsys):
    run = _fake_flow_run(tmp_path)
    (run / "flow/joint_pdf.h5").unlink()
    cl = _csv(tmp_path / "cl.csv", ["cluster_id", "ra_deg", "dec_deg", "z"], _clusters())
    out = tmp_path / "post.ecsv"
    rc = main(["infer", "--run-dir", str(run), "--clusters", str(cl), "--phase-space",
               str(cl), "-o", str(out), "-q", "--estimator", "flow"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 1 and "flow/joint_pdf.h5" in err and "missing" in err
    assert "recalibrate_flow" in err and not out.exists()


def test_infer_refuses_an_inconsistent_run_directory(tmp_path, capsys):
    run, raw = _fake_run(tmp_path)
    raw["window"]["v_max_kms"] = 3000.0
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    cl = _csv(tmp_path / "cl.csv", ["cluster_id", "ra_deg", "dec_deg", "z"], _clusters())
    out = tmp_path / "post.ecsv"
    rc = main(["infer", "--run-dir", str(run), "--clusters", str(cl), "--phase-space",
               str(cl), "-o", str(out), "-q"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 1 and "model/config.json" in err and "window" in err
    assert not out.exists()


# ------------------------------------------------------------------ crash recovery

def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphaned_temps_of_dead_processes_are_removed(tmp_path):
    """Defect 3: .NAME.tmp-PID of a killed job goes; a live process's temp stays."""
    d = tmp_path / "results/tiny/cubes"
    d.mkdir(parents=True)
    dead = d / f".train.h5.tmp-{_dead_pid()}"
    dead.write_bytes(b"x" * 1000)
    live = d / f".test.h5.tmp-{os.getpid()}"
    live.write_bytes(b"y")
    product = d / "eval.h5"
    product.write_bytes(b"z")
    removed = remove_orphaned_temps(tmp_path / "results")
    assert removed == [dead] and not dead.exists() and live.exists() and product.exists()


def test_orphaned_keras_temp_is_removed(tmp_path):
    """Issue 30: Keras's temp .cnn3d.tmp-PID.keras (cmpipe.io.training.save_model) escaped
    the cleanup."""
    d = tmp_path / "results/tiny/model"
    d.mkdir(parents=True)
    dead = d / f".cnn3d.tmp-{_dead_pid()}.keras"
    dead.write_bytes(b"PK" * 100)
    live = d / f".cnn3d.tmp-{os.getpid()}.keras"
    live.write_bytes(b"PK")
    other = d / f".cnn3d.tmp-{_dead_pid()}.keras.bak"      # not a temp of ours
    other.write_bytes(b"x")
    assert remove_orphaned_temps(tmp_path / "results") == [dead]
    assert live.exists() and other.exists()


def _fake_snakemake(workdir):
    """A real process whose command line is `python .../snakemake` running in workdir (a
    stand-in for a live run: only its command line and directory matter to the check)."""
    exe = workdir / "bin" / "snakemake"
    exe.parent.mkdir()
    exe.write_text("import time\ntime.sleep(60)\n")
    return subprocess.Popen([sys.executable, str(exe)], cwd=workdir)


def test_stale_locks_are_cleared_only_when_no_run_is_alive(tmp_path):
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock"):
        (locks / name).write_text("results/tiny/model/cnn3d.keras\n")
    (locks / "cmpipe-owner.json").write_text(json.dumps(
        {"host": __import__("socket").gethostname(), "pid": _dead_pid(), "create_time": 0}))
    proc = _fake_snakemake(tmp_path)
    try:
        time.sleep(0.3)
        assert clear_stale_locks(tmp_path) == []              # a live run keeps its lock
        assert len(list(locks.glob("*.lock"))) == 2
    finally:
        proc.kill()
        proc.wait()
    removed = clear_stale_locks(tmp_path)                     # its owner is dead: cleared
    assert {p.name for p in removed} >= {"0.input.lock", "0.output.lock"}
    assert not list(locks.glob("*.lock"))


def test_failed_run_does_not_write_the_resolved_config(tmp_path):
    """Defect 2: config.resolved.yaml is written with the products it describes, not at the
    start of a run that then fails (here: an unreadable halo catalogue)."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "hlist.list").write_text("# not a halo catalogue\n")
    (tmp_path / "gal.csv").write_text("x\n")
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(
        {"simulation": {"source": "mdpl2", "mdpl2": {"halo_file": "hlist.list",
                                                     "galaxy_file": "gal.csv"}}}))
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "2", "--keep-going", "--configfile",
                           "configs/tiny.yaml", "overlay.yaml"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0
    res = tmp_path / "results/tiny"
    assert not (res / "config.resolved.yaml").exists()
    assert not (res / "model/config.json").exists()
    assert not list(res.rglob(".*.tmp-*"))


# -------------------------------------------------------------- kill -9 and plain rerun

def _copy_run(src_wd, dst):
    shutil.copytree(src_wd, dst, symlinks=True,
                    ignore=shutil.ignore_patterns(".done-*"))
    shutil.copytree(ROOT / "profiles", dst / "profiles", dirs_exist_ok=True)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("stage,remove", [
    ("summaries", ["summaries/test.h5", "calibration/joint_pdf.h5"]),
    ("calibrate", ["calibration/joint_pdf.h5"])])
def test_kill9_then_the_plain_command_resumes(stage, remove, tmp_path, tmp_path_factory):
    """Defect 3: kill -9 of a run while `stage` runs, then the same command again: no
    --unlock, no orphaned temp file, and the same products as the uninterrupted run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_survey_workflow import tiny_survey_run

    ref_wd, ref = tiny_survey_run(tmp_path_factory)
    wd = _copy_run(ref_wd, tmp_path / "wd")
    res = wd / "results/tiny"
    for rel in remove:
        (res / rel).unlink()
    orphan = res / "calibration" / f".joint_pdf.h5.tmp-{_dead_pid()}"
    orphan.write_bytes(b"\0" * 4096)
    # the removed products themselves are targets: Snakemake does not rebuild a deleted
    # intermediate file for a target that is still up to date
    target = [f"results/tiny/{rel}" for rel in remove] + ["results/tiny/config.resolved.yaml"]
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wd),
           "--cores", "2", *target, "--configfile", "configs/tiny.yaml"]
    proc = subprocess.Popen(cmd, cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = res / "logs" / ("summaries/test.log" if stage == "summaries" else "calibrate.log")
    t0 = time.time()
    if log.exists():
        log.unlink()
    while not log.exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the stage started"
    os.killpg(proc.pid, signal.SIGKILL)                      # the run and its jobs
    proc.wait()
    assert list((wd / ".snakemake/locks").glob("*.lock")), "kill left no lock to clear"
    again = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stale Snakemake locks" in again.stderr
    assert not orphan.exists() and not list(res.rglob(".*.tmp-*"))
    for rel in remove:
        a, b = res / rel, ref / rel
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            names = []
            fa.visit(names.append)
            for n in names:
                if isinstance(fa[n], h5py.Dataset):
                    np.testing.assert_array_equal(fa[n][...], fb[n][...], err_msg=f"{rel}:{n}")
    assert yaml.safe_load((res / "config.resolved.yaml").read_text())["products"][
        "calibration/joint_pdf.h5"] == file_digest(res / "calibration/joint_pdf.h5")


@pytest.mark.slow
def test_infer_checks_a_real_run_directory(tmp_path, tmp_path_factory, capsys):
    """Defect 2 on a real run: a copy of the tiny run whose resolved config says another
    window is refused by cmpipe infer (the old code used the new window with the old model,
    exit 0)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_survey_workflow import tiny_survey_run

    _, ref = tiny_survey_run(tmp_path_factory)
    run = tmp_path / "run"
    for rel in ("model", "calibration"):
        shutil.copytree(ref / rel, run / rel)
    raw = yaml.safe_load((ref / "config.resolved.yaml").read_text())
    assert raw["products"]["model/cnn3d.keras"] == file_digest(run / "model/cnn3d.keras")
    check_keras_file(run / "model/cnn3d.keras", "x")
    raw["window"]["v_max_kms"] = 3000.0
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "post.ecsv"
    rc = main(["infer", "--run-dir", str(run), "--clusters", str(ref / "survey/clusters.ecsv"),
               "--galaxies", str(ref / "survey/galaxies.ecsv"), "-o", str(out), "-q"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 1 and "model/config.json" in err and "window" in err and not out.exists()


# ------------------------------------------------------------- speed-only config keys

SPEED_OVERLAY = {"kde": {"shard_size": 7, "batch_size": 3}, "train": {"in_memory_max_mb": 1},
                 "flow": {"max_memory_mb": 1}, "mock": {"halo_batch_size": 17},
                 "robustness": {"misspecification_shards": 3}}


def test_speed_only_keys_are_one_list_named_in_the_schema():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert {s: set(k) for s, k in SPEED_ONLY_KEYS.items()} == {
        s: set(k) for s, k in SPEED_OVERLAY.items()}
    for section, keys in SPEED_ONLY_KEYS.items():
        for key in keys:
            text = " ".join(schema["properties"][section]["properties"][key]["description"]
                            .split())
            assert "Speed only (cmpipe.sections.SPEED_ONLY_KEYS)" in text, (section, key)


def test_speed_only_keys_leave_the_run_consistent(tmp_path):
    """A rerun after a speed-only change rewrites config.resolved.yaml with the new values
    while model/config.json keeps the old ones: infer must still accept the run."""
    run, raw = _fake_run(tmp_path)
    for section, values in SPEED_OVERLAY.items():
        raw[section].update(values)
    from cmpipe.stages import resolved_config

    raw.pop("products")
    resolved_config(config=raw, out=run / "config.resolved.yaml", run_dir=run)
    _check(run)


@pytest.mark.slow
def test_speed_only_keys_rerun_nothing(tmp_path, tmp_path_factory):
    """A finished tiny run, then only speed-only keys changed: Snakemake's dry run lists no
    job (the old code reran 33-57 jobs: the keys were in the rules' params and kde_gather's
    shard list). A product-changing key (kde.h0) still reruns the cubes: the check can
    fail."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_survey_workflow import SURVEY_TARGETS, tiny_survey_run

    ref_wd, _ = tiny_survey_run(tmp_path_factory)
    wd = _copy_run(ref_wd, tmp_path / "wd")
    (wd / "speed.yaml").write_text(yaml.safe_dump(SPEED_OVERLAY))
    (wd / "h0.yaml").write_text(yaml.safe_dump({"kde": {"h0": 0.2}}))
    targets = [f"results/tiny/{t}" for t in SURVEY_TARGETS]

    def dry(*overlays):
        return subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                               str(wd), "--cores", "2", "-n", *targets, "--configfile",
                               "configs/tiny.yaml", *overlays], capture_output=True,
                              text=True, cwd=wd, timeout=600)

    for overlays in ((), ("speed.yaml",)):
        proc = dry(*overlays)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "Nothing to be done" in out, (overlays, out[-3000:])
    proc = dry("h0.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" not in out
    assert "kde_gather" in out and "train" in out
    # the DAG the config says: with the catalogue files present, survey.source: catalogue
    # reruns survey_catalogue (with them missing the old code ran nothing for it: Snakemake
    # keeps a job whose outputs exist when its input file is missing)
    (wd / "data").mkdir()
    for name in ("clusters", "galaxies"):
        shutil.copy(wd / f"results/tiny/survey/{name}.ecsv", wd / f"data/{name}.ecsv")
    (wd / "cat.yaml").write_text(yaml.safe_dump({"survey": {
        "source": "catalogue", "clusters": "data/clusters.ecsv",
        "galaxies": "data/galaxies.ecsv"}}))
    proc = dry("cat.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "rule survey_catalogue:" in out, out[-3000:]


def test_second_run_is_told_a_run_is_active_not_to_unlock(tmp_path):
    """Issue 30: a second run in a busy directory was told to use --unlock, which would
    break the live run; it now names the live run's PID and says to wait or stop it."""
    from cmpipe.runstate import active_run

    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/demo/model/cnn3d.keras\n")
    proc = _fake_snakemake(tmp_path)
    try:
        time.sleep(0.3)
        assert active_run(tmp_path) == proc.pid
        run = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                              str(tmp_path), "--cores", "1"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert f"a run (Snakemake, PID {proc.pid}) is active in" in out, out
    assert "--unlock" not in out and "Traceback" not in out, out
    assert list(locks.glob("*.lock")) and not (tmp_path / "results").exists()
    assert active_run(tmp_path) is None                       # that run is dead now


@pytest.mark.slow
@pytest.mark.parametrize("section,key,value", [("calibration", "distance_aware", False),
                                               ("survey", "population_prior", {
                                                   "log10_m_min": 14.5,
                                                   "log10_m_max": None})])
def test_infer_refuses_calibration_and_survey_edits_of_a_real_run(
        section, key, value, tmp_path, tmp_path_factory, capsys):
    """Issue 30, defect 3 on a real run: the tiny run's records pass as written (the
    section digests survive the YAML round trip); an edit of the calibration or survey
    section of config.resolved.yaml (distance_aware: false moved medians by up to +0.30 dex,
    population_prior.log10_m_min: 14.5 pushed every population median to >= 14.5, exit 0)
    is refused."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_survey_workflow import tiny_survey_run

    _, ref = tiny_survey_run(tmp_path_factory)
    run = tmp_path / "run"
    for rel in ("model", "calibration"):
        shutil.copytree(ref / rel, run / rel)
    shutil.copy(ref / "config.resolved.yaml", run / "config.resolved.yaml")
    _check(run)
    raw = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert raw[section][key] != value
    raw[section][key] = value
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "post.ecsv"
    rc = main(["infer", "--run-dir", str(run), "--clusters", str(ref / "survey/clusters.ecsv"),
               "--galaxies", str(ref / "survey/galaxies.ecsv"), "-o", str(out), "-q"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 1 and "config.resolved.yaml" in err and section in err and not out.exists()
