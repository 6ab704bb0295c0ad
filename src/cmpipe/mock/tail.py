"""The training tail: massive halos beyond the box's natural range, for training only.

A 500 h^-1 Mpc box holds ~2 halos above 10^15 h^-1 Msun, so a network trained on it meets
its training edge exactly where the most massive survey clusters (Coma, A2029, A2142) sit,
and mean-reverts there. The tail adds halos drawn flat in log M over
``[log10_m_min, log10_m_max)`` to the *training catalogue only*: the synthetic universe
places them in the box's own lognormal density and velocity fields
(:func:`cmpipe.mock.universe.make_halos`) and the projection treats them as ghosts
(:class:`cmpipe.mock.projection.Projector`, ``ghost_halo_ids``): a tail cluster's window holds
its own galaxies and the box's, but no other window sees a tail halo or its galaxies, so
the box's abundance, its interlopers and the survey are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TailSettings", "tail_masses"]


@dataclass(frozen=True)
class TailSettings:
    """Training-only massive halos (importance-sampled tail of the mass function).

    Attributes
    ----------
    log10_m_min, log10_m_max : float
        Range of the tail halos, log10(M200c / h^-1 Msun); masses are stratified uniformly
        in log M (flat, as the training set), not by abundance.
    halos_per_dex : float
        Tail halos per dex of mass (rounded to an integer count over the range).
    """

    log10_m_min: float = 14.8
    log10_m_max: float = 15.4
    halos_per_dex: float = 200.0

    def __post_init__(self):
        if not 12.0 <= self.log10_m_min < self.log10_m_max <= 16.5:
            raise ValueError(f"simulation.tail: need 12 <= log10_m_min (= {self.log10_m_min})"
                             f" < log10_m_max (= {self.log10_m_max}) <= 16.5. Fix: give "
                             "log10(M200c / h^-1 Msun)")
        if not self.halos_per_dex > 0:
            raise ValueError(f"simulation.tail.halos_per_dex = {self.halos_per_dex!r}: must "
                             "be positive. Fix: e.g. 200 (or tail.enabled: false)")

    @property
    def n_halos(self) -> int:
        """Number of tail halos."""
        return max(1, int(round(self.halos_per_dex * (self.log10_m_max - self.log10_m_min))))


def tail_masses(tail: TailSettings, rng: np.random.Generator) -> np.ndarray:
    """Masses of the training tail: ``tail.n_halos`` stratified uniformly in log M.

    Returns
    -------
    ndarray, float64
        log10(M200c / h^-1 Msun), decreasing; one mass in each of ``n_halos`` equal
        sub-intervals of the range (so the tail is flat in log M up to Poisson-free noise).
    """
    n = tail.n_halos
    u = (np.arange(n) + rng.random(n)) / n
    return np.sort(tail.log10_m_min + (tail.log10_m_max - tail.log10_m_min) * u)[::-1]
