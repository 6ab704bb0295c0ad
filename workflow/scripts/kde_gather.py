"""Rule kde_gather: one cube file per split from its shards."""
from cmpipe.stages import kde_gather, run_rule

run_rule(kde_gather, snakemake.log[0], shards=list(snakemake.input.shards),
         out=snakemake.output.cubes)
