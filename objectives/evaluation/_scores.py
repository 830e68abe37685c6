"""Scores of predictions against labels, in plain Python (no torch): accuracy, macro-F1, per-class precision, recall
and F1, and classes never predicted. ``hpo status`` and the report read them without loading torch."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """accuracy = (1 / N) * sum_n [pred_n == y_n]."""
    return sum(int(p == y) for p, y in zip(preds, labels, strict=True)) / max(1, len(labels))


def macro_f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """macro-F1 = (1 / |C|) * sum_{c in C} 2 TP_c / (2 TP_c + FP_c + FN_c), C = the labels present in ``labels`` or
    ``preds`` (scikit-learn's ``f1_score(average="macro")``): a label absent from both is not scored, so a
    validation subset that lacks a class is not marked down for it."""
    present = sorted(set(labels) | set(preds))
    scores = []
    for c in present:
        tp = sum(1 for p, y in zip(preds, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, labels, strict=True) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(1, len(present))


def per_class(preds: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Scores of each class c (keyed by its name), from its confusion counts:

    precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c), F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)
    (0 where the denominator is 0); support_c = TP_c + FN_c rows of the class, predicted_c = TP_c + FP_c rows
    predicted as it. A class with support > 0 and predicted = 0 is never predicted: its recall and F1 are 0. A
    prediction outside the classes (a model with more outputs than the data has classes) counts as FN_y only.
    """
    tp, fp, fn = [0] * len(names), [0] * len(names), [0] * len(names)
    for p, y in zip(preds, labels, strict=True):
        if p == y:
            tp[y] += 1
        else:
            fn[y] += 1
            if 0 <= p < len(names):  # an output beyond the data's classes is an error of row y only
                fp[p] += 1
    return {
        name: {
            "precision": tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0,
            "recall": tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0,
            "f1": 2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else 0.0,
            "support": float(tp[c] + fn[c]),
            "predicted": float(tp[c] + fp[c]),
        }
        for c, name in enumerate(names)
    }


def never_predicted(scores: dict[str, dict[str, float]]) -> list[str]:
    """Classes of :func:`per_class` scores that have rows but were predicted for none of them."""
    return [name for name, s in scores.items() if s["support"] > 0 and s["predicted"] == 0]
