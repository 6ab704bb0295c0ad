"""The analyses of trained estimators (pipeline steps 8-9 and the talk's comparisons).

Modules
-------
``metrics``
    Residuals, scatter, coverage with halo-bootstrap errors, PIT curves, the precision model.
``baselines``
    The classical estimators: M-sigma and the virial mass.
``eval_set``
    The CNN3D + SBI estimator and the baselines on the eval set, by mass and by observer
    distance.
``comparison``
    The estimators side by side on the contaminated and pure catalogues.
``ablation``
    Inputs of the 1D/2D/3D networks and their seed spread.
``robustness``
    Predictions under incompleteness and other perturbations of the eval clusters.

``robustness`` imports TensorFlow (it predicts with the CNN); the others do not.
"""
