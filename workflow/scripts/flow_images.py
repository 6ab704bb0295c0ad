"""Rule flow_images: 2-D (R_proj, v) KDE images of one split for the neural flow."""
from cmpipe.stages import flow_images, run_rule

run_rule(flow_images, snakemake.log[0], config=snakemake.config,
         clusters=snakemake.input.clusters, split_name=snakemake.wildcards.split,
         out=snakemake.output.images)
