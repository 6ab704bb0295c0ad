"""Rule ablation_evaluate: predictions, own SBI calibration and eval metrics of one network
(CNN1D/2D every seed, CNN3D seeds >= 1) at one seed."""
from cmpipe.evaluation.ablation import seed_index
from cmpipe.stages import ablation_evaluate, run_rule

run_rule(ablation_evaluate, snakemake.log[0], config=snakemake.config,
         dim=snakemake.wildcards.dim, seed=seed_index(snakemake.wildcards.seeddir),
         model=snakemake.input.model, test_inputs=snakemake.input.test,
         eval_inputs=snakemake.input.eval, clusters=snakemake.input.clusters,
         test_out=snakemake.output.test, eval_out=snakemake.output.eval,
         joint_pdf_out=snakemake.output.joint_pdf, metrics_out=snakemake.output.metrics)
