"""Rule ablation_summary: CNN1D/2D/3D at every seed and the baselines in one table."""
from cmpipe.stages import ablation_summary, run_rule

run_rule(ablation_summary, snakemake.log[0], config=snakemake.config,
         metrics_1d=snakemake.input.metrics_1d, metrics_2d=snakemake.input.metrics_2d,
         metrics_3d=snakemake.input.metrics_3d, seeds_1d=list(snakemake.input.seeds_1d),
         seeds_2d=list(snakemake.input.seeds_2d), seeds_3d=list(snakemake.input.seeds_3d),
         out=snakemake.output.summary)
