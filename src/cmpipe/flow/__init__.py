"""The neural-flow estimator (the talk's method; ``workflow/rules/flow.smk``): the posterior
``P(log M | KDE image)`` learned directly, PyTorch + zuko.

Modules
-------
``model``
    The network: a convolutional embedding of the 2D ``(R_proj, v_los)`` KDE image and a
    conditional normalizing flow over ``log10 M``, its settings, saving and loading.
``training``
    :func:`~cmpipe.flow.training.train_flow` (early stopping on the validation split,
    resumable), the mass grid, the training prior and PIT values of posterior curves.

Importing a module here imports torch; the package itself does not.
"""
