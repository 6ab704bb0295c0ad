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

Units: masses are log10(M200c / h^-1 Msun); densities per dex; image values are the
normalised KDE (each image sums to 1).
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import zuko
from torch import nn

from .io.cubes import CubeReader
from .io.tables import CatalogueError, atomic_output, write_json
from .settings import ConfigError

__all__ = ["FlowSettings", "FlowResult", "FlowModel", "ImageEmbedding", "build_flow",
           "train_flow", "mass_grid", "training_prior", "pit_from_curves",
           "read_flow_history", "plot_flow_history", "grid_of", "MODEL_FILE", "META_FILE",
           "HISTORY_FILE"]

log = logging.getLogger(__name__)

#: Files of a trained flow in its model directory.
MODEL_FILE = "flow.pt"
META_FILE = "flow.json"
HISTORY_FILE = "history.csv"

_FLOWS = {"nsf": "NSF", "maf": "MAF"}


@dataclass(frozen=True)
class FlowSettings:
    """How the flow is built and trained (the config's ``flow`` section).

    Parameters
    ----------
    input : str
        ``2d``: the (R_proj, v_los) KDE image (the talk's input); ``3d``: the (x, y, v)
        KDE cubes of the CNN3D.
    model : str
        ``nsf`` (rational-quadratic neural spline flow) or ``maf`` (affine autoregressive).
    transforms, bins, hidden_features : int
        Flow transforms, spline bins (nsf) and the width of the two hidden layers of each
        transform's conditioner.
    embedding_channels : tuple of int
        Output channels of the convolutional layers of the embedding network (each:
        convolution with kernel ``embedding_kernel``, "same" padding, ReLU, max-pool 2).
    embedding_kernel : int
        Convolution kernel size (odd).
    embedding_units : int
        Hidden units of the dense layer after the convolutions.
    embedding_features : int
        Size of the learned summary the flow is conditioned on.
    epochs, batch_size, learning_rate, weight_decay, patience : ...
        Adam (decoupled weight decay, AdamW, when ``weight_decay`` > 0) on the NLL; at most
        ``epochs`` epochs, early stopping after ``patience`` epochs without a lower
        validation NLL, best weights restored.
    clip_grad_norm : float
        Gradient-norm clipping (0: none).
    augment : bool
        ``3d`` only: a random one of the 8 sky-plane symmetries of each training cube.
    n_grid_mass : int
        Nodes of the posterior grid.
    mass_margin_dex : float
        The grid spans the training masses widened by this on each side, dex.
    prior_bandwidth : float
        Bandwidth factor (scipy ``bw_method``) of the training-mass prior KDE.
    max_memory_mb : float
        Image sets up to this size are held in memory; larger ones are read per batch.
    input_transform : str
        ``log1p``: the network sees ``log(1 + n_voxels * image)`` (the density relative to
        a flat image, compressed: compact pure-catalogue clusters peak at ~1e3-1e4);
        ``linear``: ``n_voxels * image``. Either is then standardised.
    seed : int
        Seeds the weights, the shuffling and the augmentation.
    """

    input: str = "2d"
    model: str = "nsf"
    transforms: int = 3
    bins: int = 8
    hidden_features: int = 32
    embedding_channels: tuple = (8, 16, 16)
    embedding_kernel: int = 3
    embedding_units: int = 64
    embedding_features: int = 16
    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    patience: int = 30
    clip_grad_norm: float = 5.0
    augment: bool = False
    n_grid_mass: int = 1000
    mass_margin_dex: float = 0.5
    prior_bandwidth: float = 0.2
    max_memory_mb: float = 2000.0
    input_transform: str = "log1p"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "embedding_channels",
                           tuple(int(c) for c in self.embedding_channels))
        if self.input not in ("2d", "3d"):
            raise ValueError(f"FlowSettings.input must be '2d' or '3d', got {self.input!r}")
        if self.input_transform not in ("log1p", "linear"):
            raise ValueError(f"FlowSettings.input_transform must be 'log1p' or 'linear', "
                             f"got {self.input_transform!r}")
        if self.model not in _FLOWS:
            raise ValueError(f"FlowSettings.model must be one of {sorted(_FLOWS)}, "
                             f"got {self.model!r}")
        for name in ("transforms", "bins", "hidden_features", "embedding_units",
                     "embedding_features", "epochs", "batch_size", "patience", "n_grid_mass"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FlowSettings.{name} must be a positive integer, got {v!r}")
        if not self.embedding_channels or min(self.embedding_channels) < 1:
            raise ValueError("FlowSettings.embedding_channels must list >= 1 positive ints")
        if self.embedding_kernel < 1 or self.embedding_kernel % 2 == 0:
            raise ValueError(f"FlowSettings.embedding_kernel must be odd, got "
                             f"{self.embedding_kernel!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"FlowSettings.learning_rate must be > 0, "
                             f"got {self.learning_rate!r}")
        if self.augment and self.input == "2d":
            raise ValueError("FlowSettings.augment applies to input '3d' only: the "
                             "(R_proj, v) image has no exact symmetry left (R_proj is "
                             "already invariant, v -> -v is broken by the flux limit)")

    @classmethod
    def from_dict(cls, d: dict) -> "FlowSettings":
        """Settings from a config-style dict; unknown keys are an error, ``None`` = default."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown flow settings: {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if v is not None})


class ImageEmbedding(nn.Module):
    """Convolutional summary of a KDE image (2-D) or cube (3-D).

    ``len(channels)`` blocks of convolution ("same" padding), ReLU and 2x max-pooling, then
    a dense layer of ``units`` (ReLU) and a linear layer of ``features`` outputs.

    Parameters
    ----------
    shape : tuple of int
        Shape of one input, ``(n, n)`` or ``(n, n, n)``.
    channels, kernel, units, features
        See :class:`FlowSettings`.
    """

    def __init__(self, shape, channels=(8, 16, 16), kernel=3, units=64, features=16):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3):
            raise ValueError(f"ImageEmbedding: inputs must be 2-D or 3-D, got {self.shape}")
        conv = nn.Conv2d if len(self.shape) == 2 else nn.Conv3d
        pool = nn.MaxPool2d if len(self.shape) == 2 else nn.MaxPool3d
        layers, c_in, size = [], 1, np.array(self.shape)
        for c in channels:
            layers += [conv(c_in, int(c), int(kernel), padding=int(kernel) // 2), nn.ReLU(),
                       pool(2)]
            c_in, size = int(c), size // 2
            if size.min() < 1:
                raise ValueError(f"ImageEmbedding: {len(channels)} pooling layers shrink a "
                                 f"{self.shape} input to nothing; use fewer "
                                 f"flow.embedding_channels or a larger grid")
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(c_in * int(size.prod()), units),
                                   nn.ReLU(), nn.Linear(units, features))

    def forward(self, x):
        return self.dense(self.conv(x.reshape(x.shape[0], 1, *self.shape)))


class FlowModel(nn.Module):
    """Embedding network + conditional flow over standardised ``log10 M``.

    The flow models ``t = (log10 M - mass_mean) / mass_sd`` given the embedding of the
    standardised image ``(f(image * n_voxels) - image_mean) / image_sd`` (``f`` = log1p or
    the identity, ``settings.input_transform``); densities in log10 M
    are the flow's divided by ``mass_sd``. Build with :func:`build_flow`, load with
    :meth:`load`.
    """

    def __init__(self, settings: FlowSettings, shape, standardisation: dict):
        super().__init__()
        self.settings = settings
        self.shape = tuple(int(s) for s in shape)
        self.standardisation = {k: float(v) for k, v in standardisation.items()}
        self.embedding = ImageEmbedding(self.shape, settings.embedding_channels,
                                        settings.embedding_kernel, settings.embedding_units,
                                        settings.embedding_features)
        kw = dict(features=1, context=settings.embedding_features,
                  transforms=settings.transforms,
                  hidden_features=(settings.hidden_features,) * 2)
        if settings.model == "nsf":
            kw["bins"] = settings.bins
        self.flow = getattr(zuko.flows, _FLOWS[settings.model])(**kw)
        self.n_voxels = int(np.prod(self.shape))

    # -- standardisation ---------------------------------------------------------------
    def images_to_tensor(self, images) -> torch.Tensor:
        """Standardised float32 tensor of a batch of normalised KDE images."""
        s = self.standardisation
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images of shape {tuple(x.shape[1:])}, the flow was trained on "
                             f"{self.shape}")
        return (self.transform(x * self.n_voxels) - s["image_mean"]) / s["image_sd"]

    def transform(self, x):
        """The input transform (on images scaled by the voxel count): log1p or identity."""
        if self.settings.input_transform == "log1p":
            return torch.log1p(x) if isinstance(x, torch.Tensor) else np.log1p(x)
        return x

    def masses_to_tensor(self, log10_m) -> torch.Tensor:
        s = self.standardisation
        t = (np.asarray(log10_m, dtype=np.float64) - s["mass_mean"]) / s["mass_sd"]
        return torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1)

    # -- densities ---------------------------------------------------------------------
    def nll(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-cluster negative log density of standardised masses ``t`` (nats)."""
        return -self.flow(self.embedding(x)).log_prob(t)

    @torch.no_grad()
    def log_density(self, images, m_grid, *, batch_size: int = 256) -> np.ndarray:
        """``ln P(log10 M | image)`` on ``m_grid`` (log10 h^-1 Msun), shape (N, G), in
        ln(dex^-1); the flow density itself, not renormalised on the grid."""
        self.eval()
        images = np.asarray(images)
        t = self.masses_to_tensor(m_grid).reshape(-1, 1, 1)
        out = np.empty((len(images), t.shape[0]))
        shift = math.log(self.standardisation["mass_sd"])
        for b0 in range(0, len(images), batch_size):
            x = self.images_to_tensor(images[b0:b0 + batch_size])
            lp = self.flow(self.embedding(x)).log_prob(t)          # (G, b)
            out[b0:b0 + len(x)] = lp.double().numpy().T - shift
        return out

    def posterior_curves(self, images, m_grid, *, batch_size: int = 256):
        """Posterior densities on ``m_grid``, normalised there (trapezoid), dex^-1.

        Returns
        -------
        curves : ndarray, shape (N, G)
        grid_mass : ndarray, shape (N,)
            The flow's probability inside the grid before renormalisation (1 when the
            grid holds the whole posterior).
        """
        lp = self.log_density(images, m_grid, batch_size=batch_size)
        g = np.asarray(m_grid, dtype=np.float64)
        dm = (g[-1] - g[0]) / (g.size - 1)
        p = np.exp(lp)
        mass = dm * (p.sum(axis=1) - 0.5 * (p[:, 0] + p[:, -1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            curves = p / mass[:, None]
        curves[~(mass > 0)] = np.nan
        return curves, mass

    @torch.no_grad()
    def sample(self, images, n_samples: int, *, seed: int = 0,
               batch_size: int = 256) -> np.ndarray:
        """``n_samples`` posterior draws of log10 M per image, shape (N, n_samples)."""
        self.eval()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            images = np.asarray(images)
            out = np.empty((len(images), int(n_samples)))
            s = self.standardisation
            for b0 in range(0, len(images), batch_size):
                x = self.images_to_tensor(images[b0:b0 + batch_size])
                t = self.flow(self.embedding(x)).sample((int(n_samples),))[..., 0]  # (S, b)
                out[b0:b0 + len(x)] = t.double().numpy().T * s["mass_sd"] + s["mass_mean"]
            return out
        finally:
            torch.random.set_rng_state(gen_state)

    # -- persistence -------------------------------------------------------------------
    def save(self, model_dir, meta: dict) -> None:
        """Weights to ``flow.pt`` and settings + standardisation + ``meta`` to ``flow.json``
        (both atomically)."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(model_dir / MODEL_FILE) as tmp:
            torch.save(self.state_dict(), tmp)
        write_json(model_dir / META_FILE, dict(
            settings=_settings_json(self.settings), shape=list(self.shape),
            standardisation=self.standardisation, torch=torch.__version__,
            zuko=zuko.__version__, **meta))

    @classmethod
    def load(cls, model_dir) -> tuple["FlowModel", dict]:
        """The trained flow of ``model_dir`` and its metadata (``flow.json``)."""
        model_dir = Path(model_dir)
        meta_path, weights = model_dir / META_FILE, model_dir / MODEL_FILE
        for p in (meta_path, weights):
            if not p.is_file():
                raise CatalogueError(p, "flow", "trained flow file missing",
                                     "run the flow_train rule first")
        try:
            meta = json.loads(meta_path.read_text())
            settings = FlowSettings.from_dict(dict(meta["settings"]))
            model = cls(settings, meta["shape"], meta["standardisation"])
            model.load_state_dict(torch.load(weights, weights_only=True))
        except (KeyError, ValueError, RuntimeError, OSError) as err:
            raise CatalogueError(model_dir, "flow", f"cannot load the trained flow ({err})",
                                 "delete the flow/model directory and rerun flow_train"
                                 ) from err
        model.eval()
        return model, meta


def _settings_json(s: FlowSettings) -> dict:
    d = asdict(s)
    d["embedding_channels"] = list(s.embedding_channels)
    return d


def build_flow(settings: FlowSettings, shape, standardisation: dict) -> FlowModel:
    """A freshly initialised :class:`FlowModel` (weights from ``torch.manual_seed``)."""
    return FlowModel(settings, shape, standardisation)


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


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------

class _Images:
    """Images and masses of one cube/image file: in memory when small, else per batch."""

    def __init__(self, path, max_memory_mb: float):
        self.path = Path(path)
        self.reader = CubeReader(path)
        self.shape = self.reader.shape[1:]
        self.log10_m = self.reader.column("log10_m200c").astype(np.float64)
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


def _d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sky-plane symmetry ``k`` (0-7) of cubes (b, n, n, n) with axes (x, y, v)."""
    if k & 1:
        x = x.flip(1)
    if k & 2:
        x = x.flip(2)
    if k & 4:
        x = x.transpose(1, 2)
    return x


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


def _mean_nll(model, images: _Images, t_all, batch_size) -> float:
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for b0 in range(0, len(images), batch_size):
            idx = np.arange(b0, min(b0 + batch_size, len(images)))
            tot += float(model.nll(model.images_to_tensor(images.batch(idx)),
                                   t_all[idx]).sum())
    return tot / len(images)


def train_flow(train_path, validation_path, model_dir, settings: FlowSettings, *,
               progress: bool = False) -> FlowResult:
    """Train the flow on an image (or cube) file, early-stopped on another.

    Parameters
    ----------
    train_path, validation_path : path-like
        Image/cube files (:mod:`cmpipe.io.cubes` layout) of the training and validation
        splits, with the true ``log10_m200c`` of each.
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
    from tqdm.auto import tqdm

    s = settings
    model_dir = Path(model_dir)
    tr = _Images(train_path, s.max_memory_mb)
    va = _Images(validation_path, s.max_memory_mb)
    try:
        for imgs, name in ((tr, "training"), (va, "validation")):
            _check_finite(imgs, name)
        if len(tr) < 2 or len(va) < 1:
            raise CatalogueError(train_path if len(tr) < 2 else validation_path, "cubes",
                                 f"{len(tr)} training and {len(va)} validation clusters",
                                 "raise splits.fractions.train / splits.validation_fraction "
                                 "or sightlines.target_per_bin")
        if tr.shape != va.shape:
            raise CatalogueError(validation_path, "cubes", f"grid {va.shape} differs from the "
                                 f"training grid {tr.shape}", "rebuild both from one config")
        if (len(tr.shape) == 2) != (s.input == "2d"):
            raise CatalogueError(train_path, "cubes", f"inputs of shape {tr.shape} but "
                                 f"flow.input is {s.input}", "rebuild the flow inputs")
        n_vox = int(np.prod(tr.shape))
        img_mean, img_sd = tr.moments(n_vox, s.input_transform)
        std = dict(mass_mean=float(tr.log10_m.mean()),
                   mass_sd=float(max(tr.log10_m.std(), 1e-3)),
                   image_mean=float(img_mean), image_sd=float(img_sd))
        torch.manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        model = build_flow(s, tr.shape, std)
        n_params = sum(p.numel() for p in model.parameters())
        opt_cls = torch.optim.AdamW if s.weight_decay > 0 else torch.optim.Adam
        opt = opt_cls(model.parameters(), lr=s.learning_rate,
                      **({"weight_decay": s.weight_decay} if s.weight_decay > 0 else {}))
        t_tr = model.masses_to_tensor(tr.log10_m)
        t_va = model.masses_to_tensor(va.log10_m)
        shift = math.log(std["mass_sd"])          # NLL of t -> NLL of log10 M (per dex)
        log.info("flow: %s (%d transforms) on a %s embedding of %s inputs, %d parameters; "
                 "%d training, %d validation clusters", s.model, s.transforms,
                 "x".join(str(c) for c in s.embedding_channels), "x".join(map(str, tr.shape)),
                 n_params, len(tr), len(va))
        best, best_state, wait, history = math.inf, None, 0, []
        bar = tqdm(range(1, s.epochs + 1), desc="flow", unit="epoch", disable=not progress)
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            perm = rng.permutation(len(tr))
            tot = 0.0
            for b0 in range(0, len(tr), s.batch_size):
                idx = perm[b0:b0 + s.batch_size]
                x = model.images_to_tensor(tr.batch(idx))
                if s.augment:
                    x = _d4(x, int(rng.integers(8)))
                loss = model.nll(x, t_tr[idx]).mean()
                opt.zero_grad()
                loss.backward()
                if s.clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
                opt.step()
                tot += loss.item() * len(idx)
            train_nll = tot / len(tr) + shift
            val_nll = _mean_nll(model, va, t_va, 4 * s.batch_size) + shift
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
        _write_history(model_dir / HISTORY_FILE, history)
        return result
    finally:
        tr.close()
        va.close()


def grid_of(meta: dict) -> np.ndarray:
    """The posterior grid stored with a trained flow (``flow.json``)."""
    g = meta["mass_grid"]
    return np.linspace(g["lo"], g["hi"], int(g["n"]))


def _write_history(path: Path, rows):
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["epoch", "loss", "val_loss", "seconds"])
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                            for k, v in r.items()})


def read_flow_history(path) -> dict[str, np.ndarray]:
    """Columns of the flow's ``history.csv``: epoch, loss and val_loss (NLL per cluster,
    nats, of the log10 M density), seconds."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {k: np.array([float(r[k]) for r in rows])
                for k in ("epoch", "loss", "val_loss", "seconds")}
    except (OSError, KeyError, ValueError) as err:
        raise CatalogueError(path, "history", f"unreadable training history ({err})",
                             "rerun the flow_train rule") from err


def plot_flow_history(history_csv, png) -> None:
    """NLL curves of the flow (training and validation against epoch, best epoch marked)."""
    from .plots import plt, save

    h = read_flow_history(history_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(h["epoch"], h["loss"], "-", lw=1.5, label="training")
    ax.plot(h["epoch"], h["val_loss"], "-", lw=1.5, label="validation")
    if h["epoch"].size:
        best = int(np.nanargmin(h["val_loss"]))
        ax.axvline(h["epoch"][best], color="0.5", ls=":",
                   label=f"best epoch {int(h['epoch'][best])} (weights kept)")
        lo = np.nanmin(np.r_[h["loss"], h["val_loss"]])
        hi = np.nanpercentile(np.r_[h["loss"], h["val_loss"]], 95)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"NLL per cluster [nats, density of $\log_{10} M_{200c}$]")
    ax.set_title("Neural flow training")
    ax.legend()
    save(fig, png)
