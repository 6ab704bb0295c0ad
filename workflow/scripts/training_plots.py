"""Rule training_plots: the loss curve."""
from cmpipe.stages import run_rule, training_plots

run_rule(training_plots, snakemake.log[0], history=snakemake.input.history,
         loss_png=snakemake.output.loss_curve)
