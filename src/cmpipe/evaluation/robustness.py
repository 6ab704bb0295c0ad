"""Robustness of the trained CNN3D + SBI estimator to survey imperfections (talk slides).

The trained network and its test-set calibration are applied, *unchanged*, to eval
clusters perturbed the way a real spectroscopic survey perturbs them:

incompleteness (level ``f`` in [0, 1))
    Every window galaxy is lost independently with probability ``f`` (fibre collisions,
    spectroscopic failures: random loss of 10-50% of the redshifts).
velocity_error (level ``sigma`` in km/s)
    Every galaxy's line-of-sight velocity gets an independent Gaussian error of standard
    deviation ``sigma`` (30-100 km/s for SDSS-like spectra); galaxies pushed beyond the
    velocity window ``|v_los| <= V`` are dropped, as the window cut would drop them. The
    cluster rest frame is left as it is (its redshift is an average over many galaxies,
    with an error ``sigma / sqrt(N)`` far below the error of one galaxy); galaxies just
    outside the window that an error would scatter *in* are not in the mock, so the cut
    loses slightly more than it gains at the window edge (a ~``sigma / V`` effect).

Clusters left with fewer than ``min_galaxies`` galaxies are no longer clusters of the
sample (the mock's richness cut) and are left out of the comparison; the number is
reported. The perturbed clusters go through exactly the pipeline's preprocessing (same KDE
grid and bandwidth), the same network and the same joint PDF. Every number compares the
perturbed posteriors with the unperturbed ones *of the same clusters*: the bias shift is
the mean of the paired residual differences, with its standard error.

A perturbation of level 0 returns the galaxies untouched, so its predictions are
identical to the unperturbed ones (the tests check this bit for bit).

Verdict (:func:`verdict`): retraining with matching perturbations (perturbing the
training *and* the test/calibration mocks the same way, which is what simulation-based
inference prescribes) is recommended when the calibrated posteriors stop covering the
truth — a 68% or 95% coverage below its nominal level by more than ``coverage_sigma``
binomial standard errors — or when the mean residual shifts by more than
``max_bias_shift_dex`` *and* by more than ``coverage_sigma`` standard errors. Coverage
above nominal (conservative posteriors) and a larger scatter alone do not call for
retraining: SBI posteriors of a sub-optimal summary are wider, not wrong.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..calibration import JointPDF, summarise
from .metrics import (DEFAULT_MASS_BINS, NOMINAL_68, NOMINAL_95, binned_scatter, coverage,
                      residuals, scatter_stats)

__all__ = [
    "KINDS",
    "Perturbation",
    "perturbations",
    "perturb_galaxies",
    "predict_inputs",
    "compare",
    "verdict",
]

logger = logging.getLogger(__name__)

#: Perturbation kinds and the unit of their level.
KINDS = {"incompleteness": "fraction of galaxies lost", "velocity_error": "km/s (Gaussian sd)"}


@dataclass(frozen=True)
class Perturbation:
    """One survey perturbation.

    Attributes
    ----------
    kind : {"incompleteness", "velocity_error"}
    level : float
        Fraction of galaxies lost (``0 <= level < 1``) or velocity error sd in km/s
        (``level >= 0``).
    """

    kind: str
    level: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"perturbation kind must be one of {sorted(KINDS)}, "
                             f"got {self.kind!r}")
        lv = float(self.level)
        if not math.isfinite(lv) or lv < 0 or (self.kind == "incompleteness" and lv >= 1):
            raise ValueError(f"{self.kind} level must be "
                             f"{'in [0, 1)' if self.kind == 'incompleteness' else '>= 0'}, "
                             f"got {self.level!r}")
        object.__setattr__(self, "level", lv)

    @property
    def label(self) -> str:
        """``incompleteness 30%`` or ``velocity error 60 km/s``."""
        if self.kind == "incompleteness":
            return f"incompleteness {100 * self.level:g}%"
        return f"velocity error {self.level:g} km/s"

    @property
    def key(self) -> str:
        """Stable name, e.g. ``incompleteness_0.3`` (also the random-stream name)."""
        return f"{self.kind}_{self.level:g}"


def perturbations(incompleteness=(), velocity_error_kms=()) -> list[Perturbation]:
    """The perturbations of the config lists, incompleteness first, in list order."""
    return ([Perturbation("incompleteness", f) for f in incompleteness]
            + [Perturbation("velocity_error", s) for s in velocity_error_kms])


def perturb_galaxies(x_mpc_h, y_mpc_h, v_kms, offsets, perturbation: Perturbation,
                     rng: np.random.Generator, *, v_max_kms: float = 2200.0,
                     min_galaxies: int = 3) -> dict:
    """Apply one perturbation to the window galaxies of many clusters.

    Parameters
    ----------
    x_mpc_h, y_mpc_h : array_like, shape (N_total,)
        Projected positions relative to each cluster centre, proper h^-1 Mpc.
    v_kms : array_like, shape (N_total,)
        Line-of-sight velocities relative to each cluster centre, km/s.
    offsets : array_like of int, shape (n_clusters + 1,)
        Cluster ``k`` is rows ``offsets[k]:offsets[k+1]``.
    perturbation : Perturbation
    rng : numpy.random.Generator
        Source of the random loss / velocity errors (draws are made even at level 0, so a
        stream's later draws do not depend on the level; level 0 changes nothing).
    v_max_kms : float
        Velocity half-width of the window, km/s; perturbed velocities beyond it are cut.
    min_galaxies : int
        Clusters left with fewer galaxies are marked not kept.

    Returns
    -------
    dict
        ``x_mpc_h``, ``y_mpc_h``, ``v_kms`` (the surviving galaxies of the *kept* clusters,
        in cluster order), ``offsets`` (into those, length ``n_kept + 1``), ``kept`` (bool
        per input cluster) and ``n_gal`` (galaxies left per input cluster).
    """
    x = np.asarray(x_mpc_h, dtype=np.float64)
    y = np.asarray(y_mpc_h, dtype=np.float64)
    v = np.asarray(v_kms, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_tot = x.size
    if perturbation.kind == "incompleteness":
        u = rng.random(n_tot)
        survive = u >= perturbation.level if perturbation.level > 0 else np.ones(n_tot, bool)
        v_new = v
    else:
        err = rng.standard_normal(n_tot)
        v_new = v + perturbation.level * err if perturbation.level > 0 else v
        survive = np.abs(v_new) <= v_max_kms if perturbation.level > 0 \
            else np.ones(n_tot, bool)
    lo, hi = int(offsets[0]), int(offsets[-1])
    cluster_of = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))   # rows lo:hi
    n_gal = np.bincount(cluster_of[survive[lo:hi]], minlength=offsets.size - 1)
    kept = n_gal >= int(min_galaxies)
    rows = np.zeros(n_tot, dtype=bool)
    rows[lo:hi] = kept[cluster_of] & survive[lo:hi]
    new_off = np.concatenate([[0], np.cumsum(n_gal[kept])])
    return dict(x_mpc_h=x[rows], y_mpc_h=y[rows], v_kms=v_new[rows], offsets=new_off,
                kept=kept, n_gal=n_gal)


def predict_inputs(model, normalisation: dict, inputs: np.ndarray, *,
                   batch_size: int = 100, distance_mpc_h=None) -> np.ndarray:
    """Network predictions (log10 h^-1 Msun) for in-memory inputs.

    Applies exactly the transforms of :func:`cmpipe.cnn.training.predict`
    (:func:`cmpipe.cnn.training.transform_inputs` in float32, ``z * std + mean``) in
    consecutive batches of ``batch_size``, so the same cubes in the same batches give
    bit-identical predictions.

    Parameters
    ----------
    model : keras.Model
        A trained network.
    normalisation : dict
        The contents of ``normalisation.json`` (``input.scale``, ``target.mean``,
        ``target.std``).
    inputs : numpy.ndarray, shape (N, *grid)
        Normalised KDE inputs (each sums to 1), float32.
    batch_size : int
        Inputs per forward pass.
    distance_mpc_h : array_like, shape (N,), optional
        The clusters' comoving distances from the observer (h^-1 Mpc); needed when the
        network was trained with a distance input (``normalisation["distance"]``).

    Returns
    -------
    numpy.ndarray
        Shape (N,), float64, log10 h^-1 Msun.
    """
    from ..cnn.cubedata import network_inputs
    from ..cnn.training import transform_inputs

    scale = np.float32(normalisation["input"]["scale"])
    mean = normalisation["target"]["mean"]
    std = normalisation["target"]["std"]
    out = np.empty(len(inputs))
    for b0 in range(0, len(inputs), batch_size):
        x = np.array(inputs[b0:b0 + batch_size], dtype=np.float32)   # a copy
        transform_inputs(x, scale, normalisation["input"].get("function", "linear"))
        d = None if distance_mpc_h is None else distance_mpc_h[b0:b0 + batch_size]
        z = np.asarray(model.predict_on_batch(network_inputs(x, normalisation, d)),
                       dtype=np.float64)[:, 0]
        out[b0:b0 + len(x)] = z * std + mean
    return out


def _interval_stats(t, summ):
    return {lvl: coverage(t, summ[f"lo{lvl}"], summ[f"hi{lvl}"], nominal=nom)
            for lvl, nom in (("68", NOMINAL_68), ("95", NOMINAL_95))}


def compare(pdf: JointPDF, log10_m_true, pred_reference, pred_perturbed, *,
            point: str = "map", bins=DEFAULT_MASS_BINS, distance=None) -> dict:
    """Perturbed against unperturbed posteriors of the same clusters.

    Parameters
    ----------
    pdf : JointPDF
        The unchanged test-set calibration.
    log10_m_true : array_like, shape (N,)
        True masses, log10 h^-1 Msun.
    pred_reference, pred_perturbed : array_like, shape (N,)
        Network predictions d~ (log10 h^-1 Msun) of the unperturbed and perturbed inputs.
    point : str
        Posterior point estimate (``map``, ``median`` or ``mean``).
    bins : array_like
        Mass-bin edges for the per-bin numbers, log10 h^-1 Msun.
    distance : array_like, shape (N,), optional
        Observer distances, comoving h^-1 Mpc (a distance-aware calibration needs them).

    Returns
    -------
    dict
        ``n``; ``reference`` and ``perturbed``, each with ``mean_residual_dex``,
        ``scatter_dex``, ``half_width_68_dex``, ``coverage_68``, ``coverage_95``,
        ``coverage`` (the full :func:`cmpipe.evaluation.metrics.coverage` dicts),
        ``n_extrapolated`` and ``per_bin`` (mean and sd of residuals per true-mass bin);
        ``bias_shift_dex``
        (mean of the paired residual differences, perturbed minus reference) and
        ``bias_shift_err_dex``; ``prediction_shift_dex`` (mean raw d~ change);
        ``scatter_ratio`` (perturbed / reference).
    """
    t = np.asarray(log10_m_true, dtype=np.float64)
    out = dict(n=int(t.size))
    eps = {}
    for name, pred in (("reference", pred_reference), ("perturbed", pred_perturbed)):
        summ = summarise(pdf, pred, distance)
        ok = np.isfinite(summ[point])
        if not ok.all():
            raise ValueError(f"{int((~ok).sum())} {name} predictions fall in a gap of the "
                             "calibration (zero-density posterior rows)")
        e = residuals(t, summ[point])
        eps[name] = e
        st = scatter_stats(e)
        cov = _interval_stats(t, summ)
        pb = binned_scatter(e, t, bins)
        out[name] = dict(
            mean_residual_dex=st["mean"], scatter_dex=st["std"],
            half_width_68_dex=st["half_width_68"],
            coverage_68=cov["68"]["fraction"], coverage_95=cov["95"]["fraction"],
            coverage=cov, n_extrapolated=int(np.count_nonzero(summ["extrapolated"])),
            per_bin={k: pb[k] for k in ("bin_centres", "n", "mean", "std")})
    diff = eps["perturbed"] - eps["reference"]
    out["bias_shift_dex"] = float(diff.mean()) if diff.size else np.nan
    out["bias_shift_err_dex"] = float(diff.std(ddof=1) / math.sqrt(diff.size)) \
        if diff.size > 1 else np.nan
    out["prediction_shift_dex"] = float(np.mean(np.asarray(pred_perturbed, dtype=float)
                                                - np.asarray(pred_reference, dtype=float))) \
        if diff.size else np.nan
    ref_sd = out["reference"]["scatter_dex"]
    out["scatter_ratio"] = out["perturbed"]["scatter_dex"] / ref_sd if ref_sd else np.nan
    return out


def verdict(result: dict, *, coverage_sigma: float = 3.0,
            max_bias_shift_dex: float = 0.05) -> dict:
    """Does this perturbation call for retraining with matching perturbations?

    Parameters
    ----------
    result : dict
        :func:`compare` output.
    coverage_sigma : float
        Width of the tolerated band, in binomial standard errors at the nominal level.
    max_bias_shift_dex : float
        Largest tolerated shift of the mean residual, dex.

    Returns
    -------
    dict
        ``retraining_needed`` (bool), ``reasons`` (list of str, empty when not needed),
        ``coverage_band_68`` / ``coverage_band_95`` (``[lo, hi]`` fractions),
        ``undercovered`` and ``bias_significant`` (bools), ``overcovered`` (bool:
        conservative posteriors, noted but not a reason to retrain).
    """
    p = result["perturbed"]
    reasons = []
    bands = {}
    under = over = False
    for lvl in ("68", "95"):
        c = p["coverage"][lvl]
        half = coverage_sigma * c["stderr_nominal"]
        bands[lvl] = [c["nominal"] - half, c["nominal"] + half]
        if c["fraction"] < bands[lvl][0]:
            under = True
            reasons.append(f"{lvl}% coverage {c['fraction']:.3f} below the band "
                           f"[{bands[lvl][0]:.3f}, {bands[lvl][1]:.3f}] "
                           f"(nominal {c['nominal']:.3f}, n = {c['n']})")
        elif c["fraction"] > bands[lvl][1]:
            over = True
    shift, err = result["bias_shift_dex"], result["bias_shift_err_dex"]
    significant = bool(np.isfinite(shift) and abs(shift) > max_bias_shift_dex
                       and abs(shift) > coverage_sigma * (err if np.isfinite(err) else 0.0))
    if significant:
        reasons.append(f"mean residual shifted by {shift:+.3f} +- {err:.3f} dex "
                       f"(tolerance {max_bias_shift_dex} dex)")
    return dict(retraining_needed=bool(reasons), reasons=reasons,
                coverage_band_68=bands["68"], coverage_band_95=bands["95"],
                undercovered=under, overcovered=over, bias_significant=significant)
