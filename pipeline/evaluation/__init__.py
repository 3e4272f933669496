"""Evaluation of frozen embeddings, as pure functions of numpy arrays.

- :mod:`~pipeline.evaluation.probes`: linear (logistic regression) and kNN probes.
- :mod:`~pipeline.evaluation.robustness`: worst-group accuracy of ERM, GEORGE-style
  discovered-group DRO and the true-group oracles.
- :mod:`~pipeline.evaluation.grouping`: per-class clustering and how well it finds true groups.
- :mod:`~pipeline.evaluation.geometry`: alignment, uniformity, class spread, fine kNN purity.
- :mod:`~pipeline.evaluation.projection`: 2-D PCA / t-SNE pictures saved as PNG.

Submodules are not imported here so that using one does not pay for the others' imports.
"""
