"""Rule resolved_config: the run's config with defaults filled, for `cmpipe infer`."""
from pathlib import Path

from cmpipe.stages import resolved_config, run_rule

run_rule(resolved_config, snakemake.log[0], config=snakemake.config,
         out=snakemake.output.config, run_dir=Path(snakemake.output.config).parent)
