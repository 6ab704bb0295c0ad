"""One function per pipeline rule: read inputs, call the science modules, write outputs.

These are the edges where I/O happens. ``workflow/scripts/*.py`` call them in a line or two
through :func:`run_rule` (logging to the rule's log file, clean error messages), and the
tests and the ``cmpipe`` CLI call them directly, so the same code runs everywhere. One
module per group of rules:

- :mod:`.mock`: catalogue, halo selection, sightlines, projection, flux limit, split, summary;
- :mod:`.cubes`: KDE cube shards and their gathering;
- :mod:`.train`: CNN training, predictions;
- :mod:`.evaluate`: joint-PDF calibration, eval-set posteriors, metrics, figures (the loss
  curve too, drawn without Keras), the report's tables;
- :mod:`.survey`: survey catalogue, cubes, posteriors, mass function, ``cmpipe infer``;
- :mod:`.analyses`: dimensionality ablation, robustness to survey perturbations, saliency;
- :mod:`.flow`: the neural-flow estimator (images, training, posteriors, figures) and the
  estimator comparison.
"""
from ._common import run_rule
from .analyses import (ablation_evaluate, ablation_inputs, ablation_plots, ablation_summary,
                       ablation_train, robustness, robustness_plots, saliency, saliency_plots)
from .cubes import SPLIT_NAMES, kde_gather, kde_shard, n_shards, split_counts
# training_plots lives in .evaluate: it draws history.csv without Keras (envs/plots.yaml)
from .evaluate import (calibrate, evaluate, evaluation_plots, metrics_table, report_tables,
                       training_plots)
from .flow import (compare_estimators, flow_evaluate, flow_images, flow_plots,
                   flow_survey_images, flow_survey_posteriors, flow_train)
from .mock import (apply_flux_limit, build_catalogue, make_sightlines, mock_plots, mock_summary,
                   project, select_halos, split)
from .survey import (infer, load_run_config, survey_catalogue, survey_cubes,
                     survey_mass_function, survey_posteriors, write_model_record,
                     write_resolved_config)
from .train import predict_split, train_network

__all__ = [
    "run_rule", "SPLIT_NAMES", "split_counts", "n_shards",
    "build_catalogue", "select_halos", "make_sightlines", "project", "apply_flux_limit",
    "split", "mock_summary", "mock_plots",
    "kde_shard", "kde_gather",
    "train_network", "predict_split", "training_plots",
    "calibrate", "evaluate", "evaluation_plots", "metrics_table", "report_tables",
    "write_resolved_config", "write_model_record", "survey_catalogue", "survey_cubes",
    "survey_posteriors", "survey_mass_function", "load_run_config", "infer",
    "ablation_inputs", "ablation_train", "ablation_evaluate", "ablation_summary",
    "ablation_plots", "robustness", "robustness_plots", "saliency", "saliency_plots",
    "flow_images", "flow_survey_images", "flow_train", "flow_evaluate",
    "flow_survey_posteriors", "flow_plots", "compare_estimators",
]
