"""Rule set_calibrate: the set estimator's point estimates on the test split as an SBI summary."""
from cmpipe.stages import run_rule, set_calibrate

run_rule(set_calibrate, snakemake.log[0], config=snakemake.config, model=snakemake.input.model,
         sets=snakemake.input.sets, clusters=snakemake.input.clusters,
         out=snakemake.output.joint_pdf, threads=snakemake.threads)
