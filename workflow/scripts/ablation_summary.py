"""Rule ablation_summary: CNN1D/2D/3D and the baselines in one table."""
from cmpipe.stages import ablation_summary, run_rule

run_rule(ablation_summary, snakemake.log[0], config=snakemake.config,
         metrics_1d=snakemake.input.metrics_1d, metrics_2d=snakemake.input.metrics_2d,
         metrics_3d=snakemake.input.metrics_3d, out=snakemake.output.summary)
