"""Rule metrics_table: evaluation/metrics.json as a CSV table (the report shows it)."""
from cmpipe.stages import metrics_table, run_rule

run_rule(metrics_table, snakemake.log[0], metrics=snakemake.input.metrics,
         out=snakemake.output.table)
