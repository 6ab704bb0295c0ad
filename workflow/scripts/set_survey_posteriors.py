"""Rule set_survey_posteriors: the set estimator's posteriors of the survey clusters."""
from cmpipe.stages import run_rule, set_survey_posteriors

run_rule(set_survey_posteriors, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, sets=snakemake.input.sets,
         phase_space=snakemake.input.phase_space, out=snakemake.output.posteriors,
         csv_out=snakemake.output.csv, joint_pdf=snakemake.input.get("joint_pdf") or None,
         threads=snakemake.threads)
