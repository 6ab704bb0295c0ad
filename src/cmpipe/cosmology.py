"""The cosmology, built once from the config and passed explicitly.

colossus keeps a module-level "current" cosmology that its mass-function, bias and
concentration functions read; :func:`make_cosmology` sets it and also builds an astropy
cosmology with the same parameters, so distances (astropy) and structure formation
(colossus) never disagree. Everything else receives the :class:`Cosmology` object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Cosmology", "make_cosmology", "KNOWN_COSMOLOGIES", "evrard_sigma_dm_kms",
           "activate_colossus", "tinker08_dndlnm", "tinker08_dndlog10m", "halo_bias",
           "survey_depth_mpc_h", "observer_radius_mpc_h", "apparent_magnitudes"]

log = logging.getLogger(__name__)

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


def activate_colossus(cosmology: Cosmology):
    """Make ``cosmology`` colossus's current one (its LSS functions read a global)."""
    from colossus.cosmology import cosmology as ccosmo

    try:
        current = ccosmo.getCurrent()
    except Exception:  # colossus raises when no cosmology has been set yet
        current = None
    if current is not cosmology.colossus:
        ccosmo.setCurrent(cosmology.colossus)


def tinker08_dndlnm(log10_m, z, cosmology: Cosmology):
    """Tinker et al. (2008) halo mass function for M200c (colossus).

    Parameters
    ----------
    log10_m : array_like
        log10(M200c / h^-1 Msun).
    z : float
        Redshift.
    cosmology : Cosmology

    Returns
    -------
    ndarray
        dn/dln M, comoving (h^-1 Mpc)^-3.
    """
    from colossus.lss import mass_function

    activate_colossus(cosmology)
    m = 10.0 ** np.asarray(log10_m, dtype=float)
    return mass_function.massFunction(m, z, mdef="200c", model="tinker08", q_out="dndlnM")


def tinker08_dndlog10m(log10_m, z, cosmology: Cosmology) -> np.ndarray:
    """Tinker et al. (2008) mass function per dex for M200c: the box's halo masses and,
    re-exported by :mod:`cmpipe.massfunction.theory`, the survey's theory curve.

    Parameters
    ----------
    log10_m : array_like
        log10(M200c / h^-1 Msun).
    z : float
        Redshift.
    cosmology : Cosmology

    Returns
    -------
    ndarray
        dn/dlog10 M, comoving h^3 Mpc^-3 dex^-1 (colossus ``dndlnM`` times ln 10).
    """
    dndlnm = tinker08_dndlnm(log10_m, float(z), cosmology)
    return np.asarray(dndlnm, dtype=float) * np.log(10.0)


def halo_bias(log10_m, z, cosmology: Cosmology):
    """Tinker et al. (2010) linear halo bias for M200c (colossus), dimensionless."""
    from colossus.lss import bias

    activate_colossus(cosmology)
    m = 10.0 ** np.asarray(log10_m, dtype=float)
    return bias.haloBias(m, z, mdef="200c", model="tinker10")


def survey_depth_mpc_h(survey, cosmology) -> float:
    """Comoving depth of the configured survey, h^-1 Mpc: ``survey.synthetic.radius_mpc_h``
    for the synthetic survey, the comoving distance of ``survey.catalogue_volume.z_max``
    for a catalogue (``survey`` is the :class:`cmpipe.sections.SurveySettings`)."""
    if survey.source == "synthetic":
        return float(survey.synthetic.radius_mpc_h)
    return float(cosmology.comoving_distance_mpc_h(float(survey.catalogue_volume.z_max)))


def observer_radius_mpc_h(s, cosmology) -> float:
    """Radius of the mock's observer ball: ``mock.observer_radius_mpc_h``, or with null the
    survey's depth (:func:`survey_depth_mpc_h`), so that the flux limit's effect is learnt
    at every distance the survey reaches. An explicit radius short of the survey's depth
    is logged: survey clusters beyond it are flagged ``beyond_mock_depth``."""
    depth = survey_depth_mpc_h(s.survey, cosmology)
    radius = s.mock.observer_radius_mpc_h
    if radius is None:
        return depth
    if float(radius) < depth - 1e-6:
        log.warning("mock.observer_radius_mpc_h = %g h^-1 Mpc is short of the survey's depth "
                    "%.0f h^-1 Mpc: the calibration is extrapolated for survey clusters beyond "
                    "it (flagged beyond_mock_depth); null ties the mock to the survey",
                    float(radius), depth)
    return float(radius)


def apparent_magnitudes(mag_abs, comoving_distance_mpc_h, cosmology):
    """Apparent r magnitude of galaxies of absolute magnitude ``mag_abs``
    (M - 5 log10 h) at comoving distances in h^-1 Mpc (must be > 0)."""
    dc = np.asarray(comoving_distance_mpc_h, dtype=float)
    z = cosmology.z_at_comoving_distance(dc)
    dl = (1.0 + z) * dc
    return np.asarray(mag_abs) + 5.0 * np.log10(dl) + 25.0
