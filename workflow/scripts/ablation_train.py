"""Rule ablation_train: CNN1D / CNN2D with the CNN3D's training code and settings."""
from cmpipe.stages import ablation_train, run_rule

run_rule(ablation_train, snakemake.log[0], config=snakemake.config,
         dim=snakemake.wildcards.dim, train_inputs=snakemake.input.train,
         validation_inputs=snakemake.input.validation, model_out=snakemake.output.model)
