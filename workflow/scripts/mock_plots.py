"""Rule mock_plots: figures of the mock catalogue."""
from cmpipe.stages import mock_plots, run_rule

run_rule(mock_plots, snakemake.log[0], summary=snakemake.input.summary,
         clusters=snakemake.input.clusters, mass_function_png=snakemake.output.mass_function,
         splits_png=snakemake.output.splits, phase_space_png=snakemake.output.phase_space)
