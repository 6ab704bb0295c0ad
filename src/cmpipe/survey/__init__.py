"""The survey: from a sky catalogue (synthetic or a user's) to cluster masses and the
cluster mass function.

- :mod:`.synthetic`: the embedded default survey, an SDSS-like survey of the synthetic box
  (:func:`make_synthetic_survey`), and its record;
- :mod:`.volume`: the survey volume: a catalogue's record, the Tinker (2008) mass function
  it should hold, its sample variance;
- :mod:`.windows`: survey clusters -> the mock's phase-space windows, the min-galaxies cut;
- :mod:`.posteriors`: the posterior table under the test-set and population priors;
- :mod:`.stats`: pulls, the Eddington shift and the likelihood (PIT) check against
  reference masses;
- :mod:`.mass_function`: the measured dn/dlog10M against Tinker (2008), forward-modelled.

The names of :mod:`.synthetic` are re-exported here.
"""
from .synthetic import (FULL_SKY_DEG2, Z_MIN_OBS, SyntheticSurvey, cap_cos_half_angle,
                        in_footprint, make_synthetic_survey, survey_volume_mpc_h3,
                        synthetic_survey_record)

__all__ = ["FULL_SKY_DEG2", "SyntheticSurvey", "Z_MIN_OBS", "cap_cos_half_angle",
           "in_footprint", "make_synthetic_survey", "survey_volume_mpc_h3",
           "synthetic_survey_record"]
