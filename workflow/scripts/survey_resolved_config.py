"""Rule resolved_config: the run's config with defaults filled, for `cmpipe infer`."""
from pathlib import Path

from cmpipe.stages import run_rule, write_resolved_config

run_rule(write_resolved_config, snakemake.log[0], config=snakemake.config,
         out=snakemake.output.config, run_dir=Path(snakemake.output.config).parent)
