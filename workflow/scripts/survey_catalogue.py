"""Rule survey_catalogue: survey clusters, galaxies (RA, Dec, z), truth and meta."""
from cmpipe.stages import run_rule, survey_catalogue

run_rule(survey_catalogue, snakemake.log[0], config=snakemake.config,
         halos=snakemake.input.get("halos"), galaxies=snakemake.input.get("galaxies"),
         clusters_out=snakemake.output.clusters, galaxies_out=snakemake.output.galaxies,
         truth_out=snakemake.output.truth, meta_out=snakemake.output.meta)
