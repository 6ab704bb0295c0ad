"""Rule compare: CNN3D + SBI, neural flow, set estimator, M-sigma and virial on
contaminated/pure eval sets."""
from cmpipe.stages import compare, run_rule

inp = snakemake.input
run_rule(compare, snakemake.log[0], config=snakemake.config, metrics=inp.metrics,
         flow_metrics=inp.flow_metrics, pure_metrics=inp.get("pure_metrics"),
         pure_flow_metrics=inp.get("pure_flow_metrics"), pure_config=inp.get("pure_config"),
         cube_only_metrics=inp.get("cube_only_metrics"),
         fiducial_metrics=inp.get("fiducial_metrics"),
         fiducial_flow_metrics=inp.get("fiducial_flow_metrics"),
         fiducial_config=inp.get("fiducial_config"),
         set_metrics=inp.get("set_metrics"), pure_set_metrics=inp.get("pure_set_metrics"),
         set_seeds=inp.get("set_seeds"),
         summary_out=snakemake.output.summary, csv_out=snakemake.output.csv,
         png=snakemake.output.figure)
