"""Rule robustness_plots: bias shift, scatter and coverage against the perturbation level."""
from cmpipe.stages import robustness_plots, run_rule

run_rule(robustness_plots, snakemake.log[0], summary=snakemake.input.summary,
         png=snakemake.output.figure)
