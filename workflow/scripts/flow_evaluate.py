"""Rule flow_evaluate: the flow's eval-set posteriors and metrics."""
from cmpipe.stages import flow_evaluate, run_rule

run_rule(flow_evaluate, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         images=snakemake.input.images, clusters=snakemake.input.clusters,
         metrics_out=snakemake.output.metrics, posteriors_out=snakemake.output.posteriors,
         joint_pdf=snakemake.input.get("joint_pdf") or None,
         threads=snakemake.threads)
