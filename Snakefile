# cmpipe: dynamical galaxy-cluster masses from projected phase space.
# Run:  snakemake --cores 2                      (default config.yaml)
#       snakemake --cores 2 --configfile configs/tiny.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# `snakemake --report report.html` (or `make report`): figures and tables with captions
# from workflow/report/, runtimes from the benchmark: files, the config.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/catalogue.smk"
include: "workflow/rules/mock.smk"
include: "workflow/rules/kde.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/survey.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/sets.smk"
include: "workflow/rules/analyses.smk"


rule all:
    input:
        final_targets(),
    default_target: True


rule comparison_inputs:
    """The products another run's `compare` rule reads from this one (compare.pure_run):
    `make run` builds only these for the pure-catalogue run."""
    input:
        res("evaluation/metrics.json"),
        res("flow/metrics.json"),
        *([res("sets/metrics.json")] if config["sets"]["enabled"] else []),
        res("config.resolved.yaml"),


rule fiducial_inputs:
    """What another run's misspecification matrix and comparison read from this one
    (compare.fiducial_run): the CNN3D, its calibration and eval predictions, the flow and
    its calibration, the metrics.
    `make run` builds only these for the fiducial-model run (configs/fiducial.yaml)."""
    input:
        res("model/cnn3d.keras"),
        res("model/normalisation.json"),
        res("calibration/joint_pdf.h5"),
        res("summaries/eval.h5"),
        res("evaluation/metrics.json"),
        res("flow/metrics.json"),
        res("flow/model/flow.pt"),
        flow_joint_pdf(),
        res("config.resolved.yaml"),
