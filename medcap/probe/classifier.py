"""A linear probe: scikit-learn logistic regression on frozen features, C chosen on the validation split.

:func:`fit_probe` standardises the features (``StandardScaler``, fitted on the training rows), fits
``LogisticRegression`` for each C of a small grid on the train split, keeps the C with the best
validation accuracy (ties: the smaller C, the stronger regularisation), refits that C on train + val
and scores the held-out test split: accuracy and macro-F1, each with a seeded percentile bootstrap
interval over test images (:func:`medcap.metrics.stats.bootstrap_mean` for accuracy; the same
resampling for macro-F1, which is not a mean).
"""

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medcap.metrics.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_mean

C_GRID = (0.01, 0.1, 1.0, 10.0)
MAX_ITER = 5000


@dataclass
class ProbeResult:
    """What one probe measured (percentages for accuracy and macro-F1)."""

    c: float
    val_accuracy: Dict[str, float]
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    macro_f1: float
    macro_f1_ci_low: float
    macro_f1_ci_high: float
    majority_accuracy: float
    n_train: int
    n_val: int
    n_test: int
    classes: List[str]
    hits: List[int] = field(repr=False)
    predictions: List[str] = field(repr=False)

    def as_dict(self) -> Dict:
        return asdict(self)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged F1 over the labels present in ``y_true`` or ``y_pred`` (scikit-learn's ``average="macro"``)."""
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    true, pred = codes[: len(y_true)], codes[len(y_true):]
    k = len(labels)
    tp = np.bincount(true[true == pred], minlength=k).astype(np.float64)
    support = np.bincount(true, minlength=k)
    predicted = np.bincount(pred, minlength=k)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1.mean())


def macro_f1_interval(y_true: np.ndarray, y_pred: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of macro-F1, resampling test rows (images) with replacement."""
    if len(y_true) < 2:
        return float("nan"), float("nan")
    result = scipy_stats.bootstrap(
        (np.arange(len(y_true)),), lambda rows: macro_f1(y_true[rows], y_pred[rows]), n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", vectorized=False, rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _classifier(c: float, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))


def fit_probe(
    features: np.ndarray, labels: Sequence[str], splits: Dict[str, np.ndarray], c_grid: Sequence[float] = C_GRID,
    seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
) -> ProbeResult:
    """Fit and score a logistic-regression probe.

    Args:
        features (np.ndarray): ``[n, d]`` features.
        labels (Sequence[str]): one label per row.
        splits (Dict[str, np.ndarray]): row indices of ``train``, ``val`` and ``test`` (image-disjoint).
        c_grid (Sequence[float]): inverse regularisation strengths to try.
        seed (int): solver and bootstrap seed.
        confidence (float): interval level.
        n_resamples (int): bootstrap resamples.

    Returns:
        ProbeResult: the chosen C, validation accuracy per C, test scores with intervals.

    Raises:
        ValueError: when a split is empty or the train split holds a single class.
    """
    labels = np.asarray(labels, dtype=str)
    for name in ("train", "val", "test"):
        if len(splits.get(name, ())) == 0:
            raise ValueError(f"the {name} split is empty")
    train, val, test = splits["train"], splits["val"], splits["test"]
    if len(np.unique(labels[train])) < 2:
        raise ValueError(f"the train split holds a single class ({labels[train][0]!r}): nothing to probe")
    val_accuracy = {}
    for c in c_grid:
        model = _classifier(c, seed).fit(features[train], labels[train])
        val_accuracy[str(c)] = float((model.predict(features[val]) == labels[val]).mean() * 100)
    best = max(c_grid, key=lambda c: (val_accuracy[str(c)], -c))
    fit_rows = np.concatenate([train, val])
    model = _classifier(best, seed).fit(features[fit_rows], labels[fit_rows])
    predictions = model.predict(features[test])
    hits = (predictions == labels[test]).astype(int)
    accuracy = bootstrap_mean(hits, confidence=confidence, n_resamples=n_resamples, seed=seed).scaled(100)
    f1_low, f1_high = macro_f1_interval(labels[test], predictions, confidence, n_resamples, seed)
    values, counts = np.unique(labels[fit_rows], return_counts=True)
    majority = values[np.argmax(counts)]
    return ProbeResult(
        c=best, val_accuracy=val_accuracy, accuracy=accuracy.value, accuracy_ci_low=accuracy.ci_low,
        accuracy_ci_high=accuracy.ci_high, macro_f1=macro_f1(labels[test], predictions) * 100,
        macro_f1_ci_low=f1_low * 100, macro_f1_ci_high=f1_high * 100,
        majority_accuracy=float((labels[test] == majority).mean() * 100), n_train=len(train), n_val=len(val),
        n_test=len(test), classes=[str(c) for c in model.classes_], hits=hits.tolist(), predictions=predictions.tolist(),
    )
