"""Rule train: the CNN regression of log10 M200c, early-stopped on the validation split."""
from cmpipe.stages import run_rule, train

run_rule(train, snakemake.log[0], config=snakemake.config,
         train_cubes=snakemake.input.train, validation_cubes=snakemake.input.validation,
         model_out=snakemake.output.model)
