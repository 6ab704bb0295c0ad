"""Rule set_inputs: the window galaxies of one split as galaxy sets."""
from cmpipe.stages import run_rule, set_inputs

run_rule(set_inputs, snakemake.log[0], config=snakemake.config,
         clusters=snakemake.input.clusters, split_name=snakemake.wildcards.split,
         out=snakemake.output.sets)
