"""One function per pipeline rule: read inputs, call the science modules, write outputs.

These are the edges where I/O happens. ``workflow/scripts/*.py`` call them in a line or two
through :func:`run_rule` (logging to the rule's log file, clean error messages), and the
tests and the ``cmpipe`` CLI call them directly, so the same code runs everywhere. One
module per group of rules:

- :mod:`.mock`: catalogue, halo selection, sightlines, projection, flux limit, split, summary;
- :mod:`.cubes`: KDE cube shards and their gathering;
- :mod:`.train`: CNN training (rule ``train``), predictions (rule ``summaries``);
- :mod:`.evaluate`: joint-PDF calibration, eval-set posteriors, metrics, figures (the loss
  curve too, drawn without Keras), the report's tables;
- :mod:`.survey`: the run's config records, survey catalogue, cubes, posteriors, mass
  function; :mod:`.infer`: ``cmpipe infer``;
- :mod:`.ablation`: dimensionality ablation (CNN1D/2D/3D at every seed, summary, figure);
- :mod:`.analyses`: robustness to survey perturbations (``perturbed_eval``), the
  misspecification matrix (``misspecification_shard``, ``misspecification``), saliency
  (``saliency_maps``);
- :mod:`.flow`: the neural-flow estimator (images, training, posteriors, figures);
  :mod:`.flow_survey`: its survey rules;
- :mod:`.sets`: the set estimator (galaxy sets, training, seeds; the flow's calibration,
  evaluation and survey functions run on its sets);
- :mod:`.compare`: the estimators side by side (rule ``compare``).
"""
from .common import run_rule
from .ablation import (ablation_evaluate, ablation_inputs, ablation_plots, ablation_summary,
                       ablation_train)
from .analyses import perturbed_eval, robustness_plots, saliency_maps, saliency_plots
from .compare import companion_run, compare
from .cubes import (SPLIT_NAMES, gathered_shard_size, kde_gather, kde_shard, n_shards,
                    split_counts)
# training_plots lives in .evaluate: it draws history.csv without Keras (envs/plots.yaml)
from .evaluate import (calibrate, evaluate, evaluation_plots, metrics_table, report_tables,
                       training_plots)
from .misspecification import (misspecification, misspecification_plots, misspecification_shard,
                               recorded_shards)
from .flow import flow_calibrate, flow_evaluate, flow_images, flow_plots, flow_train
from .flow_survey import flow_survey_images, flow_survey_posteriors
from .sets import (set_calibrate, set_evaluate, set_inputs, set_plots, set_seeds,
                   set_survey_inputs, set_survey_posteriors, set_train)
from .mock import (catalogue, flux_limit, mock_plots, mock_summary, project, select_halos,
                   sightlines, split)
from .infer import infer, load_run_config
from .survey import (mass_function, model_config, resolved_config, survey_catalogue,
                     survey_cubes, survey_posteriors)
from .train import summaries, train

__all__ = [
    "run_rule", "SPLIT_NAMES", "split_counts", "n_shards", "gathered_shard_size",
    "catalogue", "select_halos", "sightlines", "project", "flux_limit",
    "split", "mock_summary", "mock_plots",
    "kde_shard", "kde_gather",
    "train", "summaries", "training_plots",
    "calibrate", "evaluate", "evaluation_plots", "metrics_table", "report_tables",
    "resolved_config", "model_config", "survey_catalogue", "survey_cubes",
    "survey_posteriors", "mass_function", "load_run_config", "infer",
    "ablation_inputs", "ablation_train", "ablation_evaluate", "ablation_summary",
    "ablation_plots", "perturbed_eval", "robustness_plots", "misspecification_shard",
    "recorded_shards",
    "misspecification", "misspecification_plots", "saliency_maps", "saliency_plots",
    "flow_images", "flow_survey_images", "flow_train", "flow_calibrate", "flow_evaluate",
    "flow_survey_posteriors", "flow_plots", "compare", "companion_run",
    "set_inputs", "set_survey_inputs", "set_train", "set_calibrate", "set_evaluate",
    "set_survey_posteriors", "set_seeds", "set_plots",
]
