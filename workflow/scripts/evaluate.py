"""Rule evaluate: posteriors and metrics of the network and the baselines (eval set)."""
from cmpipe.stages import evaluate, run_rule

run_rule(evaluate, snakemake.log[0], config=snakemake.config,
         joint_pdf=snakemake.input.joint_pdf, test_predictions=snakemake.input.test,
         eval_predictions=snakemake.input.eval, clusters=snakemake.input.clusters,
         metrics_out=snakemake.output.metrics, posteriors_out=snakemake.output.posteriors)
