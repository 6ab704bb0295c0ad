"""The cosmology, built once from the config and passed explicitly.

colossus keeps a module-level "current" cosmology that its mass-function, bias and
concentration functions read; :func:`make_cosmology` sets it and also builds an astropy
cosmology with the same parameters, so distances (astropy) and structure formation
(colossus) never disagree. Everything else receives the :class:`Cosmology` object.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Cosmology", "make_cosmology", "KNOWN_COSMOLOGIES", "evrard_sigma_dm_kms"]

#: colossus names accepted by ``cosmology.name`` in the config.
KNOWN_COSMOLOGIES = ("planck18", "planck18-only", "planck15", "WMAP9", "bolshoi",
                     "multidark-planck")

#: Speed of light in km/s.
C_KMS = 299792.458


@dataclass(frozen=True)
class Cosmology:
    """A flat LCDM cosmology seen by both colossus and astropy.

    Attributes
    ----------
    name : str
        colossus name (``planck18`` is Planck 2018 TT,TE,EE+lowE+lensing+BAO).
    colossus : colossus.cosmology.cosmology.Cosmology
    astropy : astropy.cosmology.FlatLambdaCDM
    """

    name: str
    colossus: object
    astropy: object

    @property
    def h(self) -> float:
        """Dimensionless Hubble constant H0 / (100 km/s/Mpc)."""
        return self.colossus.H0 / 100.0

    def efunc(self, z):
        """E(z) = H(z)/H0."""
        return self.colossus.Ez(z)

    def hubble_kms_per_mpc_h(self, z) -> float:
        """H(z) in km/s per h^-1 Mpc (proper), i.e. 100 E(z)."""
        return 100.0 * self.colossus.Ez(z)

    def comoving_distance_mpc_h(self, z):
        """Line-of-sight comoving distance to redshift ``z`` in h^-1 Mpc."""
        return self.astropy.comoving_distance(z).value * self.h

    @cached_property
    def _distance_table(self):
        zg = np.linspace(0.0, 3.0, 30001)
        return zg, self.comoving_distance_mpc_h(zg)

    def z_at_comoving_distance(self, d_mpc_h):
        """Redshift at comoving distance ``d_mpc_h`` (h^-1 Mpc); vectorised, z < 3.

        Inverts a table of astropy comoving distances (dz = 1e-4, built once per object;
        linear interpolation error < 1e-7 in z)."""
        zg, dg = self._distance_table
        return np.interp(np.asarray(d_mpc_h, dtype=float), dg, zg)

    def luminosity_distance_mpc_h(self, z):
        """Luminosity distance in h^-1 Mpc."""
        return self.astropy.luminosity_distance(z).value * self.h

    def angular_diameter_distance_mpc_h(self, z):
        """Angular-diameter distance in h^-1 Mpc (proper transverse size per radian)."""
        return self.astropy.angular_diameter_distance(z).value * self.h

    def as_dict(self) -> dict:
        """Parameters stored in product metadata."""
        c = self.colossus
        return dict(name=self.name, H0=c.H0, Om0=c.Om0, Ob0=c.Ob0, sigma8=c.sigma8,
                    ns=c.ns, Tcmb0=c.Tcmb0, flat=bool(c.flat))


def make_cosmology(name: str = "planck18") -> Cosmology:
    """Build the cosmology ``name`` (a colossus name) for colossus and astropy.

    Raises
    ------
    ValueError
        Unknown name (the message lists the accepted ones).
    """
    from astropy.cosmology import FlatLambdaCDM
    from colossus.cosmology import cosmology as ccosmo

    if name not in KNOWN_COSMOLOGIES:
        raise ValueError(f"cosmology.name: unknown cosmology '{name}'. "
                         f"Fix: use one of {', '.join(KNOWN_COSMOLOGIES)}")
    col = ccosmo.setCosmology(name, persistence="")
    if not col.flat:
        raise ValueError(f"cosmology '{name}' is not flat; cmpipe assumes flat LCDM")
    ast = FlatLambdaCDM(H0=col.H0, Om0=col.Om0, Ob0=col.Ob0, Tcmb0=col.Tcmb0,
                        Neff=col.Neff, m_nu=0.0, name=name)
    return Cosmology(name=name, colossus=col, astropy=ast)


def evrard_sigma_dm_kms(log10_m200c, z, cosmology: Cosmology):
    """Dark-matter velocity dispersion of Evrard et al. (2008), km/s (1D).

    sigma_DM = 1082.9 km/s [h(z) M200c / 1e15 Msun]^0.3361, with h(z) = H(z)/100. For
    ``log10_m200c`` in h^-1 Msun, h(z) M[Msun] = E(z) M[h^-1 Msun].
    """
    m = 10.0 ** np.asarray(log10_m200c, dtype=float)
    return 1082.9 * (cosmology.efunc(z) * m / 1e15) ** 0.3361
