"""Figures of the analyses (ablation, robustness, saliency), drawn from their products."""
from __future__ import annotations

import numpy as np

from .pipeline import MASS_LABEL, plt, save

__all__ = ["ablation_figure", "robustness_figure", "saliency_figure"]

_NETWORK_STYLE = {"cnn1d": ("C2", "s"), "cnn2d": ("C1", "^"), "cnn3d": ("C0", "o")}


def _arr(values):
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _seed_panel(ax, summary: dict) -> None:
    """The overall scatter of every network at every training seed (points; filled: seed
    0, the single-run product) and its mean +- s.d. over seeds, with each step of
    dimensionality in units of its combined standard error of the mean."""
    methods = summary["methods"]
    nets = [n for n in _NETWORK_STYLE if n in methods]
    by_seeds = summary.get("precision_order_seeds") or {}
    top = 0.0
    for x, name in enumerate(nets):
        m = methods[name]
        colour, marker = _NETWORK_STYLE[name]
        seeds = m.get("seeds") or [dict(seed=0, scatter_dex=m["scatter_dex"])]
        sc = _arr([s["scatter_dex"] for s in seeds])
        dx = np.linspace(-0.12, 0.12, sc.size) if sc.size > 1 else np.zeros(1)
        ax.scatter(x - 0.12 + dx, sc, s=36, marker=marker, facecolors="none",
                   edgecolors=colour, lw=1.3, zorder=3,
                   label="one seed (filled: seed 0)" if x == 0 else None)
        ax.scatter(x - 0.12 + dx[:1], sc[:1], s=36, marker=marker, color=colour, zorder=4)
        mean = m.get("scatter_mean_dex", m["scatter_dex"])
        sd = m.get("scatter_sd_dex")
        ax.errorbar(x + 0.22, mean, yerr=sd if sd is not None else None, fmt="D",
                    color=colour, ms=7, capsize=6, lw=2, zorder=4,
                    label="mean \u00b1 s.d. over seeds" if x == 0 else None)
        text = f"{mean:.3f}" + (f"\n\u00b1{sd:.3f}" if sd is not None else "")
        ax.annotate(text, (x + 0.32, mean), fontsize=8, va="center", color=colour)
        top = max(top, np.nanmax(sc), mean + (sd or 0.0))
    for i, step in enumerate(by_seeds.get("steps", [])[:len(nets) - 1]):
        z = step.get("change_in_sem")
        label = (f"\u0394 {step['scatter_change_dex']:+.3f} dex" + ("" if z is None else
                 f"\n({z:+.1f} s.e.m.)"))
        ax.annotate(label, (i + 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -4), textcoords="offset points", ha="center", va="top",
                    fontsize=8, color="0.3")
    ax.set_xticks(range(len(nets)), [methods[n]["label"].split(" ")[0] for n in nets])
    ax.set_xlim(-0.6, len(nets) - 0.05)
    lo = ax.get_ylim()[0]
    ax.set_ylim(lo, top + 0.35 * (top - lo))
    ax.set_ylabel("overall residual scatter (sd) [dex]")
    n = summary.get("n_seeds", 1)
    falls = {True: "yes", False: "no"}.get(by_seeds.get("monotonic"), "n/a")
    ax.set_title(f"Scatter over {n} training seed{'s' if n != 1 else ''}; mean falls with "
                 f"dimensionality: {falls}", fontsize=9)
    ax.legend(fontsize=7, loc="best")


def ablation_figure(summary: dict, path) -> None:
    """Paper Figs. 7 and 8: residual bias and scatter per true-mass bin of CNN1D/2D/3D
    (+ SBI) and the classical baselines, the eq. (7) fit sigma_N against sigma_0, and each
    network's overall scatter at every training seed with its mean +- s.d."""
    fig, (ax, sx, px, gx) = plt.subplots(1, 4, figsize=(20, 4.6),
                                         gridspec_kw=dict(width_ratios=[1, 1, 0.8, 0.9]))
    methods = summary["methods"]
    k = 3
    lim = [0.0, 0.0]
    for name, m in methods.items():
        if m["kind"] == "network":
            colour, marker = _NETWORK_STYLE.get(name, ("k", "o"))
            style = dict(color=colour, marker=marker, ls="-", lw=2)
        else:
            colour, marker = f"C{k}", "x"
            k += 1
            style = dict(color=colour, marker=marker, ls="--", lw=1)
        pb = m["per_bin"]
        c = _arr(pb["bin_centres"])
        n = _arr(pb["n"])
        ok = n >= 5
        lab = f"{m['label']} ({m['scatter_dex']:.3f} dex)"
        ax.plot(c[ok], _arr(pb["mean"])[ok], label=lab, **style)
        sx.plot(c[ok], _arr(pb["std"])[ok], label=lab, **style)
        if m.get("sigma_N_dex") is not None and m.get("sigma_0_dex") is not None:
            s0, sn = m["sigma_0_dex"], m["sigma_N_dex"]
            # a fit pinned at sigma_0 ~ 0 has an unbounded error: draw at most 0.1 dex
            e0 = min(m.get("sigma_0_err_dex") or 0.0, 0.1)
            en = min(m.get("sigma_N_err_dex") or 0.0, 0.1)
            px.errorbar(s0, sn, xerr=e0, yerr=en, color=colour, marker=marker, ms=8,
                        ls="none", capsize=3, label=m["label"])
            lim[0] = max(lim[0], s0 + e0)
            lim[1] = max(lim[1], sn + en)
    ax.axhline(0, color="k", lw=1)
    ax.set_ylabel(r"mean residual $\log_{10}(M_\mathrm{true}/M_\mathrm{pred})$ [dex]")
    sx.set_ylabel("residual scatter (sd) [dex]")
    for a in (ax, sx):
        a.set_xlabel("true " + MASS_LABEL)
    sx.legend(fontsize=7)
    ax.set_title(f"Bias per mass bin (eval set, n = {summary['n_eval']})")
    po = summary.get("precision_order", {})
    sx.set_title("Scatter per mass bin (seed 0); falls with dimensionality: "
                 f"{'yes' if po.get('monotonic') else 'no'}")
    px.set_xlabel(r"$\sigma_0$ [dex] (richness-independent)")
    px.set_ylabel(r"$\sigma_N$ [dex] (at $N_\mathrm{mem}$ = 100)")
    px.set_title(r"Precision model $\sigma^2 = \sigma_N^2 (N_\mathrm{mem}/100)^{-1}"
                 r" + \sigma_0^2$", fontsize=9)
    px.set_xlim(0, 1.15 * lim[0] + 0.01)
    px.set_ylim(0, 1.15 * lim[1] + 0.01)
    px.legend(fontsize=7, loc="best")
    _seed_panel(gx, summary)
    fig.tight_layout()
    save(fig, path)


def robustness_figure(summary: dict, path) -> None:
    """Bias shift, scatter and interval coverage of the unchanged network + calibration
    against the incompleteness fraction and the velocity error."""
    kinds = [("incompleteness", "fraction of galaxies lost", 100.0, "%"),
             ("velocity_error", "velocity error sd", 1.0, "km/s")]
    fig, axes = plt.subplots(3, 2, figsize=(10, 9), sharex="col")
    ref = summary["reference"]
    for j, (kind, xlabel, scale, unit) in enumerate(kinds):
        rows = [p for p in summary["perturbations"] if p["kind"] == kind]
        lv = np.array([0.0] + [p["level"] * scale for p in rows])
        shift = np.array([0.0] + [p["bias_shift_dex"] for p in rows])
        err = np.array([0.0] + [p["bias_shift_err_dex"] or 0.0 for p in rows])
        a = axes[0, j]
        a.errorbar(lv, shift, yerr=err, fmt="o-", color="C0", capsize=3)
        a.axhline(0, color="k", lw=1)
        tol = summary["max_bias_shift_dex"]
        a.axhspan(-tol, tol, color="0.9", zorder=0, label=f"tolerance +-{tol} dex")
        for p, x, y in zip(rows, lv[1:], shift[1:]):
            if p["verdict"]["retraining_needed"]:
                a.plot(x, y, "rx", ms=12, mew=2)
        a.set_ylabel("bias shift [dex]\n(perturbed - unperturbed)")
        a.legend(fontsize=7, loc="best")
        a.set_title(kind.replace("_", " "))
        a = axes[1, j]
        a.plot(lv, [ref["scatter_dex"]] + [p["perturbed"]["scatter_dex"] for p in rows],
               "o-", color="C1", label="perturbed")
        a.plot(lv, [ref["scatter_dex"]] + [p["reference"]["scatter_dex"] for p in rows],
               "s--", color="0.4", label="unperturbed, same clusters")
        a.set_ylabel("residual scatter [dex]")
        a.legend(fontsize=7)
        a = axes[2, j]
        for lvl, colour in (("68", "C0"), ("95", "C3")):
            cov = [ref[f"coverage_{lvl}"]] + [p["perturbed"][f"coverage_{lvl}"] for p in rows]
            a.plot(lv, cov, "o-", color=colour, label=f"{lvl}% interval")
            band = (rows[0]["verdict"][f"coverage_band_{lvl}"] if rows
                    else ref["verdict"][f"coverage_band_{lvl}"])
            a.axhspan(band[0], band[1], color=colour, alpha=0.12, lw=0)
        a.set_ylabel("coverage")
        a.set_xlabel(f"{xlabel} [{unit}]")
        a.legend(fontsize=7, loc="lower left")
    retrain = summary.get("retraining_needed_for") or []
    fig.suptitle("Unchanged CNN3D + SBI on perturbed eval clusters (n = "
                 f"{summary['n_eval']}); retraining needed for: "
                 f"{', '.join(retrain) if retrain else 'none'}", fontsize=10)
    fig.tight_layout()
    save(fig, path)


def misspecification_figure(summary: dict, path) -> None:
    """Mean residual and 68 / 95% coverage of each unchanged estimator per variant universe
    (``robustness/misspecification.json``): CNN3D + SBI circles, flow squares, set
    estimator triangles; this run's (marginalised) model filled, the fiducial model open;
    the criteria as grey bands."""
    rows = summary["variants"]
    crit = summary["criteria"]
    names = list(dict.fromkeys(r["variant"] for r in rows))
    series = list(dict.fromkeys((r.get("model", "model"), r.get("estimator", "cnn3d_sbi"))
                                for r in rows))
    models = list(dict.fromkeys(m for m, _ in series))
    y_of = dict(zip(names, np.arange(len(names))[::-1]))
    step = 0.8 / max(len(series), 1)
    colours = {"eval": "0.2", "fiducial": "0.45", "prior": "C2", "edge": "C0", "beyond": "C3"}
    markers = {"cnn3d_sbi": "o", "flow_sbi": "s", "flow": "s", "sets_sbi": "^", "sets": "^"}
    panels = [("mean_residual_dex", "mean residual log M_true - median [dex]", 0.0,
               crit["mean_residual_dex"]),
              ("coverage_68", "68% coverage", 0.68, crit["coverage_68"]),
              ("coverage_95", "95% coverage", 0.95, crit["coverage_95"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.55 * len(names) + 2.4), sharey=True)
    for a, (key, label, centre, tol) in zip(axes, panels):
        a.axvspan(centre - tol, centre + tol, color="0.9", zorder=0)
        a.axvline(centre, color="k", lw=1)
        for r in rows:
            sk = (r.get("model", "model"), r.get("estimator", "cnn3d_sbi"))
            j = series.index(sk)
            c = colours.get(r["kind"], "k")
            a.errorbar(r[key], y_of[r["variant"]] + step * ((len(series) - 1) / 2 - j),
                       xerr=r.get(f"{key}_err") or 0.0, fmt=markers.get(sk[1], "o"), ms=5,
                       capsize=2, color=c, mfc=c if models.index(sk[0]) == 0 else "white")
        a.set_xlabel(label)
        split = [y_of[n] for n in names if n.endswith("|prior")]
        if split:                                # the "others drawn from the prior" block
            a.axhline(max(split) + 0.5, color="0.6", lw=0.8, ls="--")
    names_of = {"cnn3d_sbi": "CNN3D + SBI", "flow_sbi": "flow + SBI", "flow": "flow",
                "sets_sbi": "Deep Sets + SBI", "sets": "Deep Sets"}
    for m, e in series:                          # legend: one grey marker per series
        axes[1].plot([], [], markers.get(e, "o"), color="0.3",
                     mfc="0.3" if models.index(m) == 0 else "white",
                     label=f"{m} model, {names_of.get(e, e)}")
    fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=len(series),
               fontsize=8, frameon=False)
    axes[0].set_yticks(list(y_of.values()))
    counts = {}
    for r in rows:
        counts.setdefault(r["variant"], r["n"])
    axes[0].set_yticklabels([f"{v} (n={counts[v]})" for v in names], fontsize=8)
    said = "; ".join(f"{k}: {d['edge_variants_within_criteria']}/{d['n_edge_variants']}"
                     + (f" and {d['edge_variants_within_criteria_others_prior']}/"
                        f"{d['n_edge_variants_others_prior']}"
                        if "n_edge_variants_others_prior" in d else "")
                     for k, d in summary.get("models", {}).items())
    fig.suptitle(f"Unchanged estimators on variant universes (run {summary['run']}). Prior-edge "
                 f"variants within the criteria (grey bands), other nuisances fiducial and "
                 f"drawn from the prior (|prior, below the dashed line):\n{said}\n"
                 "dark grey: eval set as stored, grey: fiducial universe, green: nuisances "
                 "drawn from the prior, blue: prior edge, red: beyond the prior", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save(fig, path)


def saliency_figure(saliency_h5, path, *, which: str = "mean") -> None:
    """Projections of the mean saliency (``which``: ``mean`` signed, ``mean_abs``) onto
    the (x, y), (x, v) and (y, v) planes, one row per mass bin."""
    import h5py

    with h5py.File(saliency_h5, "r") as f:
        edges = f["bin_edges"][()]
        n = f["n"][()]
        L = float(np.max(np.abs(f["x_centres_mpc_h"][()]))
                  + 0.5 * np.diff(f["x_centres_mpc_h"][()])[0])
        V = float(np.max(np.abs(f["v_centres_kms"][()]))
                  + 0.5 * np.diff(f["v_centres_kms"][()])[0])
        rows = [b for b in range(len(n)) if n[b] > 0]
        proj = {b: {p: f[f"projections/{which}/{p}/{b}"][()] for p in ("xy", "xv", "yv")}
                for b in rows}
    planes = [("xy", r"$x_\mathrm{proj}$ [$h^{-1}$ Mpc]", r"$y_\mathrm{proj}$ [$h^{-1}$ Mpc]",
               (-L, L, -L, L)),
              ("xv", r"$x_\mathrm{proj}$ [$h^{-1}$ Mpc]", r"$v_\mathrm{los}$ [km/s]",
               (-L, L, -V, V)),
              ("yv", r"$y_\mathrm{proj}$ [$h^{-1}$ Mpc]", r"$v_\mathrm{los}$ [km/s]",
               (-L, L, -V, V))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.4 * len(rows)), squeeze=False)
    signed = which == "mean"
    for i, b in enumerate(rows):
        vmax = max(np.max(np.abs(proj[b][p])) for p, *_ in planes) or 1.0
        for j, (p, xl, yl, ext) in enumerate(planes):
            a = axes[i, j]
            img = proj[b][p].T                       # first axis horizontal
            im = a.imshow(img, origin="lower", extent=ext, aspect="auto",
                          cmap="RdBu_r" if signed else "viridis",
                          vmin=-vmax if signed else 0, vmax=vmax)
            a.set_xlabel(xl)
            a.set_ylabel(yl)
            if j == 0:
                a.set_title(f"log M {edges[b]:.1f}-{edges[b + 1]:.1f} (n = {n[b]})",
                            fontsize=9, loc="left")
            fig.colorbar(im, ax=a, fraction=0.046, pad=0.03)
    what = ("mean signed saliency (red: more galaxies here raise the mass)" if signed
            else "mean |saliency| (where the network is sensitive)")
    fig.suptitle(f"CNN3D {what}: d log10 M_pred / d cube, summed along the third axis "
                 "[dex per unit probability]", fontsize=10)
    fig.tight_layout()
    save(fig, path)
