"""Rule summaries: network predictions d~ for one split."""
from cmpipe.stages import run_rule, summaries

run_rule(summaries, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         cubes=snakemake.input.cubes, out=snakemake.output.predictions,
         split_name=snakemake.wildcards.split)
