"""The types the platform lets skops load, beyond skops' own defaults: one list for every service.

skops refuses to build any type that is neither in its defaults (scikit-learn estimators,
builtin containers and numbers, numpy arrays and scalars) nor in the ``trusted`` list given to
``skops.io.load``. This is that list. It is what the pipelines the trainer builds contain (see
``trainer.pipeline.build_pipeline`` and ``trainer.algorithms``), as
``skops.io.get_untrusted_types`` reports them:

* ``numpy.dtype``: every fitted imputer, scaler and encoder keeps a dtype;
* ``sklearn.tree._tree.Tree``: random forests and gradient boosting (their trees);
* ``sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor``: hist gradient boosting.

It is the platform's list, never the one an artifact carries: an MLmodel's
``skops_trusted_types`` is written by whoever logged the model, so trusting it would let anyone
with a registry account name ``builtins.eval`` or ``os.system``. Add a type here only with a
pipeline the trainer can build that needs it, and keep out anything that can run code
(functions, ``builtins.*``, ``operator.*``, ``functools.partial``, ...).
"""

from __future__ import annotations

PLATFORM_TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)
