"""Rule flow_survey_posteriors: the flow's posteriors of the survey clusters."""
from cmpipe.stages import flow_survey_posteriors, run_rule

run_rule(flow_survey_posteriors, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, images=snakemake.input.images,
         phase_space=snakemake.input.phase_space, out=snakemake.output.posteriors,
         csv_out=snakemake.output.csv, joint_pdf=snakemake.input.get("joint_pdf") or None,
         threads=snakemake.threads)
