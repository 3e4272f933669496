"""The metrics of one embedding file, one function per task: what the evaluate stage writes (percentages).

Which function runs for which task is :mod:`pipeline.tasks`' business (``Task.metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np

from pipeline.config import EvaluateParams
from pipeline.data.records import SPLITS, VIEW_KEYS
from pipeline.evaluation.geometry import geometry_metrics
from pipeline.evaluation.probes import knn_predict, linear_probe, reference_head_probe

# Per test image results of one embedding file: {name: (N_test,) array} (correct flags, labels).
PerImage = dict[str, np.ndarray]


def _views(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two augmented test views, or None for an embedding file without them."""
    if not all(key in arrays for key in VIEW_KEYS):
        return None
    return arrays[VIEW_KEYS[0]], arrays[VIEW_KEYS[1]]


def _split(arrays: Mapping[str, np.ndarray], label: str) -> list[np.ndarray]:
    """[train_x, train_y, val_x, val_y, test_x, test_y] for one label role."""
    return [arrays[f"{s}_{k}"] for s in SPLITS for k in ("x", label)]


def coarse_to_fine_metrics(arrays: Mapping[str, np.ndarray], opts: EvaluateParams,
                           per_image: PerImage | None = None) -> dict[str, float]:
    """Fine-label probes and kNN on frozen embeddings, plus a coarse probe as a sanity check.

    Two fine-label linear probes, because they answer different questions:
    ``fine_head_acc`` is the paper's protocol (a linear head on raw embeddings, AdamW, fixed
    epochs): the number of METHOD.md section 6. ``fine_probe_acc`` is a logistic regression on
    standardised embeddings fitted to convergence with C chosen on validation: the most
    information any linear read-out can recover, which can survive even a strong collapse.
    Accuracies are percentages. ``per_image``, when given, receives the (N_test,) bool correct
    flags of the three fine read-outs under their metric names, and the (N_test,) fine labels
    under ``fine``.
    """
    head = opts.head
    fine_head = reference_head_probe(*_split(arrays, "fine"), epochs=head.epochs, lr=head.lr,
                                     weight_decay=head.weight_decay, batch_size=head.batch_size)
    fine = linear_probe(*_split(arrays, "fine"), cs=opts.probe_cs)
    coarse = linear_probe(*_split(arrays, "coarse"), cs=opts.probe_cs)
    tr_x, tr_y, _, _, te_x, te_y = _split(arrays, "fine")
    knn = knn_predict(tr_x, tr_y, te_x, k=opts.knn_k)
    metrics = {
        "fine_head_acc": 100.0 * fine_head.test_accuracy,
        "fine_head_val_acc": 100.0 * fine_head.val_accuracy,
        "fine_probe_acc": 100.0 * fine.test_accuracy,
        "fine_probe_val_acc": 100.0 * fine.val_accuracy,
        "fine_probe_c": fine.best_c,
        "fine_knn_acc": 100.0 * float(np.mean(knn == te_y)),
        "coarse_probe_acc": 100.0 * coarse.test_accuracy,
    }
    # Geometry of the test embeddings (L2-normalised): how collapsed each coarse class is, and
    # (with augmented views) how far two views of one image land apart.
    geometry = geometry_metrics(arrays["test_x"], arrays["test_coarse"], fine=te_y,
                                views=_views(arrays))
    metrics.update({f"geom_{k}": v for k, v in geometry.items()})
    # Fine accuracy inside each coarse class: where the sub-class structure was lost.
    test_coarse = arrays["test_coarse"]
    for c in np.unique(test_coarse):
        inside = test_coarse == c
        for name, result in (("head", fine_head), ("probe", fine)):
            metrics[f"fine_{name}_acc_coarse{int(c)}"] = 100.0 * float(
                np.mean(result.test_predictions[inside] == te_y[inside]))
    if per_image is not None:
        per_image.update({"fine_head_acc": fine_head.test_predictions == te_y,
                          "fine_probe_acc": fine.test_predictions == te_y, "fine_knn_acc": knn == te_y,
                          "fine": np.asarray(te_y)})
    return metrics


def worst_group_metrics(arrays: Mapping[str, np.ndarray], opts: EvaluateParams,
                        seed: int = 0, per_image: PerImage | None = None) -> dict[str, float]:
    """The robustness protocol of METHOD.md section 5 on frozen embeddings of a model trained on y.

    ERM (linear head), group DRO on GEORGE's and on k-means's discovered groups, and the two
    oracles that see the true training groups, each under its model-selection rules; keys
    ``{head}.{rule}/{metric}``, accuracies in percent; plus the sub-group discovery scores and the
    geometry of the test embeddings by task label. Settings from ``opts``: ``robustness_cs`` (the
    logistic heads' C grid), ``group_dro`` and ``discovery`` (with the dataset's own choices applied:
    :func:`pipeline.config.evaluate_options`). ``per_image``, when given, receives each chosen
    head's (N_test,) bool correct flags under ``"{head}.{rule}"``, and the (N_test,) true groups
    under ``group``.
    """
    from pipeline.evaluation.robustness import evaluate_robustness

    def triple(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return arrays[f"{split}_x"], arrays[f"{split}_y"], arrays[f"{split}_group"]

    predictions: dict[str, np.ndarray] = {}
    raw = evaluate_robustness(triple("train"), triple("val"), triple("test"), seed=seed,
                              george=asdict(opts.discovery.george),
                              kmeans=asdict(opts.discovery.kmeans), cs=opts.robustness_cs,
                              **asdict(opts.group_dro), test_predictions=predictions)
    if per_image is not None:
        per_image.update({name: pred == arrays["test_y"] for name, pred in predictions.items()})
        per_image["group"] = np.asarray(arrays["test_group"])
    metrics = {k: 100.0 * v if k.endswith("_acc") else v for k, v in raw.items()}
    fine = arrays.get("test_fine")
    geometry = geometry_metrics(arrays["test_x"], arrays["test_y"], fine=fine, views=_views(arrays))
    metrics.update({f"geom_{k}": v for k, v in geometry.items()})
    return metrics

