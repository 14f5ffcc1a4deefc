"""How sure a score is: bootstrap intervals over questions (or images) and paired tests.

Pure functions over per-row scores (:func:`medcap.metrics.vqa.vqa_row_scores` gives them):

* :func:`cluster_ids` - which rows resample together: the questions of one image, when several
  questions share an image (they are not independent), else each question alone;
* :func:`bootstrap_mean` - a seeded percentile bootstrap interval of a mean
  (``scipy.stats.bootstrap``, ``method="percentile"``), resampling whole clusters;
* :func:`paired_bootstrap_difference` - the same for mean(B) - mean(A) over the same rows, with
  the same resampled clusters on both sides;
* :func:`mcnemar_exact` - McNemar's exact test for two 0/1 score vectors on the same rows
  (``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``), with the flip counts;
* :func:`score_intervals` / :func:`compare_row_scores` - the above for every key of a scores dict.

A cluster bootstrap resamples clusters with replacement and takes the mean over every row of the
drawn clusters (a ratio of sums: clusters may hold different numbers of rows).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
RESAMPLE_UNITS = ("auto", "image", "question")


class RowScores(NamedTuple):
    """The per-row scores behind one metric key: row indices (into the scored table) and values."""

    rows: List[int]
    values: List[float]


@dataclass(frozen=True)
class Interval:
    """A value with its bootstrap interval.

    Attributes:
        value (Optional[float]): the statistic on the data (None when no row applies).
        ci_low (Optional[float]): lower end of the interval (None when fewer than 2 clusters).
        ci_high (Optional[float]): upper end.
        n (int): rows (questions) the value is computed on.
        n_clusters (int): resampling units among those rows (images or questions).
    """

    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    n: int
    n_clusters: int

    def scaled(self, factor: float) -> "Interval":
        """The interval with value and ends multiplied by ``factor`` (e.g. 100 for percent)."""
        scale = lambda v: None if v is None else v * factor  # noqa: E731
        return Interval(scale(self.value), scale(self.ci_low), scale(self.ci_high), self.n, self.n_clusters)

    def as_dict(self, digits: Optional[int] = None) -> Dict[str, Optional[float]]:
        """``{"value", "ci_low", "ci_high", "n", "n_clusters"}``, rounded to ``digits`` if given."""
        rounded = lambda v: None if v is None else (round(v, digits) if digits is not None else v)  # noqa: E731
        return {"value": rounded(self.value), "ci_low": rounded(self.ci_low), "ci_high": rounded(self.ci_high),
                "n": self.n, "n_clusters": self.n_clusters}


def cluster_ids(n_rows: int, images: Optional[Sequence[str]] = None, unit: str = "auto") -> Tuple[np.ndarray, str]:
    """The resampling unit of each row.

    Rows that name the same non-empty image share a cluster; a row without an image is a cluster
    of its own. ``unit="auto"`` resamples by image when some image holds more than one row and by
    question otherwise; ``"question"`` always resamples single rows; ``"image"`` groups by image
    (and needs ``images``).

    Args:
        n_rows (int): number of rows.
        images (Optional[Sequence[str]]): image path per row ("" for none), or None.
        unit (str): ``"auto"``, ``"image"`` or ``"question"``.

    Returns:
        Tuple[np.ndarray, str]: an int cluster id per row, and the unit used (``"image"`` or
        ``"question"``).

    Raises:
        ValueError: on an unknown unit, ``unit="image"`` without images, or a length mismatch.
    """
    if unit not in RESAMPLE_UNITS:
        raise ValueError(f"unknown resampling unit {unit!r}; choose from {', '.join(RESAMPLE_UNITS)}")
    singles = np.arange(n_rows)
    if unit == "question" or (images is None and unit == "auto"):
        return singles, "question"
    if images is None:
        raise ValueError("resampling by image needs an image per row (an 'image' column)")
    if len(images) != n_rows:
        raise ValueError(f"{len(images)} images for {n_rows} rows")
    ids = np.empty(n_rows, dtype=np.int64)
    seen: Dict[str, int] = {}
    for row, image in enumerate(images):
        image = "" if image is None else str(image).strip()
        ids[row] = seen.setdefault(image, len(seen)) if image else -1
    lone = ids < 0
    ids[lone] = len(seen) + np.arange(int(lone.sum()))
    shared = len(np.unique(ids)) < n_rows
    if unit == "auto" and not shared:
        return singles, "question"
    return ids, "image"


def _cluster_totals(values: np.ndarray, clusters: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    _, compact = np.unique(clusters, return_inverse=True)
    sums = np.bincount(compact, weights=values)
    counts = np.bincount(compact).astype(np.float64)
    return sums, counts


def _percentile_interval(values: np.ndarray, clusters: Optional[np.ndarray], confidence: float,
                         n_resamples: int, seed: int) -> Interval:
    """Percentile bootstrap of the mean of ``values``, resampling whole clusters."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0, 0)
    clusters = np.arange(n) if clusters is None else np.asarray(clusters)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster ids for {n} values")
    sums, counts = _cluster_totals(values, clusters)
    value = float(values.mean())
    if len(sums) < 2:
        return Interval(value, None, None, n, len(sums))

    def ratio_of_sums(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        return sums[drawn].sum(axis=axis) / counts[drawn].sum(axis=axis)

    result = stats.bootstrap(
        (np.arange(len(sums)),), ratio_of_sums, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", vectorized=True, rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Interval(value, low, high, n, len(sums))


def bootstrap_mean(
    values: Sequence[float],
    clusters: Optional[Sequence[int]] = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Mean of ``values`` with a seeded percentile bootstrap interval.

    Args:
        values (Sequence[float]): one score per row (e.g. 0/1 hits).
        clusters (Optional[Sequence[int]]): cluster id per row (see :func:`cluster_ids`); rows
            of one cluster are drawn together. None: every row is its own cluster.
        confidence (float): interval level, e.g. 0.95.
        n_resamples (int): bootstrap resamples.
        seed (int): seed of the resampler (numpy ``default_rng``).

    Returns:
        Interval: value = the mean (None without rows); ends None when fewer than 2 clusters.
    """
    return _percentile_interval(np.asarray(values, dtype=np.float64), None if clusters is None else np.asarray(clusters),
                                confidence, n_resamples, seed)


def paired_bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Optional[Sequence[int]] = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """mean(b) - mean(a) over the same rows, with a paired bootstrap interval.

    Each resample draws one set of clusters and evaluates both sides on it (the bootstrap of the
    per-row differences ``b - a``), so what the two sides share cancels: the interval is narrower
    the more the two score vectors agree row by row.

    Args:
        a (Sequence[float]): scores of side A, one per row.
        b (Sequence[float]): scores of side B on the same rows, in the same order.
        clusters (Optional[Sequence[int]]): cluster id per row, as for :func:`bootstrap_mean`.
        confidence (float): interval level.
        n_resamples (int): bootstrap resamples.
        seed (int): resampler seed.

    Returns:
        Interval: value = mean(b) - mean(a).

    Raises:
        ValueError: if ``a`` and ``b`` differ in length.
    """
    a_values, b_values = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_values.shape != b_values.shape:
        raise ValueError(f"paired scores differ in length: {len(a_values)} vs {len(b_values)}")
    return _percentile_interval(b_values - a_values, None if clusters is None else np.asarray(clusters),
                                confidence, n_resamples, seed)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two 0/1 score vectors on the same rows.

    ``right_to_wrong``: rows right under A and wrong under B; ``wrong_to_right`` the reverse;
    ``p_value``: the exact two-sided binomial p-value on the discordant rows (1.0 when none).
    """

    both_right: int
    right_to_wrong: int
    wrong_to_right: int
    both_wrong: int
    p_value: float

    def as_dict(self) -> Dict[str, float]:
        return {"both_right": self.both_right, "right_to_wrong": self.right_to_wrong,
                "wrong_to_right": self.wrong_to_right, "both_wrong": self.both_wrong, "p_value": self.p_value}


def mcnemar_exact(a_hits: Sequence[float], b_hits: Sequence[float]) -> McNemar:
    """McNemar's exact test (``statsmodels`` ``mcnemar(table, exact=True)``).

    Args:
        a_hits (Sequence[float]): 0/1 per row under A.
        b_hits (Sequence[float]): 0/1 per row under B, same rows.

    Returns:
        McNemar: the 2x2 counts and the p-value.

    Raises:
        ValueError: on different lengths or a value other than 0/1.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a_hits, dtype=np.float64), np.asarray(b_hits, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise ValueError("McNemar's test needs 0/1 scores")
    a_right, b_right = a == 1.0, b == 1.0
    counts = (int((a_right & b_right).sum()), int((a_right & ~b_right).sum()),
              int((~a_right & b_right).sum()), int((~a_right & ~b_right).sum()))
    table = [[counts[0], counts[1]], [counts[2], counts[3]]]
    p_value = float(mcnemar(table, exact=True).pvalue) if counts[1] + counts[2] else 1.0
    return McNemar(*counts, p_value=p_value)


def score_intervals(
    row_scores: Mapping[str, RowScores],
    clusters: Optional[Sequence[int]] = None,
    scale: float = 100.0,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Interval]:
    """An :class:`Interval` for every key of ``row_scores`` (percent with ``scale=100``).

    Args:
        row_scores (Mapping[str, RowScores]): metric key -> rows and per-row scores.
        clusters (Optional[Sequence[int]]): cluster id of every row of the table (indexed by the
            ``rows`` of each key); None: resample questions.
        scale (float): factor applied to value and ends.
        confidence (float): interval level.
        n_resamples (int): bootstrap resamples.
        seed (int): resampler seed (the same for every key).

    Returns:
        Dict[str, Interval]: key -> interval, in the order of ``row_scores``.
    """
    all_clusters = None if clusters is None else np.asarray(clusters)
    intervals = {}
    for key, scores in row_scores.items():
        key_clusters = None if all_clusters is None else all_clusters[np.asarray(scores.rows, dtype=np.int64)]
        interval = bootstrap_mean(scores.values, key_clusters, confidence, n_resamples, seed)
        intervals[key] = interval.scaled(scale)
    return intervals


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric key, over the rows both score.

    Attributes:
        a (Optional[float]): A's value (scaled).
        b (Optional[float]): B's value (scaled).
        difference (Interval): B - A with its paired bootstrap interval (scaled).
        mcnemar (Optional[McNemar]): for 0/1 metrics, else None.
        right_to_wrong (List[int]): rows (table indices) right under A, wrong under B (0/1 metrics).
        wrong_to_right (List[int]): rows wrong under A, right under B.
    """

    a: Optional[float]
    b: Optional[float]
    difference: Interval
    mcnemar: Optional[McNemar] = None
    right_to_wrong: List[int] = field(default_factory=list)
    wrong_to_right: List[int] = field(default_factory=list)


def compare_row_scores(
    a_scores: Mapping[str, RowScores],
    b_scores: Mapping[str, RowScores],
    binary_keys: Sequence[str] = (),
    clusters: Optional[Sequence[int]] = None,
    scale: float = 100.0,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Comparison]:
    """Paired comparison of B with A for every key both score, on the rows both score.

    The two tables must hold the same questions in the same row order (the caller aligns them);
    a key's rows are then the same on both sides. Keys in ``binary_keys`` (0/1 per-row scores)
    also get McNemar's exact test and the lists of flipped rows.

    Returns:
        Dict[str, Comparison]: key -> comparison, in the order of ``a_scores``.
    """
    all_clusters = None if clusters is None else np.asarray(clusters)
    binary = set(binary_keys)
    comparisons = {}
    for key, a_key in a_scores.items():
        if key not in b_scores:
            continue
        a_by_row = dict(zip(a_key.rows, a_key.values))
        b_by_row = dict(zip(b_scores[key].rows, b_scores[key].values))
        rows = [row for row in a_key.rows if row in b_by_row]
        a_values = np.array([a_by_row[row] for row in rows], dtype=np.float64)
        b_values = np.array([b_by_row[row] for row in rows], dtype=np.float64)
        key_clusters = None if all_clusters is None else all_clusters[np.asarray(rows, dtype=np.int64)]
        difference = paired_bootstrap_difference(a_values, b_values, key_clusters, confidence, n_resamples, seed).scaled(scale)
        mean = lambda v: float(v.mean()) * scale if len(v) else None  # noqa: E731
        comparison = Comparison(mean(a_values), mean(b_values), difference)
        if key in binary and rows:
            comparison = Comparison(
                comparison.a, comparison.b, difference, mcnemar_exact(a_values, b_values),
                [row for row, x, y in zip(rows, a_values, b_values) if x == 1.0 and y == 0.0],
                [row for row, x, y in zip(rows, a_values, b_values) if x == 0.0 and y == 1.0],
            )
        comparisons[key] = comparison
    return comparisons
