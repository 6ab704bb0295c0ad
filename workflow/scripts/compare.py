"""Rule compare: CNN3D + SBI, neural flow, set estimator, M-sigma and virial on
contaminated/pure eval sets."""
from cmpipe.stages import compare, run_rule

inp = snakemake.input
other = snakemake.params.other_runs          # the pure and fiducial-model runs' products
run_rule(compare, snakemake.log[0], config=snakemake.config, metrics=inp.metrics,
         flow_metrics=inp.flow_metrics, pure_metrics=other.get("pure_metrics"),
         pure_flow_metrics=other.get("pure_flow_metrics"), pure_config=other.get("pure_config"),
         cube_only_metrics=inp.get("cube_only_metrics"),
         fiducial_metrics=other.get("fiducial_metrics"),
         fiducial_flow_metrics=other.get("fiducial_flow_metrics"),
         fiducial_config=other.get("fiducial_config"),
         set_metrics=inp.get("set_metrics"), pure_set_metrics=other.get("pure_set_metrics"),
         set_seeds=inp.get("set_seeds"),
         summary_out=snakemake.output.summary, csv_out=snakemake.output.csv,
         png=snakemake.output.figure)
