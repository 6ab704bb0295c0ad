"""The estimators side by side: CNN3D + SBI, the neural flow, M-sigma and virial, on the
eval sets of a contaminated and (optionally) a pure catalogue.

Everything here is read from finished products -- ``evaluation/metrics.json`` (the CNN3D +
SBI posteriors and the classical baselines, each baseline with one offset fitted on the test
set) and ``flow/metrics.json`` -- so the numbers are the ones those rules measured with the
same :mod:`cmpipe.metrics` functions on the same eval clusters. The talk's headline ("the
flow is about 4x better than M-sigma on contaminated mocks") is the ratio
``msigma_over_flow_scatter``.
"""
from __future__ import annotations

import csv
import math

import numpy as np

from .io.tables import atomic_output

__all__ = ["ESTIMATORS", "ROW_KEYS", "estimator_rows", "comparison_summary",
           "write_comparison_csv", "comparison_figure"]

#: Estimator key -> (label, source, key prefix in its metrics JSON).
ESTIMATORS = {
    "cnn3d_sbi": ("CNN3D + SBI", "metrics", ""),
    "flow": ("neural flow", "flow", ""),
    "msigma_gapper": ("M-sigma (gapper)", "metrics", "msigma_gapper_"),
    "virial": ("virial", "metrics", "virial_"),
}

#: Columns of a comparison row (after ``catalogue``, ``run``, ``estimator``, ``label``).
ROW_KEYS = ("n", "mean_residual_dex", "scatter_dex", "half_width_68_dex", "coverage_68",
            "coverage_68_err_halos", "coverage_95", "coverage_95_err_halos", "sigma_N_dex",
            "sigma_N_err_dex", "sigma_0_dex", "sigma_0_err_dex")

_CATALOGUE_ORDER = ("contaminated", "pure")


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def estimator_rows(catalogue: str, run: str, metrics: dict, flow_metrics: dict) -> list:
    """One row per estimator of one catalogue's eval set.

    Parameters
    ----------
    catalogue : str
        ``contaminated`` or ``pure``.
    run : str
        The run the metrics come from.
    metrics, flow_metrics : dict
        ``evaluation/metrics.json`` and ``flow/metrics.json`` of that run.

    Returns
    -------
    list of dict
        ``catalogue``, ``run``, ``estimator``, ``label`` and :data:`ROW_KEYS` (residuals in
        dex; coverage only for the posterior estimators, None for the point estimators).
    """
    rows = []
    src = {"metrics": metrics, "flow": flow_metrics}
    for key, (label, which, prefix) in ESTIMATORS.items():
        m = src[which]
        row = dict(catalogue=catalogue, run=run, estimator=key, label=label)
        for k in ROW_KEYS:
            if k.startswith("coverage"):
                row[k] = _num(m.get(k)) if prefix == "" else None
            else:
                row[k] = _num(m.get(prefix + k))
        if row["n"] is None and prefix == "":
            row["n"] = m.get("n_eval")
        rows.append(row)
    return rows


def _ratio(a, b):
    return float(a / b) if a is not None and b not in (None, 0) else None


def comparison_summary(catalogues: dict) -> dict:
    """The comparison of every estimator on every catalogue.

    Parameters
    ----------
    catalogues : dict
        ``{"contaminated" | "pure": {"run": str, "metrics": dict, "flow": dict}}``.

    Returns
    -------
    dict
        ``runs`` (catalogue -> run), ``rows`` (:func:`estimator_rows` of each catalogue),
        ``ratios`` per catalogue (scatters of CNN3D + SBI, flow and M-sigma, dex, and
        ``msigma_over_flow_scatter``, ``msigma_over_cnn3d_sbi_scatter``,
        ``flow_over_cnn3d_sbi_scatter``), and ``n_eval`` per catalogue and estimator.
    """
    rows, ratios, runs = [], {}, {}
    for cat in sorted(catalogues, key=lambda c: _CATALOGUE_ORDER.index(c)
                      if c in _CATALOGUE_ORDER else 99):
        c = catalogues[cat]
        runs[cat] = c["run"]
        r = estimator_rows(cat, c["run"], c["metrics"], c["flow"])
        rows += r
        sc = {x["estimator"]: x["scatter_dex"] for x in r}
        ratios[cat] = dict(
            cnn3d_sbi_scatter_dex=sc["cnn3d_sbi"], flow_scatter_dex=sc["flow"],
            msigma_scatter_dex=sc["msigma_gapper"], virial_scatter_dex=sc["virial"],
            msigma_over_flow_scatter=_ratio(sc["msigma_gapper"], sc["flow"]),
            msigma_over_cnn3d_sbi_scatter=_ratio(sc["msigma_gapper"], sc["cnn3d_sbi"]),
            flow_over_cnn3d_sbi_scatter=_ratio(sc["flow"], sc["cnn3d_sbi"]))
    return dict(
        runs=runs, rows=rows, ratios=ratios,
        definitions=dict(
            residual="log10(M_true / M_pred) on the eval set; posterior estimators use the "
                     "posterior point estimate (calibration.point_estimate), classical ones "
                     "one offset fitted on the test set",
            scatter_dex="standard deviation of the residuals",
            coverage="fraction of eval clusters whose true mass lies in the 68.27% / 95% "
                     "central posterior interval",
            sigma_N_sigma_0="fit of sigma^2 = sigma_N^2 (N_mem/100)^-1 + sigma_0^2 to the "
                            "residuals (cmpipe.metrics.fit_precision_model)",
            msigma_over_flow_scatter="M-sigma (gapper) scatter / flow scatter; the talk "
                                     "quotes about 4 on contaminated MDPL2 mocks"))


def write_comparison_csv(path, summary: dict) -> None:
    """The rows of :func:`comparison_summary` as CSV (atomically); empty cells for None."""
    cols = ("catalogue", "run", "estimator", "label") + ROW_KEYS
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in summary["rows"]:
                w.writerow(["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float)
                                                    else r[c]) for c in cols])


def comparison_figure(summary: dict, path) -> None:
    """Four panels: scatter, mean residual, 68/95% coverage and sigma_N / sigma_0 of every
    estimator, contaminated and pure catalogues side by side."""
    from .plots import plt, save

    rows = summary["rows"]
    cats = list(summary["runs"])
    ests = list(ESTIMATORS)
    width = 0.8 / max(len(cats), 1)
    x = np.arange(len(ests))
    hatches = {"contaminated": "", "pure": "//"}

    def get(cat, est, key):
        for r in rows:
            if r["catalogue"] == cat and r["estimator"] == est:
                v = r[key]
                return np.nan if v is None else float(v)
        return np.nan

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (a_sc, a_mu), (a_cov, a_prec) = axes
    for j, cat in enumerate(cats):
        off = (j - (len(cats) - 1) / 2) * width
        kw = dict(width=width, hatch=hatches.get(cat, ""), edgecolor="k", lw=0.5)
        sc = [get(cat, e, "scatter_dex") for e in ests]
        a_sc.bar(x + off, sc, color=[f"C{i}" for i in range(len(ests))],
                 label=f"{cat} ({summary['runs'][cat]})", **kw)
        for xi, v in zip(x + off, sc):
            if np.isfinite(v):
                a_sc.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        a_mu.bar(x + off, [get(cat, e, "mean_residual_dex") for e in ests],
                 color=[f"C{i}" for i in range(len(ests))], **kw)
        for k, (lev, marker) in enumerate((("68", "o"), ("95", "s"))):
            cov = np.array([get(cat, e, f"coverage_{lev}") for e in ests[:2]])
            n = np.array([get(cat, e, "n") for e in ests[:2]])
            err = np.array([get(cat, e, f"coverage_{lev}_err_halos") for e in ests[:2]])
            err = np.where(np.isfinite(err), err, np.sqrt(cov * (1.0 - cov) / n))
            a_cov.errorbar(np.arange(2) + off, cov, yerr=err, fmt=marker, ms=7,
                           mfc="none" if j else f"C{k}", color=f"C{k}",
                           label=f"{lev}% interval, {cat}")
        sn = [get(cat, e, "sigma_N_dex") for e in ests]
        s0 = [get(cat, e, "sigma_0_dex") for e in ests]
        sne = [get(cat, e, "sigma_N_err_dex") for e in ests]
        s0e = [get(cat, e, "sigma_0_err_dex") for e in ests]
        a_prec.errorbar(x + off - width / 4, sn, yerr=np.where(np.asarray(sne) < 1, sne, np.nan),
                        fmt="o", color="C0", mfc="none" if j else "C0",
                        label=r"$\sigma_N$, " + cat)
        a_prec.errorbar(x + off + width / 4, s0, yerr=np.where(np.asarray(s0e) < 1, s0e, np.nan),
                        fmt="s", color="C3", mfc="none" if j else "C3",
                        label=r"$\sigma_0$, " + cat)
    labels = [ESTIMATORS[e][0] for e in ests]
    for a in (a_sc, a_mu, a_prec):
        a.set_xticks(x, labels, fontsize=8)
    a_cov.set_xticks(np.arange(2), labels[:2], fontsize=8)
    a_cov.set_xlim(-0.6, 1.6)
    a_sc.set_ylabel("residual scatter [dex]")
    a_sc.legend(fontsize=8)
    a_mu.axhline(0, color="k", lw=1)
    a_mu.set_ylabel(r"mean residual $\log_{10}(M_\mathrm{true}/M_\mathrm{pred})$ [dex]")
    for lev, c in ((0.68, "C0"), (0.95, "C1")):
        a_cov.axhline(lev, color=c, ls="--", lw=1)
    a_cov.set_ylabel("coverage of the posterior interval (1$\\sigma$, halo resampling)")
    a_cov.legend(fontsize=7, loc="center")
    a_prec.set_ylabel(r"$\sigma_N$, $\sigma_0$ [dex]")
    a_prec.legend(fontsize=7)
    a_prec.set_ylim(bottom=0)
    ratio = summary["ratios"].get("contaminated", {}).get("msigma_over_flow_scatter")
    title = "Estimators on the eval set"
    if ratio is not None:
        title += f": contaminated M-sigma / flow scatter = {ratio:.2f} (talk: ~4)"
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
