"""MPO pairs: the two MMPR pair builders (METHODS.md section 3), routed by ground truth.

- Prompts WITH a reference answer -> correctness-based pairs. Each sampled chain-of-thought
  response is read (visalign.stages.correctness) and scored; chosen = a correct one, rejected = an
  incorrect one or a format negative. Every correct x incorrect combination is a candidate; a pair
  whose chosen text is a substring of its rejected text is skipped (the rejected would teach the
  chosen's tokens as bad), duplicates are dropped, and at most `max_pairs_per_question` are kept,
  drawn with a per-question seed.
- Prompts WITHOUT one -> DropoutNTP. chosen = the model's own answer with the image (each
  distinct one of the rollout.samples_without_reference samples);
  its first `dropout_ratio` of words is given as an assistant prefix to the same model WITHOUT
  the image, which continues it; rejected = prefix + that continuation.

The report counts format negatives by reason, the questions whose samples were all right or all
wrong (no pair possible: the data's difficulty profile) and pairs per question.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from visalign import schema
from visalign.inputs import output_path
from visalign.recipes import MpoPairsParams
from visalign.report import StageReport
from visalign.schema import Pair, Prompt, Response
from visalign.stages import correctness
from visalign.stages.rollout import CLEAN, GenerationEngine, GenerationRequest, render_question

log = logging.getLogger(__name__)


def judge(prompt: Prompt, responses: list[Response], params: MpoPairsParams,
          formats: Counter[str]) -> tuple[list[Response], list[Response]]:
    """(correct, incorrect) responses of one question; format negatives count in `formats` and as incorrect."""
    right, wrong = [], []
    for r in responses:
        got = correctness.extract(r.text)
        if got.answer is None:
            formats[got.problem or correctness.NO_FINAL_ANSWER] += 1
            wrong.append(r)
            continue
        s = correctness.score(got.answer, prompt.reference or "", prompt.answer_type or "",
                              rel_tol=params.numeric_rel_tol)
        (right if s >= params.threshold else wrong).append(r)
    return right, wrong


def correctness_pairs(prompt: Prompt, question: str, right: list[Response], wrong: list[Response],
                      params: MpoPairsParams, report: StageReport) -> list[Pair]:
    """correct x incorrect, substring pairs skipped, deduplicated, capped at random (seeded per question)."""
    seen, candidates = set(), []
    for c in right:
        for w in wrong:
            chosen, rejected = c.text.strip(), w.text.strip()
            if chosen in rejected:
                report.drop("chosen_in_rejected")
                continue
            if (chosen, rejected) in seen:
                report.drop("duplicate_pair")
                continue
            seen.add((chosen, rejected))
            candidates.append(Pair(
                id=schema.stable_id(prompt.id, chosen, rejected), images=prompt.images, prompt=question,
                chosen=chosen, rejected=rejected, prompt_id=prompt.id,
                provenance={"builder": "correctness", "source": prompt.source, "source_row": prompt.source_row,
                            "chosen_response": c.id, "rejected_response": w.id, "reference": prompt.reference}))
    if len(candidates) > params.max_pairs_per_question:
        rng = random.Random(schema.stable_id(params.seed, prompt.id))
        report.extra.setdefault("capped_pairs", 0)
        report.extra["capped_pairs"] += len(candidates) - params.max_pairs_per_question
        candidates = rng.sample(candidates, params.max_pairs_per_question)
    return candidates


def truncate_words(text: str, ratio: float) -> str | None:
    """The text up to the end of its k-th word, k = `ratio` of the words (at least one, at most all
    but one), whitespace as written (so the prefix is exactly the chosen answer's start); None
    under two words."""
    words = list(re.finditer(r"\S+", text))
    if len(words) < 2:
        return None
    keep = min(len(words) - 1, max(1, int(len(words) * ratio)))
    return text[:words[keep - 1].end()]


def dropout_ntp_pairs(items: list[tuple[Prompt, Response]], question_of, engine: GenerationEngine,
                      params: MpoPairsParams, report: StageReport) -> list[Pair]:
    """chosen = the answer with the image; rejected = its prefix continued without the image."""
    todo = []
    for prompt, response in items:
        chosen = response.text.strip()
        prefix = truncate_words(chosen, params.dropout_ratio)
        if prefix is None:
            report.drop("too_short_to_truncate", f"prompt {prompt.id}: answer {chosen!r:.60} has < 2 words")
            continue
        todo.append((prompt, response, prefix))
    requests = [GenerationRequest(id=p.id, images=[], question=question_of(p), assistant_prefix=prefix,
                                  seed_key=r.id) for p, r, prefix in todo]
    pairs = []
    for (prompt, response, prefix), res in zip(todo, engine.generate(requests) if requests else [], strict=True):
        chosen = response.text.strip()
        # Verbatim: the continuation carries its own leading space, or none when it ends the prefix's word.
        rejected = (prefix + res.text).rstrip()
        if rejected == chosen:
            report.drop("continuation_equals_chosen")
            continue
        pairs.append(Pair(
            id=schema.stable_id(prompt.id, chosen, rejected), images=prompt.images,
            prompt=question_of(prompt), chosen=chosen, rejected=rejected, prompt_id=prompt.id,
            provenance={"builder": "dropout_ntp", "source": prompt.source, "source_row": prompt.source_row,
                        "chosen_response": response.id, "prefix_words": len(prefix.split()),
                        "continuation_finish": res.finish_reason}))
    return pairs


def _distinct_answers(prompt: Prompt, responses: list[Response], report: StageReport) -> list[tuple[Prompt, Response]]:
    """One DropoutNTP item per distinct answer of a prompt (a repeated answer would repeat its pair)."""
    seen, items = set(), []
    for r in responses:
        if r.text.strip() in seen:
            report.drop("duplicate_answer")
            continue
        seen.add(r.text.strip())
        items.append((prompt, r))
    return items


def _dropout_engine(model: str, params: MpoPairsParams) -> GenerationEngine:
    from visalign.models import load_model
    from visalign.stages.rollout import HFEngine, Sampling

    loaded = load_model(model, dtype=params.dtype)
    return HFEngine(loaded.model, loaded.processor, batch_size=params.batch_size,
                    max_new_tokens=params.dropout_max_new_tokens,
                    sampling=Sampling(do_sample=params.dropout_do_sample, temperature=params.dropout_temperature,
                                      top_k=params.dropout_top_k, top_p=params.dropout_top_p, seed=params.seed))


def run(*, prompts_dir: str, responses_dir: str, output_dir: str, params: MpoPairsParams,
        prompt_template: str = "plain", model: str | None = None,
        engine: GenerationEngine | None = None) -> StageReport:
    """Correctness pairs for prompts with a reference, DropoutNTP pairs (needs `model`) for the rest."""
    report = StageReport("mpo_pairs")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)
    by_prompt: dict[str, list[Response]] = defaultdict(list)
    for r in schema.read_rows(Path(responses_dir) / schema.RESPONSES_FILE):
        if r.view == CLEAN:
            by_prompt[r.prompt_id].append(r)
    unknown = set(by_prompt) - {p.id for p in prompts}
    for pid in sorted(unknown):
        report.drop("unknown_prompt", f"{responses_dir}: prompt_id {pid} not in {prompts_dir}")
    report.rows_in = len(prompts)

    def question_of(p: Prompt) -> str:
        return render_question(p.question, prompt_template)

    formats: Counter[str] = Counter()
    profile = Counter(all_right=0, all_wrong=0, mixed=0)
    pairs, ntp_items, judged = [], [], 0
    for p in prompts:
        responses = sorted(by_prompt.get(p.id, []), key=lambda r: r.sample_index)
        if not responses:
            report.drop("no_responses", f"prompt {p.id} ({p.source} row {p.source_row}): no samples in {responses_dir}")
        elif p.reference is None:
            ntp_items += _distinct_answers(p, responses, report)
        elif correctness.scorer_for(p.answer_type) is None:
            report.drop("unknown_answer_type", f"prompt {p.id} ({p.source} row {p.source_row}): field 'answer_type'"
                        f"={p.answer_type!r} has no scorer; known: {sorted(correctness.SCORERS)}")
        else:
            judged += len(responses)
            right, wrong = judge(p, responses, params, formats)
            profile["all_right" if not wrong else "all_wrong" if not right else "mixed"] += 1
            pairs += correctness_pairs(p, question_of(p), right, wrong, params, report)
    n_correctness = len(pairs)
    if ntp_items:
        if engine is None and model is None:
            raise ValueError(f"{len({p.id for p, _ in ntp_items})} prompts have no reference answer: DropoutNTP needs a model "
                             "(pass model=...)")
        pairs += dropout_ntp_pairs(ntp_items, question_of, engine or _dropout_engine(model, params), params, report)
    _copy_images(pairs, Path(prompts_dir), out)
    report.rows_out = schema.write_rows(out / schema.PAIRS_FILE, pairs)
    questions = sum(profile.values())
    report.extra.update(
        correctness_questions=questions, correctness_pairs=n_correctness,
        dropout_ntp_questions=len({p.id for p, _ in ntp_items}), dropout_ntp_pairs=len(pairs) - n_correctness,
        pairs_per_question=round(n_correctness / questions, 4) if questions else 0.0,
        judged_responses=judged, format_negatives=sum(formats.values()), format_negatives_by_reason=dict(formats),
        format_negative_rate=round(sum(formats.values()) / judged, 4) if judged else 0.0,
        difficulty=dict(profile),
    )
    if not pairs:
        log.warning("mpo_pairs: no pairs out of %d prompts; see the report's difficulty and drops", len(prompts))
    report.write(out)
    return report


def _copy_images(pairs: list[Pair], src: Path, out: Path) -> None:
    for p in pairs:
        for rel in p.images:
            if not (out / rel).exists():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, out / rel)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl and images (sample's output).")
    parser.add_argument("--responses", required=True, help="Directory with responses.jsonl (rollout's samples).")
    parser.add_argument("--model", default=None, help="Model for DropoutNTP's continuations (prompts without a "
                        "reference answer); directory or s3:// URI.")
    parser.add_argument("--output", required=True, help="Output directory for pairs.jsonl, images/ and report.json.")
    recipes.add_arguments(parser, "pairs")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "pairs")
    run(prompts_dir=args.prompts, responses_dir=args.responses, output_dir=args.output, params=recipe.pairs,
        prompt_template=recipe.rollout.prompt_template, model=args.model)
    return 0
