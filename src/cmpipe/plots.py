"""Figures. They read products (summary JSON, tables) and compute nothing new."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io.tables import atomic_output  # noqa: E402
from .settings import SPLIT_CODES  # noqa: E402

__all__ = ["save", "mass_function_figure", "split_masses_figure", "phase_space_figure"]

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
