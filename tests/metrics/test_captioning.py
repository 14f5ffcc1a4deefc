"""Captioning metrics on tiny corpora whose scores are computed by hand.

Needs Java (pycocoevalcap's PTBTokenizer and METEOR); METEOR runs once in this file (~11 s).
"""

import math
import shutil

import pytest

from medcap.metrics.captioning import CAPTION_METRICS, caption_metrics, spice_unavailable_reason

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

# After PTB tokenisation (lowercase, punctuation removed):
#   "the cat sat on the mat" vs "the cat is on the mat";  "no" vs "no".
PREDICTIONS = ["The cat sat on the mat.", "No"]
REFERENCES = ["the cat is on the mat", "no."]


@pytest.fixture(scope="module")
def with_meteor():
    return caption_metrics(PREDICTIONS, REFERENCES, meteor=True)


def test_bleu_is_corpus_level(with_meteor):
    scores = with_meteor.scores
    # Counts summed over the corpus: unigrams 5/6 + 1/1, bigrams 3/5 + 0/0, trigrams 1/4,
    # 4-grams 0/3; lengths 7 vs 7, so no brevity penalty.
    assert scores["BLEU-1"] == pytest.approx(6 / 7, abs=1e-8)
    assert scores["BLEU-2"] == pytest.approx(math.sqrt(6 / 7 * 3 / 5), abs=1e-8)
    assert scores["BLEU-3"] == pytest.approx((6 / 7 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-8)
    assert scores["BLEU-4"] < 1e-3  # no 4-gram in common (pycocoevalcap smooths with 1e-15)
    # Averaging sentence-level BLEU-2 instead would give (sqrt(5/6 * 3/5) + ~1) / 2 ~ 0.85.


def test_rouge_l_is_mean_of_caption_scores(with_meteor):
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5: P = R = F = 5/6; "no": 1.
    assert with_meteor.scores["ROUGE-L"] == pytest.approx((5 / 6 + 1) / 2)


def test_meteor_and_spice_reported(with_meteor):
    assert 0.0 < with_meteor.scores["METEOR"] < 1.0
    assert "METEOR" not in with_meteor.unavailable
    assert set(with_meteor.scores) == set(CAPTION_METRICS)
    # SPICE: a score when its jars are present, else None with a reason; never both.
    assert (with_meteor.scores["SPICE"] is None) == ("SPICE" in with_meteor.unavailable)


def test_cider_exact_and_disjoint_captions():
    # Caption 1 equals its reference (6 words, so all 1..4-gram vectors are non-empty): CIDEr-D
    # = 10 * mean_n cos = 10. Caption 2 shares nothing with its reference: 0. Corpus: 5.
    result = caption_metrics(
        ["left lower lobe pneumonia is seen", "normal chest radiograph today"],
        ["Left lower lobe pneumonia is seen.", "small bowel obstruction present"],
        meteor=False,
        spice=False,
    )
    assert result.scores["CIDEr"] == pytest.approx(5.0)
    assert result.scores["ROUGE-L"] == pytest.approx(0.5)
    assert result.scores["BLEU-1"] == pytest.approx(6 / 10, abs=1e-8)
    assert result.scores["METEOR"] is None
    assert result.unavailable["METEOR"] == "not requested (meteor=False)"
    assert result.unavailable["SPICE"] == "not requested (spice=False)"


def test_empty_prediction_gets_brevity_penalty():
    # Hypothesis length 6 + 0, reference length 6 + 4: BLEU-1 = 6/6 * exp(1 - 10/6).
    result = caption_metrics(
        ["left lower lobe pneumonia is seen", ""],
        ["left lower lobe pneumonia is seen", "small bowel obstruction present"],
        meteor=False,
        spice=False,
    )
    assert result.scores["BLEU-1"] == pytest.approx(math.exp(1 - 10 / 6), abs=1e-8)
    assert result.scores["CIDEr"] == pytest.approx(5.0)


def test_spice_unavailable_reason(tmp_path):
    reason = spice_unavailable_reason(str(tmp_path))
    assert reason is not None and "spice-1.0.jar" in reason and str(tmp_path) in reason
    (tmp_path / "lib").mkdir()
    for name in ("spice-1.0.jar", "lib/stanford-corenlp-3.6.0.jar", "lib/stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"")
    assert spice_unavailable_reason(str(tmp_path)) is None


def test_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        caption_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no captions"):
        caption_metrics([], [])
    with pytest.raises(ValueError, match=r"references\[1\] is NoneType"):
        caption_metrics(["a", "b"], ["a", None])
