"""Rule companion_run: build a companion run (pure catalogue, fiducial model) inside this
run's DAG and record the products this run reads from it."""
from cmpipe.stages import companion_run, run_rule

run_rule(companion_run, snakemake.log[0], command=snakemake.params.command,
         threads=snakemake.threads, run=snakemake.wildcards.companion,
         products=snakemake.params.products, out=snakemake.output.record)
