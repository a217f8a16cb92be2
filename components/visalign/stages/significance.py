"""Paired significance: is one model's score on a benchmark really above another's on the same rows?

Both models answered the same rows, so the comparison is paired, row by row:

- the difference with a percentile bootstrap interval (95% by default). The rows are drawn with
  replacement within each category (POPE's three splits keep their sizes) and every metric is
  recomputed for both models on the same draw through evaluate's own metric function
  (`benchmark_metrics`), so the interval is of exactly the number evaluate reports, F1 and
  split means included;
- a p-value. Accuracy-type metrics (a mean of right/wrong per row): McNemar's exact test on the rows
  one model got right and the other wrong (within the metric's category). The others (F1,
  precision, judge scores): a paired permutation test (approximate randomisation), each row's two
  answers swapped with probability 1/2, p = (1 + #|d*| >= |d|) / (1 + samples).

MMBench's CircularEval scores groups of rows (index mod 1e6): there a group is the unit drawn.
Draws are seeded, so the same predictions give the same intervals.

    paired_comparison(task, reference_preds, model_preds, samples=1000, seed=0) -> {metric: {...}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from visalign.schema import Prediction
from visalign.stages.metrics import safe_key

GROUP = 1_000_000  # CircularEval: rows index, index + 1e6, ... are one question's rotations
# Metrics that count rows (n, unreadable answers, judge calls): no interval, no test.
COUNTS = {"n", "unknown", "unextractable", "refused", "groups", "judge_extracted"}
ACCURACY = {"accuracy", "vanilla_accuracy"}  # a mean of per-row correctness: McNemar applies

MetricFn = Callable[[Sequence[Prediction], dict[str, str | None] | None], dict[str, float]]


def is_compared(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1]
    return leaf not in COUNTS and not leaf.startswith("judge_")


def mcnemar_exact(right_only_a: int, right_only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial test at 1/2)."""
    n, k = right_only_a + right_only_b, min(right_only_a, right_only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _units(preds: Sequence[Prediction], circular: bool) -> dict[str, list[Prediction]]:
    """Rows grouped into the units drawn: a CircularEval group, else the row itself."""
    units: dict[str, list[Prediction]] = {}
    for p in preds:
        key = str(int(p.index) % GROUP) if circular else p.index
        units.setdefault(key, []).append(p)
    return units


def _relabel(unit: list[Prediction], slot: int) -> list[Prediction]:
    """A circular group drawn as the slot-th unit: a fresh group id, the rotations kept."""
    return [replace(p, index=str(int(p.index) // GROUP * GROUP + slot)) for p in unit]


class _Pairs:
    """The two models' units, aligned by key, with the strata the draws stay within."""

    def __init__(self, ref: Sequence[Prediction], model: Sequence[Prediction], circular: bool,
                 golds: dict[str, str | None] | None):
        ref_units, model_units = _units(ref, circular), _units(model, circular)
        self.keys = sorted(set(ref_units) & set(model_units), key=_sort_key)
        if not self.keys:
            raise ValueError("paired comparison: the two models share no benchmark row")
        self.ref = [ref_units[k] for k in self.keys]
        self.model = [model_units[k] for k in self.keys]
        self.circular, self.golds = circular, golds or {}
        strata: dict[str, list[int]] = {}
        for i, unit in enumerate(self.ref):
            strata.setdefault(unit[0].category or "", []).append(i)
        self.strata = [np.array(v) for _, v in sorted(strata.items())]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([s[rng.integers(0, len(s), len(s))] for s in self.strata])

    def rows(self, units: list[list[Prediction]], picks: Sequence[int]) -> tuple[list[Prediction], dict | None]:
        if not self.circular:
            return [p for i in picks for p in units[i]], None
        rows, golds = [], {}
        for slot, i in enumerate(picks):
            for orig, new in zip(units[i], _relabel(units[i], slot), strict=True):
                rows.append(new)
                golds[new.index] = self.golds.get(orig.index)
        return rows, golds


def _sort_key(key: str) -> tuple[int, Any]:
    return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)


def _scope_units(pairs: _Pairs, metric: str) -> list[int]:
    """The units a metric is computed over: all, or those of its category prefix ('random/f1')."""
    prefix = metric.rsplit("/", 1)[0] if "/" in metric else None
    if prefix is None or prefix in ("pooled",):
        return list(range(len(pairs.keys)))
    return [i for i, unit in enumerate(pairs.ref)
            if any(safe_key(c.strip()) == prefix for c in (unit[0].category or "").split(","))
            or safe_key(unit[0].category or "") == prefix]


def _unit_correct(unit: list[Prediction]) -> bool:
    return all(p.correct for p in unit)  # CircularEval: right only when every rotation is


def paired_comparison(metric_fn: MetricFn, reference: Sequence[Prediction], model: Sequence[Prediction], *,
                      circular: bool = False, golds: dict[str, str | None] | None = None, samples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per metric both values, the difference (model - reference), its bootstrap interval and a p-value.

    `metric_fn(preds, golds)` is evaluate's metric function for the benchmark (its task and options
    bound); `golds` maps index -> gold letter for CircularEval."""
    if samples < 1:
        raise ValueError(f"paired comparison: samples={samples}: must be >= 1")
    pairs = _Pairs(reference, model, circular, golds)
    everything = list(range(len(pairs.keys)))

    def both(picks: Sequence[int], swap: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, float]]:
        ref_units, model_units = pairs.ref, pairs.model
        if swap is not None:  # permutation: each unit's two answers exchanged where swap is True
            ref_units = [m if s else r for r, m, s in zip(pairs.ref, pairs.model, swap, strict=True)]
            model_units = [r if s else m for r, m, s in zip(pairs.ref, pairs.model, swap, strict=True)]
        return (metric_fn(*pairs.rows(ref_units, picks)), metric_fn(*pairs.rows(model_units, picks)))

    ref_m, model_m = both(everything)
    metrics = [k for k in ref_m if k in model_m and is_compared(k)]
    observed = {k: model_m[k] - ref_m[k] for k in metrics}
    rng = np.random.default_rng(seed)
    boot = {k: [] for k in metrics}
    for _ in range(samples):
        r, m = both(pairs.draw(rng))
        for k in metrics:
            if k in r and k in m:  # a category missing from a draw has no value there
                boot[k].append(m[k] - r[k])
    needs_permutation = any(k.rsplit("/", 1)[-1] not in ACCURACY for k in metrics)
    extreme = dict.fromkeys(metrics, 0)
    if needs_permutation:
        for _ in range(samples):
            r, m = both(everything, rng.random(len(pairs.keys)) < 0.5)
            for k in metrics:
                if k in r and k in m and abs(m[k] - r[k]) >= abs(observed[k]) - 1e-12:
                    extreme[k] += 1
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, Any]] = {}
    for k in metrics:
        low, high = (np.quantile(boot[k], [alpha, 1 - alpha]).tolist() if boot[k] else (math.nan, math.nan))
        entry: dict[str, Any] = {"reference": ref_m[k], "model": model_m[k], "difference": observed[k],
                                 "low": low, "high": high}
        scope = _scope_units(pairs, k)
        if k.rsplit("/", 1)[-1] in ACCURACY:
            only_ref = sum(_unit_correct(pairs.ref[i]) and not _unit_correct(pairs.model[i]) for i in scope)
            only_model = sum(_unit_correct(pairs.model[i]) and not _unit_correct(pairs.ref[i]) for i in scope)
            entry.update(test="mcnemar", p_value=mcnemar_exact(only_ref, only_model),
                         right_only_reference=only_ref, right_only_model=only_model)
        else:
            entry.update(test="permutation", p_value=(1 + extreme[k]) / (1 + samples))
        entry["units"] = len(scope) or len(everything)  # MM-Vet's capability/<name>: no category prefix
        out[k] = entry
    return out
