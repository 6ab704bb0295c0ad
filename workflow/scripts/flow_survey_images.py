"""Rule flow_survey_images: 2-D (R_proj, v) KDE images of the survey clusters."""
from cmpipe.stages import flow_survey_images, run_rule

run_rule(flow_survey_images, snakemake.log[0], config=snakemake.config,
         phase_space=snakemake.input.phase_space, out=snakemake.output.images)
