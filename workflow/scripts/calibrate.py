"""Rule calibrate: the joint PDF of test-set (prediction, true mass) pairs."""
from cmpipe.stages import calibrate, run_rule

run_rule(calibrate, snakemake.log[0], config=snakemake.config,
         test_predictions=snakemake.input.test, clusters=snakemake.input.clusters,
         out=snakemake.output.joint_pdf)
