"""Rule sightlines: lines of sight per host halo."""
from cmpipe.stages import run_rule, sightlines

run_rule(sightlines, snakemake.log[0], config=snakemake.config,
         hosts=snakemake.input.hosts, out=snakemake.output.sightlines)
