"""Rule flow_plots: the flow's NLL curves, predictions and calibration figures."""
from cmpipe.stages import flow_plots, run_rule

run_rule(flow_plots, snakemake.log[0], history=snakemake.input.history,
         metrics=snakemake.input.metrics, posteriors=snakemake.input.posteriors,
         loss_png=snakemake.output.loss, predictions_png=snakemake.output.predictions,
         calibration_png=snakemake.output.calibration)
