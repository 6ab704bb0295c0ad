"""Rule sightlines: lines of sight per host halo."""
from cmpipe.stages import make_sightlines, run_rule

run_rule(make_sightlines, snakemake.log[0], config=snakemake.config,
         hosts=snakemake.input.hosts, out=snakemake.output.sightlines)
