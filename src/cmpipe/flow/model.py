"""The network of the neural-flow estimator: a convolutional embedding of the KDE image and
a conditional normalizing flow over ``log10 M``, their settings, saving and loading.

The flow is a neural spline flow (or a MAF) from `zuko <https://github.com/probabilists/zuko>`_
(the library the ``sbi`` package builds its ``zuko_nsf`` / ``zuko_maf`` posterior estimators
from), conditioned on a learned summary of the image (:class:`ImageEmbedding`: Conv2d over
the (R_proj, v) image, or Conv3d over the (x, y, v) cubes of the CNN3D when ``input`` is
``3d``) and, with ``distance_input``, on the cluster's standardised comoving distance from
the observer as well (the flow's context is then the embedding with that one number
appended). Training, the posterior grid and the prior are :mod:`cmpipe.flow.training`'s.

Units: masses are log10(M200c / h^-1 Msun); densities per dex; image values are the
normalised KDE (each image sums to 1).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import zuko
from torch import nn

from ..io.cubes import DISTANCE_COLUMN
from ..io.tables import CatalogueError, write_json
from ..io.training import save_torch_state

__all__ = ["FlowSettings", "ImageEmbedding", "FlowModel", "build_flow", "MODEL_FILE",
           "META_FILE", "DISTANCE_COLUMN"]

#: Files of a trained flow in its model directory.
MODEL_FILE = "flow.pt"
META_FILE = "flow.json"

_FLOWS = {"nsf": "NSF", "maf": "MAF"}


@dataclass(frozen=True)
class FlowSettings:
    """How the flow is built and trained (the config's ``flow`` section).

    Parameters
    ----------
    input : str
        ``2d``: the (R_proj, v_los) KDE image (the talk's input); ``3d``: the (x, y, v)
        KDE cubes of the CNN3D; ``set``: the window galaxies themselves, a Deep Sets
        embedding (:mod:`cmpipe.flow.sets`; the ``set_*`` settings).
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
        ``3d`` and ``set``: a random one of the 8 sky-plane symmetries per training batch
        (the cubes' (x, y) axes; the sets' ``x`` and ``y`` features).
    distance_input : bool
        Condition the flow on the cluster's comoving distance from the observer (the image
        files' ``distance_mpc_h``, standardised by the training split's mean and sd) as
        well as on the image embedding: the flux limit makes a near cluster richer than a
        far one of the same mass. ``False``: the image alone (the talk's flow).
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
    set_features : tuple of str
        ``set`` only: the per-galaxy features (:data:`cmpipe.flow.sets.SET_FEATURES`).
    set_pooling : str
        ``set`` only: ``mean``, ``max`` or ``mean_max`` over each set's galaxies.
    set_phi_units : tuple of int
        ``set`` only: widths of the per-galaxy layers (``phi``) of the Deep Sets embedding;
        ``embedding_units`` and ``embedding_features`` size its ``rho``.
    set_richness : bool
        ``set`` only: the set size (log10 of the window's galaxies) joins the pooled summary.
    set_dispersion : bool
        ``set`` only: log10 of the set's velocity dispersion (feature ``v``) joins it too: the
        network then learns the residual about the M-sigma relation.
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
    distance_input: bool = False
    n_grid_mass: int = 1000
    mass_margin_dex: float = 0.5
    prior_bandwidth: float = 0.2
    max_memory_mb: float = 2000.0
    input_transform: str = "log1p"
    seed: int = 0
    set_features: tuple = ("x", "y", "r", "v")
    set_pooling: str = "mean"
    set_phi_units: tuple = (64, 64)
    set_richness: bool = True
    set_dispersion: bool = False

    def __post_init__(self):
        from .sets import POOLINGS, SET_FEATURES

        object.__setattr__(self, "embedding_channels",
                           tuple(int(c) for c in self.embedding_channels))
        object.__setattr__(self, "set_features", tuple(str(f) for f in self.set_features))
        object.__setattr__(self, "set_phi_units", tuple(int(u) for u in self.set_phi_units))
        if self.input not in ("2d", "3d", "set"):
            raise ValueError(f"FlowSettings.input must be '2d', '3d' or 'set', got "
                             f"{self.input!r}")
        unknown = sorted(set(self.set_features) - set(SET_FEATURES))
        if unknown or not self.set_features or len(set(self.set_features)) < len(
                self.set_features):
            raise ValueError(f"FlowSettings.set_features must list distinct features of "
                             f"{', '.join(SET_FEATURES)}, got {list(self.set_features)}")
        if self.set_pooling not in POOLINGS:
            raise ValueError(f"FlowSettings.set_pooling must be one of {', '.join(POOLINGS)}, "
                             f"got {self.set_pooling!r}")
        if not self.set_phi_units or min(self.set_phi_units) < 1:
            raise ValueError("FlowSettings.set_phi_units must list >= 1 positive ints")
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
        if not isinstance(self.distance_input, (bool, np.bool_)):
            raise ValueError(f"FlowSettings.distance_input must be true or false, got "
                             f"{self.distance_input!r}")
        object.__setattr__(self, "distance_input", bool(self.distance_input))
        object.__setattr__(self, "set_richness", bool(self.set_richness))
        object.__setattr__(self, "set_dispersion", bool(self.set_dispersion))
        if self.set_dispersion and "v" not in self.set_features:
            raise ValueError("FlowSettings.set_dispersion needs the feature v")
        if not self.embedding_channels or min(self.embedding_channels) < 1:
            raise ValueError("FlowSettings.embedding_channels must list >= 1 positive ints")
        if self.embedding_kernel < 1 or self.embedding_kernel % 2 == 0:
            raise ValueError(f"FlowSettings.embedding_kernel must be odd, got "
                             f"{self.embedding_kernel!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"FlowSettings.learning_rate must be > 0, "
                             f"got {self.learning_rate!r}")
        if self.augment and self.input == "set" and not {"x", "y"} <= set(self.set_features):
            raise ValueError("FlowSettings.augment with input 'set' needs the features x "
                             "and y (the sky-plane symmetries act on them)")
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
    are the flow's divided by ``mass_sd``. With ``settings.distance_input`` the flow's
    context is the embedding with the standardised distance
    ``(D - distance_mean) / distance_sd`` appended (``D`` in comoving h^-1 Mpc; the
    standardisation must then hold ``distance_mean`` and ``distance_sd``), and every
    density needs the clusters' distances. Build with :func:`build_flow`, load with
    :meth:`load`.
    """

    def __init__(self, settings: FlowSettings, shape, standardisation: dict):
        super().__init__()
        self.settings = settings
        self.shape = tuple(int(s) for s in shape)
        self.standardisation = {k: float(v) for k, v in standardisation.items()}
        if settings.distance_input:
            missing = {"distance_mean", "distance_sd"} - set(self.standardisation)
            if missing:
                raise ValueError(f"a distance-input flow needs {', '.join(sorted(missing))} "
                                 "in its standardisation")
            if not self.standardisation["distance_sd"] > 0:
                raise ValueError(f"distance_sd must be > 0, got "
                                 f"{self.standardisation['distance_sd']!r}")
        if settings.input == "set":
            from .sets import SetEmbedding

            if self.shape != (len(settings.set_features),):
                raise ValueError(f"a set flow of features {settings.set_features} takes "
                                 f"inputs of shape ({len(settings.set_features)},), got "
                                 f"{self.shape}")
            self.embedding = SetEmbedding(self.shape[0], settings.set_phi_units,
                                          settings.set_pooling, settings.embedding_units,
                                          settings.embedding_features, settings.set_richness,
                                          settings.set_features.index("v")
                                          if settings.set_dispersion else None)
        else:
            self.embedding = ImageEmbedding(self.shape, settings.embedding_channels,
                                            settings.embedding_kernel,
                                            settings.embedding_units,
                                            settings.embedding_features)
        kw = dict(features=1,
                  context=settings.embedding_features + int(settings.distance_input),
                  transforms=settings.transforms,
                  hidden_features=(settings.hidden_features,) * 2)
        if settings.model == "nsf":
            kw["bins"] = settings.bins
        self.flow = getattr(zuko.flows, _FLOWS[settings.model])(**kw)
        self.n_voxels = int(np.prod(self.shape))

    # -- standardisation ---------------------------------------------------------------
    def images_to_tensor(self, images) -> torch.Tensor:
        """Standardised float32 tensor of a batch of normalised KDE images (for a set flow:
        the :class:`~cmpipe.flow.sets.SetBatch` of a :class:`~cmpipe.flow.sets.GalaxySets`
        batch, :meth:`sets_to_tensor`)."""
        if self.settings.input == "set":
            return self.sets_to_tensor(images)
        s = self.standardisation
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images of shape {tuple(x.shape[1:])}, the flow was trained on "
                             f"{self.shape}")
        return (self.transform(x * self.n_voxels) - s["image_mean"]) / s["image_sd"]

    def sets_to_tensor(self, sets):
        """The standardised :class:`~cmpipe.flow.sets.SetBatch` of a batch of galaxy sets
        (:class:`~cmpipe.flow.sets.GalaxySets` of this flow's features)."""
        from .sets import SetBatch

        if sets.n_features != self.shape[0]:
            raise ValueError(f"galaxy sets of {sets.n_features} features, the flow was "
                             f"trained on {self.shape[0]} ({', '.join(self.settings.set_features)})")
        s = self.standardisation
        names = self.settings.set_features
        mean = np.array([s[f"set_mean_{n}"] for n in names], dtype=np.float32)
        sd = np.array([s[f"set_sd_{n}"] for n in names], dtype=np.float32)
        feats = ((sets.features - mean) / sd).astype(np.float32)
        counts = sets.counts
        index = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        log_n = (np.log10(np.maximum(counts, 1)) - s["log_n_mean"]) / s["log_n_sd"]
        return SetBatch(torch.as_tensor(feats), torch.as_tensor(index),
                        torch.as_tensor(counts), torch.as_tensor(log_n.astype(np.float32)
                                                                 ).reshape(-1, 1))

    def augmented(self, x, k: int):
        """Sky-plane symmetry ``k`` (0-7) of a standardised batch: flips and the transpose of
        the cubes' (x, y) axes, or of the sets' ``x`` and ``y`` features."""
        if self.settings.input != "set":
            if k & 1:
                x = x.flip(1)
            if k & 2:
                x = x.flip(2)
            return x.transpose(1, 2) if k & 4 else x
        from .sets import SetBatch

        names = list(self.settings.set_features)
        ix, iy = names.index("x"), names.index("y")
        f = x.features.clone()
        if k & 1:
            f[..., ix] = -f[..., ix]
        if k & 2:
            f[..., iy] = -f[..., iy]
        if k & 4:
            f[..., [ix, iy]] = f[..., [iy, ix]]
        return SetBatch(f, x.index, x.counts, x.log_n)

    def batchable(self, inputs):
        """``inputs`` as the density methods slice them: an array of images, or the
        :class:`~cmpipe.flow.sets.GalaxySets` of a set flow as they are."""
        return inputs if self.settings.input == "set" else np.asarray(inputs)

    def transform(self, x):
        """The input transform (on images scaled by the voxel count): log1p or identity."""
        if self.settings.input_transform == "log1p":
            return torch.log1p(x) if isinstance(x, torch.Tensor) else np.log1p(x)
        return x

    def masses_to_tensor(self, log10_m) -> torch.Tensor:
        s = self.standardisation
        t = (np.asarray(log10_m, dtype=np.float64) - s["mass_mean"]) / s["mass_sd"]
        return torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1)

    def distances_to_tensor(self, distance_mpc_h, n: int | None = None, *,
                            source=None) -> torch.Tensor | None:
        """Standardised float32 ``(N, 1)`` distances of ``N`` (= ``n`` when given)
        clusters, or ``None`` for a distance-blind flow (which ignores any distances).

        Raises :class:`~cmpipe.io.tables.CatalogueError` naming ``source`` (the image file)
        and its ``distance_mpc_h`` when given, else :class:`ValueError`, for a
        distance-input flow given no distances, the wrong number, or non-finite ones."""
        if not self.settings.distance_input:
            return None
        problem = fix = None
        if distance_mpc_h is None:
            problem = ("the flow was trained with flow.distance_input but was given no "
                       "distances from the observer")
            fix = "pass the clusters' distance_mpc_h (comoving h^-1 Mpc)"
        else:
            d = np.asarray(distance_mpc_h, dtype=np.float64).reshape(-1)
            bad = int(np.count_nonzero(~np.isfinite(d)))
            if n is not None and d.size != n:
                problem = f"{d.size} distances for {n} clusters"
                fix = "give one distance per image"
            elif bad:
                problem = (f"{bad} of {d.size} clusters have no finite distance from the "
                           "observer, which the distance-input flow needs")
                fix = ("give every cluster a redshift (survey) or an observer distance "
                       "(mock) and rebuild the images")
        if problem is not None:
            if source is not None:
                raise CatalogueError(source, DISTANCE_COLUMN, problem, fix)
            raise ValueError(f"{DISTANCE_COLUMN}: {problem}. Fix: {fix}")
        s = self.standardisation
        t = (d - s["distance_mean"]) / s["distance_sd"]
        return torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1)

    def context(self, x: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """The flow's context: the embedding of standardised images ``x``, with the
        standardised distances ``d`` (:meth:`distances_to_tensor`) appended for a
        distance-input flow."""
        e = self.embedding(x)
        if not self.settings.distance_input:
            return e
        if d is None:
            raise ValueError("the flow was trained with flow.distance_input: give the "
                             "clusters' standardised distances (distances_to_tensor)")
        if d.shape != (e.shape[0], 1):
            raise ValueError(f"distances of shape {tuple(d.shape)} for {e.shape[0]} images")
        return torch.cat([e, d.to(e.dtype)], dim=1)

    # -- densities ---------------------------------------------------------------------
    def nll(self, x: torch.Tensor, t: torch.Tensor,
            d: torch.Tensor | None = None) -> torch.Tensor:
        """Per-cluster negative log density of standardised masses ``t`` (nats), given
        standardised images ``x`` (and distances ``d`` for a distance-input flow)."""
        return -self.flow(self.context(x, d)).log_prob(t)

    @torch.no_grad()
    def log_density(self, images, m_grid, distance_mpc_h=None, *, batch_size: int = 64,
                    source=None) -> np.ndarray:
        """``ln P(log10 M | image[, distance])`` on ``m_grid`` (log10 h^-1 Msun), shape
        (N, G), in ln(dex^-1); the flow density itself, not renormalised on the grid.

        ``distance_mpc_h`` (N,): the clusters' comoving distances from the observer, needed
        by a distance-input flow (ignored otherwise); ``source``: the file they come from,
        named by the error when they are missing or not finite. ``batch_size``: clusters
        per pass; 64 was the fastest on the default run's 1,000-node grid (0.71 s for its
        2,947 eval images against 1.09 s at 256: the grid times the batch stays in cache)."""
        self.eval()
        images = self.batchable(images)
        d_all = self.distances_to_tensor(distance_mpc_h, len(images), source=source)
        t = self.masses_to_tensor(m_grid).reshape(-1, 1, 1)
        out = np.empty((len(images), t.shape[0]))
        shift = math.log(self.standardisation["mass_sd"])
        for b0 in range(0, len(images), batch_size):
            x = self.images_to_tensor(images[b0:b0 + batch_size])
            d = None if d_all is None else d_all[b0:b0 + batch_size]
            lp = self.flow(self.context(x, d)).log_prob(t)          # (G, b)
            out[b0:b0 + len(x)] = lp.double().numpy().T - shift
        return out

    def posterior_curves(self, images, m_grid, distance_mpc_h=None, *,
                         batch_size: int = 64, source=None):
        """Posterior densities on ``m_grid``, normalised there (trapezoid), dex^-1
        (``distance_mpc_h``, ``source``: as for :meth:`log_density`).

        Returns
        -------
        curves : ndarray, shape (N, G)
        grid_mass : ndarray, shape (N,)
            The flow's probability inside the grid before renormalisation (1 when the
            grid holds the whole posterior).
        """
        lp = self.log_density(images, m_grid, distance_mpc_h, batch_size=batch_size,
                              source=source)
        g = np.asarray(m_grid, dtype=np.float64)
        dm = (g[-1] - g[0]) / (g.size - 1)
        p = np.exp(lp)
        mass = dm * (p.sum(axis=1) - 0.5 * (p[:, 0] + p[:, -1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            curves = p / mass[:, None]
        curves[~(mass > 0)] = np.nan
        return curves, mass

    @torch.no_grad()
    def sample(self, images, n_samples: int, distance_mpc_h=None, *, seed: int = 0,
               batch_size: int = 64, source=None) -> np.ndarray:
        """``n_samples`` posterior draws of log10 M per image, shape (N, n_samples)
        (``distance_mpc_h``, ``source``: as for :meth:`log_density`)."""
        self.eval()
        images = self.batchable(images)
        d_all = self.distances_to_tensor(distance_mpc_h, len(images), source=source)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            out = np.empty((len(images), int(n_samples)))
            s = self.standardisation
            for b0 in range(0, len(images), batch_size):
                x = self.images_to_tensor(images[b0:b0 + batch_size])
                d = None if d_all is None else d_all[b0:b0 + batch_size]
                t = self.flow(self.context(x, d)).sample((int(n_samples),))[..., 0]  # (S, b)
                out[b0:b0 + len(x)] = t.double().numpy().T * s["mass_sd"] + s["mass_mean"]
            return out
        finally:
            torch.random.set_rng_state(gen_state)

    # -- persistence -------------------------------------------------------------------
    def save(self, model_dir, meta: dict) -> None:
        """Weights to ``flow.pt`` and settings + standardisation (with ``distance_mean``,
        ``distance_sd`` for a distance-input flow) + ``meta`` to ``flow.json`` (both
        atomically)."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        save_torch_state(self.state_dict(), model_dir / MODEL_FILE)
        write_json(model_dir / META_FILE, dict(
            settings=_settings_json(self.settings), shape=list(self.shape),
            standardisation=self.standardisation, torch=torch.__version__,
            zuko=zuko.__version__, **meta))

    @classmethod
    def load(cls, model_dir) -> tuple["FlowModel", dict]:
        """The trained flow of ``model_dir`` and its metadata (``flow.json``); a flow saved
        before ``distance_input`` existed loads as distance-blind."""
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
    for k in ("embedding_channels", "set_features", "set_phi_units"):
        d[k] = list(d[k])
    return d


def build_flow(settings: FlowSettings, shape, standardisation: dict) -> FlowModel:
    """A freshly initialised :class:`FlowModel` (weights from ``torch.manual_seed``)."""
    return FlowModel(settings, shape, standardisation)

