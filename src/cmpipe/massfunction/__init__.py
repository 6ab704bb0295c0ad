"""The cluster mass function from survey mass estimates (pipeline step 11; paper sec. 5).

Paper, Fig. 10: the CNN_3D mass function of the 8,250 deg^2 of the SDSS Legacy Survey, a
kernel density estimate weighted inversely by the uncertainties of the mass estimates with
a bootstrap 1 sigma band, compared with Tinker et al. (2008) for Planck 2018.

Modules
-------
``theory``
    Tinker (2008) dn/dlog10 M (and its survey-depth average), its local slope and the
    first-order Eddington bias, the sample variance of a survey window.
``estimator``
    The paper's estimator (:func:`estimate_mass_function`, :class:`MassFunctionEstimate`)
    and its Poisson or multinomial bootstrap.
``priors``
    Posteriors under the mass function as population prior, and their summaries.
``likelihood``
    The calibrated likelihood ``P(d~ | M)`` of the joint PDF: PIT of predictions, mock
    observations of clusters of known mass.
``forward``
    What the estimator should see if the universe is Tinker's (Gaussian and calibrated
    forward models) and the band-count and chi^2 tests against it.
"""
from .estimator import (BOOTSTRAPS, MassFunctionEstimate, estimate_mass_function,
                        kde_bandwidth, kde_mass_function, kde_weights)
from .forward import (band_chi2, forward_in_band, forward_model, forward_model_calibrated,
                      forward_model_from_masses, null_band_fractions)
from .likelihood import likelihood_columns, likelihood_pit, observe_through_calibration
from .priors import (population_prior_posterior, prior_from_joint_pdf,
                     summaries_under_priors, summarise_grid_posteriors)
from .theory import (LN10, eddington_bias, local_slope, sample_variance_fraction,
                     sphere_sigma_lin, tinker08_dndlog10m,
                     tinker08_survey_average, window_sigma_lin)

__all__ = [
    "LN10",
    "BOOTSTRAPS",
    "MassFunctionEstimate",
    "tinker08_dndlog10m",
    "tinker08_survey_average",
    "kde_weights",
    "kde_bandwidth",
    "kde_mass_function",
    "estimate_mass_function",
    "forward_model",
    "forward_model_calibrated",
    "forward_model_from_masses",
    "local_slope",
    "eddington_bias",
    "prior_from_joint_pdf",
    "population_prior_posterior",
    "summarise_grid_posteriors",
    "summaries_under_priors",
    "sample_variance_fraction",
    "window_sigma_lin",
    "sphere_sigma_lin",
    "likelihood_columns",
    "likelihood_pit",
    "observe_through_calibration",
    "null_band_fractions",
    "band_chi2",
    "forward_in_band",
]
