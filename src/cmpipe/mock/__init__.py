"""The mock catalogue (pipeline steps 1-5; ``workflow/rules/catalogue.smk``, ``mock.smk``).

Modules, in the order the DAG runs them
---------------------------------------
``lognormal``, ``tail``, ``universe``
    The embedded synthetic universe: lognormal density and velocity fields, Tinker (2008)
    halos, a halotools CLF galaxy population, and the training tail of ghost halos.
``selection``
    Host halos above the mass threshold, and how many lines of sight each one gets.
``sightlines``
    Line-of-sight directions that maximise the smallest angle between them.
``projection``
    Every galaxy of the box in each cluster's phase-space window.
``fluxlimit``
    Each projected cluster seen by its own observer, through the survey's magnitude limit
    (the observer ball's radius and the magnitudes: :mod:`cmpipe.cosmology`).
``splits``
    Train / validation / test / eval by host halo, stratified in log M.
``stats``
    The mock's summary statistics (counts, the halo mass function against Tinker).

Nothing here imports the networks, the calibration or the survey; they import from here.
"""
