"""The blank-image control: does a toy base model look at the image?

Every held-out benchmark question is answered greedily four ways: with the real image or a blank
white one of the same size, and with the answer-format suffix evaluate adds (build_question) or the
bare question. A model that uses the image scores higher on the real image than on the blank one;
one that answers from the question alone (the 'answer without looking' plateau of toyworld sft)
scores the same on both and gives the same answers. Scoring is evaluate's: the same questions, the
same readers (visalign.stages.metrics SCORERS).

    probe.json   per benchmark and question kind: accuracy per condition, real - blank gaps, the
                 share of questions answered alike with either image, yes-ratios for yes/no
    probe.md     the same as a table

    visalign toyworld probe --model base_model/ --world world/ --out probe/ [--limit 300]
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from visalign.report import StageReport, progress
from visalign.stages.benchmarks import COT, SHORT, YES_NO, BenchRow, read_benchmark
from visalign.stages.metrics import SCORERS, build_question

log = logging.getLogger("visalign.toyworld")

# toy_mc is left out: without its options ("bare") a multiple-choice question cannot be answered.
PROBE_BENCHMARKS = ("toy_short", "toy_pope", "toy_steps")  # toy_steps only where the world has it
IMAGES, PROMPTS = ("real", "blank"), ("suffix", "bare")
CONDITIONS = tuple(f"{i}_{p}" for p in PROMPTS for i in IMAGES)  # real_suffix, blank_suffix, real_bare, ...
# evaluate's answer length for short and yes/no answers; worked (CoT) answers need room for a rationale.
MAX_NEW_TOKENS = {SHORT: 16, YES_NO: 16, COT: 64}
PROBE_FILE, TABLE_FILE = "probe.json", "probe.md"


def probe(model_dir: str | os.PathLike, world_dir: str | os.PathLike, *, limit: int = 300,
          batch_size: int = 32) -> dict[str, Any]:
    """Answer the world's benchmarks under the four conditions; per benchmark and kind, the scores."""
    from visalign.models import load_model
    from visalign.stages.rollout import HFEngine

    bench_dir = Path(world_dir) / "benchmarks"
    problems = [f"{k}={v}: must be >= 1" for k, v in (("limit", limit), ("batch_size", batch_size)) if v < 1]
    if not (Path(model_dir) / "config.json").is_file():
        problems.append(f"model={model_dir}: no config.json; pass a model directory (visalign toyworld model)")
    if not (bench_dir / "toy_short.tsv").is_file():
        problems.append(f"world={world_dir}: no benchmarks/toy_short.tsv; pass a world (visalign toyworld build)")
    if problems:
        raise ValueError("toyworld probe: " + "; ".join(problems))
    same_world = _same_world(Path(model_dir), Path(world_dir))
    if same_world is False:
        log.warning("toyworld probe: %s was trained on another world's train split than %s", model_dir, world_dir)
    loaded = load_model(model_dir)
    engine = HFEngine(loaded.model, loaded.processor, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS[SHORT])
    report = StageReport("toyworld probe")
    result: dict[str, Any] = {"model": str(model_dir), "world": str(world_dir), "limit": limit,
                              "model_trained_on_this_world": same_world, "conditions": list(CONDITIONS),
                              "benchmarks": {}}
    for name in PROBE_BENCHMARKS:
        path = bench_dir / f"{name}.tsv"
        if not path.is_file():
            continue
        bench = read_benchmark(str(path), report, limit=limit)
        engine.max_new_tokens = MAX_NEW_TOKENS.get(bench.task, MAX_NEW_TOKENS[SHORT])
        answers = _answer(engine, bench.rows, bench.task, batch_size, f"toyworld probe {name}")
        result["benchmarks"][name] = {"task": bench.task, "rows": len(bench.rows),
                                      "groups": _summarise(bench.rows, bench.task, answers)}
    result["dropped"] = dict(report.dropped)
    return result


def _same_world(model_dir: Path, world_dir: Path) -> bool | None:
    """Whether the model card names this world's train split (None: a card or world without it)."""
    try:
        card = json.loads((model_dir / "visalign_model.json").read_text())
        world = json.loads((world_dir / "world.json").read_text())
        return card["data"]["train_sha256"] == world["sha256"]["train"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def bare_question(row: BenchRow) -> str:
    """The question as the benchmark stores it (a hint before it, as build_question puts one)."""
    return f"{row.hint}\n{row.question}" if row.hint else row.question


def blank_like(image):
    """A white image of the same size and mode: the toy world's empty canvas."""
    from PIL import Image

    return Image.new(image.mode, image.size, "white")


def _answer(engine, rows: list[BenchRow], task: str, batch_size: int,
            desc: str) -> dict[str, list[tuple[str | None, bool]]]:
    """(extracted answer, correct) per row for each condition; batches never mix conditions."""
    from visalign.inputs import load_rgb
    from visalign.stages.rollout import GenerationRequest

    real = [[load_rgb(b, f"{desc} index {r.index}") for b in r.images] for r in rows]
    images = {"real": real, "blank": [[blank_like(im) for im in ims] for ims in real]}
    questions = {"suffix": [build_question(r, task) for r in rows], "bare": [bare_question(r) for r in rows]}
    jobs = [(c, i) for c in CONDITIONS for i in range(0, len(rows), batch_size)]
    out: dict[str, list[tuple[str | None, bool]]] = {c: [] for c in CONDITIONS}
    for condition, start in progress(jobs, desc=desc, total=len(jobs)):
        image_kind, prompt_kind = condition.split("_")
        chunk = range(start, min(start + batch_size, len(rows)))
        results = engine.generate([GenerationRequest(id=rows[k].index, images=images[image_kind][k],
                                                     question=questions[prompt_kind][k]) for k in chunk])
        out[condition] += [SCORERS[task](res.text, rows[k]) for k, res in zip(chunk, results, strict=True)]
    return out


def _groups(rows: list[BenchRow], task: str) -> dict[str, list[int]]:
    """Row positions per group: all, each category (question kind; POPE's split) and, for yes/no,
    each gold answer."""
    groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
    for k, r in enumerate(rows):
        if r.category:
            groups.setdefault(r.category, []).append(k)
    if task == YES_NO:
        for k, r in enumerate(rows):
            groups.setdefault(f"answer={r.answer.strip().lower()}", []).append(k)
    return groups


def _summarise(rows: list[BenchRow], task: str, answers: dict[str, list[tuple[str | None, bool]]]) -> dict:
    summary = {}
    for group, positions in _groups(rows, task).items():
        stats: dict[str, Any] = {"n": len(positions)}
        for condition in CONDITIONS:
            picked = [answers[condition][k] for k in positions]
            read = Counter(str(e).lower() for e, _ in picked)
            top, top_n = read.most_common(1)[0]
            stats[condition] = {"accuracy": sum(c for _, c in picked) / len(picked),
                                "top_answer": top, "top_answer_share": top_n / len(picked),
                                **({"yes_ratio": read["yes"] / len(picked)} if task == YES_NO else {})}
        for prompt in PROMPTS:
            real, blank = answers[f"real_{prompt}"], answers[f"blank_{prompt}"]
            stats[f"gap_{prompt}"] = stats[f"real_{prompt}"]["accuracy"] - stats[f"blank_{prompt}"]["accuracy"]
            # 1.0: the image changes no answer at all, whatever the accuracies say.
            stats[f"same_answer_{prompt}"] = sum(real[k][0] == blank[k][0] for k in positions) / len(positions)
        summary[group] = stats
    return summary


def table(result: dict[str, Any]) -> str:
    """probe.md: one row per benchmark and group."""
    def pct(x: float) -> str:
        return f"{100 * x:.0f}"

    lines = ["| benchmark | group | n | real | blank | gap | same | real (bare) | blank (bare) | gap (bare) "
             "| same (bare) | yes% real/blank | yes% real/blank (bare) |", "|" + "---|" * 13]
    for name, bench in result["benchmarks"].items():
        for group, s in bench["groups"].items():
            yes = ["/".join(pct(s[f"{i}_{p}"]["yes_ratio"]) for i in IMAGES) if bench["task"] == YES_NO else ""
                   for p in PROMPTS]
            cells = [name, group, str(s["n"])]
            for p in PROMPTS:
                cells += [f"{s[f'real_{p}']['accuracy']:.2f}", f"{s[f'blank_{p}']['accuracy']:.2f}",
                          f"{s[f'gap_{p}']:+.2f}", f"{s[f'same_answer_{p}']:.2f}"]
            lines.append("| " + " | ".join(cells + yes) + " |")
    return ("Accuracy with the real image and with a blank white one; gap = real - blank; same = share of "
            "questions answered alike with either image; (bare) = without the answer-format suffix.\n\n"
            + "\n".join(lines) + "\n")


def write(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROBE_FILE).write_text(json.dumps(result, indent=1))
    (out / TABLE_FILE).write_text(table(result))
    return out
