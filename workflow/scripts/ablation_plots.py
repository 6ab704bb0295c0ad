"""Rule ablation_plots: bias and scatter per mass bin, sigma_N against sigma_0."""
from cmpipe.stages import ablation_plots, run_rule

run_rule(ablation_plots, snakemake.log[0], summary=snakemake.input.summary,
         png=snakemake.output.figure)
