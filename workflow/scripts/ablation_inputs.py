"""Rule ablation_inputs: 1D v_los or 2D (R_proj, v_los) KDE inputs of every split."""
from cmpipe.stages import ablation_inputs, run_rule

run_rule(ablation_inputs, snakemake.log[0], config=snakemake.config,
         clusters=snakemake.input.clusters, dim=snakemake.wildcards.dim,
         outs={k: v for k, v in snakemake.output.items()})
