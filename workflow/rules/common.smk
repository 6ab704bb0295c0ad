# Shared helpers: config validation, output paths, final targets.
import os
from pathlib import Path

from cmpipe.settings import validate_config

# Jobs run in envs/*.yaml (--sdm conda) find the cmpipe package through PYTHONPATH.
_SRC = str(Path(workflow.basedir) / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p
)


validate_config(config, Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml")

RESULTS = f"results/{config['run']}"


def res(path):
    """Path of a product of this run (results/{run}/...)."""
    return f"{RESULTS}/{path}"


def final_targets():
    """Everything `snakemake` builds by default."""
    return [
        res("mock/summary.json"),
        res("figures/mock_mass_function.png"),
        res("figures/mock_split_masses.png"),
        res("figures/mock_phase_space.png"),
    ]
