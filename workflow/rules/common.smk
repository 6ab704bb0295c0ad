# Shared helpers: config validation, output paths, final targets.
from pathlib import Path

from cmpipe.settings import prepend_pythonpath, validate_config

# Jobs run in envs/*.yaml (--sdm conda) find the cmpipe package of this checkout.
prepend_pythonpath(Path(workflow.basedir) / "src")


validate_config(config, Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml")

RESULTS = f"results/{config['run']}"


def res(path):
    """Path of a product of this run (results/{run}/...)."""
    return f"{RESULTS}/{path}"


def catalogue_inputs(wildcards):
    """The user's catalogue files when the source is mdpl2 (none for the synthetic box)."""
    sim = config["simulation"]
    if sim["source"] == "mdpl2":
        return {"halo_file": sim["mdpl2"]["halo_file"],
                "galaxy_file": sim["mdpl2"]["galaxy_file"]}
    return {}


def survey_catalogue_inputs(wildcards):
    """The synthetic box (survey.source: synthetic) or the user's survey files."""
    sv = config["survey"]
    if sv["source"] == "catalogue":
        return {"clusters_file": sv["clusters"], "galaxies_file": sv["galaxies"]}
    return {"halos": res("catalogue/halos.h5"), "galaxies": res("catalogue/galaxies.h5")}


SPLITS = ["train", "validation", "test", "eval"]


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"\d{4}",


def kde_shard_files(wildcards):
    """Shard files of one split; their number follows from the split checkpoint."""
    from cmpipe.stages import n_shards, split_counts

    clusters = checkpoints.split.get().output.clusters
    n = split_counts(clusters)[wildcards.split]
    k = n_shards(n, config["kde"]["shard_size"])
    return [res(f"cubes/{wildcards.split}/shard-{i:04d}.h5") for i in range(k)]


def final_targets():
    """Everything `snakemake` builds by default."""
    return [
        res("mock/summary.json"),
        res("figures/mock_mass_function.png"),
        res("figures/mock_split_masses.png"),
        res("figures/mock_phase_space.png"),
        *[res(f"cubes/{s}.h5") for s in SPLITS],
        res("model/cnn3d.keras"),
        res("summaries/test.h5"),
        res("summaries/eval.h5"),
        res("figures/loss_curve.png"),
        res("evaluation/metrics.json"),
        res("figures/predictions.png"),
        res("config.resolved.yaml"),
        res("survey/posteriors.ecsv"),
        res("survey/posteriors.csv"),
        res("survey/mass_function.csv"),
        res("survey/pulls.json"),
        res("figures/mass_function.png"),
        res("figures/survey_pulls.png"),
    ]
