"""Rule split: train/validation/test/eval by halo."""
from cmpipe.stages import run_rule, split

run_rule(split, snakemake.log[0], config=snakemake.config,
         fluxlimited=snakemake.input.fluxlimited, out=snakemake.output.clusters)
