"""Rule project: each cluster's phase-space window."""
from cmpipe.stages import project, run_rule

run_rule(project, snakemake.log[0], config=snakemake.config, halos=snakemake.input.halos,
         galaxies=snakemake.input.galaxies, tail_halos=snakemake.input.tail_halos,
         tail_galaxies=snakemake.input.tail_galaxies, hosts=snakemake.input.hosts,
         sightlines=snakemake.input.sightlines, out=snakemake.output.projected,
         threads=snakemake.threads)
