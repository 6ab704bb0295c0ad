"""Rule misspecification: the matrix (JSON summary and CSV table) from its shards."""
from cmpipe.stages import misspecification, run_rule

run_rule(misspecification, snakemake.log[0], config=snakemake.config,
         shards=list(snakemake.input.shards), summary_out=snakemake.output.summary,
         table_out=snakemake.output.table)
