"""Rule report_tables: HTML renderings of the key CSV tables for `snakemake --report`."""
from cmpipe.stages import report_tables, run_rule

run_rule(report_tables, snakemake.log[0], tables=dict(snakemake.input.items()),
         outs=dict(snakemake.output.items()))
