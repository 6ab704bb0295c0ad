"""Dimensionality ablation: CNN1D on ``v_los``, CNN2D on ``(R_proj, v_los)``, CNN3D (paper 4.4).

Paper Figs. 7 and 8 (``docs/science.md``, step 9): the same clusters, seen through inputs of
growing dimensionality, each network calibrated by the same SBI joint PDF and judged by the
same metrics. The expectation is ``CNN1D < CNN2D < CNN3D`` in precision.

Inputs
------
The 1-D and 2-D inputs are made by :mod:`cmpipe.kde.images` (re-exported here).

Everything else (network layer specification, training settings, early stopping on the
validation split, SBI calibration on the test split, metrics on the eval split) is shared
with the CNN3D chain, so the comparison isolates the input dimensionality.

Seeds
-----
One training run per network is not enough to rank them: the eval-set scatter of a network
moves between training seeds by ~0.004-0.01 dex. ``ablation.seeds`` retrains every network
with further seeds (:func:`training_seed`, derived from the master seed); seed 0 is the
single-run product (the CNN3D's is the main ``model/``). :func:`network_seeds` gives the
mean, s.d. and standard error of each network's scatter over seeds and
:func:`precision_order_seeds` ranks the networks on the means, each step of dimensionality
in units of its combined standard error.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np

from ..calibration import JointPDF
from .eval_set import by_observer_distance, posterior_table
from ..kde.images import AXES, DIMS, ablation_inputs, input_shape
from .metrics import DEFAULT_MASS_BINS, evaluation_report
from ..settings import stage_seed

__all__ = [
    "DIMS",
    "AXES",
    "input_shape",
    "ablation_inputs",
    "network_report",
    "method_entry",
    "precision_order",
    "NETWORKS",
    "SEED_METRICS",
    "seed_index",
    "training_seed",
    "seed_statistics",
    "network_seeds",
    "thirds_over_seeds",
    "precision_order_seeds",
]

logger = logging.getLogger(__name__)


def network_report(pdf: JointPDF, pred: dict, *, point: str = "map",
                   bins=DEFAULT_MASS_BINS, distance=None, halos=None, seed: int = 0) -> dict:
    """Eval-set report of one network through the SBI calibration ``pdf``.

    The same computation as the network part of :func:`cmpipe.evaluation.eval_set.evaluate`:
    posterior slices of the joint PDF at each prediction, the point estimate ``point``,
    residuals, coverage of the 68%/95% intervals, PIT and the eq. (7) precision fit.

    Parameters
    ----------
    pdf : JointPDF
        This network's calibration (its own test-set predictions against truth).
    pred : dict of ndarray
        Eval predictions: ``log10_m200c_pred`` (d~), ``log10_m200c_true`` (log10 h^-1
        Msun) and ``n_members``.
    point : str
        Posterior point estimate (``map``, ``median`` or ``mean``).
    bins : array_like
        Mass-bin edges, log10 h^-1 Msun.
    distance : array_like, optional
        Observer distances of the eval clusters, comoving h^-1 Mpc (a distance-aware
        calibration needs them).
    halos, seed
        Host halo of each eval cluster and the bootstrap seed: with ``distance`` too, the
        report gains ``by_observer_distance``
        (:func:`cmpipe.evaluation.eval_set.by_observer_distance`).

    Returns
    -------
    dict
        :func:`cmpipe.evaluation.metrics.evaluation_report` of the calibrated point estimates, plus
        ``n_extrapolated`` and ``n_left_out`` (zero-density posterior rows).
    """
    t = np.asarray(pred["log10_m200c_true"], dtype=np.float64)
    n_mem = np.maximum(np.asarray(pred["n_members"]), 1)
    summ, _ = posterior_table(pdf, pred, point=point, distance=distance)
    ok = np.isfinite(summ["point"])
    rep = evaluation_report(t[ok], {k: v[ok] for k, v in summ.items()}, pit=summ["pit"][ok],
                            n_mem=n_mem[ok], point="point", bins=bins)
    rep["n_extrapolated"] = int(np.count_nonzero(summ["extrapolated"]))
    rep["n_left_out"] = int((~ok).sum())
    if distance is not None and halos is not None:
        rep["by_observer_distance"] = by_observer_distance(
            distance, halos, t, summ["point"], summ["lo68"], summ["hi68"], seed=seed)
    return rep


def method_entry(report: dict, *, label: str, kind: str) -> dict:
    """One row of the ablation table from an :func:`cmpipe.evaluation.metrics.evaluation_report`.

    Parameters
    ----------
    report : dict
        An evaluation report (arrays or the JSON lists of ``metrics.json``).
    label : str
        Display name (e.g. ``"CNN2D + SBI"``).
    kind : {"network", "baseline"}
        Networks carry posterior coverage; baselines are point estimates only.

    Returns
    -------
    dict
        ``label``, ``kind``, ``n``, ``mean_residual_dex``, ``scatter_dex``,
        ``half_width_68_dex``, ``coverage_68``/``coverage_95`` (None for baselines),
        ``sigma_N_dex``, ``sigma_0_dex`` and their errors (eq. 7), and ``per_bin`` with
        ``bin_edges``, ``bin_centres`` (log10 h^-1 Msun), ``n``, ``mean``, ``std``,
        ``half_width_68`` (dex) per bin of true mass.
    """
    o = report["overall"]
    p = report.get("precision", {})
    cov = report.get("coverage")
    pb = report["per_bin"]
    return dict(
        label=label, kind=kind, n=int(o["n"]),
        mean_residual_dex=o["mean"], mean_residual_err_dex=o["mean_err"],
        scatter_dex=o["std"], half_width_68_dex=o["half_width_68"],
        coverage_68=cov["68"]["fraction"] if cov else None,
        coverage_95=cov["95"]["fraction"] if cov else None,
        sigma_N_dex=p.get("sigma_N_dex"), sigma_N_err_dex=p.get("sigma_N_err_dex"),
        sigma_0_dex=p.get("sigma_0_dex"), sigma_0_err_dex=p.get("sigma_0_err_dex"),
        per_bin={k: pb[k] for k in ("bin_edges", "bin_centres", "n", "mean", "std",
                                    "half_width_68")},
    )


def precision_order(methods: dict, order=("cnn1d", "cnn2d", "cnn3d")) -> dict:
    """Whether the overall scatter falls with dimensionality, as the paper finds.

    Parameters
    ----------
    methods : dict
        Ablation rows (:func:`method_entry`) keyed by method name.
    order : sequence of str
        Methods in order of growing input dimensionality.

    Returns
    -------
    dict
        ``order``, ``scatter_dex`` of each, ``monotonic`` (every step lowers the scatter)
        and ``steps``: per step the scatter difference and its standard error for
        independent samples of equal size, ``sd * sqrt(2 / (n - 1))`` summed in quadrature
        (an approximation: the networks see the same clusters, so errors are correlated
        and the real uncertainty of the difference is smaller).
    """
    present = [m for m in order if m in methods and methods[m].get("scatter_dex") is not None]
    sd = {m: float(methods[m]["scatter_dex"]) for m in present}
    steps = []
    for a, b in zip(present[:-1], present[1:]):
        err = math.sqrt(sum(sd[m] ** 2 * 2.0 / max(methods[m]["n"] - 1, 1) for m in (a, b)))
        steps.append(dict(step=f"{a} -> {b}", scatter_change_dex=sd[b] - sd[a],
                          approx_err_dex=err))
    return dict(order=present, scatter_dex=sd,
                monotonic=bool(all(s["scatter_change_dex"] < 0 for s in steps)) if steps
                else None, steps=steps)


# -- seeds ------------------------------------------------------------------------------------

#: The networks of the ablation, in order of growing input dimensionality.
NETWORKS = ("cnn1d", "cnn2d", "cnn3d")

#: Per-seed metrics kept in the summary (keys of a :func:`method_entry` row).
SEED_METRICS = ("scatter_dex", "mean_residual_dex", "coverage_68", "coverage_95")

_SEED_DIR = re.compile(r"seeds/([1-9][0-9]*)/?")


def seed_index(seed_dir: str | None) -> int:
    """The seed number ``k`` of an ablation product directory.

    Parameters
    ----------
    seed_dir : str or None
        The ``{seeddir}`` wildcard of the ablation rules: ``""`` (or None) for seed 0, whose
        products are ``ablation/{dim}/...``, or ``"seeds/{k}/"`` (k >= 1) for
        ``ablation/{dim}/seeds/{k}/...``.

    Returns
    -------
    int
        ``k`` (0 for seed 0).

    Raises
    ------
    ValueError
        ``seed_dir`` is neither empty nor ``seeds/{k}/`` with an integer k >= 1.
    """
    if not seed_dir:
        return 0
    m = _SEED_DIR.fullmatch(seed_dir)
    if m is None:
        raise ValueError(f"ablation seed directory {seed_dir!r}: expected '' (seed 0) or "
                         "'seeds/<k>/' with an integer k >= 1")
    return int(m[1])


def training_seed(master_seed: int, dim: str, k: int) -> int:
    """The training seed (31 bits, :class:`cmpipe.cnn.training.TrainSettings`) of network
    ``dim`` at seed number ``k``, derived from the run's master seed.

    Parameters
    ----------
    master_seed : int
        The config's ``seed``.
    dim : {"1d", "2d", "3d"}
        Input dimensionality of the network.
    k : int
        Seed number, ``0 <= k < ablation.seeds``.

    Returns
    -------
    int
        ``stage_seed(master_seed, label) % 2**31`` (:func:`cmpipe.settings.stage_seed`) with
        ``label`` ``"train"`` for the main CNN3D (3d, k = 0), ``"ablation_train_{dim}"`` for
        the single-run CNN1D/CNN2D (k = 0) and ``"ablation_train_{dim}_seed{k}"`` for k >= 1.

    Raises
    ------
    ValueError
        Unknown ``dim`` or negative ``k``.
    """
    if dim not in ("1d", "2d", "3d"):
        raise ValueError(f"dimensionality must be one of 1d, 2d, 3d, got {dim!r}")
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"seed number must be an integer >= 0, got {k!r}")
    if k == 0:
        label = "train" if dim == "3d" else f"ablation_train_{dim}"
    else:
        label = f"ablation_train_{dim}_seed{int(k)}"
    return stage_seed(master_seed, label) % (2 ** 31)


def seed_statistics(values) -> dict:
    """Mean, spread and standard error of the mean of one metric over training seeds.

    Parameters
    ----------
    values : sequence of float or None
        The metric of each seed; None and non-finite values are left out.

    Returns
    -------
    dict
        ``n`` (finite values), ``mean``, ``sd`` (sample standard deviation, ddof 1) and
        ``sem`` (``sd / sqrt(n)``). ``mean`` is None without values, ``sd`` and ``sem`` are
        None for fewer than two (no spread to measure).
    """
    x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    mean = float(x.mean()) if n else None
    sd = float(x.std(ddof=1)) if n >= 2 else None
    return dict(n=n, mean=mean, sd=sd, sem=sd / math.sqrt(n) if sd is not None else None)


def network_seeds(rows) -> dict:
    """Per-seed metrics of one network and the spread of its scatter over seeds.

    Parameters
    ----------
    rows : sequence of dict
        One :func:`method_entry` row (or any mapping with the :data:`SEED_METRICS` keys)
        per seed, seed 0 first.

    Returns
    -------
    dict
        ``n_seeds``; ``seeds``: per seed ``seed`` (its number k) and the
        :data:`SEED_METRICS` (``scatter_dex``, ``mean_residual_dex``, ``coverage_68``,
        ``coverage_95``); ``scatter_mean_dex``, ``scatter_sd_dex`` (sample s.d. over seeds,
        None for one seed) and ``scatter_sem_dex`` (standard error of the mean, None for
        one seed), all in dex.

    Raises
    ------
    ValueError
        No rows.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("network_seeds needs the metrics of at least one seed")
    st = seed_statistics([r.get("scatter_dex") for r in rows])
    return dict(n_seeds=len(rows),
                seeds=[dict(seed=k, **{m: r.get(m) for m in SEED_METRICS})
                       for k, r in enumerate(rows)],
                scatter_mean_dex=st["mean"], scatter_sd_dex=st["sd"],
                scatter_sem_dex=st["sem"])


def thirds_over_seeds(thirds) -> dict:
    """A network's residual and 68% coverage per observer-distance third over seeds.

    Parameters
    ----------
    thirds : sequence of dict
        One :func:`cmpipe.evaluation.eval_set.by_observer_distance` per seed (seed 0 first), of the
        same eval clusters (so the same third labels).

    Returns
    -------
    dict
        Per third: ``coverage_68_seeds`` and ``mean_residual_seeds_dex`` (per seed),
        ``coverage_68_mean``, ``coverage_68_sd`` (sample s.d. over seeds, None for one
        seed) and ``mean_residual_mean_dex``; empty when a seed has no thirds or the
        seeds' thirds differ.
    """
    thirds = [t or {} for t in thirds]
    labels = [[k for k, v in t.items() if isinstance(v, dict)] for t in thirds]   # near first
    if not thirds or not labels[0] or any(lab != labels[0] for lab in labels):
        return {}
    out = {}
    for label in labels[0]:
        cov = [float(t[label]["coverage_68"]) for t in thirds]
        res = [float(t[label]["mean_residual_dex"]) for t in thirds]
        st = seed_statistics(cov)
        out[label] = dict(coverage_68_seeds=cov, mean_residual_seeds_dex=res,
                          coverage_68_mean=st["mean"], coverage_68_sd=st["sd"],
                          mean_residual_mean_dex=float(np.mean(res)))
    return out


def _seed_statement(steps, ranked, mean, sem, monotonic, threshold_sem) -> str:
    """The significance statement of :func:`precision_order_seeds` in words."""
    nets = [f"{m} {mean[m]:.4f}" + ("" if sem[m] is None else f" +- {sem[m]:.4f}")
            for m in ranked]
    parts = []
    for s in steps:
        z = s["change_in_sem"]
        verdict = ("one seed: no spread to judge it" if z is None else
                   f"{z:+.1f} s.e.m., " + ("significant" if s["significant"] else
                                           "not significant") + f" at {threshold_sem:g}")
        parts.append(f"{s['step']}: {s['scatter_change_dex']:+.4f} dex ({verdict})")
    text = ("mean scatter over seeds (+- s.e.m.), best first: " + " < ".join(nets)
            + " dex; falls with dimensionality: "
            + {True: "yes", False: "no", None: "n/a"}[monotonic])
    return text + ("; " + "; ".join(parts) if parts else "")


def precision_order_seeds(methods: dict, order=NETWORKS, *,
                          threshold_sem: float = 2.0) -> dict:
    """Rank the networks on their mean scatter over training seeds.

    Parameters
    ----------
    methods : dict
        Ablation rows keyed by method name; the networks carry :func:`network_seeds`
        (``scatter_mean_dex``, ``scatter_sd_dex``, ``scatter_sem_dex``, ``n_seeds``).
    order : sequence of str
        The networks in order of growing input dimensionality.
    threshold_sem : float
        A step is significant when its size is at least this many combined standard errors.

    Returns
    -------
    dict
        ``order``: the networks by mean scatter, most precise first; ``scatter_mean_dex``,
        ``scatter_sd_dex``, ``scatter_sem_dex`` and ``n_seeds`` per network;
        ``monotonic``: the mean scatter falls at every step of dimensionality (the paper's
        CNN3D < CNN2D < CNN1D; None with fewer than two networks); ``steps``: per adjacent
        pair in dimensionality, ``scatter_change_dex`` (mean of the higher minus mean of the
        lower dimensionality), ``combined_sem_dex`` (the two standard errors in quadrature),
        ``change_in_sem`` (their ratio, None for one seed) and ``significant``
        (``|change_in_sem| >= threshold_sem``, None for one seed); ``threshold_sem``; and
        ``statement``, all of it in words.

    Notes
    -----
    The standard errors measure training noise only: every seed of every network is judged
    on the same eval clusters, whose sampling noise is common to all of them and largely
    cancels in the differences; the seeds of different networks are independent.
    """
    present = [m for m in order
               if m in methods and methods[m].get("scatter_mean_dex") is not None]
    mean = {m: float(methods[m]["scatter_mean_dex"]) for m in present}
    sem = {m: methods[m].get("scatter_sem_dex") for m in present}
    steps = []
    for a, b in zip(present[:-1], present[1:]):
        change = mean[b] - mean[a]
        comb = math.hypot(sem[a], sem[b]) if sem[a] is not None and sem[b] is not None \
            else None
        z = change / comb if comb else None
        steps.append(dict(step=f"{a} -> {b}", scatter_change_dex=change,
                          combined_sem_dex=comb, change_in_sem=z,
                          significant=None if z is None else bool(abs(z) >= threshold_sem)))
    ranked = sorted(present, key=lambda m: mean[m])
    monotonic = bool(all(s["scatter_change_dex"] < 0 for s in steps)) if steps else None
    return dict(order=ranked, scatter_mean_dex=mean,
                scatter_sd_dex={m: methods[m].get("scatter_sd_dex") for m in present},
                scatter_sem_dex=sem,
                n_seeds={m: methods[m].get("n_seeds") for m in present},
                monotonic=monotonic, steps=steps, threshold_sem=float(threshold_sem),
                statement=_seed_statement(steps, ranked, mean, sem, monotonic,
                                          threshold_sem))
