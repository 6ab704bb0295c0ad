"""Rule set_train: the Deep Sets flow on the training split, early-stopped on validation."""
from cmpipe.stages import run_rule, set_train

seeddir = snakemake.wildcards.get("seeddir", "")
run_rule(set_train, snakemake.log[0], config=snakemake.config, train=snakemake.input.train,
         validation=snakemake.input.validation, model_out=snakemake.output.model,
         threads=snakemake.threads,
         seed=int(seeddir.strip("/").split("/")[-1]) if seeddir else 0)
