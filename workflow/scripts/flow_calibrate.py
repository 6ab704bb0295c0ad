"""Rule flow_calibrate: the flow's point estimates on the test split as an SBI summary."""
from cmpipe.stages import flow_calibrate, run_rule

run_rule(flow_calibrate, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         images=snakemake.input.images, clusters=snakemake.input.clusters,
         out=snakemake.output.joint_pdf, threads=snakemake.threads)
