"""Rule set_plots: the set estimator's NLL curves, predictions and calibration figures."""
from cmpipe.stages import run_rule, set_plots

run_rule(set_plots, snakemake.log[0], history=snakemake.input.history,
         metrics=snakemake.input.metrics, posteriors=snakemake.input.posteriors,
         loss_png=snakemake.output.loss, predictions_png=snakemake.output.predictions,
         calibration_png=snakemake.output.calibration)
