"""The convolutional networks (pipeline step 6; ``workflow/rules/train.smk``): Keras 3 on
TensorFlow.

Modules
-------
``model``
    The CNN3D of the paper and its 1D/2D variants, built from a layer specification
    (:func:`cmpipe.sections.validate_layers`).
``cubedata``
    Network inputs from cube files: input transforms, sky-plane symmetries, batches.
``checkpoint``
    The per-epoch state of a training run: seeds, history, early stopping, resuming.
``training``
    :func:`~cmpipe.cnn.training.train` and the network's predictions ``d~``.
``saliency``
    Input-gradient saliency maps of a trained network.

Importing a module here imports TensorFlow; the package itself does not.
"""
