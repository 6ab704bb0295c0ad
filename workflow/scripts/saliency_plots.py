"""Rule saliency_plots: (x, y), (x, v), (y, v) projections of the mean saliency maps."""
from cmpipe.stages import run_rule, saliency_plots

run_rule(saliency_plots, snakemake.log[0], saliency=snakemake.input.saliency,
         mean_png=snakemake.output.mean, abs_png=snakemake.output.abs)
