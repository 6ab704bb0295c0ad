"""Rule ablation_plots: bias and scatter per mass bin, sigma_N against sigma_0, and the
scatter of every network at every seed (mean +- s.d.)."""
from cmpipe.stages import ablation_plots, run_rule

run_rule(ablation_plots, snakemake.log[0], summary=snakemake.input.summary,
         png=snakemake.output.figure)
