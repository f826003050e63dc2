"""Bootstrap intervals over items, paired differences and Holm's correction (kdp.statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdp import statistics
from kdp.statistics import ItemScores, Leaf


def accuracy_items(scores, task: str = "t", doc_ids=None) -> ItemScores:
    scores = np.asarray(scores, dtype=np.float64)
    ids = tuple(range(len(scores))) if doc_ids is None else tuple(doc_ids)
    return ItemScores(statistics.MEAN, statistics.POOLED, 100.0, (Leaf(task, ids, {"score": scores}),))


def test_interval_of_a_binomial_sample_covers_the_true_rate_at_the_stated_frequency():
    # 200 samples of 100 Bernoulli(0.3) items, each with its own seeded 1000-replicate percentile interval. With 200
    # repetitions the observed coverage of a 95% interval has a standard error of sqrt(0.95 * 0.05 / 200) = 0.015;
    # the tolerance is three of them. (The percentile interval of a proportion runs slightly below its nominal level
    # at n = 100, which this allows but would not hide a gross error such as a 68% or a 99.9% interval.)
    rate, n, repetitions = 0.3, 100, 200
    rng = np.random.default_rng(2024)
    covered = 0
    for repetition in range(repetitions):
        sample = accuracy_items(rng.random(n) < rate)
        drawn = statistics.paired_replicates({"x": sample}, statistics.draw_seed(repetition, "coverage"), 1000)["x"]
        low, high = statistics.interval(drawn)
        covered += low <= 100 * rate <= high
    coverage = covered / repetitions
    assert abs(coverage - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / repetitions), coverage


def test_identical_items_give_a_zero_width_paired_difference():
    scores = np.random.default_rng(0).random(80) < 0.4
    drawn = statistics.paired_replicates({"dense": accuracy_items(scores), "variant": accuracy_items(scores.copy())},
                                         statistics.draw_seed(0, "m", "b"))
    difference = drawn["variant"] - drawn["dense"]
    assert statistics.interval(difference) == (0.0, 0.0)
    assert statistics.paired_p_value(difference) == 1.0
    # the same items resampled independently would not cancel: pairing is what makes the width zero
    apart = statistics.paired_replicates({"variant": accuracy_items(scores)}, statistics.draw_seed(1, "m", "b"))
    assert statistics.half_width(*statistics.interval(apart["variant"] - drawn["dense"])) > 5.0


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the 0.06 before it
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert statistics.holm([]) == []


def test_p_value_of_a_clear_difference_is_small_and_counts_ties_on_both_sides():
    assert statistics.paired_p_value(np.full(999, 2.0)) == pytest.approx(2 / 1000)
    assert statistics.paired_p_value(np.array([-1.0, 0.0, 1.0, 2.0])) == pytest.approx(1.0)


def test_values_recompute_mean_and_perplexity_and_both_group_aggregations():
    high = Leaf("high", (0, 1, 2, 3), {"score": np.array([1.0, 1.0, 0.0, 1.0])})
    middle = Leaf("middle", (0, 1), {"score": np.array([0.0, 1.0])})
    assert ItemScores("mean", "pooled", 100.0, (high, middle)).value() == pytest.approx(100 * 4 / 6)
    assert ItemScores("mean", "leaf_mean", 100.0, (high, middle)).value() == pytest.approx(100 * (0.75 + 0.5) / 2)
    documents = Leaf("ppl", (0, 1), {"loglikelihood": np.array([-20.0, -10.0]), "weight": np.array([8.0, 4.0])})
    perplexity = ItemScores("perplexity", "pooled", 1.0, (documents,))
    assert perplexity.value() == pytest.approx(math.exp(30 / 12))
    # a replicate holding the first document twice is that document's own perplexity
    assert perplexity.value([np.array([[2.0, 0.0]])]) == pytest.approx([math.exp(20 / 8)])
    assert ItemScores.from_record(perplexity.to_record()).value() == pytest.approx(perplexity.value())


def test_draws_are_seeded_per_model_and_benchmark():
    items = {"x": accuracy_items(np.arange(50) % 3 == 0)}
    again = statistics.paired_replicates(items, statistics.draw_seed(0, "m", "b"), 300)["x"]
    assert np.array_equal(statistics.paired_replicates(items, statistics.draw_seed(0, "m", "b"), 300)["x"], again)
    assert not np.array_equal(statistics.paired_replicates(items, statistics.draw_seed(0, "m", "c"), 300)["x"], again)
    assert not np.array_equal(statistics.paired_replicates(items, statistics.draw_seed(1, "m", "b"), 300)["x"], again)


def test_items_of_other_documents_do_not_pair():
    with pytest.raises(ValueError, match="same order"):
        statistics.paired_replicates({"a": accuracy_items([1, 0, 1]), "b": accuracy_items([1, 0, 1], doc_ids=[0, 2, 1])},
                                     statistics.draw_seed(0, "m", "b"))


def test_interval_verdict_and_item_extrapolation():
    assert statistics.interval_verdict(50.0, 45.0, 55.0) == statistics.AGREES
    assert statistics.interval_verdict(60.0, 45.0, 55.0) == statistics.DIFFERS
    assert statistics.interval_verdict(60.0, None, None) is None
    # half-width 4 at 100 items: 2 needs four times the items
    assert statistics.items_for_half_width(100, 4.0, 2.0) == 400


def test_interval_leaves_out_replicates_where_the_statistic_is_undefined():
    drawn = np.array([1.0, 2.0, 3.0, 4.0, np.nan, np.inf, 5.0])
    assert statistics.interval(drawn) == statistics.interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert all(np.isnan(statistics.interval(np.array([np.nan, np.inf]))))
