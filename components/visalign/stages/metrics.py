"""Evaluate's prompts, answer reading and metrics: pure functions, one place.

Answers are read with VLMEvalKit's rules (visalign.stages.answer_matching); the metrics follow
VLMEvalKit's rating code (POPE per split, MMBench's CircularEval, MM-Vet and LLaVA-Bench through
visalign.stages.judge), so the numbers compare with the papers'. visalign.stages.evaluate runs them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

from visalign.recipes import SHORT_ANSWER_SUFFIX
from visalign.schema import Prediction
from visalign.stages.answer_matching import (
    REFUSAL,
    UNKNOWN,
    can_infer,
    can_infer_text,
    circular_hits,
    yorn_extraction,
)
from visalign.stages.benchmarks import (
    COT,
    JUDGED,
    LLAVA_BENCH,
    MMVET,
    MULTIPLE_CHOICE,
    SHORT,
    YES_NO,
    Benchmark,
    BenchRow,
)

# VLMEvalKit's LLaVA prompt (vlmeval/vlm/llava/llava.py build_prompt; LLaVA's own MMBench eval).
MC_PROMPT = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
# LLaVA-1.5's short-answer suffix, used for yes/no (POPE) and short-answer questions alike.
SHORT_PROMPT = "{question}\n" + SHORT_ANSWER_SUFFIX
# A step-by-step (COT) answer is correct when visalign.stages.correctness scores it at least this.
COT_THRESHOLD = 0.9

# ---- metrics: pure functions ------------------------------------------------------------------

def pope_metrics(extracted: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """VLMEvalKit's POPE_rating on one split: "yes" is the positive class.

    `extracted` are yes/no readings ("Yes", "No" or "Unknown"; any case). Accuracy is the share read
    right (an Unknown is wrong whatever the label); precision, recall and F1 count only a "yes"
    reading as a positive prediction, so an unreadable answer is a negative one, never a "yes".
    """
    if len(extracted) != len(labels) or not labels:
        raise ValueError(f"pope_metrics: need equal, non-empty lists; got {len(extracted)} and {len(labels)}")
    read = [str(e or UNKNOWN).lower() for e in extracted]
    gold = [str(g).strip().lower() for g in labels]
    pred = [r == "yes" for r in read]
    pos = [g == "yes" for g in gold]
    tp = sum(p and g for p, g in zip(pred, pos, strict=True))
    fp = sum(p and not g for p, g in zip(pred, pos, strict=True))
    fn = sum(not p and g for p, g in zip(pred, pos, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": sum(r == g for r, g in zip(read, gold, strict=True)) / len(gold), "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": sum(pred) / len(pred),
            "unknown": float(sum(r == UNKNOWN.lower() for r in read))}


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse spaces (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


# ---- prompts and scoring ----------------------------------------------------------------------

def build_question(row: BenchRow, task: str) -> str:
    question = f"{row.hint}\n{row.question}" if row.hint else row.question
    if task == COT:
        from visalign.stages.rollout import render_question

        return render_question(question, "cot")
    if task == MULTIPLE_CHOICE:
        return MC_PROMPT.format(question=question, options="\n".join(f"{k}. {v}" for k, v in row.options.items()))
    if task in JUDGED:  # open-ended: asked as it is (VLMEvalKit's MM-Vet and LLaVA-Bench prompts)
        return question
    return SHORT_PROMPT.format(question=question)


def gold_letter(row: BenchRow) -> str | None:
    """The answer's option letter; an answer written as the option's text is read as VLMEvalKit reads one."""
    return row.answer.upper() if row.answer.upper() in row.options else can_infer_text(row.answer, row.options)


def _score_mc(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    # VLMEvalKit's can_infer; None (nothing readable) counts as wrong, "Z" is a refusal (also wrong).
    extracted = can_infer(prediction, row.options)
    return extracted, extracted is not None and extracted == gold_letter(row)


def _score_yes_no(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    read = yorn_extraction(prediction)  # "Yes", "No" or "Unknown"
    return read, read.lower() == row.answer.strip().lower()


def _score_short(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    norm = normalize_answer(prediction)
    return norm, norm == normalize_answer(row.answer)


def _score_cot(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    from visalign.stages import correctness

    answer = correctness.extract(prediction).answer
    if answer is None:  # no parsable "Final answer:" line: wrong, and counted as unextractable
        return None, False
    return answer, correctness.score(answer, row.answer, row.answer_type or "") >= COT_THRESHOLD


def _score_judged(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    return None, False  # the judge scores these after generation (_judge_benchmark)


SCORERS: dict[str, Callable[[str, BenchRow], tuple[str | None, bool]]] = {
    MULTIPLE_CHOICE: _score_mc, YES_NO: _score_yes_no, SHORT: _score_short, COT: _score_cot,
    MMVET: _score_judged, LLAVA_BENCH: _score_judged}


def safe_key(category: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space and /; '/' separates levels here."""
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", category)


def _accuracy_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    return {"accuracy": sum(p.correct for p in preds) / len(preds)}


def _mc_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    # Unreadable (None) and refused ("Z") answers are wrong (VLMEvalKit without a judge) and counted.
    return {**_accuracy_metrics(preds), "unextractable": float(sum(p.extracted is None for p in preds)),
            "refused": float(sum(p.extracted == REFUSAL for p in preds))}


def _splits(p: Prediction) -> list[str]:
    """A row's splits: VLMEvalKit's POPE explodes a category "a,b" into both."""
    return [c.strip() for c in (p.category or "").split(",") if c.strip()]


def _yes_no_metrics(preds: Sequence[Prediction], split_mean: bool = True) -> dict[str, float]:
    """Per category; the headline is their mean for POPE (`split_mean`: how POPE is reported, its
    splits random/popular/adversarial) with the pooled figures under pooled/, else the pooled ones
    (VLMEvalKit's default_rating for other yes/no benchmarks)."""
    rows = [(split, p) for p in preds for split in (_splits(p) or [""])]
    pooled = pope_metrics([p.extracted for _, p in rows], [p.answer for _, p in rows])
    splits = sorted({s for s, _ in rows if s})
    if not splits:
        return pooled
    per = {s: pope_metrics([p.extracted for x, p in rows if x == s], [p.answer for x, p in rows if x == s])
           for s in splits}
    if not split_mean:
        return {**pooled, **{f"{safe_key(s)}/{k}": v for s, m in per.items() for k, v in m.items()}}
    out = {k: sum(m[k] for m in per.values()) / len(per) for k in pooled if k != "unknown"}
    out["unknown"] = float(sum(p.extracted == UNKNOWN for p in preds))
    out.update({f"pooled/{k}": v for k, v in pooled.items()})
    out.update({f"{safe_key(s)}/{k}": v for s, m in per.items() for k, v in m.items()})
    return out


def _circular_metrics(preds: Sequence[Prediction], golds: dict[str, str | None]) -> dict[str, float]:
    """MMBench's CircularEval: a group (index % 1e6) is right when all its rotations are."""
    hits = circular_hits([(int(p.index), p.extracted, golds.get(p.index) or "") for p in preds])
    main = {int(p.index): p for p in preds if int(p.index) in hits}
    out = {"accuracy": sum(hits.values()) / len(hits) if hits else 0.0, "groups": float(len(hits)),
           "vanilla_accuracy": _accuracy_metrics(preds)["accuracy"],
           "unextractable": float(sum(p.extracted is None for p in preds))}
    for cat in sorted({p.category for p in main.values() if p.category}):
        sel = [hits[i] for i, p in main.items() if p.category == cat]
        out[f"{safe_key(cat)}/accuracy"] = sum(sel) / len(sel)
    return out


def _judged_metrics(task: str, preds: Sequence[Prediction]) -> dict[str, float]:
    from visalign.stages import judge

    cats = [p.category or "" for p in preds]
    if task == MMVET:
        return judge.mmvet_metrics(cats, [p.score or 0.0 for p in preds])
    return judge.llava_bench_metrics(cats, [(p.reference_score if p.reference_score is not None else -1.0,
                                             p.score if p.score is not None else -1.0) for p in preds])


# Yes/no (per split or pooled), CircularEval and judge-scored tasks have their own functions above.
METRICS: dict[str, Callable[[Sequence[Prediction]], dict[str, float]]] = {
    MULTIPLE_CHOICE: _mc_metrics, SHORT: _accuracy_metrics, COT: _mc_metrics}


def benchmark_metrics(task: str, preds: Sequence[Prediction], *, circular_golds: dict[str, str | None] | None = None,
                      counts: dict[str, float] | None = None, split_mean: bool = False) -> dict[str, float]:
    """Overall metrics plus '<category>/<metric>' per category.

    Yes/no with `split_mean` (POPE): per split and their mean (the headline, what
    register.target_metric names, e.g. pope/f1), pooled under pooled/; other yes/no benchmarks:
    pooled, and per category. Multiple choice with `circular_golds` (index -> gold letter):
    CircularEval. Judge-scored: visalign.stages.judge's metrics. `counts` (judge calls, answers
    the judge read, failures) are added as they are.
    """
    if not preds:
        return {"n": 0.0}
    if task in JUDGED:
        out = _judged_metrics(task, preds)
    elif task == MULTIPLE_CHOICE and circular_golds is not None:
        out = _circular_metrics(preds, circular_golds)
    elif task == YES_NO:
        out = _yes_no_metrics(preds, split_mean)
    else:
        out = dict(METRICS[task](preds))
        for cat in sorted({p.category for p in preds if p.category}):
            for k, v in METRICS[task]([p for p in preds if p.category == cat]).items():
                out[f"{safe_key(cat)}/{k}"] = v
    return {**out, **{k: float(v) for k, v in (counts or {}).items()}, "n": float(len(preds))}


def is_pope(bench: Benchmark) -> bool:
    """POPE is reported per split and as their mean: VLMEvalKit picks POPE_rating by the name."""
    return bench.task == YES_NO and "pope" in bench.name.lower()


def is_circular(bench: Benchmark, mode: str) -> bool:
    """VLMEvalKit's rule (image_mcq.py): circular for names holding mmbench, ccbench, circular or mmcr."""
    if bench.task != MULTIPLE_CHOICE or mode == "off":
        return False
    return mode == "on" or any(k in bench.name.lower() for k in ("mmbench", "ccbench", "circular", "mmcr"))
