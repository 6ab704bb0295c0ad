"""Rule set_survey_inputs: the survey clusters' window galaxies as galaxy sets."""
from cmpipe.stages import run_rule, set_survey_inputs

run_rule(set_survey_inputs, snakemake.log[0], config=snakemake.config,
         phase_space=snakemake.input.phase_space, out=snakemake.output.sets)
