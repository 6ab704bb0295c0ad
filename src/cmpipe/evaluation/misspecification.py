"""The misspecification matrix: a trained estimator on eval sets of variant universes.

A variant universe is the run's own mock with one nuisance of the simulator
(:mod:`cmpipe.mock.nuisance`) held at a value for every eval cluster: at an edge of its
prior (where the marginalised posteriors must stay calibrated) or beyond it (where the
guarantee ends). The eval clusters' windows are taken before the flux limit
(``mock/projected.h5``), seen by the same observers, perturbed, flux-limited and cut on
richness again, then go through the run's KDE, network and calibration unchanged. The
fiducial variant (no nuisance moved) goes through the same path and must reproduce the
stored eval predictions of a model trained on the fiducial universe (the run's own, or the
fiducial-model run's beside a marginalised run, on the clusters both eval sets share).

Every variant is summarised by the mean residual ``log M_true - median`` and the 68 / 95%
coverage, each with a halo-bootstrap error (the sightlines of one halo are correlated),
and the scatter (s.d. of the residuals), over the clusters that survive the variant's
richness cut.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping

import numpy as np

from ..mock.nuisance import FIDUCIAL, NUISANCES
from .metrics import NOMINAL_68, NOMINAL_95, grouped_coverage_error, grouped_mean

__all__ = ["Variant", "variants", "variant_metrics"]


@dataclass(frozen=True)
class Variant:
    """A universe that differs from the run's mock in the nuisances of ``fixed``.

    ``kind`` is ``fiducial`` (nothing fixed, no nuisance drawn: the simulated universe),
    ``prior`` (every cluster draws its own nuisances from the prior: the universe the
    marginalised model was trained on), ``edge`` (a nuisance at an end of its prior) or
    ``beyond`` (outside the prior)."""

    name: str
    kind: str
    fixed: Mapping[str, float] = field(default_factory=dict)
    #: The nuisances not in ``fixed``: ``fiducial`` (the simulated universe moved along one
    #: axis) or ``prior`` (drawn per cluster from the prior: one nuisance at its edge in a
    #: universe otherwise as uncertain as the marginalised model assumes).
    others: str = "fiducial"


def _label(name: str, value: float) -> str:
    return f"{name}={value:g}"


def variants(prior, beyond: Mapping[str, float] | None = None) -> list[Variant]:
    """The fiducial universe, the prior-drawn one, every nuisance at each end of its prior
    range (ends equal to the fiducial value are the fiducial universe and are left out),
    and the ``beyond`` values; each edge and beyond value twice, with the other nuisances
    at their fiducial values and drawn from the prior (name suffix ``|prior``).

    Parameters
    ----------
    prior : cmpipe.sections.NuisanceSettings
        The prior ranges (``prior.<name> = (lo, hi)``).
    beyond : mapping, optional
        Nuisance name -> a value outside its prior.

    Raises
    ------
    ValueError
        A ``beyond`` value names an unknown nuisance or lies inside its prior.
    """
    out = [Variant("fiducial", "fiducial"), Variant("prior", "prior")]
    moved = []
    for name in NUISANCES:
        for value in getattr(prior, name):
            if float(value) != FIDUCIAL[name]:
                moved.append(("edge", name, float(value)))
    for name, value in (beyond or {}).items():
        if name not in NUISANCES:
            raise ValueError(f"robustness.misspecification_beyond: unknown nuisance {name!r}; "
                             f"known: {sorted(NUISANCES)}")
        lo, hi = (float(x) for x in getattr(prior, name))
        if lo <= float(value) <= hi:
            raise ValueError(f"robustness.misspecification_beyond.{name}: {value:g} lies "
                             f"inside the prior [{lo:g}, {hi:g}]; give a value outside it")
        moved.append(("beyond", name, float(value)))
    for others, suffix in (("fiducial", ""), ("prior", "|prior")):
        out += [Variant(_label(name, value) + suffix, kind, {name: value}, others)
                for kind, name, value in moved]
    return out


def variant_metrics(log10_m_true, summaries: Mapping, groups, *, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Mean residual, scatter and 68 / 95% coverage of calibrated posteriors.

    Parameters
    ----------
    log10_m_true : array_like
        True log10(M200c / h^-1 Msun).
    summaries : mapping
        ``median``, ``lo68``, ``hi68``, ``lo95``, ``hi95`` (log10 h^-1 Msun) per cluster
        (:func:`cmpipe.calibration.summarise`).
    groups : array_like
        Host halo of each cluster (the bootstrap resamples halos).
    n_boot, seed : int
        Halo-bootstrap resamplings and seed.

    Returns
    -------
    dict
        ``n``, ``n_halos``, ``mean_residual_dex`` and its ``_err``, ``scatter_dex``,
        ``coverage_68``/``coverage_95`` and their ``_err``, and the coverages' offsets from
        nominal in units of their errors (``coverage_68_pull``, ``coverage_95_pull``).
    """
    t = np.asarray(log10_m_true, dtype=float)
    med = np.asarray(summaries["median"], dtype=float)
    ok = np.isfinite(med)
    t, med, g = t[ok], med[ok], np.asarray(groups)[ok]
    eps = t - med
    res = grouped_mean(eps, g, n_boot=n_boot, seed=seed)
    out = dict(n=int(t.size), n_halos=int(res["n_groups"]),
               mean_residual_dex=float(res["mean"]),
               mean_residual_dex_err=float(res["stderr_grouped"]),
               scatter_dex=float(np.std(eps)) if t.size else float("nan"))
    for level, nominal in (("68", NOMINAL_68), ("95", NOMINAL_95)):
        lo = np.asarray(summaries[f"lo{level}"], dtype=float)[ok]
        hi = np.asarray(summaries[f"hi{level}"], dtype=float)[ok]
        cov = grouped_coverage_error((t >= lo) & (t <= hi), g, n_boot=n_boot, seed=seed)
        err = float(cov["stderr_grouped"])
        out[f"coverage_{level}"] = float(cov["fraction"])
        out[f"coverage_{level}_err"] = err
        out[f"coverage_{level}_pull"] = (float((cov["fraction"] - nominal) / err)
                                         if err > 0 else float("nan"))
    return out
