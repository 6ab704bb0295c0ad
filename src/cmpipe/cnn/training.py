"""Train the CNN on KDE cubes, checkpoint every epoch, predict log10 M200c (pipeline step 6-7).

Cubes reach the network through :class:`cmpipe.cnn.cubedata.CubeDataset` (in memory or
streamed, identical batches). Two transforms are applied, identically at training and
prediction time, and both are stored in ``normalisation.json`` beside the model:

* input scaling: ``x = cube * scale`` with ``scale = n_voxels`` (the mean voxel is 1),
  then optionally ``log(1 + x)`` (:func:`cmpipe.cnn.cubedata.transform_inputs`);
* target standardisation: ``z = (log10 M200c - mean) / std`` with ``mean`` and ``std``
  (ddof 0) of the TRAINING split; the network regresses ``z`` (MSE loss) and
  :func:`predict` returns ``z * std + mean`` in log10(h^-1 Msun).

Training (:func:`train`) follows Kodi Ramanah et al. 2020, section 3.4: Adam (lr 1e-4,
beta 0.9/0.999), batch 100, up to 50 epochs, early stopping with patience 5 on the VALIDATION
split only, best weights restored at the end.

Checkpoints and resuming
------------------------
After every epoch ``checkpoint.h5`` is written atomically (:mod:`cmpipe.cnn.checkpoint`): model
and optimizer variables, the best weights so far and a JSON state fingerprinted by the
settings and the content digests of both cube files. Rerunning :func:`train` on the same
``out_dir`` resumes after the last completed epoch; a checkpoint whose fingerprint does not
match is ignored with a warning that names what changed, and training starts afresh.
``normalisation.json`` records the fingerprint, the cube digests and the settings under
``provenance``. The data order and augmentation of epoch ``e`` are drawn from
``numpy.random.default_rng((seed, e, ...))`` and the Keras/TF seeds are reset from
``(seed, e)`` at the start of each epoch, so a resumed run replays exactly the batches an
uninterrupted run would have seen.

Determinism: on CPU, training is bit-reproducible for a fixed number of threads without any
special switch (oneDNN and Eigen split their reductions the same way every run; the resume
test checks this). ``TrainSettings.deterministic`` switches on TensorFlow op determinism
(process-wide, it cannot be switched off again): needed for bit-reproducible GPU runs
(cuDNN's backward convolutions use atomics otherwise), but it makes the CPU Conv3D kernels
about 2x slower, so it is off by default. XLA (``xla=True``) and mixed precision are GPU
performance options, ignored with a warning on CPU (XLA's CPU Conv3D is ~30x slower than
oneDNN); their numerics may differ slightly between runs and devices.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from .checkpoint import (EpochState, assign_variables, fingerprint,  # noqa: E402
                         initial_state, resume, seed32)
from .cubedata import (DISTANCE_COLUMN, INPUT_TRANSFORMS, N_D4, CubeDataset,  # noqa: E402
                       d4_transform, standardised_distance, transform_inputs)
from ..io.cubes import CubeReader, cube_digest, distance_standardisation  # noqa: E402
from ..io.tables import CatalogueError, write_json  # noqa: E402
from ..io.training import (HISTORY_COLUMNS, read_history, save_keras_model,  # noqa: E402
                           write_history)
from .model import DEFAULT_LAYERS, build_cnn, parameter_count, validate_layers  # noqa: E402

__all__ = [
    "MODEL_FILE",
    "HISTORY_FILE",
    "NORMALISATION_FILE",
    "CHECKPOINT_FILE",
    "HISTORY_COLUMNS",
    "N_D4",
    "TrainSettings",
    "TrainResult",
    "CubeDataset",
    "d4_transform",
    "INPUT_TRANSFORMS",
    "transform_inputs",
    "train",
    "predict",
    "read_history",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "cnn3d.keras"
HISTORY_FILE = "history.csv"
NORMALISATION_FILE = "normalisation.json"
CHECKPOINT_FILE = "checkpoint.h5"


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    """How to train the network (defaults: the paper's, section 3.4).

    Parameters
    ----------
    layers : sequence of dict
        Hidden-layer specification (see :mod:`cmpipe.cnn.model`); default the authors' CNN3D.
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Cubes per batch.
    learning_rate, beta_1, beta_2 : float
        Adam step size and moment decay rates.
    patience : int
        Early stopping: stop after this many epochs without a lower validation loss.
    augment : bool
        Apply a random one of the 8 sky-plane symmetries (D4 on the x, y axes) to each
        training cube; validation cubes are never augmented.
    distance_input : bool
        The network also takes the cluster's comoving distance from the observer (the cube
        files' ``distance_mpc_h``, standardised by the training split's mean and sd, stored
        in ``normalisation.json`` ``distance``), concatenated with the flattened convolutional
        features before the dense layers (:func:`cmpipe.cnn.model.build_cnn`).
    seed : int
        Seeds the weight initialisation, the per-epoch shuffling and the augmentation.
    mixed_precision : bool
        Use the ``mixed_float16`` policy with loss scaling; only when a GPU is present
        (ignored with a warning on CPU, where it is slower).
    xla : bool
        Compile the train step with XLA (``jit_compile``); only when a GPU is present
        (ignored with a warning on CPU).
    deterministic : bool
        Switch on TensorFlow op determinism (process-wide): bit-reproducible GPU runs, at
        some cost in speed (~2x on CPU, where runs are reproducible without it).
    in_memory_max_mb : float
        Hold the training cubes, then the validation cubes, in memory when their
        uncompressed size (4 bytes a voxel) fits this budget in MiB (together); otherwise
        stream them from the file with a background prefetch thread. Both give the same
        batches bit for bit, so this is a speed setting, not part of the checkpoint's
        fingerprint. 0 always streams.
    verbose : int
        Keras progress output: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
    """

    layers: tuple = DEFAULT_LAYERS
    epochs: int = 50
    batch_size: int = 100
    learning_rate: float = 1e-4
    beta_1: float = 0.9
    beta_2: float = 0.999
    patience: int = 5
    augment: bool = False
    distance_input: bool = False
    input_transform: str = "linear"
    seed: int = 0
    mixed_precision: bool = False
    xla: bool = False
    deterministic: bool = False
    in_memory_max_mb: float = 6000.0
    verbose: int = 1

    def __post_init__(self):
        object.__setattr__(self, "layers", validate_layers(self.layers))
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainSettings.{name} must be a positive integer, got {v!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                or self.patience < 1:
            raise ValueError(f"TrainSettings.patience must be an integer >= 1, "
                             f"got {self.patience!r}")
        if not self.learning_rate > 0:
            raise ValueError("TrainSettings.learning_rate must be > 0, got "
                             f"{self.learning_rate!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"TrainSettings.{name} must be in [0, 1), got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ValueError(f"TrainSettings.seed must be a non-negative integer, "
                             f"got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if isinstance(self.in_memory_max_mb, bool) or not self.in_memory_max_mb >= 0:
            raise ValueError(f"TrainSettings.in_memory_max_mb must be >= 0 (MiB), "
                             f"got {self.in_memory_max_mb!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        """Build from a (config) mapping; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-ready dict (layers as a list of dicts)."""
        d = dataclasses.asdict(self)
        d["layers"] = [dict(s) for s in self.layers]
        return d


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced (paths in ``out_dir``; epochs counted from 1)."""

    model_path: Path
    history_path: Path
    normalisation_path: Path
    checkpoint_path: Path
    n_params: int
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int



# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _check_cube_file(path, role: str, fix: str) -> tuple[int, tuple]:
    with CubeReader(path) as r:
        n, grid = len(r), tuple(r.shape[1:])
    if n == 0:
        raise CatalogueError(path, "cubes", f"the {role} cube file holds no cubes", fix)
    return n, grid


def _check_inputs(train_path, val_path) -> tuple[int, int, tuple]:
    """Cubes in the training and validation files and their common grid."""
    n_train, grid = _check_cube_file(
        train_path, "training", "check the splits (more training halos) and rerun the kde rules")
    n_val, val_grid = _check_cube_file(
        val_path, "validation",
        "raise splits.validation_fraction in the config so that some training halos are "
        "held out for early stopping")
    if val_grid != grid:
        raise CatalogueError(val_path, "cubes", f"grid {val_grid} differs from the training "
                             f"grid {grid} of {train_path}", "rerun the kde rules with one config")
    return n_train, n_val, grid


def _gpu_available() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _device_options(settings: TrainSettings) -> tuple[bool, str | None, bool]:
    """``(gpu, dtype policy, xla)``: op determinism switched on when asked for; mixed
    precision and XLA dropped with a warning when there is no GPU."""
    if settings.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    gpu = _gpu_available()
    policy = None
    if settings.mixed_precision:
        if gpu:
            policy = "mixed_float16"
        else:
            logger.warning("mixed_precision requested but no GPU found: training in float32")
    xla = bool(settings.xla)
    if xla and not gpu:
        logger.warning("xla requested but no GPU found: XLA's CPU Conv3D is much slower than "
                       "oneDNN, training without it")
        xla = False
    return gpu, policy, xla


def _normalisation(train_path, grid, n_train: int, settings: TrainSettings) -> dict:
    """``normalisation.json`` (before its provenance): the input scale (number of voxels)
    and transform, and the target standardisation from the training masses (log10 h^-1
    Msun; std 1 when they are all equal)."""
    with CubeReader(train_path) as r:
        logm = r.column("log10_m200c").astype(np.float64)
    mean, std = float(logm.mean()), float(logm.std())
    if not std > 0:
        logger.warning("%s: all training masses are equal; using target std 1", train_path)
        std = 1.0
    scale = float(math.prod(grid))
    norm = {
        "input": {"scale": scale, "grid": list(grid), "function": settings.input_transform,
                  "transform": INPUT_TRANSFORMS[settings.input_transform]},
        "target": {"column": "log10_m200c", "unit": "log10(h^-1 Msun)", "mean": mean,
                   "std": std, "transform": "z = (log10_m200c - mean) / std",
                   "from": str(train_path), "n_train": n_train},
    }
    if settings.distance_input:
        with CubeReader(train_path) as r:
            d = r.column(DISTANCE_COLUMN).astype(np.float64)
        standardised_distance(d, 0.0, 1.0, source=train_path)     # all finite, or raise
        d_mean, d_std = distance_standardisation(d)
        norm["distance"] = {"column": DISTANCE_COLUMN, "unit": "h^-1 Mpc (comoving)",
                            "mean": d_mean, "std": d_std,
                            "transform": "(distance_mpc_h - mean) / std, input 'distance'"}
    return norm


def _datasets(train_path, val_path, settings: TrainSettings, normalisation: dict):
    """Training (shuffled, augmented if asked) and validation :class:`CubeDataset`; the
    training split is held in memory first, then the validation split in what is left of
    ``settings.in_memory_max_mb``."""
    ds_kw = dict(target_mean=normalisation["target"]["mean"],
                 target_std=normalisation["target"]["std"],
                 input_scale=normalisation["input"]["scale"],
                 input_transform=settings.input_transform, seed=settings.seed,
                 distance=normalisation.get("distance"))
    budget = float(settings.in_memory_max_mb)
    train_ds = CubeDataset(train_path, settings.batch_size, shuffle=True,
                           augment=settings.augment, memory_mb=budget, **ds_kw)
    budget -= train_ds.nbytes / 2 ** 20 if train_ds.in_memory else 0.0
    val_ds = CubeDataset(val_path, settings.batch_size, shuffle=False, augment=False,
                         memory_mb=budget, **ds_kw)
    logger.info("input: training cubes %s, validation cubes %s (train.in_memory_max_mb %g)",
                "in memory" if train_ds.in_memory else "streamed with prefetch",
                "in memory" if val_ds.in_memory else "streamed with prefetch",
                settings.in_memory_max_mb)
    return train_ds, val_ds


def _compiled_model(grid, settings: TrainSettings, policy, xla: bool):
    """The CNN (weights from the global seed) compiled with Adam and the MSE loss, its
    optimizer variables built (so that a checkpoint can be restored into them)."""
    model = build_cnn(grid, settings.layers, dtype_policy=policy,
                      distance_input=settings.distance_input)
    n_params = parameter_count(model)
    opt = keras.optimizers.Adam(learning_rate=settings.learning_rate, beta_1=settings.beta_1,
                                beta_2=settings.beta_2)
    if policy:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    model.compile(optimizer=opt, loss="mse", jit_compile=xla)
    model.optimizer.build(model.trainable_variables)
    return model, n_params


def _data_id(train_path, val_path, n_train: int, n_val: int, grid, normalisation: dict):
    """What the run trains on, for its fingerprint: sizes, grid, target standardisation and
    the content digests of both cube files."""
    return dict(n_train=n_train, n_val=n_val, grid=list(grid),
                target_mean=normalisation["target"]["mean"],
                target_std=normalisation["target"]["std"],
                train_cubes_digest=cube_digest(train_path),
                validation_cubes_digest=cube_digest(val_path))


def _provenance(fp: str, train_path, val_path, data_id: dict, settings: TrainSettings):
    return {
        "fingerprint": fp, "train_cubes": str(train_path),
        "train_cubes_digest": data_id["train_cubes_digest"],
        "validation_cubes": str(val_path),
        "validation_cubes_digest": data_id["validation_cubes_digest"],
        "settings": {k: v for k, v in settings.to_dict().items() if k != "verbose"}}


def _fit(model, train_ds, val_ds, settings: TrainSettings, state: dict, callbacks) -> None:
    """``model.fit`` from the first epoch not done yet (nothing when the run is finished);
    the datasets are closed afterwards."""
    finished = state["stopped_early"] or state["epochs_done"] >= settings.epochs
    if not finished:
        # one stream over all epochs (CubeDataset.stream): no iterator restart per epoch
        if val_ds.in_memory:     # arrays: no generator to tear down after each evaluation
            val = dict(validation_data=val_ds.arrays(), validation_batch_size=settings.batch_size)
        else:
            val = dict(validation_data=val_ds.stream(0), validation_steps=len(val_ds))
        model.fit(train_ds.stream(state["epochs_done"]), steps_per_epoch=len(train_ds),
                  **val, epochs=settings.epochs,
                  initial_epoch=state["epochs_done"], verbose=settings.verbose,
                  callbacks=callbacks)
    train_ds.close()
    val_ds.close()


def _save_outputs(model, best_weights, state: dict, out_dir: Path, model_file: str,
                  normalisation: dict, hist_path: Path) -> tuple[Path, Path]:
    """The best weights saved as the model, ``normalisation.json`` and the history."""
    if best_weights is None:
        raise RuntimeError(f"validation loss was never finite in {state['epochs_done']} "
                           "epochs; lower the learning rate")
    assign_variables(model.variables, best_weights, "best")
    model_path = out_dir / model_file
    save_keras_model(model, model_path)
    norm_path = out_dir / NORMALISATION_FILE
    write_json(norm_path, normalisation)
    write_history(hist_path, state["history"])
    logger.info("wrote %s (best epoch %d of %d, val_loss %.4g)", model_path, state["best_epoch"],
                state["epochs_done"], state["best_val_loss"])
    return model_path, norm_path


def train(train_path, val_path, out_dir, settings: TrainSettings | None = None, *,
          callbacks=(),
          model_file: str = MODEL_FILE) -> TrainResult:
    """Train the CNN on a cube file, early-stopping on a validation cube file; resumable.

    Parameters
    ----------
    train_path : path-like
        Training cube file (targets: ``log10_m200c`` in log10 h^-1 Msun).
    val_path : path-like
        Validation cube file, used ONLY for early stopping (never the test/eval splits).
    out_dir : path-like
        Output directory: ``cnn3d.keras`` (best weights), ``history.csv``
        (epoch, loss, val_loss, lr, seconds; losses are MSE of the standardised target),
        ``normalisation.json`` (input scale, target mean/std) and ``checkpoint.h5``. An
        existing matching checkpoint there is resumed.
    settings : TrainSettings, optional
        Defaults: the paper's training set-up.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the checkpointing one.
    model_file : str
        File name of the saved model in ``out_dir`` (default ``cnn3d.keras``; the
        dimensionality ablation saves ``cnn1d.keras`` / ``cnn2d.keras``).

    Returns
    -------
    TrainResult

    Raises
    ------
    CatalogueError
        If a cube file is missing or empty, or the two files have different grids.

    Notes
    -----
    Reseeds the global Python, NumPy and TensorFlow generators
    (``keras.utils.set_random_seed``) from ``settings.seed`` at the start and at every epoch.
    Keep ``checkpoint.h5`` out of a Snakemake rule's declared outputs: Snakemake deletes the
    outputs of a failed job, which would throw the checkpoint away.
    """
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_train, n_val, grid = _check_inputs(train_path, val_path)
    gpu, policy, xla = _device_options(settings)
    keras.utils.set_random_seed(seed32(settings.seed, 0, 0))

    normalisation = _normalisation(train_path, grid, n_train, settings)
    train_ds, val_ds = _datasets(train_path, val_path, settings, normalisation)
    model, n_params = _compiled_model(grid, settings, policy, xla)
    logger.info("training %s (%d parameters) on %d cubes of %s voxels%s, validating on %d; "
                "device %s%s%s", model.name, n_params, n_train, "x".join(map(str, grid)),
                " and their distances" if settings.distance_input else "", n_val,
                "GPU" if gpu else "CPU", ", XLA" if xla else "",
                ", mixed precision" if policy else "")

    data_id = _data_id(train_path, val_path, n_train, n_val, grid, normalisation)
    fp = fingerprint(settings, data_id)
    normalisation["provenance"] = _provenance(fp, train_path, val_path, data_id, settings)
    ckpt_path = out_dir / CHECKPOINT_FILE
    state = initial_state(settings, data_id, fp)
    best_weights, resumed_from = resume(ckpt_path, model, state, settings, data_id, fp)

    hist_path = out_dir / HISTORY_FILE
    cb = EpochState(settings=settings, checkpoint_path=ckpt_path,
                    history_path=hist_path, state=state, best_weights=best_weights)
    _fit(model, train_ds, val_ds, settings, state, [cb, *callbacks])
    model_path, norm_path = _save_outputs(model, cb.best_weights, state, out_dir, model_file,
                                          normalisation, hist_path)
    return TrainResult(model_path=model_path, history_path=hist_path,
                       normalisation_path=norm_path, checkpoint_path=ckpt_path,
                       n_params=n_params, epochs_run=state["epochs_done"],
                       best_epoch=state["best_epoch"], best_val_loss=state["best_val_loss"],
                       stopped_early=state["stopped_early"], resumed_from_epoch=resumed_from)


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------

def predict(model_dir, cube_path, *, batch_size: int = 100,
            model_file: str = MODEL_FILE) -> dict[str, np.ndarray]:
    """Network point predictions (the summaries d~) for every cube of a cube file, in order.

    Parameters
    ----------
    model_dir : path-like
        A :func:`train` output directory (``cnn3d.keras`` and ``normalisation.json``).
    cube_path : path-like
        Cube file on the same grid (a network trained with a distance input also reads its
        ``distance_mpc_h`` column, which must then be finite).
    batch_size : int
        Cubes per forward pass (memory only; results do not depend on it beyond float
        round-off).
    model_file : str
        File name of the model in ``model_dir`` (default ``cnn3d.keras``).

    Returns
    -------
    dict of ndarray
        ``cluster_id`` (i8), ``log10_m200c_true`` and ``log10_m200c_pred`` (f8, log10
        h^-1 Msun; the prediction with the target standardisation undone), ``n_gal``,
        ``n_members`` (i8), one entry per cube in file order.
    """
    from ..io.artefacts import load_keras_model, read_json_artefact

    model_dir = Path(model_dir)
    norm_path = model_dir / NORMALISATION_FILE
    if not norm_path.exists() or not (model_dir / model_file).exists():
        raise FileNotFoundError(f"{model_dir}: no trained model ({model_file} and "
                                f"{NORMALISATION_FILE}); run the train rule first")
    fix = "delete the model directory and rerun the train rule"
    norm = read_json_artefact(norm_path, fix)
    try:
        mean, std = float(norm["target"]["mean"]), float(norm["target"]["std"])
        scale, grid = float(norm["input"]["scale"]), list(norm["input"]["grid"])
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogueError(norm_path, "target/input", f"incomplete normalisation record "
                             f"({type(err).__name__}: {err})", fix) from err
    ds = CubeDataset(cube_path, batch_size, target_mean=mean, target_std=std,
                     input_scale=scale, input_transform=norm["input"].get("function", "linear"),
                     distance=norm.get("distance"))
    if list(ds.grid) != grid and ds.n_cubes:
        ds.close()
        raise CatalogueError(cube_path, "cubes", f"grid {ds.grid} differs from the grid "
                             f"{tuple(grid)} the model was trained on",
                             "make the cubes with the training config")
    with CubeReader(cube_path) as r:
        out = {"cluster_id": r.column("cluster_id").astype(np.int64),
               "log10_m200c_true": r.column("log10_m200c").astype(np.float64),
               "log10_m200c_pred": np.full(len(r), np.nan),
               "n_gal": r.column("n_gal").astype(np.int64),
               "n_members": r.column("n_members").astype(np.int64)}
    if ds.n_cubes == 0:
        logger.warning("%s holds no cubes; nothing to predict", cube_path)
        return out
    model = load_keras_model(model_dir / model_file, fix, compile=False)
    for x, sel in ds.iter_inputs():
        z = np.asarray(model.predict_on_batch(ds.model_inputs(x, sel)), dtype=np.float64)[:, 0]
        out["log10_m200c_pred"][sel] = z * std + mean
    ds.close()
    return out
