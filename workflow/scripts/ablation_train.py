"""Rule ablation_train: CNN1D / CNN2D (every seed) and the CNN3D's extra seeds, with the
CNN3D's training code and settings; the seed number comes from the {seeddir} wildcard."""
from cmpipe.evaluation.ablation import seed_index
from cmpipe.stages import ablation_train, run_rule

run_rule(ablation_train, snakemake.log[0], config=snakemake.config,
         dim=snakemake.wildcards.dim, seed=seed_index(snakemake.wildcards.seeddir),
         train_inputs=snakemake.input.train, validation_inputs=snakemake.input.validation,
         model_out=snakemake.output.model)
