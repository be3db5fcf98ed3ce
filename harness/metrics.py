"""The metric registry: a task names its metrics from here, and every one is scikit-learn's or
SciPy's, never hand-written. `register` adds one; a metric says which kind of task it scores, and
whether it needs exactly two classes (binary F1), so a task definition asking for one that cannot
score it fails when it is loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A score of gold labels against predictions; called like a function."""

    score: Callable[[np.ndarray, np.ndarray], float]
    task_kind: Literal["classification", "regression"]
    two_classes: bool = False  # only defined for exactly two classes (binary F1)

    def __call__(self, gold: np.ndarray, predicted: np.ndarray) -> float:
        return float(self.score(gold, predicted))


def _sklearn(name: str, **options) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y: np.ndarray, p: np.ndarray) -> float:
        import sklearn.metrics  # imported when scored: config validation stays fast

        return float(getattr(sklearn.metrics, name)(y, p, **options))

    return score


def _scipy(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y: np.ndarray, p: np.ndarray) -> float:
        import scipy.stats

        return float(getattr(scipy.stats, name)(y, p)[0])

    return score


METRICS: dict[str, Metric] = {
    "accuracy": Metric(_sklearn("accuracy_score"), "classification"),
    "f1": Metric(_sklearn("f1_score"), "classification", two_classes=True),  # of class 1, as GLUE's MRPC / QQP
    "macro_f1": Metric(_sklearn("f1_score", average="macro"), "classification"),
    "micro_f1": Metric(_sklearn("f1_score", average="micro"), "classification"),
    "matthews": Metric(_sklearn("matthews_corrcoef"), "classification"),
    "pearson": Metric(_scipy("pearsonr"), "regression"),
    "spearman": Metric(_scipy("spearmanr"), "regression"),
}


def register(name: str, metric: Metric) -> None:
    """Add a metric under a new name; task definitions can name it from then on."""
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"metric names use letters, digits and _ (got {name!r})")
    METRICS[name] = metric
