"""Rule set_evaluate: the set estimator's eval-set posteriors and metrics."""
from cmpipe.stages import run_rule, set_evaluate

run_rule(set_evaluate, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         sets=snakemake.input.sets, clusters=snakemake.input.clusters,
         metrics_out=snakemake.output.metrics, posteriors_out=snakemake.output.posteriors,
         joint_pdf=snakemake.input.get("joint_pdf") or None, threads=snakemake.threads)
