"""Rule model_config: the config sections that shaped the model, beside it."""
from cmpipe.stages import model_config, run_rule

run_rule(model_config, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, out=snakemake.output.record)
