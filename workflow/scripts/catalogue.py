"""Rule catalogue: halos.h5 and galaxies.h5 from the configured source."""
from cmpipe.stages import catalogue, run_rule

run_rule(catalogue, snakemake.log[0], config=snakemake.config,
         halos_out=snakemake.output.halos, galaxies_out=snakemake.output.galaxies,
         tail_halos_out=snakemake.output.tail_halos,
         tail_galaxies_out=snakemake.output.tail_galaxies)
