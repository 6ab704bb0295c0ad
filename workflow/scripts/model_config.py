"""Rule model_config: the config sections that shaped the model, beside it."""
from cmpipe.stages import run_rule, write_model_record

run_rule(write_model_record, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, out=snakemake.output.record)
