"""Bootstrap intervals, the cluster (image) bootstrap, paired differences and McNemar's exact test.

Simulations are seeded; each checks a rate over many draws within a tolerance of a few binomial
standard deviations, so a correct implementation passes with a wide margin and a broken one fails.
"""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from medcap.metrics.stats import (
    RowScores,
    bootstrap_mean,
    cluster_ids,
    compare_row_scores,
    mcnemar_exact,
    paired_bootstrap_difference,
    score_intervals,
)


def _covers(interval, truth):
    return interval.ci_low <= truth <= interval.ci_high


@pytest.mark.parametrize("p, n", [(0.3, 150), (0.6, 80)])
def test_interval_covers_the_true_rate_at_the_stated_level(p, n):
    rng = np.random.default_rng(1234)
    draws = 300
    covered = sum(
        _covers(bootstrap_mean(rng.binomial(1, p, size=n), n_resamples=1000, seed=draw), p) for draw in range(draws)
    )
    # 95% nominal; one binomial sd over 300 draws is 1.3 points
    assert 0.91 <= covered / draws <= 0.99, covered / draws  # 0.96 and 0.98 measured (ends inclusive)


def test_interval_width_matches_the_binomial_standard_error():
    values = np.array([1] * 120 + [0] * 280)  # p = 0.3, n = 400
    interval = bootstrap_mean(values, n_resamples=4000)
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert interval.value == pytest.approx(0.3)
    assert interval.ci_high - interval.ci_low == pytest.approx(expected, rel=0.1)
    assert interval.n == 400 and interval.n_clusters == 400


def test_seeded_and_edge_cases():
    values = np.random.default_rng(0).uniform(size=50)
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)
    empty = bootstrap_mean([])
    assert (empty.value, empty.ci_low, empty.ci_high, empty.n) == (None, None, None, 0)
    one_image = bootstrap_mean([1, 0, 1], clusters=[7, 7, 7])  # a single cluster: no interval
    assert one_image.value == pytest.approx(2 / 3) and one_image.ci_low is None and one_image.n_clusters == 1
    constant = bootstrap_mean([1, 1, 1, 1])
    assert (constant.ci_low, constant.ci_high) == (1.0, 1.0)


def test_cluster_ids():
    ids, unit = cluster_ids(5, ["a.png", "b.png", "a.png", "", ""])
    assert unit == "image"
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3], ids[4]}) == 4  # empty image: a cluster of its own
    ids, unit = cluster_ids(3, ["a.png", "b.png", "c.png"])  # no image holds two questions
    assert unit == "question" and list(ids) == [0, 1, 2]
    ids, unit = cluster_ids(3, ["a.png", "b.png", "c.png"], unit="image")
    assert unit == "image"
    assert cluster_ids(3, ["a", "a", "a"], unit="question")[1] == "question"
    assert cluster_ids(2, None)[1] == "question"
    with pytest.raises(ValueError, match="needs an image per row"):
        cluster_ids(2, None, unit="image")
    with pytest.raises(ValueError, match="unknown resampling unit"):
        cluster_ids(2, None, unit="patient")


def test_cluster_bootstrap_draws_whole_images():
    # every image has one right and one wrong answer: any resample of whole images scores exactly
    # 50%, so the image interval has no width; resampling single questions does not keep the pairs
    values = [1, 0] * 30
    images = [f"img{i // 2}.png" for i in range(60)]
    clusters, unit = cluster_ids(60, images)
    assert unit == "image"
    by_image = bootstrap_mean(values, clusters)
    assert by_image.ci_low == pytest.approx(0.5) and by_image.ci_high == pytest.approx(0.5)
    assert by_image.n == 60 and by_image.n_clusters == 30
    by_question = bootstrap_mean(values)
    assert by_question.ci_high - by_question.ci_low > 0.2


def test_cluster_bootstrap_widens_when_an_image_decides_its_answers():
    # 10 images x 10 questions, each image all right or all wrong: the effective sample is 10
    values = np.repeat([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], 10)
    clusters = np.repeat(np.arange(10), 10)
    by_image = bootstrap_mean(values, clusters, n_resamples=4000)
    by_question = bootstrap_mean(values, n_resamples=4000)
    ratio = (by_image.ci_high - by_image.ci_low) / (by_question.ci_high - by_question.ci_low)
    assert ratio == pytest.approx(math.sqrt(10), rel=0.25)


def test_cluster_bootstrap_keeps_its_coverage_where_the_question_bootstrap_loses_it():
    # 40 images x 6 questions; each image's own rate p_i ~ Uniform(0, 1), so the questions of one
    # image are correlated. The population rate is 0.5.
    rng = np.random.default_rng(99)
    draws, images, per_image = 250, 40, 6
    clusters = np.repeat(np.arange(images), per_image)
    by_image = by_question = 0
    for draw in range(draws):
        rates = rng.uniform(0, 1, size=images)
        values = rng.binomial(1, np.repeat(rates, per_image))
        by_image += _covers(bootstrap_mean(values, clusters, n_resamples=1000, seed=draw), 0.5)
        by_question += _covers(bootstrap_mean(values, n_resamples=1000, seed=draw), 0.5)
    assert 0.88 <= by_image / draws <= 0.99, by_image / draws  # 0.964 measured
    assert by_question / draws < 0.86, by_question / draws  # 0.79 measured, about 0.77 in theory


def _paired_samples(rng, n, agreement):
    """A and B 0/1 scores on the same n questions; B copies A's score with probability `agreement`."""
    a = rng.binomial(1, 0.6, size=n)
    independent = rng.binomial(1, 0.65, size=n)
    copy = rng.uniform(size=n) < agreement
    return a, np.where(copy, a, independent)


def test_paired_interval_shrinks_as_the_two_sides_agree():
    rng = np.random.default_rng(5)
    widths = {}
    for agreement in (0.0, 0.5, 0.9):
        a, b = _paired_samples(rng, 400, agreement)
        difference = paired_bootstrap_difference(a, b, n_resamples=2000)
        assert difference.value == pytest.approx(b.mean() - a.mean())
        widths[agreement] = difference.ci_high - difference.ci_low
        if agreement == 0.0:
            # independent sides: the paired width is about that of two separate intervals combined
            separate = [bootstrap_mean(x, n_resamples=2000) for x in (a, b)]
            combined = math.sqrt(sum((s.ci_high - s.ci_low) ** 2 for s in separate))
            assert widths[agreement] == pytest.approx(combined, rel=0.15)
    assert widths[0.0] > widths[0.5] > widths[0.9]
    assert widths[0.9] < 0.5 * widths[0.0]
    same = paired_bootstrap_difference(a, a)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_paired_interval_covers_the_true_difference():
    rng = np.random.default_rng(11)
    draws, covered = 250, 0
    for draw in range(draws):
        a, b = _paired_samples(rng, 200, 0.6)
        # E[b] - E[a] = 0.4 * (0.65 - 0.6)
        covered += _covers(paired_bootstrap_difference(a, b, n_resamples=1000, seed=draw), 0.4 * 0.05)
    assert 0.90 <= covered / draws <= 0.99, covered / draws


def _binomial_p(b, c):
    """Two-sided exact McNemar p-value by hand: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


@pytest.mark.parametrize("both_right, b, c, both_wrong, expected", [
    (5, 1, 4, 3, 12 / 32),
    (2, 0, 6, 1, 2 / 64),
    (4, 3, 3, 0, 1.0),
    (10, 2, 9, 7, 134 / 2048),
    (3, 0, 0, 2, 1.0),  # no discordant question
])
def test_mcnemar_equals_the_hand_computed_binomial(both_right, b, c, both_wrong, expected):
    a_hits = [1] * both_right + [1] * b + [0] * c + [0] * both_wrong
    b_hits = [1] * both_right + [0] * b + [1] * c + [0] * both_wrong
    result = mcnemar_exact(a_hits, b_hits)
    assert (result.both_right, result.right_to_wrong, result.wrong_to_right, result.both_wrong) == (both_right, b, c, both_wrong)
    assert result.p_value == pytest.approx(expected)
    assert result.p_value == pytest.approx(_binomial_p(b, c))
    if b + c:
        assert result.p_value == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue)


def test_mcnemar_rejects_non_binary_scores():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1], [1, 1])


def test_score_intervals_and_comparisons_by_key():
    # rows 0..5; key "acc" on rows 0..5, key "acc/x" on rows 0, 2, 4; clusters: pairs of rows
    a = {"acc": RowScores([0, 1, 2, 3, 4, 5], [1, 0, 1, 0, 1, 1]), "acc/x": RowScores([0, 2, 4], [1, 1, 1]),
         "f1": RowScores([0, 1], [0.5, 0.25])}
    b = {"acc": RowScores([0, 1, 2, 3, 4, 5], [0, 1, 1, 1, 1, 1]), "acc/x": RowScores([0, 2, 4], [0, 1, 1]),
         "f1": RowScores([0, 1], [0.75, 0.25])}
    clusters = [0, 0, 1, 1, 2, 2]
    intervals = score_intervals(a, clusters)
    assert list(intervals) == ["acc", "acc/x", "f1"]
    assert intervals["acc"].value == pytest.approx(100 * 4 / 6) and intervals["acc"].n_clusters == 3
    assert intervals["acc/x"].n == 3 and intervals["acc/x"].n_clusters == 3
    assert intervals["f1"].n_clusters == 1 and intervals["f1"].ci_low is None
    comparisons = compare_row_scores(a, b, binary_keys=["acc", "acc/x"], clusters=clusters)
    acc = comparisons["acc"]
    assert acc.a == pytest.approx(100 * 4 / 6) and acc.b == pytest.approx(100 * 5 / 6)
    assert acc.difference.value == pytest.approx(100 / 6)
    assert acc.right_to_wrong == [0] and acc.wrong_to_right == [1, 3]
    assert acc.mcnemar.p_value == pytest.approx(_binomial_p(1, 2))
    assert comparisons["acc/x"].right_to_wrong == [0] and comparisons["acc/x"].wrong_to_right == []
    assert comparisons["f1"].mcnemar is None and comparisons["f1"].difference.value == pytest.approx(12.5)
