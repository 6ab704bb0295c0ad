"""Rule perturbed_eval: the unchanged CNN3D + calibration on perturbed eval clusters."""
from cmpipe.stages import perturbed_eval, run_rule

run_rule(perturbed_eval, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, normalisation=snakemake.input.normalisation,
         joint_pdf=snakemake.input.joint_pdf, clusters=snakemake.input.clusters,
         eval_predictions=snakemake.input.eval, summary_out=snakemake.output.summary,
         predictions_out=snakemake.output.predictions, threads=snakemake.threads)
