"""Rule mock_summary: summary.json of the mock catalogue."""
from cmpipe.stages import mock_summary, run_rule

run_rule(mock_summary, snakemake.log[0], config=snakemake.config,
         halos=snakemake.input.halos, hosts=snakemake.input.hosts,
         clusters=snakemake.input.clusters, out=snakemake.output.summary)
