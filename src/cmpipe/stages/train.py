"""Training rules: the CNN (rule ``train``) and its predictions on each split (rule
``summaries``); the loss curve is drawn by :func:`cmpipe.stages.evaluate.training_plots`."""
from __future__ import annotations

from pathlib import Path

from .. import io
from ..io.tables import write_table
from ..settings import stage_seed
from .common import settings_of, log


def train_settings(s):
    from ..cnn.training import TrainSettings

    t = {k: v for k, v in s.train.to_dict().items() if v is not None}
    # verbose 0: the rule log gets cmpipe's one line per epoch, not Keras' progress bars
    return TrainSettings.from_dict(dict(t, seed=stage_seed(s.seed, "train") % (2 ** 31),
                                        verbose=0))


def train(*, config, train_cubes, validation_cubes, model_out):
    """Rule ``train``: the CNN, early-stopped on the validation split; resumes if killed."""
    from ..cnn.training import train as train_cnn

    s = settings_of(config)
    result = train_cnn(train_cubes, validation_cubes, Path(model_out).parent,
                       train_settings(s))
    log.info("train: %d parameters, best epoch %d of %d (val MSE %.4g, standardised), "
             "stopped early: %s, resumed from epoch %d", result.n_params, result.best_epoch,
             result.epochs_run, result.best_val_loss, result.stopped_early,
             result.resumed_from_epoch)


PREDICTION_SCHEMA = io.Schema({
    "cluster_id": ("i8", "", "projected cluster"),
    "log10_m200c_true": ("f8", "log10(h^-1 Msun)", "true M200c"),
    "log10_m200c_pred": ("f8", "log10(h^-1 Msun)", "network point prediction (summary d~)"),
    "n_gal": ("i8", "", "galaxies in the window"),
    "n_members": ("i8", "", "of those, bound to the halo"),
})


def summaries(*, config, model, cubes, out, split_name):
    """Rule ``summaries``: the network's predictions d~ for one split."""
    from ..cnn.training import predict

    s = settings_of(config)
    pred = predict(Path(model).parent, cubes, batch_size=s.train.batch_size)
    write_table(out, pred, group="predictions", schema=PREDICTION_SCHEMA,
                attrs=dict(split=split_name, model=str(model)))
    if len(pred["cluster_id"]):
        res = pred["log10_m200c_true"] - pred["log10_m200c_pred"]
        log.info("%s: %d predictions, residual log10(M_true/M_pred) mean %.3f, sd %.3f dex "
                 "(predicting the mean mass: sd %.3f dex)", split_name, len(res),
                 res.mean(), res.std(), pred["log10_m200c_true"].std())
