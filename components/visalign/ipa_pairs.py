"""IPA, one round of verification and pairing (METHODS.md section 4).

Every candidate of the round (visalign.ipa_collect) is judged against its seed's reference by the
verifier (visalign.verify); a seed's pairs are (verified, rejected) combinations of its candidates,
at most `ipa.max_pairs_per_prompt`, picked seeded at random. Each pair keeps both verdicts with
their criteria and reasons in its provenance. Only a response the verifier judged and failed is a
rejected answer: an unparseable or failed (endpoint error) verdict counts as unverified in the
statistics but is no evidence that the answer is wrong, so it is on neither side of a pair.

The output is the collection *so far*: the previous round's pairs (`state_dir`) merged with this
round's, deduplicated by content, so the last round's output is what the final training reads.
Beside it:

    verdicts.jsonl  one verdict per candidate of this round (resumable checkpoint)
    pending.jsonl   the seeds of this round still without a pair: the next round's work
    rounds.json     per round: seeds, candidates, verdicts by status, verified rate, new pairs
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.filter import clean_text
from visalign.ipa_collect import PENDING_FILE
from visalign.recipes import Recipe
from visalign.report import StageReport, progress
from visalign.rollout import open_images
from visalign.schema import Pair, Prompt, Response
from visalign.verify import REJECTED, Verdict, Verifier, VerifyItem, verify

log = logging.getLogger(__name__)
VERDICTS_FILE = "verdicts.jsonl"
ROUNDS_FILE = "rounds.json"


@dataclass
class VerdictRow:
    """A line of verdicts.jsonl."""

    response_id: str
    verdict: dict[str, Any]


def make_pairs(prompt: Prompt, judged: list[tuple[Response, Verdict]], recipe: Recipe, rng: random.Random,
               report: StageReport) -> list[Pair]:
    """(verified, rejected) pairs of one seed; equal texts are no pair."""
    markers = recipe.filter.end_markers
    chosen = [(r, v) for r, v in judged if v.verified and clean_text(r.text, markers)]
    rejected = [(r, v) for r, v in judged if v.status == REJECTED and clean_text(r.text, markers)]
    if not chosen or not rejected:
        report.drop("no_verified" if not chosen else "no_rejected")
        return []
    combos, seen = [], set()
    for c, cv in chosen:
        for r, rv in rejected:
            ct, rt = clean_text(c.text, markers), clean_text(r.text, markers)
            if ct != rt and (ct, rt) not in seen:
                seen.add((ct, rt))
                combos.append((c, cv, ct, r, rv, rt))
    if not combos:
        report.drop("equal_answers", f"prompt {prompt.id}: verified and rejected answers are the same text")
        return []
    rng.shuffle(combos)
    return [Pair(id=schema.stable_id(prompt.id, ct, rt), images=prompt.images, prompt=prompt.question, chosen=ct,
                 rejected=rt, prompt_id=prompt.id,
                 provenance={"source": prompt.source, "source_row": prompt.source_row, "round": c.meta.get("round"),
                             "chosen_response": c.id, "chosen_view": c.view, "chosen_verdict": cv.to_dict(),
                             "rejected_response": r.id, "rejected_view": r.view, "rejected_verdict": rv.to_dict(),
                             "reference": prompt.reference})
            for c, cv, ct, r, rv, rt in combos[:recipe.ipa.max_pairs_per_prompt]]


def _verify_all(candidates: list[Response], prompts: dict[str, Prompt], prompts_dir: str, verifier: Verifier,
                recipe: Recipe, ckpt: Path, counts: Counter[str], report: StageReport) -> dict[str, Verdict]:
    """Verdicts of every candidate, checkpointed per batch (a re-run judges only the rest)."""
    done = {row.response_id: Verdict(**row.verdict) for row in schema.read_checkpoint(ckpt, VerdictRow)}
    schema.write_rows(ckpt, [VerdictRow(k, v.to_dict()) for k, v in done.items()])  # drop a torn last line
    todo = [c for c in candidates if c.id not in done]
    step = recipe.verify.batch_size * 4
    for i in progress(range(0, len(todo), step), desc="ipa verify", total=-(-len(todo) // step)):
        items, rows = [], []
        for c in todo[i:i + step]:
            p = prompts[c.prompt_id]
            try:
                images = open_images(prompts_dir, p.images)
            except OSError as e:
                report.drop("unreadable_image", f"prompt {p.id}: {e}")
                continue
            items.append(VerifyItem(id=c.id, question=p.question, reference=p.reference or "", response=c.text,
                                    images=images))
            rows.append(c)
        verdicts = verify(items, verifier, recipe.verify, counts)
        schema.append_rows(ckpt, [VerdictRow(c.id, v.to_dict()) for c, v in zip(rows, verdicts, strict=True)])
        done.update({c.id: v for c, v in zip(rows, verdicts, strict=True)})
    return done


def run(*, prompts_dir: str, candidates_dir: str, output_dir: str, recipe: Recipe, round_index: int,
        verifier: Verifier, state_dir: str | None = None) -> StageReport:
    """Verify the round's candidates, pair them, merge with the pairs so far, list the pending seeds."""
    report = StageReport("ipa-pairs")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = {p.id: p for p in schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)}
    candidates = []
    for c in read_tolerant(Path(candidates_dir) / schema.RESPONSES_FILE, Response, report):
        if c.prompt_id not in prompts:
            report.drop("unknown_prompt", f"{candidates_dir}: response {c.id}: prompt_id {c.prompt_id} not in "
                                          f"{prompts_dir}")
        else:
            candidates.append(c)
    report.rows_in = len(candidates)
    counts: Counter[str] = Counter()
    verdicts = _verify_all(candidates, prompts, prompts_dir, verifier, recipe, out / VERDICTS_FILE, counts, report)
    by_prompt: dict[str, list[tuple[Response, Verdict]]] = defaultdict(list)
    for c in candidates:
        if c.id in verdicts:
            by_prompt[c.prompt_id].append((c, verdicts[c.id]))
    rng = random.Random(f"{recipe.ipa.seed}:{round_index}")
    new_pairs, pending = [], []
    for pid in sorted(by_prompt):
        pairs = make_pairs(prompts[pid], by_prompt[pid], recipe, rng, report)
        new_pairs += pairs
        if not pairs:
            pending.append(pid)
    previous = schema.read_rows(Path(state_dir) / schema.PAIRS_FILE) if state_dir else []
    merged, duplicates = merge_pairs(previous, new_pairs)
    _copy_images(merged, prompts_dir, state_dir, out)
    report.rows_out = schema.write_rows(out / schema.PAIRS_FILE, merged)
    schema.write_rows(out / PENDING_FILE, [{"prompt_id": pid} for pid in pending])
    statuses = Counter(v.status for v in verdicts.values())
    this_round = {
        "round": round_index, "seeds": len(by_prompt), "candidates": len(verdicts),
        "verdicts": dict(statuses), "verified_rate": round(statuses["verified"] / len(verdicts), 4) if verdicts else 0.0,
        "unparseable_first_try": counts["unparseable_first_try"], "new_pairs": len(new_pairs),
        "seeds_with_pair": len(by_prompt) - len(pending), "pending_after": len(pending),
        "duplicates_merged": duplicates, "pairs_so_far": len(merged),
    }
    rounds = _read_rounds(state_dir) + [this_round]
    (out / ROUNDS_FILE).write_text(json.dumps(rounds, indent=2))
    endpoint_stats = dict(getattr(verifier, "stats", {}) or {})
    report.extra.update(round=round_index, verifier=verifier.name, rounds=rounds, endpoint=endpoint_stats or None,
                        **{k: this_round[k] for k in ("verified_rate", "new_pairs", "pending_after")})
    log.info("ipa round %d: %d candidates, verified %.1f%%, %d new pairs, %d seeds pending", round_index,
             len(verdicts), 100 * this_round["verified_rate"], len(new_pairs), len(pending))
    report.write(out)
    return report


def read_tolerant(path: Path, cls: type, report: StageReport) -> list[Any]:
    """Rows of a JSON Lines file; a corrupt row is skipped and counted, naming file, row and field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(schema.from_dict(cls, json.loads(line), file=path, row=i))
            except json.JSONDecodeError as e:
                report.drop("corrupt_row", f"{path}: row {i}: not valid JSON: {e.msg}")
            except schema.SchemaError as e:
                report.drop("corrupt_row", str(e))
    return rows


def merge_pairs(previous: list[Pair], new: list[Pair]) -> tuple[list[Pair], int]:
    """Earlier rounds first; a pair whose id (prompt, chosen, rejected) is already there is dropped."""
    seen, merged = set(), []
    for p in previous + new:
        if p.id not in seen:
            seen.add(p.id)
            merged.append(p)
    return merged, len(previous) + len(new) - len(merged)


def _copy_images(pairs: list[Pair], prompts_dir: str, state_dir: str | None, out: Path) -> None:
    for p in pairs:
        for rel in p.images:
            target = out / rel
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = Path(prompts_dir) / rel
            shutil.copyfile(src if src.exists() or not state_dir else Path(state_dir) / rel, target)


def _read_rounds(state_dir: str | None) -> list[dict[str, Any]]:
    if not state_dir:
        return []
    path = Path(state_dir) / ROUNDS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def build_verifier(recipe: Recipe, policy: str) -> Verifier:
    """The recipe's verifier; the local one runs the round's policy unless verify.model names another."""
    from visalign import verify as v

    def engine(uri: str):
        from visalign.models import load_model
        from visalign.rollout import HFEngine

        loaded = load_model(uri, dtype=recipe.rollout.dtype)
        return HFEngine(loaded.model, loaded.processor, batch_size=recipe.verify.batch_size,
                        max_new_tokens=recipe.verify.max_new_tokens)

    return v.build_verifier(recipe.verify, engine, policy)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl (with references) and images.")
    parser.add_argument("--candidates", required=True, help="The round's ipa-collect output (responses.jsonl).")
    parser.add_argument("--policy", required=True, help="The round's policy (the local verifier unless --model).")
    parser.add_argument("--output", required=True, help="Output: pairs so far, pending seeds, verdicts, rounds.json.")
    parser.add_argument("--round", type=int, default=1, dest="round_index", help="This round (1-based).")
    parser.add_argument("--state", default=None, help="The previous round's ipa-pairs output (rounds > 1).")
    recipes.add_arguments(parser, "verify")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "verify")
    run(prompts_dir=args.prompts, candidates_dir=args.candidates, output_dir=args.output, recipe=recipe,
        round_index=args.round_index, verifier=build_verifier(recipe, args.policy), state_dir=args.state)
    return 0
