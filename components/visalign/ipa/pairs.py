"""IPA, one round of verification and pairing (METHODS.md section 4).

Every candidate of the round (visalign.ipa.collect) is judged against its seed's reference by the
verifier (visalign.ipa.verify); a seed's pairs are (verified, rejected) combinations of its candidates,
at most `ipa.max_pairs_per_prompt`, picked seeded at random. Each pair keeps both verdicts with
their criteria and reasons in its provenance. Only a response the verifier judged and failed is a
rejected answer: an unparseable or failed (endpoint error) verdict counts as unverified in the
statistics but is no evidence that the answer is wrong, so it is on neither side of a pair. When
more than `verify.max_error_share` of the verdicts are errors (the verifier is down), the step
fails, naming the verifier and the counts, rather than passing on too few pairs.

The output is the collection *so far*: the previous round's pairs (`state_dir`) merged with this
round's, deduplicated by content, so the last round's output is what the final training reads.
Beside it:

    verdicts.jsonl  one verdict per candidate of this round (resumable checkpoint; "error" verdicts
                    are not kept, so a re-run asks those candidates again)
    pending.jsonl   the seeds of this round still without a pair: the next round's work
    rounds.json     per round: the verifier (backend, model), seeds, candidates, verdicts by
                    status, error reasons, verified rate, new pairs
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
from visalign.errors import StageError
from visalign.inputs import BadImage, output_path
from visalign.ipa.collect import PENDING_FILE
from visalign.ipa.verify import ERROR, REJECTED, VERIFIED, Verdict, Verifier, VerifyItem, verify
from visalign.recipes import Recipe
from visalign.report import StageReport, progress
from visalign.schema import Pair, Prompt, Response
from visalign.stages.filter import clean_text
from visalign.stages.rollout import open_images

log = logging.getLogger(__name__)
VERDICTS_FILE = "verdicts.jsonl"
ROUNDS_FILE = "rounds.json"
# What became of each (verified, rejected) combination of a seed's candidates (make_pairs counts them).
COMBINATIONS = ("paired", "over_cap", "equal_text", "duplicate_text")


class VerifierOutage(StageError):
    """Too many of a round's verdicts are errors: the verifier gave no answer."""


@dataclass
class VerdictRow:
    """A line of verdicts.jsonl."""

    response_id: str
    verdict: dict[str, Any]


def make_pairs(prompt: Prompt, judged: list[tuple[Response, Verdict]], recipe: Recipe, rng: random.Random,
               report: StageReport, combos: Counter[str] | None = None,
               verifier: dict[str, str] | None = None) -> list[Pair]:
    """(verified, rejected) pairs of one seed; equal texts are no pair. `combos` counts the
    combinations: paired, over_cap (beyond max_pairs_per_prompt), equal_text, duplicate_text;
    `verifier` (Verifier.identity) goes into each pair's provenance."""
    combos = Counter() if combos is None else combos
    chosen, rejected = _sides(judged, recipe.filter.end_markers, report)
    if not chosen or not rejected:
        report.drop("no_verified" if not chosen else "no_rejected")
        return []
    picked, seen = [], set()
    for c, cv, ct in chosen:
        for r, rv, rt in rejected:
            if ct == rt:
                combos["equal_text"] += 1
            elif (ct, rt) in seen:  # two candidates with the same texts: one pair
                combos["duplicate_text"] += 1
            else:
                seen.add((ct, rt))
                picked.append((c, cv, ct, r, rv, rt))
    if not picked:
        report.drop("equal_answers", f"prompt {prompt.id}: verified and rejected answers are the same text")
        return []
    rng.shuffle(picked)
    cap = recipe.ipa.max_pairs_per_prompt
    combos["paired"] += min(cap, len(picked))
    combos["over_cap"] += max(0, len(picked) - cap)
    return [_pair(prompt, *combo, verifier) for combo in picked[:cap]]


def _sides(judged: list[tuple[Response, Verdict]], markers: tuple[str, ...], report: StageReport
           ) -> tuple[list[tuple[Response, Verdict, str]], list[tuple[Response, Verdict, str]]]:
    """Verified and rejected candidates with their cleaned texts; an empty text is dropped, counted."""
    chosen, rejected = [], []
    for r, v in judged:
        if v.status not in (VERIFIED, REJECTED):
            continue
        text = clean_text(r.text, markers)
        if not text:
            report.drop("empty_after_clean", f"response {r.id} ({v.status}): empty once the end markers "
                                             f"{markers} and line breaks are removed")
        else:
            (chosen if v.verified else rejected).append((r, v, text))
    return chosen, rejected


def _pair(prompt: Prompt, c: Response, cv: Verdict, ct: str, r: Response, rv: Verdict, rt: str,
          verifier: dict[str, str] | None) -> Pair:
    return Pair(id=schema.stable_id(prompt.id, ct, rt), images=prompt.images, prompt=prompt.question, chosen=ct,
                rejected=rt, prompt_id=prompt.id,
                provenance={"source": prompt.source, "source_row": prompt.source_row, "round": c.meta.get("round"),
                            "verifier": verifier,
                            "chosen_response": c.id, "chosen_view": c.view, "chosen_verdict": cv.to_dict(),
                            "rejected_response": r.id, "rejected_view": r.view, "rejected_verdict": rv.to_dict(),
                            "reference": prompt.reference})


def _verify_all(candidates: list[Response], prompts: dict[str, Prompt], prompts_dir: str, verifier: Verifier,
                recipe: Recipe, ckpt: Path, counts: Counter[str], report: StageReport) -> dict[str, Verdict]:
    """Verdicts of every candidate, checkpointed per batch (a re-run judges only the rest). An
    "error" verdict is not checkpointed: it says nothing about the answer, so a re-run asks again."""
    done = {row.response_id: Verdict(**row.verdict) for row in schema.read_checkpoint(ckpt, VerdictRow)
            if row.verdict.get("status") != ERROR}  # an older checkpoint may still hold some
    schema.write_rows(ckpt, [VerdictRow(k, v.to_dict()) for k, v in done.items()])  # drop a torn last line
    todo = [c for c in candidates if c.id not in done]
    step = recipe.verify.batch_size * 4
    for i in progress(range(0, len(todo), step), desc="ipa verify", total=-(-len(todo) // step)):
        items, rows = [], []
        for c in todo[i:i + step]:
            p = prompts[c.prompt_id]
            try:
                images = open_images(prompts_dir, p.images)
            except BadImage as e:
                report.drop(e.reason, f"prompt {p.id}: {e}")
                continue
            items.append(VerifyItem(id=c.id, question=p.question, reference=p.reference or "", response=c.text,
                                    images=images))
            rows.append(c)
        judged = list(zip(rows, verify(items, verifier, recipe.verify, counts), strict=True))
        schema.append_rows(ckpt, [VerdictRow(c.id, v.to_dict()) for c, v in judged if v.status != ERROR])
        done.update({c.id: v for c, v in judged})
    return done


def _check_outage(verdicts: dict[str, Verdict], verifier: Verifier, recipe: Recipe, report: StageReport,
                  out: Path) -> None:
    """Fail the step when the verifier gave no answer for too many candidates: training on the few
    pairs left (or failing later with "no pairs") would hide the outage."""
    from visalign.ipa.verify import ENV_KEY, ENV_MODEL, ENV_URL

    errors = Counter(v.reason for v in verdicts.values() if v.status == ERROR)
    n_errors, limit = sum(errors.values()), recipe.verify.max_error_share
    share = n_errors / len(verdicts) if verdicts else 0.0
    if share <= limit:
        return
    stats = dict(getattr(verifier, "stats", {}) or {})
    msg = (f"ipa-pairs: {n_errors} of {len(verdicts)} verdicts ({share:.0%}) are errors, above "
           f"verify.max_error_share={limit}: the verifier {verifier.identity} gave no answer (reasons "
           f"{dict(errors)}; endpoint stats {stats or 'none'}). Check that the endpoint is up and answers POST "
           f".../chat/completions, and that {ENV_URL}, {ENV_MODEL} and {ENV_KEY} (the verifier Secret) are right. "
           "A re-run asks only the candidates without a verdict (errors are not checkpointed); to go on with "
           "fewer pairs, raise verify.max_error_share.")
    report.extra.update(failed=msg, verifier=verifier.identity, error_reasons=dict(errors), endpoint=stats or None)
    report.write(out, allow_empty=True)  # the outage is the error to raise
    raise VerifierOutage(msg)


def _read_candidates(candidates_dir: str, prompts: dict[str, Prompt], prompts_dir: str,
                     report: StageReport) -> list[Response]:
    candidates = []
    for c in read_tolerant(Path(candidates_dir) / schema.RESPONSES_FILE, Response, report):
        if c.prompt_id not in prompts:
            report.drop("unknown_prompt", f"{candidates_dir}: response {c.id}: prompt_id {c.prompt_id} not in "
                                          f"{prompts_dir}")
        else:
            candidates.append(c)
    return candidates


def run(*, prompts_dir: str, candidates_dir: str, output_dir: str, recipe: Recipe, round_index: int,
        verifier: Verifier, state_dir: str | None = None) -> StageReport:
    """Verify the round's candidates, pair them, merge with the pairs so far, list the pending seeds."""
    report = StageReport("ipa-pairs")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = {p.id: p for p in schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)}
    candidates = _read_candidates(candidates_dir, prompts, prompts_dir, report)
    report.rows_in = len(candidates)
    counts: Counter[str] = Counter()
    verdicts = _verify_all(candidates, prompts, prompts_dir, verifier, recipe, out / VERDICTS_FILE, counts, report)
    _check_outage(verdicts, verifier, recipe, report, out)
    by_prompt: dict[str, list[tuple[Response, Verdict]]] = defaultdict(list)
    for c in candidates:
        if c.id in verdicts:
            by_prompt[c.prompt_id].append((c, verdicts[c.id]))
    rng = random.Random(f"{recipe.ipa.seed}:{round_index}")
    new_pairs, pending = [], []
    combos = Counter(dict.fromkeys(COMBINATIONS, 0))
    for pid in sorted(by_prompt):
        pairs = make_pairs(prompts[pid], by_prompt[pid], recipe, rng, report, combos, verifier.identity)
        new_pairs += pairs
        if not pairs:
            pending.append(pid)
    previous = schema.read_rows(Path(state_dir) / schema.PAIRS_FILE) if state_dir else []
    merged, duplicates = merge_pairs(previous, new_pairs)
    _copy_images(merged, prompts_dir, state_dir, out)
    report.rows_out = schema.write_rows(out / schema.PAIRS_FILE, merged)
    schema.write_rows(out / PENDING_FILE, [{"prompt_id": pid} for pid in pending])
    this_round = _round_stats(round_index, verifier, verdicts, counts, combos, len(by_prompt), len(new_pairs),
                              len(pending), duplicates, len(merged))
    rounds = _read_rounds(state_dir) + [this_round]
    (out / ROUNDS_FILE).write_text(json.dumps(rounds, indent=2))
    endpoint_stats = dict(getattr(verifier, "stats", {}) or {})
    report.extra.update(round=round_index, verifier=verifier.identity, rounds=rounds, endpoint=endpoint_stats or None,
                        combinations=dict(combos),
                        **{k: this_round[k] for k in ("verified_rate", "new_pairs", "pending_after")})
    log.info("ipa round %d: %d candidates, verified %.1f%%, %d new pairs, %d seeds pending", round_index,
             len(verdicts), 100 * this_round["verified_rate"], len(new_pairs), len(pending))
    report.write(out, allow_empty=True)  # a round may add no pair: its seeds stay pending for the next
    return report


def _round_stats(round_index: int, verifier: Verifier, verdicts: dict[str, Verdict], counts: Counter[str],
                 combos: Counter[str], seeds: int, new_pairs: int, pending: int, duplicates: int,
                 pairs_so_far: int) -> dict[str, Any]:
    """This round's line of rounds.json."""
    statuses = Counter(v.status for v in verdicts.values())
    return {
        "round": round_index, "verifier": verifier.identity, "seeds": seeds, "candidates": len(verdicts),
        "verdicts": dict(statuses), "error_reasons": dict(Counter(v.reason for v in verdicts.values()
                                                                  if v.status == ERROR)),
        "verified_rate": round(statuses[VERIFIED] / len(verdicts), 4) if verdicts else 0.0,
        "unparseable_first_try": counts["unparseable_first_try"], "new_pairs": new_pairs,
        "combinations": dict(combos), "seeds_with_pair": seeds - pending, "pending_after": pending,
        "duplicates_merged": duplicates, "pairs_so_far": pairs_so_far,
    }


def read_tolerant(path: Path, cls: type, report: StageReport) -> list[Any]:
    """Rows of a JSON Lines file; a corrupt row is skipped and counted, naming file, row and field."""
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rows.append(schema.parse_line(raw, cls, path, i))
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
    from visalign.ipa import verify as v

    def engine(uri: str):
        from visalign.models import load_model
        from visalign.stages.rollout import HFEngine

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
