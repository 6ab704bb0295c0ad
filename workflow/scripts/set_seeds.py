"""Rule set_seeds: the set estimator's eval numbers over its training seeds."""
from cmpipe.stages import run_rule, set_seeds

run_rule(set_seeds, snakemake.log[0], metrics=list(snakemake.input.metrics),
         out=snakemake.output.summary)
