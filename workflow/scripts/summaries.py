"""Rule summaries: network predictions d~ for one split."""
from cmpipe.stages import predict_split, run_rule

run_rule(predict_split, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         cubes=snakemake.input.cubes, out=snakemake.output.predictions,
         split_name=snakemake.wildcards.split)
