"""Rule saliency_maps: mean input gradients of the CNN3D on eval clusters in mass bins."""
from cmpipe.stages import run_rule, saliency_maps

run_rule(saliency_maps, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         normalisation=snakemake.input.normalisation, eval_cubes=snakemake.input.cubes,
         out=snakemake.output.saliency, summary_out=snakemake.output.summary)
