"""Figures. They read products (summary JSON, tables) and compute nothing new."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.tables import atomic_output  # noqa: E402
from ..settings import SPLIT_CODES  # noqa: E402

__all__ = ["save", "mass_function_figure", "split_masses_figure", "phase_space_figure",
           "loss_curve_figure", "joint_pdf_figure", "predictions_figure", "calibration_figure",
           "interloper_figure", "baselines_figure", "survey_mass_function_figure",
           "survey_pulls_figure", "MASS_LABEL"]

SPLIT_COLOURS = {"train": "C0", "validation": "C2", "test": "C1", "eval": "C3",
                 "unused": "0.6"}


def save(fig, path, dpi=130):
    """Save ``fig`` to ``path`` atomically and close it."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def mass_function_figure(summary, path):
    """Box halo mass function against colossus Tinker et al. 2008 (ratio panel below)."""
    mf = summary["mass_function"]
    m = np.array(mf["log10_m_mid"])
    box = np.array(mf["dndlnm_box"])
    err = np.array(mf["dndlnm_box_err"])
    tk = np.array(mf["dndlnm_tinker08"])
    n = np.array(mf["n_halos"])
    ok = n > 0
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(6, 6), sharex=True,
                                 gridspec_kw=dict(height_ratios=[3, 1.3], hspace=0.05))
    ax.errorbar(m[ok], box[ok], err[ok], fmt="o", ms=4, label="box (Poisson errors)")
    ax.plot(m, tk, "k-", lw=1.2, label="Tinker et al. 2008 (colossus)")
    ax.set_yscale("log")
    ax.set_ylabel(r"$dn/d\ln M_{200c}$  [$h^3\,\mathrm{Mpc}^{-3}$]")
    src = summary.get("source", "")
    ax.set_title(f"Halo mass function, {src} box of "
                 f"{summary['box']['box_size_mpc_h']:g} $h^{{-1}}$Mpc, "
                 f"z = {summary['box']['redshift']:g}")
    ax.legend()
    rx.axhline(1, color="k", lw=1)
    rx.fill_between(m, 0.9, 1.1, color="0.85", label="±10%")
    rx.errorbar(m[ok], box[ok] / tk[ok], err[ok] / tk[ok], fmt="o", ms=4)
    rx.set_ylim(0.5, 1.5)
    rx.set_xlabel(r"$\log_{10} M_{200c}$  [$h^{-1} M_\odot$]")
    rx.set_ylabel("box / Tinker08")
    rx.legend(loc="lower left")
    save(fig, path)


def split_masses_figure(clusters, summary, path):
    """Histograms of log M200c of the projected clusters in each split."""
    lo = np.array(summary["mass_bins"]["log10_m_lo"])
    hi = np.array(summary["mass_bins"]["log10_m_hi"])
    edges = np.r_[lo, hi[-1]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    split = np.asarray(clusters["split"])
    for name, code in SPLIT_CODES.items():
        sel = split == code
        if sel.any():
            ax.hist(np.asarray(clusters["log10_m200c"])[sel], edges, histtype="step", lw=1.6,
                    color=SPLIT_COLOURS[name], label=f"{name} ({int(sel.sum())})")
    ax.set_xlabel(r"$\log_{10} M_{200c}$  [$h^{-1} M_\odot$]")
    ax.set_ylabel("projected clusters per bin")
    ax.set_title("Mass distribution of the splits (flattened by sightline allocation)")
    ax.legend()
    save(fig, path)


def _pick_cluster(clusters):
    """A well-populated cluster with interlopers: the one at the 90th percentile of N_gal
    among clusters with at least one interloper."""
    n_gal = np.asarray(clusters["n_gal"])
    n_int = n_gal - np.asarray(clusters["n_members"])
    cand = np.flatnonzero(n_int > 0)
    if len(cand) == 0:
        cand = np.arange(len(n_gal))
    order = cand[np.argsort(n_gal[cand], kind="stable")]
    return int(order[int(0.9 * (len(order) - 1))])


def phase_space_figure(clusters, galaxies, path, index=None):
    """One cluster's projected phase space, members and interlopers marked."""
    k = _pick_cluster(clusters) if index is None else index
    cid = int(clusters["cluster_id"][k])
    sel = np.asarray(galaxies["cluster_id"]) == cid
    x = np.asarray(galaxies["x_proj_mpc_h"])[sel]
    y = np.asarray(galaxies["y_proj_mpc_h"])[sel]
    v = np.asarray(galaxies["v_los_kms"])[sel]
    mem = np.asarray(galaxies["is_member"])[sel].astype(bool)
    r = np.hypot(x, y)
    fig, axs = plt.subplots(1, 3, figsize=(14, 4.3), gridspec_kw=dict(wspace=0.3))
    for ax, (a, b, la, lb) in zip(axs, [
            (x, y, r"$x_\mathrm{proj}$ [$h^{-1}$Mpc]", r"$y_\mathrm{proj}$ [$h^{-1}$Mpc]"),
            (x, v, r"$x_\mathrm{proj}$ [$h^{-1}$Mpc]", r"$v_\mathrm{los}$ [km/s]"),
            (r, v, r"$R_\mathrm{proj}$ [$h^{-1}$Mpc]", r"$v_\mathrm{los}$ [km/s]")]):
        ax.scatter(a[mem], b[mem], s=14, c="C0", label=f"members ({int(mem.sum())})")
        ax.scatter(a[~mem], b[~mem], s=18, c="C3", marker="x",
                   label=f"interlopers ({int((~mem).sum())})")
        ax.set_xlabel(la)
        ax.set_ylabel(lb)
    axs[0].set_aspect("equal")
    axs[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"cluster {cid} (halo {int(clusters['halo_id'][k])}, "
                 f"log10 M200c = {float(clusters['log10_m200c'][k]):.2f}, "
                 f"N_gal = {int(clusters['n_gal'][k])}, observer at "
                 f"{float(clusters['observer_distance_mpc_h'][k]):.0f} $h^{{-1}}$Mpc)")
    save(fig, path)


# -- evaluation figures (paper Figs. 4-6) -------------------------------------------------

#: Axis label of log10 M200c, shared by the figures of every plotting module.
MASS_LABEL = r"$\log_{10} M_{200c}$  [$h^{-1} M_\odot$]"


def loss_curve_figure(history_csv, path):
    """Training and validation loss (MSE of the standardised log10 M200c) against epoch
    from a ``history.csv`` (``epoch, loss, val_loss, ...``), the kept (best) epoch marked.

    Reads the CSV itself rather than through :mod:`cmpipe.cnn.training`, so drawing it never
    imports Keras/TensorFlow (the ``training_plots`` rule runs in ``envs/plots.yaml``)."""
    import csv

    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epoch = np.array([int(r["epoch"]) for r in rows], dtype=int)
    loss = np.array([float(r["loss"]) for r in rows])
    val_loss = np.array([float(r["val_loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epoch, loss, "o-", ms=3, label="training")
    ax.plot(epoch, val_loss, "s-", ms=3, label="validation")
    if epoch.size and np.isfinite(val_loss).any():
        best = int(np.nanargmin(val_loss))
        ax.axvline(epoch[best], color="0.5", ls=":",
                   label=f"best epoch {epoch[best]} (weights kept)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"MSE of standardised $\log_{10} M_{200c}$")
    ax.legend()
    save(fig, path)


def joint_pdf_figure(pdf, test_pred, path):
    """Paper Fig. 4: the joint PDF of predictions and true masses over the test set."""
    fig, ax = plt.subplots(figsize=(6, 5.2))
    d, m = pdf.d_grid, pdf.m_grid
    im = ax.pcolormesh(d, m, pdf.table.T, shading="auto", cmap="viridis")
    ax.scatter(test_pred["log10_m200c_pred"], test_pred["log10_m200c_true"], s=2, c="w",
               alpha=0.35, lw=0, label=f"test pairs ({len(test_pred['cluster_id'])})")
    lo, hi = max(d[0], m[0]), min(d[-1], m[-1])
    ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
    ax.set_xlabel(r"network prediction $\tilde d$  [$\log_{10} h^{-1} M_\odot$]")
    ax.set_ylabel(r"true " + MASS_LABEL)
    ax.set_title(rf"Joint PDF $P(\tilde d, M)$, KDE bandwidth {pdf.bandwidth:g}")
    fig.colorbar(im, ax=ax, label=r"density [dex$^{-2}$]")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, path)


def _binned(x, y, edges, func):
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        s = (x >= a) & (x < b)
        out.append(func(y[s]) if s.sum() >= 3 else np.nan)
    return np.array(out)


def predictions_figure(post, metrics, path, bin_width=0.1):
    """Paper Fig. 5: posterior point estimates against truth, 1 and 2 sigma bands, and
    the residuals."""
    t = np.asarray(post["log10_m200c_true"])
    p = np.asarray(post["point"])
    edges = np.arange(np.floor(t.min() * 10) / 10, t.max() + bin_width, bin_width)
    c = 0.5 * (edges[:-1] + edges[1:])
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(6, 7), sharex=True,
                                 gridspec_kw=dict(height_ratios=[2.2, 1], hspace=0.05))
    for lo, hi, alpha, lab in (("lo95", "hi95", 0.2, r"2$\sigma$ (posterior 95%)"),
                               ("lo68", "hi68", 0.4, r"1$\sigma$ (posterior 68%)")):
        ax.fill_between(c, _binned(t, np.asarray(post[lo]), edges, np.mean),
                        _binned(t, np.asarray(post[hi]), edges, np.mean), alpha=alpha,
                        color="C0", lw=0, label=lab)
    ax.plot(c, _binned(t, p, edges, np.mean), "C0-", lw=2, label="mean prediction")
    ax.scatter(t, p, s=3, c="k", alpha=0.3, lw=0)
    ax.plot(edges[[0, -1]], edges[[0, -1]], "k--", lw=1, label="truth")
    ax.set_ylabel(r"predicted (posterior " + metrics.get("point_estimate", "map") + ") "
                  + MASS_LABEL)
    ax.legend(loc="upper left", fontsize=8)
    who = f"{metrics['estimator']}, " if metrics.get("estimator") else ""
    ax.set_title(f"{who}eval set: n = {metrics['n_eval']}, scatter {metrics['scatter_dex']:.3f} "
                 f"dex, coverage {metrics['coverage_68']:.2f} / {metrics['coverage_95']:.2f}")
    eps = t - p
    rx.axhline(0, color="k", lw=1)
    rx.scatter(t, eps, s=3, c="k", alpha=0.3, lw=0)
    mu = _binned(t, eps, edges, np.mean)
    sd = _binned(t, eps, edges, np.std)
    rx.plot(c, mu, "C3-", lw=2, label="mean residual")
    rx.fill_between(c, mu - sd, mu + sd, color="C3", alpha=0.25, lw=0, label=r"$\pm1$ sd")
    rx.set_ylabel(r"$\log_{10}(M_\mathrm{true}/M_\mathrm{pred})$")
    rx.set_xlabel("true " + MASS_LABEL)
    rx.legend(loc="lower left", fontsize=8)
    save(fig, path)


def calibration_figure(metrics, path):
    """PIT / QQ calibration curve of the posteriors on the eval set."""
    pit = metrics["network"]["pit"]
    lv = np.asarray(pit["levels"], dtype=float)
    ec = np.asarray(pit["ecdf"], dtype=float)
    se = np.asarray(pit["ecdf_stderr"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.fill_between(lv, lv - 2 * se, lv + 2 * se, color="0.85", label=r"$\pm2\sigma$ binomial")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(lv, ec, "C0-", lw=2, label="eval set")
    ax.set_xlabel("nominal level (posterior CDF at the truth)")
    ax.set_ylabel("fraction of clusters with PIT <= level")
    ax.set_title(f"Calibration (QQ of PIT), KS p = {pit['ks_pvalue']:.3g}")
    ax.legend(loc="upper left")
    ax.set_aspect("equal")
    save(fig, path)


def interloper_figure(post, path):
    """Paper Fig. 6: residuals coloured by interloper-cluster mass ratio, sized by the
    inverse phase-space distance."""
    t = np.asarray(post["log10_m200c_true"])
    eps = t - np.asarray(post["point"])
    ratio = np.nan_to_num(np.asarray(post["interloper_mass_ratio"], dtype=float))
    dist = np.asarray(post["interloper_distance"], dtype=float)
    cont = ratio > 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cont & np.isfinite(dist) & (dist > 0), 1.0 / dist, 0.0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(t[~cont], eps[~cont], s=6, c="0.7", lw=0, label="no more massive interloper")
    sc = ax.scatter(t[cont], eps[cont], s=10 + 80 * np.clip(inv[cont], 0, 2),
                    c=np.log10(ratio[cont]), cmap="plasma", lw=0.3, edgecolor="k",
                    label="interloper cluster (size ~ 1/distance)")
    ax.axhline(0, color="k", lw=1)
    fig.colorbar(sc, ax=ax, label=r"$\log_{10}(M_\mathrm{interloper}/M_\mathrm{cluster})$")
    ax.set_xlabel("true " + MASS_LABEL)
    ax.set_ylabel(r"$\log_{10}(M_\mathrm{true}/M_\mathrm{pred})$")
    ax.set_title("Interloper clusters and mass residuals (eval set)")
    ax.legend(loc="lower left", fontsize=8)
    save(fig, path)


def baselines_figure(metrics, path):
    """Residual mean and scatter per mass bin: network against the classical estimators."""
    fig, (ax, sx) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = [("CNN3D + SBI", metrics["network"])] + [
        (name.replace("_", " "), rep) for name, rep in metrics["baselines"].items()]
    for i, (name, rep) in enumerate(rows):
        pb = rep["per_bin"]
        c = np.asarray(pb["bin_centres"], dtype=float)
        mu = np.asarray([np.nan if v is None else v for v in pb["mean"]], dtype=float)
        sd = np.asarray([np.nan if v is None else v for v in pb["std"]], dtype=float)
        lab = f"{name} ({rep['overall']['std']:.3f} dex)"
        ax.plot(c, mu, "o-", color=f"C{i}", label=lab)
        sx.plot(c, sd, "o-", color=f"C{i}", label=lab)
    ax.axhline(0, color="k", lw=1)
    ax.set_ylabel("mean residual [dex]")
    sx.set_ylabel("residual scatter [dex]")
    for a in (ax, sx):
        a.set_xlabel("true " + MASS_LABEL)
    sx.legend(fontsize=8)
    ax.set_title("Bias (classical: one offset fitted on the test set)")
    sx.set_title("Scatter (eval set)")
    save(fig, path)


# -- survey inference -----------------------------------------------------------------------

def survey_mass_function_figure(table, result, path, truth=None):
    """Survey mass function: estimator with its bootstrap band, Tinker (2008) and Tinker
    forward-modelled (through the calibrated likelihood and the same estimator, or a
    Gaussian scatter); ratio to the forward model below. With
    a truth table, the true-mass function of the survey clusters in 0.1 dex bins."""
    m = np.asarray(table["log10_m"], dtype=float)
    est = np.asarray(table["dn_dlog10m"], dtype=float)
    lo, hi = np.asarray(table["lo68"], float), np.asarray(table["hi68"], float)
    tk = np.asarray(table["tinker08"], float)
    fw = np.asarray(table["tinker08_forward"], float)
    info = result["mass_function"]
    m_c, m_top = info["compared_log10_m_range"]
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(6.5, 6.5), sharex=True,
                                 gridspec_kw=dict(height_ratios=[3, 1.3], hspace=0.05))
    ax.fill_between(m, lo, hi, color="C0", alpha=0.3, lw=0,
                    label=f"{info.get('bootstrap', '')} bootstrap 68%".strip())
    ax.plot(m, est, "C0-", lw=2, label=f"estimate ({info['prior']} prior "
            f"{info['estimate']}, N = {info['n_clusters']})")
    ax.plot(m, tk, "k--", lw=1.2, label=info["theory"])
    if info.get("forward", {}).get("method") == "calibrated":
        ax.plot(m, fw, "C3-", lw=1.5, label="Tinker forward-modelled through the calibrated "
                r"$P(\tilde d\,|\,M)$ and the same estimator")
        if "tinker08_forward_gaussian" in table:
            ax.plot(m, np.asarray(table["tinker08_forward_gaussian"], float), "C3:", lw=1,
                    label=f"Tinker with a Gaussian scatter "
                    f"{info['forward_scatter_dex']:.2f} dex (for comparison)")
    else:
        ax.plot(m, fw, "C3-", lw=1.5, label=f"Tinker forward-modelled (scatter "
                f"{info['forward_scatter_dex']:.2f} dex, kernel {info['kernel_dex']:.2f})")
    if "sample_variance_sd" in table:
        sv = np.asarray(table["sample_variance_sd"], float)
        ax.fill_between(m, fw - sv, fw + sv, color="C3", alpha=0.12, lw=0,
                        label="forward model +- sample variance of the survey volume")
    if "truth_forward" in table and np.isfinite(np.asarray(table["truth_forward"],
                                                           float)).any():
        ax.plot(m, np.asarray(table["truth_forward"], float), "C2--", lw=1.2,
                label="the survey's true masses through the same calibration")
    if truth is not None and len(truth.get("log10_m200c", [])):
        t = np.asarray(truth["log10_m200c"], dtype=float)
        edges = np.arange(np.floor(t.min() * 10) / 10, t.max() + 0.1, 0.1)
        n, _ = np.histogram(t, edges)
        c = 0.5 * (edges[:-1] + edges[1:])
        ok = n > 0
        v = info["volume_mpc_h3"]
        ax.errorbar(c[ok], n[ok] / (0.1 * v), np.sqrt(n[ok]) / (0.1 * v), fmt="s", ms=3,
                    color="0.4", label="true masses of the survey clusters")
    for a in (ax, rx):
        a.axvspan(m_c, m_top, color="0.93", zorder=0)
    ax.set_yscale("log")
    pos = np.concatenate([est[est > 0], fw[fw > 0]])
    if pos.size:
        ax.set_ylim(max(pos.max() * 1e-4, pos.min() * 0.5), pos.max() * 3)
    ax.set_ylabel(r"$dn/d\log_{10}M_{200c}$  [$h^3\,\mathrm{Mpc}^{-3}\,\mathrm{dex}^{-1}$]")
    frac = info.get("fraction_forward_in_band")
    frac_sv = info.get("fraction_forward_in_band_with_sample_variance")
    ax.set_title(f"Survey mass function ({result.get('source')}); forward model in band in "
                 + (f"{frac:.0%}" if frac is not None else "n/a")
                 + (f" ({frac_sv:.0%} with sample variance)" if frac_sv is not None else "")
                 + f" of {info['n_bins_compared']} bins (shaded)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    with np.errstate(divide="ignore", invalid="ignore"):
        rx.fill_between(m, lo / fw, hi / fw, color="C0", alpha=0.3, lw=0)
        rx.plot(m, est / fw, "C0-", lw=2)
        rx.plot(m, tk / fw, "k--", lw=1.2)
        if "sample_variance_sd" in table:
            sv = np.asarray(table["sample_variance_sd"], float)
            rx.fill_between(m, 1 - sv / fw, 1 + sv / fw, color="C3", alpha=0.12, lw=0)
        if "truth_forward" in table:
            rx.plot(m, np.asarray(table["truth_forward"], float) / fw, "C2--", lw=1.2)
    rx.axhline(1, color="C3", lw=1)
    rx.set_ylim(0, 3)
    rx.set_ylabel("/ forward model")
    notes = []
    chi2 = info.get("chi2")
    if chi2:
        notes.append(f"$\\chi^2$ = {chi2['chi2']:.1f} / {chi2['dof']} nodes (p = "
                     f"{chi2['p_value']:.2f})")
    null = info.get("band_count_null")
    if null:
        a, b = null["fraction_in_band"], null["fraction_in_band_with_sample_variance"]
        notes.append(f"band count vs {null['n_surveys']} null surveys: p = {a['p_value']:.2f}"
                     f" (median {a['null_median']:.0%}), with sample variance p = "
                     f"{b['p_value']:.2f} (median {b['null_median']:.0%})")
    if notes:
        rx.text(0.01, 0.96, "\n".join(notes), transform=rx.transAxes, va="top", fontsize=6.5)
    rx.set_xlabel(MASS_LABEL)
    save(fig, path)


def survey_pulls_figure(post, ref, pulls, result, path):
    """Survey posteriors against reference masses (truths or catalogue masses) under the
    flat (test-set) and the population prior, and the pull distributions against N(0, 1)."""
    fig, (ax, px) = plt.subplots(1, 2, figsize=(11, 4.6))
    ref = np.asarray(ref, dtype=float)
    if not np.isfinite(ref).any():
        for a in (ax, px):
            a.text(0.5, 0.5, "no reference masses\n(no truth table, no catalogue masses)",
                   ha="center", va="center", transform=a.transAxes)
        save(fig, path)
        return
    styles = (("flat", "flat", "C0", "test-set (flat) prior"),
              ("population", "pop", "C3", "population (Tinker) prior"))
    for name, q, col, lab in styles:
        med = np.asarray(post[f"{q}_median"], dtype=float)
        ok = np.isfinite(med) & np.isfinite(ref)
        err = np.vstack([med - np.asarray(post[f"{q}_lo68"], float),
                         np.asarray(post[f"{q}_hi68"], float) - med])[:, ok]
        ax.errorbar(ref[ok] + (0.005 if q == "pop" else -0.005), med[ok], err, fmt="o",
                    ms=2.5, lw=0.5, color=col, alpha=0.6, label=lab)
    fin = ref[np.isfinite(ref)]
    lims = [fin.min() - 0.2, fin.max() + 0.2]
    ax.plot(lims, lims, "k--", lw=1)
    m_c = result.get("log10_m_complete")
    if m_c is not None:
        ax.axhline(m_c, color="0.5", lw=0.8, ls=":", label="completeness mass")
    ax.set_xlabel(f"{result['reference']} " + MASS_LABEL)
    ax.set_ylabel("posterior median (68% interval) " + MASS_LABEL)
    ax.legend(fontsize=8, loc="upper left")
    bins = np.linspace(-5, 5, 41)
    x = np.linspace(-5, 5, 400)
    px.plot(x, np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi), "k-", lw=1, label="N(0, 1)")
    for name, q, col, lab in styles:
        pl = np.asarray(pulls[name], dtype=float)
        pl = pl[np.isfinite(pl)]
        st = result[name]["all"]
        if pl.size:
            px.hist(np.clip(pl, -4.99, 4.99), bins, density=True, histtype="step", lw=1.8,
                    color=col, label=f"{lab}: mean {st['pull_mean']:.2f}, sd "
                    + (f"{st['pull_sd']:.2f}" if st.get("pull_sd") is not None else "n/a"))
    edd = result.get("eddington")
    if edd and edd.get("shift_pull") is not None:
        px.axvline(edd["shift_pull"], color="C0", ls=":", lw=1,
                   label=f"Eddington shift -alpha sigma^2 / sigma = {edd['shift_pull']:.2f}")
    px.set_xlabel(r"pull $(\log M_\mathrm{pred} - \log M_\mathrm{ref}) / \sigma$")
    px.set_ylabel("density")
    px.set_title(f"{result['n_matched']} clusters with {result['reference']} masses",
                 fontsize=10)
    px.legend(fontsize=7, loc="upper left")
    save(fig, path)
