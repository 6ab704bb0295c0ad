"""Figures, drawn from the products (summary JSON, tables) without computing anything new;
the only package that imports matplotlib.

Modules
-------
``pipeline``
    The main chain: mock, training, calibration, evaluation, survey mass function.
``flow``
    The neural flow's loss curves and the estimator comparison.
``analyses``
    The ablation, robustness and saliency analyses.
"""
