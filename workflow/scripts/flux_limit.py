"""Rule flux_limit: observers, apparent magnitudes and the r-band limit."""
from cmpipe.stages import flux_limit, run_rule

run_rule(flux_limit, snakemake.log[0], config=snakemake.config,
         projected=snakemake.input.projected, out=snakemake.output.fluxlimited)
