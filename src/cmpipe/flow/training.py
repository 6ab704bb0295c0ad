"""The neural-flow mass estimator: the posterior ``P(log M | KDE image)`` learned directly.

Kodi Ramanah et al. (2020, arXiv:2003.05951; the talk's first method): a conditional
normalizing flow models the density of ``log10 M200c`` given the normalised 2-D Gaussian
KDE of a cluster's ``(R_proj, v_los)`` phase space, trained on (M, image) pairs by
minimising the negative log-likelihood -- neural posterior estimation (NPE). Here:

- the flow is a neural spline flow (or a MAF) from `zuko <https://github.com/probabilists/zuko>`_
  (the library the ``sbi`` package builds its ``zuko_nsf`` / ``zuko_maf`` posterior
  estimators from), conditioned on a learned summary of the image;
- the summary is a small convolutional embedding network (Conv2d over the (R_proj, v)
  image, or Conv3d over the (x, y, v) cubes of the CNN3D when ``input`` is ``3d``), trained
  jointly with the flow;
- with ``distance_input`` (config ``flow.distance_input``) the flow is conditioned on the
  cluster's comoving distance from the observer as well, ``P(log M | image, D)``: the
  image files' ``distance_mpc_h`` (a mock cluster's observer distance, a survey cluster's
  from its redshift), standardised by the training split's mean and sd, is appended to the
  embedding as the flow's context. The flux limit thins a far cluster's galaxies, so the
  same image means a larger mass farther away. Every density (training, validation,
  posteriors, PIT) then takes the clusters' distances; a missing or non-finite one is an
  error naming the file;
- training uses the pipeline's own splits: the training split for the gradient steps and
  the validation split (halo-disjoint from it) for early stopping, with the best weights
  restored; every random stream is seeded;
- a cluster's posterior is the flow density evaluated on a uniform ``log10 M`` grid (exact
  for a one-dimensional parameter: no sampling noise), summarised with
  :func:`cmpipe.massfunction.summarise_grid_posteriors`, the definitions of the CNN3D + SBI
  posteriors (parabolic MAP, trapezoidal moments, 15.87/84.13% and 2.5/97.5% quantiles).

The posterior is conditioned on the training set's mass distribution as its prior (flat
in log M by construction, like the test-set prior of the SBI step); that prior, a Gaussian
KDE of the training masses on the posterior grid, is stored with the model so that the
survey stage can re-weight by a population prior exactly as for the CNN3D + SBI posteriors.

The network (:class:`FlowSettings`, :class:`ImageEmbedding`, :class:`FlowModel`, saving
and loading) is defined in :mod:`cmpipe.flow.model` and re-exported here; this module
trains it (:func:`train_flow`) and holds the posterior grid, prior and PIT helpers.

Units: masses are log10(M200c / h^-1 Msun); densities per dex; image values are the
normalised KDE (each image sums to 1).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import (DISTANCE_COLUMN, META_FILE, MODEL_FILE, FlowModel, FlowSettings,
                    ImageEmbedding, build_flow)
from ..io.cubes import CubeReader
from ..io.cubes import distance_standardisation as io_distance_standardisation
from ..io.tables import CatalogueError
from ..io.training import read_flow_history, write_flow_history
from ..settings import ConfigError

__all__ = ["FlowSettings", "FlowResult", "FlowModel", "ImageEmbedding", "build_flow",
           "train_flow", "open_inputs", "mass_grid", "training_prior", "pit_from_curves",
           "read_flow_history", "grid_of", "distance_standardisation", "MODEL_FILE",
           "META_FILE", "HISTORY_FILE", "DISTANCE_COLUMN"]

log = logging.getLogger(__name__)

#: Training history of a flow in its model directory (beside :data:`MODEL_FILE`,
#: :data:`META_FILE`).
HISTORY_FILE = "history.csv"


def mass_grid(log10_m_train, settings: FlowSettings) -> np.ndarray:
    """The posterior grid: the training masses +- ``mass_margin_dex``, ``n_grid_mass``
    uniform nodes, log10 h^-1 Msun."""
    m = np.asarray(log10_m_train, dtype=np.float64)
    return np.linspace(m.min() - settings.mass_margin_dex, m.max() + settings.mass_margin_dex,
                       settings.n_grid_mass)


def training_prior(log10_m_train, m_grid, bandwidth: float = 0.2) -> np.ndarray:
    """Gaussian KDE (scipy ``bw_method=bandwidth``) of the training masses on ``m_grid``,
    normalised there, dex^-1: the prior the flow's posteriors are conditioned on."""
    from scipy.stats import gaussian_kde

    g = np.asarray(m_grid, dtype=np.float64)
    p = gaussian_kde(np.asarray(log10_m_train, dtype=np.float64), bw_method=bandwidth)(g)
    dm = (g[-1] - g[0]) / (g.size - 1)
    return p / (dm * (p.sum() - 0.5 * (p[0] + p[-1])))


def pit_from_curves(m_grid, curves, log10_m_true) -> np.ndarray:
    """Posterior CDF at the true mass (PIT), from densities on a uniform grid: trapezoidal
    CDF at the nodes, linear in between; 0 below the grid, 1 above, NaN for NaN rows."""
    g = np.asarray(m_grid, dtype=np.float64)
    p = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    dm = (g[-1] - g[0]) / (g.size - 1)
    cdf = np.zeros_like(p)
    np.cumsum(0.5 * dm * (p[:, 1:] + p[:, :-1]), axis=1, out=cdf[:, 1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf /= cdf[:, -1:]
    u = np.clip((np.asarray(log10_m_true, dtype=np.float64) - g[0]) / dm, 0.0, g.size - 1.0)
    k = np.minimum(u.astype(np.int64), g.size - 2)
    f = u - k
    rows = np.arange(p.shape[0])
    return (1.0 - f) * cdf[rows, k] + f * cdf[rows, k + 1]


def distance_standardisation(distance_mpc_h) -> dict:
    """``distance_mean`` and ``distance_sd`` of the training clusters' comoving distances,
    h^-1 Mpc (:func:`cmpipe.io.cubes.distance_standardisation`, as for the CNNs)."""
    mean, sd = io_distance_standardisation(distance_mpc_h)
    return dict(distance_mean=mean, distance_sd=sd)


def grid_of(meta: dict) -> np.ndarray:
    """The posterior grid stored with a trained flow (``flow.json``)."""
    g = meta["mass_grid"]
    return np.linspace(g["lo"], g["hi"], int(g["n"]))


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------

class _Images:
    """Images, masses and distances of one cube/image file: images in memory when small,
    else read per batch."""

    def __init__(self, path, max_memory_mb: float):
        self.path = Path(path)
        self.reader = CubeReader(path)
        self.shape = self.reader.shape[1:]
        self.kind = "2d" if len(self.shape) == 2 else "3d"
        self.log10_m = self.reader.column("log10_m200c").astype(np.float64)
        self.distance = self.reader.column(DISTANCE_COLUMN).astype(np.float64)
        size_mb = 4.0 * self.reader.shape[0] * int(np.prod(self.shape)) / 2 ** 20
        self.data = self.reader.cubes(0, len(self.reader)) if size_mb <= max_memory_mb \
            else None

    def __len__(self):
        return len(self.log10_m)

    def batch(self, idx) -> np.ndarray:
        if self.data is not None:
            return self.data[idx]
        order = np.argsort(idx)
        out = np.empty((len(idx),) + self.shape, dtype=np.float32)
        out[order] = self.reader.take(np.asarray(idx)[order])
        return out

    def batches(self, perm, batch_size: int) -> list:
        """Consecutive batches of the shuffled order ``perm``."""
        return [perm[b0:b0 + batch_size] for b0 in range(0, len(perm), batch_size)]

    def input_standardisation(self, s: FlowSettings) -> dict:
        """``image_mean`` and ``image_sd`` of the transformed training images."""
        mean, sd = self.moments(int(np.prod(self.shape)), s.input_transform)
        return dict(image_mean=float(mean), image_sd=float(sd))

    def moments(self, n_voxels: int, transform: str, chunk: int = 256):
        """Mean and sd of all image values, scaled by the voxel count and transformed."""
        s = s2 = 0.0
        for i0 in range(0, len(self), chunk):
            x = self.batch(np.arange(i0, min(i0 + chunk, len(self)))).astype(np.float64)
            x *= n_voxels
            if transform == "log1p":
                x = np.log1p(x)
            s += x.sum()
            s2 += (x ** 2).sum()
        n = len(self) * n_voxels
        mean = s / n
        return mean, math.sqrt(max(s2 / n - mean ** 2, 1e-30))

    def close(self):
        self.reader.close()


def _check_finite(images: _Images, split: str):
    bad = ~np.isfinite(images.log10_m)
    if bad.any():
        raise CatalogueError(images.path, "log10_m200c", f"{int(bad.sum())} {split} clusters "
                             "have no finite true mass", "rebuild the images from the mock")


def open_inputs(path, s: FlowSettings):
    """The training inputs of a file: images/cubes, or galaxy sets with ``input`` set
    (:class:`cmpipe.flow.sets.SetInputs`)."""
    if s.input == "set":
        from .sets import SetInputs

        return SetInputs(path, s.set_features)
    return _Images(path, s.max_memory_mb)


@dataclass
class FlowResult:
    """Outcome of :func:`train_flow`."""

    n_params: int
    epochs_run: int
    best_epoch: int
    best_val_nll: float
    stopped_early: bool
    n_train: int
    n_validation: int
    history: list = field(default_factory=list)


def _mean_nll(model, images: _Images, t_all, d_all, batch_size) -> float:
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for b0 in range(0, len(images), batch_size):
            idx = np.arange(b0, min(b0 + batch_size, len(images)))
            tot += float(model.nll(model.images_to_tensor(images.batch(idx)), t_all[idx],
                                   None if d_all is None else d_all[idx]).sum())
    return tot / len(images)


def _check_images(tr: _Images, va: _Images, train_path, validation_path,
                  s: FlowSettings) -> None:
    """Finite true masses (and distances with ``distance_input``), enough clusters, one
    grid, and inputs of ``flow.input``."""
    for imgs, name in ((tr, "training"), (va, "validation")):
        _check_finite(imgs, name)
        bad = int(np.count_nonzero(~np.isfinite(imgs.distance)))
        if s.distance_input and bad:
            raise CatalogueError(imgs.path, DISTANCE_COLUMN, f"{bad} {name} clusters have "
                                 "no finite distance from the observer, which "
                                 "flow.distance_input needs", "rebuild the images from the "
                                 "mock, or set flow.distance_input: false")
    if len(tr) < 2 or len(va) < 1:
        raise CatalogueError(train_path if len(tr) < 2 else validation_path, "cubes",
                             f"{len(tr)} training and {len(va)} validation clusters",
                             "raise splits.fractions.train / splits.validation_fraction "
                             "or sightlines.target_per_bin")
    if tr.shape != va.shape:
        raise CatalogueError(validation_path, "cubes", f"grid {va.shape} differs from the "
                             f"training grid {tr.shape}", "rebuild both from one config")
    if tr.kind != s.input:
        raise CatalogueError(train_path, "cubes", f"inputs of kind {tr.kind} (shape "
                             f"{tr.shape}) but the flow's input is {s.input}",
                             "rebuild the flow inputs")
    if len(tr) and (s.input == "set") and np.any(tr.sets.counts < 1):
        raise CatalogueError(train_path, "galaxies", "a training cluster has no galaxy",
                             "rebuild the set inputs with mock.min_galaxies >= 1")


def _standardisation(tr: _Images, s: FlowSettings) -> dict:
    """Mean and sd of the training masses (log10 h^-1 Msun; sd at least 1e-3 dex), of
    the transformed training image values, and with ``distance_input`` of the training
    distances (:func:`distance_standardisation`)."""
    std = dict(mass_mean=float(tr.log10_m.mean()),
               mass_sd=float(max(tr.log10_m.std(), 1e-3)), **tr.input_standardisation(s))
    if s.distance_input:
        std.update(distance_standardisation(tr.distance))
    return std


def _optimizer(model: FlowModel, s: FlowSettings):
    """Adam, or AdamW when ``weight_decay`` > 0."""
    opt_cls = torch.optim.AdamW if s.weight_decay > 0 else torch.optim.Adam
    return opt_cls(model.parameters(), lr=s.learning_rate,
                   **({"weight_decay": s.weight_decay} if s.weight_decay > 0 else {}))


def _train_epoch(model: FlowModel, opt, tr: _Images, t_tr, d_tr, rng,
                 s: FlowSettings) -> float:
    """One pass over the training set in a fresh permutation from ``rng`` (then one D4
    element per batch from ``rng`` when augmenting); the summed NLL (nats of t). ``d_tr``:
    the standardised distances, or ``None`` for a distance-blind flow."""
    model.train()
    perm = rng.permutation(len(tr))
    tot = 0.0
    for idx in tr.batches(perm, s.batch_size):
        x = model.images_to_tensor(tr.batch(idx))
        if s.augment:
            x = model.augmented(x, int(rng.integers(8)))
        loss = model.nll(x, t_tr[idx], None if d_tr is None else d_tr[idx]).mean()
        opt.zero_grad()
        loss.backward()
        if s.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
        opt.step()
        tot += loss.item() * len(idx)
    return tot


def _fit(model: FlowModel, opt, tr: _Images, va: _Images, rng, shift: float,
         s: FlowSettings, progress: bool) -> tuple[float, list]:
    """Epochs until ``s.epochs`` or ``s.patience`` epochs without a lower validation NLL;
    the best epoch's weights are loaded into ``model``. Returns the best validation NLL
    (nats per cluster of the log10 M density) and the history (one dict per epoch)."""
    from tqdm.auto import tqdm

    t_tr = model.masses_to_tensor(tr.log10_m)
    t_va = model.masses_to_tensor(va.log10_m)
    d_tr = model.distances_to_tensor(tr.distance, len(tr), source=tr.path)
    d_va = model.distances_to_tensor(va.distance, len(va), source=va.path)
    best, best_state, wait, history = math.inf, None, 0, []
    bar = tqdm(range(1, s.epochs + 1), desc="flow", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        tot = _train_epoch(model, opt, tr, t_tr, d_tr, rng, s)
        train_nll = tot / len(tr) + shift
        val_nll = _mean_nll(model, va, t_va, d_va, 4 * s.batch_size) + shift
        if not (math.isfinite(train_nll) and math.isfinite(val_nll)):
            raise ConfigError(f"flow training diverged at epoch {epoch} (NLL "
                              f"{train_nll}, validation {val_nll}). Fix: lower "
                              "flow.learning_rate or set flow.clip_grad_norm")
        improved = val_nll < best
        if improved:
            best, best_state, wait = val_nll, copy.deepcopy(model.state_dict()), 0
        else:
            wait += 1
        history.append(dict(epoch=epoch, loss=train_nll, val_loss=val_nll,
                            seconds=time.perf_counter() - t0))
        bar.set_postfix(loss=f"{train_nll:.3f}", val=f"{val_nll:.3f}")
        log.info("flow epoch %d: NLL %.4f, validation NLL %.4f (best %.4f, wait %d/%d)",
                 epoch, train_nll, val_nll, best, wait, s.patience)
        if wait >= s.patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    return best, history


def train_flow(train_path, validation_path, model_dir, settings: FlowSettings, *,
               progress: bool = False) -> FlowResult:
    """Train the flow on an image (or cube) file, early-stopped on another.

    Parameters
    ----------
    train_path, validation_path : path-like
        Image/cube files (:mod:`cmpipe.io.cubes` layout) of the training and validation
        splits, with the true ``log10_m200c`` of each (and its ``distance_mpc_h``, which
        must be finite with ``settings.distance_input``).
    model_dir : path-like
        Where ``flow.pt``, ``flow.json`` and ``history.csv`` are written.
    settings : FlowSettings
    progress : bool
        tqdm bar over epochs.

    Returns
    -------
    FlowResult
        The best epoch's validation NLL is per cluster, in nats of log10 M (dex).
    """
    s = settings
    model_dir = Path(model_dir)
    tr = open_inputs(train_path, s)
    va = open_inputs(validation_path, s)
    try:
        _check_images(tr, va, train_path, validation_path, s)
        std = _standardisation(tr, s)
        torch.manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        model = build_flow(s, tr.shape, std)
        n_params = sum(p.numel() for p in model.parameters())
        opt = _optimizer(model, s)
        shift = math.log(std["mass_sd"])          # NLL of t -> NLL of log10 M (per dex)
        emb = (f"Deep Sets ({s.set_pooling} of phi {'x'.join(map(str, s.set_phi_units))}) "
               f"embedding of galaxy sets ({', '.join(s.set_features)})" if s.input == "set"
               else f"{'x'.join(map(str, s.embedding_channels))} embedding of "
                    f"{'x'.join(map(str, tr.shape))} inputs")
        log.info("flow: %s (%d transforms) on a %s%s, %d parameters; %d training, %d "
                 "validation clusters", s.model, s.transforms, emb,
                 " and the distance" if s.distance_input else "", n_params, len(tr), len(va))
        best, history = _fit(model, opt, tr, va, rng, shift, s, progress)
        best_epoch = int(np.argmin([h["val_loss"] for h in history])) + 1
        g = mass_grid(tr.log10_m, s)
        result = FlowResult(n_params=n_params, epochs_run=len(history), best_epoch=best_epoch,
                            best_val_nll=float(best), stopped_early=len(history) < s.epochs,
                            n_train=len(tr), n_validation=len(va), history=history)
        model.save(model_dir, dict(
            mass_grid=dict(lo=float(g[0]), hi=float(g[-1]), n=int(g.size)),
            training_mass_range=[float(tr.log10_m.min()), float(tr.log10_m.max())],
            training_prior=training_prior(tr.log10_m, g, s.prior_bandwidth).tolist(),
            training=dict(n_params=n_params, epochs_run=len(history), best_epoch=best_epoch,
                          best_val_nll=float(best), stopped_early=result.stopped_early,
                          n_train=len(tr), n_validation=len(va),
                          train_file=str(train_path), validation_file=str(validation_path),
                          nll_unit="nats per cluster, density of log10 M200c (dex^-1)")))
        write_flow_history(model_dir / HISTORY_FILE, history)
        return result
    finally:
        tr.close()
        va.close()
