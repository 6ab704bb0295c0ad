"""The survey volume: its record for a user's catalogue, the Tinker (2008) mass function
it should hold, and the rms linear density contrast of its window (sample variance).

Each reads the survey record (``survey/meta.json``, written by rule ``survey_catalogue``):
a synthetic survey is a cap of radius ``radius_mpc_h`` in one snapshot of the periodic
box (theory ``kind: snapshot``); a catalogue is the cap-shaped shell between the
comoving distances of ``catalogue_volume.z_min`` and ``z_max`` (theory
``kind: volume_average``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..cosmology import Cosmology
from ..settings import ConfigError
from .sky import radec_to_unit
from .synthetic import cap_cos_half_angle

__all__ = ["catalogue_survey_record", "survey_theory", "survey_sigma_lin", "survey_window_weights"]


def catalogue_survey_record(catalogue_volume: Mapping, cosmology: Cosmology, *,
                            clusters_file, galaxies_file) -> dict:
    """The record (``survey/meta.json``) of a user's catalogue: its comoving volume.

    Parameters
    ----------
    catalogue_volume : mapping
        The validated ``survey.catalogue_volume`` section: ``z_min``, ``z_max`` (redshift
        range of the sample) and ``area_deg2`` (footprint area, deg^2).
    cosmology : Cosmology
    clusters_file, galaxies_file : path-like
        Recorded.

    Returns
    -------
    dict
        ``source``, ``has_truth`` (False), ``volume_mpc_h3`` = Omega (r2^3 - r1^3) / 3
        [(h^-1 Mpc)^3] with Omega the area in sr and r1, r2 the comoving distances
        [h^-1 Mpc] of z_min and z_max, ``area_deg2``, ``z_range``,
        ``comoving_distance_range_mpc_h``, ``theory`` (Tinker 2008 averaged over the
        shell), the files and the cosmology's name.

    Raises
    ------
    ConfigError
        ``z_max <= z_min``.
    """
    z_min, z_max = float(catalogue_volume["z_min"]), float(catalogue_volume["z_max"])
    if not z_max > z_min:
        raise ConfigError(f"survey.catalogue_volume: z_max ({z_max}) must exceed z_min "
                          f"({z_min})")
    area = float(catalogue_volume["area_deg2"])
    r1, r2 = (float(cosmology.comoving_distance_mpc_h(z)) for z in (z_min, z_max))
    omega = area * (np.pi / 180.0) ** 2
    volume = omega * (r2 ** 3 - r1 ** 3) / 3.0
    return dict(source="catalogue", has_truth=False, volume_mpc_h3=volume,
                area_deg2=area, z_range=[z_min, z_max],
                comoving_distance_range_mpc_h=[r1, r2],
                theory=dict(kind="volume_average", r_min_mpc_h=r1, r_max_mpc_h=r2,
                            note="Tinker (2008) averaged over the comoving shell"),
                clusters_file=str(clusters_file), galaxies_file=str(galaxies_file),
                cosmology=cosmology.name)


def survey_theory(meta: Mapping, cosmology: Cosmology) -> tuple[Callable, float, str]:
    """Tinker (2008) dn/dlog10M the survey should see, and a redshift for its slope.

    Parameters
    ----------
    meta : mapping
        The survey record; its ``theory`` says how (``kind: volume_average`` over the
        shell ``r_min_mpc_h``..``r_max_mpc_h``, comoving h^-1 Mpc, or a snapshot at ``z``,
        default 0.1).
    cosmology : Cosmology

    Returns
    -------
    n_of_m : callable
        log10(M200c / h^-1 Msun) -> dn/dlog10M [(h^-1 Mpc)^-3].
    z : float
        The snapshot redshift, or the redshift of the shell's volume-median distance.
    label : str
        What ``n_of_m`` is, for the products.
    """
    from ..massfunction import tinker08_dndlog10m, tinker08_survey_average

    th = meta.get("theory") or {}
    if th.get("kind") == "volume_average":
        r1, r2 = float(th["r_min_mpc_h"]), float(th["r_max_mpc_h"])

        def n_of_m(m):
            a2 = tinker08_survey_average(m, r2, cosmology)
            if r1 <= 0:
                return a2
            a1 = tinker08_survey_average(m, r1, cosmology)
            return (r2 ** 3 * a2 - r1 ** 3 * a1) / (r2 ** 3 - r1 ** 3)
        z_mid = float(cosmology.z_at_comoving_distance(((r1 ** 3 + r2 ** 3) / 2.0) ** (1 / 3)))
        return n_of_m, z_mid, f"Tinker (2008) averaged over the shell {r1:.0f}-{r2:.0f} " \
                              "h^-1 Mpc"
    z = float(th.get("z", 0.1))
    return (lambda m: tinker08_dndlog10m(m, z, cosmology)), z, f"Tinker (2008) at z = {z:g}"


def survey_sigma_lin(meta: Mapping, z: float, cosmology: Cosmology,
                     cells: int = 128) -> tuple[float, str]:
    """rms linear density contrast of the survey's window, and how it was computed.

    The synthetic survey's cap inside its periodic box (the modes the synthetic universe
    has); for a catalogue the cap-shaped shell of ``catalogue_volume`` in a zero-padded box
    (the real footprint's shape is not modelled); without either, or when the window holds
    no cell centre, a top-hat sphere of the survey volume (colossus sigma(R)).

    Parameters
    ----------
    meta : mapping
        The survey record: ``source``, ``volume_mpc_h3`` [(h^-1 Mpc)^3] and the synthetic
        survey's ``observer_mpc_h``, ``box_size_mpc_h``, ``radius_mpc_h`` [comoving h^-1
        Mpc], ``area_deg2``, ``pole_ra_deg``, ``pole_dec_deg`` [deg], or a catalogue's
        ``comoving_distance_range_mpc_h`` and ``area_deg2``.
    z : float
        Redshift of the linear power spectrum.
    cosmology : Cosmology
    cells : int
        Cells per side of the window grid.

    Returns
    -------
    sigma_lin : float
        rms of the window-averaged linear density contrast (dimensionless).
    what : str
        The window, for the products.
    """
    from ..massfunction import sphere_sigma_lin, window_sigma_lin

    if meta.get("source") == "synthetic" and meta.get("observer_mpc_h") is not None:
        L = float(meta["box_size_mpc_h"])
        w = survey_window_weights(
            box_size_mpc_h=L, cells=cells, observer_mpc_h=meta["observer_mpc_h"],
            radius_mpc_h=float(meta["radius_mpc_h"]), area_deg2=float(meta["area_deg2"]),
            pole_ra_deg=float(meta["pole_ra_deg"]), pole_dec_deg=float(meta["pole_dec_deg"]),
            periodic=True)
        what = (f"the survey cap ({meta['area_deg2']:g} deg^2, R = {meta['radius_mpc_h']:g} "
                f"h^-1 Mpc) in the periodic {L:g} h^-1 Mpc box, {cells}^3 cells: the modes "
                "of the synthetic universe")
    elif meta.get("comoving_distance_range_mpc_h"):
        r1, r2 = (float(v) for v in meta["comoving_distance_range_mpc_h"])
        L = 2.6 * r2                                  # the whole sphere, zero-padded
        w = survey_window_weights(
            box_size_mpc_h=L, cells=cells, observer_mpc_h=[L / 2] * 3, radius_mpc_h=r2,
            inner_radius_mpc_h=r1, area_deg2=float(meta.get("area_deg2", 8250.0)),
            pole_ra_deg=0.0, pole_dec_deg=90.0, periodic=False)
        what = (f"a cap of {meta.get('area_deg2', 8250.0):g} deg^2 between {r1:.0f} and "
                f"{r2:.0f} h^-1 Mpc (the catalogue_volume; the real footprint's shape is "
                f"not modelled) in a zero-padded {L:.0f} h^-1 Mpc box, {cells}^3 cells")
    else:
        w, what = None, "top-hat sphere of the survey volume (colossus sigma(R))"
    if w is not None and w.sum() == 0:
        w, what = None, "top-hat sphere of the survey volume (colossus sigma(R)): the " \
                        "window holds no cell centre"
    if w is None:
        return sphere_sigma_lin(float(meta["volume_mpc_h3"]), z, cosmology), what
    return window_sigma_lin(w, L, z, cosmology), what


def survey_window_weights(*, box_size_mpc_h: float, cells: int, observer_mpc_h,
                          radius_mpc_h: float, area_deg2: float, pole_ra_deg: float,
                          pole_dec_deg: float, inner_radius_mpc_h: float = 0.0,
                          periodic: bool = True) -> np.ndarray:
    """Cell weights of a cap-shaped survey volume (``inner_radius <= r <= radius``, within
    the cap of ``area_deg2`` around the pole, as :func:`cmpipe.survey.in_footprint`)
    around ``observer_mpc_h`` in a box of ``cells^3`` cells: the number of the volume's
    images (``periodic``: the box repeats, as the synthetic survey tiles it) or 0/1 (an
    isolated, zero-padded box) at every cell centre."""
    L = float(box_size_mpc_h)
    cell = L / int(cells)
    x = (np.arange(int(cells)) + 0.5) * cell
    o = np.asarray(observer_mpc_h, dtype=float)
    pole = radec_to_unit(pole_ra_deg, pole_dec_deg)
    cos_cap = cap_cos_half_angle(area_deg2)
    reach = int(np.ceil(radius_mpc_h / L)) if periodic else 0
    out = np.zeros((cells,) * 3)
    for sx in range(-reach, reach + 1):
        dx = (x + sx * L - o[0])[:, None, None]
        for sy in range(-reach, reach + 1):
            dy = (x + sy * L - o[1])[None, :, None]
            for sz in range(-reach, reach + 1):
                dz = (x + sz * L - o[2])[None, None, :]
                r = np.sqrt(dx * dx + dy * dy + dz * dz)
                mu = (dx * pole[0] + dy * pole[1] + dz * pole[2]) / np.maximum(r, 1e-12)
                out += (r <= radius_mpc_h) & (r >= inner_radius_mpc_h) & (mu >= cos_cap)
    return out
