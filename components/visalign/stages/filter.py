"""Filter: turn each prompt's clean and augmented answers into a preference pair (SeVa).

chosen = the answer on the clean image, rejected = the answer on the augmented view. A pair is
dropped when the two raw answers are exactly equal (nothing to learn); end-of-sequence markers
and newlines are stripped after that check, as SeVa's reference code does. Pairs are written in
TRL's preference format with their images copied beside them, so the pairs directory is all the
train stage needs.
"""

from __future__ import annotations

import argparse
import random
import shutil
from collections import defaultdict
from pathlib import Path

from visalign import schema
from visalign.inputs import output_path
from visalign.recipes import FilterParams
from visalign.report import StageReport
from visalign.schema import Pair, Prompt, Response
from visalign.stages.rollout import CLEAN, IMAGE_MARKER


def clean_text(text: str, end_markers: tuple[str, ...]) -> str:
    for marker in end_markers:
        text = text.replace(marker, "")
    return " ".join(text.replace("\r", "\n").split("\n")).strip()


def make_pair(prompt: Prompt, chosen: Response, rejected: Response, params: FilterParams,
              report: StageReport) -> Pair | None:
    if chosen.text == rejected.text:
        report.drop("equal_answers")
        return None
    c, r = clean_text(chosen.text, params.end_markers), clean_text(rejected.text, params.end_markers)
    if not c or not r:
        report.drop("empty_answer", f"prompt {prompt.id}: {'chosen' if not c else 'rejected'} is empty after cleaning")
        return None
    if c == r:
        report.drop("equal_after_cleaning")
        return None
    return Pair(
        id=schema.stable_id(prompt.id, c, r), images=prompt.images, prompt=prompt.question, chosen=c, rejected=r,
        prompt_id=prompt.id,
        provenance={"source": prompt.source, "source_row": prompt.source_row, "chosen_response": chosen.id,
                    "rejected_response": rejected.id, "rejected_view": rejected.view,
                    "chosen_finish": chosen.finish_reason, "rejected_finish": rejected.finish_reason},
    )


def pair_problem(pair: Pair, pairs_dir: str | Path, checked: dict[str, tuple[str, str] | None] | None = None
                 ) -> tuple[str, str] | None:
    """Why a pair cannot be trained on, as (drop reason, detail naming the field), or None. train
    checks every pair it reads with this, whoever built the file: an empty answer teaches nothing,
    and a broken image or placeholder count fails the trainer hours in. `checked` caches each image's
    outcome (pairs share images: two questions per image, repeated distractors)."""
    from visalign.inputs import BadImage, load_image

    for name in ("prompt", "chosen", "rejected"):
        if not getattr(pair, name).strip():
            return "empty_answer" if name != "prompt" else "empty_prompt", f"field '{name}' is empty or blank"
    if pair.chosen.strip() == pair.rejected.strip():
        return "equal_answers", "fields 'chosen' and 'rejected' are the same text"
    markers = pair.prompt.count(IMAGE_MARKER)
    if markers and markers != len(pair.images):
        return "image_marker_mismatch", (f"field 'prompt' holds {markers} {IMAGE_MARKER} markers for "
                                         f"{len(pair.images)} images")
    checked = {} if checked is None else checked
    for rel in pair.images:
        if rel not in checked:
            try:
                load_image(Path(pairs_dir) / rel, f"field 'images' ({rel})").close()
                checked[rel] = None
            except BadImage as e:
                checked[rel] = (e.reason, str(e))
        if checked[rel]:
            return checked[rel]
    return None


def run(*, prompts_dir: str, responses_dir: str, output_dir: str, params: FilterParams) -> StageReport:
    """Pairs from (clean, augmented) responses; optional seeded down-sampling to target_count."""
    report = StageReport("filter")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = {p.id: p for p in schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)}
    by_prompt: dict[str, dict[str, Response]] = defaultdict(dict)
    for r in schema.read_rows(Path(responses_dir) / schema.RESPONSES_FILE):
        side = "clean" if r.view == CLEAN else "view"
        if side in by_prompt[r.prompt_id]:  # one answer per side: a second would replace the first unseen
            report.drop("duplicate_response", f"{responses_dir}: response {r.id}: a second {side} answer to "
                        f"prompt {r.prompt_id}; the first is kept")
            continue
        by_prompt[r.prompt_id][side] = r
    report.rows_in = len(by_prompt)
    pairs = []
    for prompt_id, answers in by_prompt.items():
        prompt = prompts.get(prompt_id)
        if prompt is None:
            report.drop("unknown_prompt", f"{responses_dir}: prompt_id {prompt_id} not in {prompts_dir}")
        elif "clean" not in answers or "view" not in answers:
            missing = "clean" if "clean" not in answers else "augmented"
            report.drop("missing_response", f"prompt {prompt_id}: no {missing} response")
        elif pair := make_pair(prompt, answers["clean"], answers["view"], params, report):
            pairs.append(pair)
    if params.target_count is not None and len(pairs) > params.target_count:
        keep = set(random.Random(params.seed).sample(range(len(pairs)), params.target_count))
        report.extra["downsampled_from"] = len(pairs)
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    for p in pairs:
        for rel in p.images:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (out / rel).exists():
                shutil.copyfile(Path(prompts_dir) / rel, out / rel)
    report.rows_out = schema.write_rows(out / schema.PAIRS_FILE, pairs)
    report.extra["pairs_per_prompt"] = round(len(pairs) / len(by_prompt), 4) if by_prompt else 0.0
    report.write(out)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl and images (sample's output).")
    parser.add_argument("--responses", required=True, help="Directory with responses.jsonl (rollout's output).")
    parser.add_argument("--output", required=True, help="Output directory for pairs.jsonl, images/ and report.json.")
    recipes.add_arguments(parser, "filter")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "filter")
    run(prompts_dir=args.prompts, responses_dir=args.responses, output_dir=args.output, params=recipe.filter)
    return 0
