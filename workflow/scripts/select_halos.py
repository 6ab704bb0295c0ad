"""Rule select_halos: host halos above the mass threshold."""
from cmpipe.stages import run_rule, select_halos

run_rule(select_halos, snakemake.log[0], config=snakemake.config,
         halos=snakemake.input.halos, tail_halos=snakemake.input.tail_halos,
         out=snakemake.output.hosts)
