"""Rule survey_posteriors: d~ and posteriors (flat and population prior) per cluster."""
from cmpipe.stages import run_rule, survey_posteriors

run_rule(survey_posteriors, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, joint_pdf=snakemake.input.joint_pdf,
         cubes=snakemake.input.cubes, phase_space=snakemake.input.phase_space,
         out=snakemake.output.posteriors, csv_out=snakemake.output.csv)
