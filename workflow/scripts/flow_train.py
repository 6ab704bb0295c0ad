"""Rule flow_train: the neural flow on the training split, early-stopped on validation."""
from cmpipe.stages import flow_train, run_rule

run_rule(flow_train, snakemake.log[0], config=snakemake.config, train=snakemake.input.train,
         validation=snakemake.input.validation, model_out=snakemake.output.model,
         threads=snakemake.threads)
