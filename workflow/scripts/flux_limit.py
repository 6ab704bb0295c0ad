"""Rule flux_limit: observers, apparent magnitudes and the r-band limit."""
from cmpipe.stages import apply_flux_limit, run_rule

run_rule(apply_flux_limit, snakemake.log[0], config=snakemake.config,
         projected=snakemake.input.projected, out=snakemake.output.fluxlimited)
