"""Rule evaluation_plots: joint PDF, predictions, calibration, interlopers, baselines."""
from cmpipe.stages import evaluation_plots, run_rule

run_rule(evaluation_plots, snakemake.log[0], joint_pdf=snakemake.input.joint_pdf,
         test_predictions=snakemake.input.test, metrics=snakemake.input.metrics,
         posteriors=snakemake.input.posteriors, joint_png=snakemake.output.joint_pdf,
         predictions_png=snakemake.output.predictions,
         calibration_png=snakemake.output.calibration,
         interlopers_png=snakemake.output.interlopers, baselines_png=snakemake.output.baselines)
