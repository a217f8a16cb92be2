"""Paired significance on constructed predictions: the interval, McNemar's test, the permutation test."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import binomtest

from visalign.schema import Prediction
from visalign.stages.metrics import benchmark_metrics
from visalign.stages.significance import mcnemar_exact, paired_comparison

SPLITS = ("random", "popular", "adversarial")


def accuracy_fn(preds, golds):
    return benchmark_metrics("short", preds)


def pope_fn(preds, golds):
    return benchmark_metrics("yes_no", preds, split_mean=True)


def short_preds(correct: list[bool], category: str | None = None) -> list[Prediction]:
    return [Prediction(index=str(i), question="q", answer="red", prediction="red" if c else "blue",
                       extracted="red" if c else "blue", correct=c, category=category)
            for i, c in enumerate(correct)]


def pope_preds(right: list[bool]) -> list[Prediction]:
    out = []
    for i, r in enumerate(right):
        gold = "yes" if i % 2 == 0 else "no"
        read = gold.capitalize() if r else ("No" if gold == "yes" else "Yes")
        out.append(Prediction(index=str(i), question="q", answer=gold, prediction=read, extracted=read, correct=r,
                              category=SPLITS[i % 3]))
    return out


@pytest.mark.parametrize("b,c", [(0, 0), (0, 10), (3, 12), (40, 55), (100, 100), (7, 1)])
def test_mcnemar_exact_is_scipys_two_sided_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_identical_models_differ_by_nothing():
    rng = random.Random(1)
    preds = short_preds([rng.random() < 0.6 for _ in range(300)])
    out = paired_comparison(accuracy_fn, preds, preds, samples=200)
    acc = out["accuracy"]
    assert acc["difference"] == acc["low"] == acc["high"] == 0
    assert acc["p_value"] == 1.0 and acc["test"] == "mcnemar"
    assert "n" not in out


def test_a_clear_gain_is_beyond_chance_and_a_tiny_one_is_not():
    rng = random.Random(2)
    base = [rng.random() < 0.5 for _ in range(1000)]
    wrong = [i for i, r in enumerate(base) if not r]
    clear = list(base)
    for i in wrong[:150]:  # 150 more rows right: +0.15
        clear[i] = True
    tiny = list(base)
    for i in wrong[:5]:
        tiny[i] = True
    big = paired_comparison(accuracy_fn, short_preds(base), short_preds(clear), samples=500)["accuracy"]
    assert big["difference"] == pytest.approx(0.15) and big["low"] > 0.1 and big["p_value"] < 1e-9
    assert (big["right_only_reference"], big["right_only_model"]) == (0, 150)
    small = paired_comparison(accuracy_fn, short_preds(base), short_preds(tiny), samples=500)["accuracy"]
    # 5 rows gained, none lost: McNemar's p is 2 / 2^5; a draw missing all 5 rows is rarer than 2.5%, so
    # the percentile interval alone would not include 0 (why register's gate asks for both)
    assert small["p_value"] == pytest.approx(0.0625) and small["low"] >= 0
    mixed = list(tiny)
    for i in [i for i, r in enumerate(base) if r][:3]:
        mixed[i] = False  # 5 gained, 3 lost
    noisy = paired_comparison(accuracy_fn, short_preds(base), short_preds(mixed), samples=500)["accuracy"]
    assert noisy["low"] < 0 < noisy["high"] and noisy["p_value"] == pytest.approx(mcnemar_exact(3, 5))


def test_the_accuracy_interval_matches_the_normal_approximation():
    rng = random.Random(3)
    base = [rng.random() < 0.6 for _ in range(2000)]
    model = [r if rng.random() < 0.8 else not r for r in base]
    diff = np.array(model, float) - np.array(base, float)
    half = 1.96 * diff.std(ddof=1) / math.sqrt(len(diff))
    acc = paired_comparison(accuracy_fn, short_preds(base), short_preds(model), samples=1000)["accuracy"]
    assert acc["high"] - acc["low"] == pytest.approx(2 * half, rel=0.15)
    assert acc["low"] < diff.mean() < acc["high"]


def test_draws_are_seeded_and_stay_within_categories():
    rng = random.Random(4)
    base = short_preds([rng.random() < 0.5 for _ in range(60)], "colour")
    base += short_preds([rng.random() < 0.5 for _ in range(30)], "count")
    for i, p in enumerate(base):
        p.index = str(i)
    model = [Prediction(**{**p.__dict__, "correct": not p.correct}) for p in base]
    seen = []

    def recording(preds, golds):
        seen.append(sum(p.category == "count" for p in preds))
        return accuracy_fn(preds, golds)

    a = paired_comparison(recording, base, model, samples=50, seed=7)
    assert set(seen) == {30}  # every draw keeps 30 count rows out of 90
    assert a == paired_comparison(accuracy_fn, base, model, samples=50, seed=7)
    assert a != paired_comparison(accuracy_fn, base, model, samples=50, seed=8)
    assert a["count/accuracy"]["units"] == 30 and a["accuracy"]["units"] == 90


def test_f1_gets_a_permutation_p_value_and_per_split_entries():
    rng = random.Random(5)
    base = [rng.random() < 0.55 for _ in range(600)]
    better = [True if not r and rng.random() < 0.5 else r for r in base]
    out = paired_comparison(pope_fn, pope_preds(base), pope_preds(better), samples=300)
    f1 = out["f1"]
    assert f1["test"] == "permutation" and f1["p_value"] == pytest.approx(1 / 301) and f1["low"] > 0
    assert f1["difference"] == pytest.approx(pope_fn(pope_preds(better), None)["f1"] - pope_fn(pope_preds(base), None)["f1"])
    assert out["random/f1"]["units"] == 200 and out["pooled/accuracy"]["test"] == "mcnemar"
    same = paired_comparison(pope_fn, pope_preds(base), pope_preds(base), samples=100)["f1"]
    assert same["p_value"] == 1.0  # every permutation is as extreme as a zero difference


def test_circular_groups_are_the_units():
    def mc_fn(preds, golds):
        return benchmark_metrics("multiple_choice", preds, circular_golds=golds)

    def group(g: int, rights: list[bool]) -> list[Prediction]:
        return [Prediction(index=str(g + k * 1_000_000), question="q", answer="A", prediction="A" if r else "B",
                           extracted="A" if r else "B", correct=r) for k, r in enumerate(rights)]

    base = group(0, [True, True]) + group(1, [True, False]) + group(2, [False, False])
    model = group(0, [True, True]) + group(1, [True, True]) + group(2, [True, False])
    golds = {p.index: "A" for p in base}
    out = paired_comparison(mc_fn, base, model, circular=True, golds=golds, samples=100)
    acc = out["accuracy"]  # groups right: base 1 of 3, model 2 of 3
    assert acc["difference"] == pytest.approx(1 / 3) and acc["units"] == 3
    assert (acc["right_only_reference"], acc["right_only_model"]) == (0, 1)
    assert out["vanilla_accuracy"]["difference"] == pytest.approx(2 / 6)


def test_models_without_a_common_row_are_refused():
    with pytest.raises(ValueError, match="share no benchmark row"):
        paired_comparison(accuracy_fn, short_preds([True]), [], samples=10)
