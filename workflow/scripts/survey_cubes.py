"""Rule survey_cubes: survey tables -> phase-space windows -> KDE cubes."""
from cmpipe.stages import run_rule, survey_cubes

run_rule(survey_cubes, snakemake.log[0], config=snakemake.config,
         clusters=snakemake.input.clusters, galaxies=snakemake.input.galaxies,
         cubes_out=snakemake.output.cubes, phase_space_out=snakemake.output.phase_space,
         threads=snakemake.threads)
