"""Figures of the neural flow and of the estimator comparison, drawn from their products
(``flow/model/history.csv``, ``comparison/summary.json``) without importing torch."""
from __future__ import annotations

import numpy as np

from ..evaluation.comparison import ESTIMATORS, POSTERIOR_ESTIMATORS
from ..io.training import read_flow_history
from .pipeline import plt, save

__all__ = ["flow_loss_figure", "comparison_figure"]


def flow_loss_figure(history_csv, png, title: str = "Neural flow training") -> None:
    """NLL curves of the flow (training and validation against epoch, best epoch marked;
    the set estimator's with its own ``title``).

    Parameters
    ----------
    history_csv : path-like
        The flow's ``history.csv`` (NLL per cluster, nats of the log10 M density).
    png : path-like
        Figure written (atomically).
    """
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
    ax.set_title(title)
    ax.legend()
    save(fig, png)


def comparison_figure(summary: dict, path) -> None:
    """Four panels: scatter, mean residual, 68/95% coverage and sigma_N / sigma_0 of every
    estimator, contaminated and pure catalogues side by side."""
    rows = summary["rows"]
    cats = list(summary["runs"])
    ests = list(ESTIMATORS)
    post = list(POSTERIOR_ESTIMATORS)
    width = 0.8 / max(len(cats), 1)
    x = np.arange(len(ests))
    hatches = {"contaminated": "", "pure": "//", "contaminated_fiducial": ".."}

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
            cov = np.array([get(cat, e, f"coverage_{lev}") for e in post])
            n = np.array([get(cat, e, "n") for e in post])
            err = np.array([get(cat, e, f"coverage_{lev}_err_halos") for e in post])
            err = np.where(np.isfinite(err), err, np.sqrt(cov * (1.0 - cov) / n))
            a_cov.errorbar(np.arange(len(post)) + off, cov, yerr=err, fmt=marker, ms=7,
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
    # the rows' own labels (the recalibrated flow is "neural flow + SBI")
    labels = [next((r["label"] for r in rows if r["estimator"] == e), ESTIMATORS[e][0])
              .replace(" + ", "\n+ ").replace(" (", "\n(") for e in ests]
    for a in (a_sc, a_mu, a_prec):
        a.set_xticks(x, labels, fontsize=8)
    a_cov.set_xticks(np.arange(len(post)), labels[:len(post)], fontsize=8)
    a_cov.set_xlim(-0.6, len(post) - 0.4)
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
