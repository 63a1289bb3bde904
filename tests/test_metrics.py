"""Metrics against hand-computed values and reference implementations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.metrics import f1_score, precision_score, recall_score

from bertforge import metrics


def test_classification_hand_computed():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    m = metrics.classification(gold, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # a: tp 1, fp 1, fn 1 -> f1 .5; b: tp 2, fp 1, fn 0 -> p 2/3 r 1 f .8; c: 0
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_macro_averages_count_a_class_only_predicted():
    # "c" is predicted once and never gold: it still enters the macro average with F1 0
    m = metrics.classification(["a", "a", "b"], ["a", "c", "b"], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=25))
def test_classification_matches_sklearn(pairs):
    gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
    m = metrics.classification(gold, pred, list("abcd"))
    for ours, theirs in (("macro_f1", f1_score), ("macro_precision", precision_score), ("macro_recall", recall_score)):
        assert m[ours] == pytest.approx(theirs(gold, pred, average="macro", zero_division=0)), ours
    assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0))


def test_multilabel_hand_computed():
    m = metrics.multilabel([{"x"}, {"x", "y"}], [{"x"}, {"y", "z"}], ["x", "y", "z"])
    assert m["subset_accuracy"] == 0.5
    # tp: x1 y1 ; fp: z1 ; fn: x1 -> micro p 2/3 r 2/3
    assert m["micro_f1"] == pytest.approx(2 / 3)


def test_pearson_spearman():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert metrics.pearson(a, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert metrics.pearson(a, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    b = [1, 8, 27, 64, 125]
    assert metrics.spearman(a, b) == pytest.approx(1.0)
    assert metrics.pearson(a, b) < 0.99
    # ties share average ranks: ranks of [1, 1, 2] are [1.5, 1.5, 3]
    assert metrics.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(metrics.pearson([1.5, 1.5, 3], [1, 2, 3]))
    r = metrics.regression([0.0, 1.0], [0.5, 1.0])
    assert r["mse"] == pytest.approx(0.125) and r["mae"] == pytest.approx(0.25)
    assert math.isfinite(metrics.pearson([1, 1, 1], [1, 2, 3]))


TAGS = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-LOC", "S-ORG", "I-ORG"])


@settings(max_examples=300, deadline=None)
@given(st.lists(TAGS, max_size=30))
def test_entities_match_seqeval(tags):
    assert metrics.entities(tags) == get_entities(tags)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(TAGS, min_size=1, max_size=12), min_size=1, max_size=5), st.randoms())
def test_entity_f1_matches_seqeval(gold, rnd):
    pred = [[t if rnd.random() < 0.7 else rnd.choice(["O", "B-PER", "I-LOC"]) for t in seq] for seq in gold]
    ours = metrics.entity_f1(gold, pred)["f1"]
    assert ours == pytest.approx(seqeval_f1(gold, pred, zero_division=0))


def test_entity_f1_per_type_and_token_accuracy():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"]]
    m = metrics.entity_f1(gold, pred)
    assert m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["per_type"]["PER"]["f1"] == 1.0 and m["per_type"]["LOC"]["f1"] == 0.0
    assert m["token_accuracy"] == 0.75
    assert np.isclose(m["f1"], 2 / 3)
