"""Rule mass_function: survey mass function vs Tinker (2008), pulls, figures."""
from cmpipe.stages import mass_function, run_rule

run_rule(mass_function, snakemake.log[0], config=snakemake.config,
         posteriors=snakemake.input.posteriors, meta=snakemake.input.meta,
         truth=snakemake.input.truth, out=snakemake.output.mass_function,
         pulls_out=snakemake.output.pulls, mass_function_png=snakemake.output.mass_function_png,
         pulls_png=snakemake.output.pulls_png, joint_pdf=snakemake.input.joint_pdf,
         test_predictions=snakemake.input.test_predictions,
         mock_clusters=snakemake.input.mock_clusters)
