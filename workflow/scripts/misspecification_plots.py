"""Rule misspecification_plots: mean residual and coverage per variant universe."""
from cmpipe.stages import misspecification_plots, run_rule

run_rule(misspecification_plots, snakemake.log[0], summary=snakemake.input.summary,
         png=snakemake.output.figure)
