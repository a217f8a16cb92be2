"""Sample: pick N image-question prompts from seed files (LLaVA-665k JSON or VLMEvalKit TSV).

Seeded and reproducible; at most `max_questions_per_image` questions per image; the short-answer
suffix is stripped (SeVa). Only the picked images are fetched, and each must open: a corrupt or
missing image is dropped with its reason and the next candidate takes its place.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import io
import json
import logging
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from visalign import schema
from visalign.errors import InputError
from visalign.infra import store
from visalign.inputs import BadImage, confine, decode_text, load_image, output_path
from visalign.recipes import SampleParams
from visalign.report import StageReport, progress
from visalign.schema import Prompt

log = logging.getLogger(__name__)
OPTION_LETTERS = "ABCDEFGHIJ"
YES_NO = {"yes", "no"}
PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")  # "3", "-2.5", "1,200", ".5"


@dataclass
class Candidate:
    source: str
    source_row: str
    image_key: str  # identifies the image across questions (URI or content digest)
    question: str
    reference: str | None
    answer_type: str | None
    fetch: object  # () -> bytes
    image_group: str = ""  # the seed image's top-level directory (a LLaVA-665k subset: coco, ocr_vqa, ...)


def _answer_type(reference: str | None, has_options: bool, given: object = None) -> str | None:
    """The seed's own answer type when it states one (passed on as is: mpo_pairs drops the ones no
    scorer knows, naming the row), else inferred from the options and the reference."""
    if given is not None and str(given).strip() not in ("", "nan"):
        return str(given).strip()
    if has_options:
        return "multiple_choice"
    if reference is None:
        return None
    ref = reference.strip()
    if ref.lower() in YES_NO:
        return "yes_no"
    return "numeric" if any(c.isdigit() for c in ref) and PLAIN_NUMBER.fullmatch(ref) else "short"


def image_group(rel_path: str) -> str:
    """'coco/train2017/1.jpg' -> 'coco': LLaVA-665k keeps each source dataset in its own folder."""
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".")]
    return parts[0] if len(parts) > 1 else ""


def read_llava_json(uri: str, report: StageReport, image_root: str | None = None,
                    images_outside_root: bool = False) -> Iterator[Candidate]:
    """Every (human question, gpt answer) turn of every row that has an image under the image root."""
    try:
        rows = json.loads(decode_text(store.read_bytes(uri), uri))
    except json.JSONDecodeError as e:
        raise InputError(uri, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected a list of "
                         "LLaVA conversation rows") from None
    except RecursionError:
        raise InputError(uri, "JSON nested too deeply to read; expected a list of LLaVA conversation rows") from None
    if not isinstance(rows, list):
        raise InputError(uri, f"expected a JSON list of LLaVA rows, got {type(rows).__name__}")
    root = image_root or (uri.rsplit("/", 1)[0] if "/" in uri else ".")
    for i, row in enumerate(rows):
        where = f"{uri} row {i}"
        if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
            report.drop("missing_field", f"{where}: field 'conversations' missing or not a list")
            continue
        if not isinstance(row.get("image"), str) or not row["image"].strip():
            report.drop("no_image", f"{where}: field 'image' missing (text-only row)")
            continue
        try:
            image_uri = confine(root, row["image"], f"{where}: field 'image'", images_outside_root)
        except InputError as e:
            report.drop("image_outside_root", str(e))
            continue
        turns = row["conversations"]
        if len(turns) % 2:
            report.drop("unanswered_turn", f"{where}: field 'conversations[{len(turns) - 1}]': a question without "
                        "an answer turn after it (LLaVA rows alternate human, gpt)")
        for t in range(0, len(turns) - 1, 2):
            human, gpt = turns[t], turns[t + 1]
            if not (isinstance(human, dict) and isinstance(gpt, dict) and isinstance(human.get("value"), str)):
                report.drop("missing_field", f"{where}: field 'conversations[{t}].value' missing")
                continue
            question = human["value"].replace("<image>", "").strip()
            reference = gpt.get("value") if isinstance(gpt.get("value"), str) else None
            given = gpt.get("answer_type", row.get("answer_type"))  # a turn's own type wins over the row's
            yield Candidate(uri, f"{row.get('id', i)}#{t // 2}", image_uri, question, reference,
                            _answer_type(reference, False, given), lambda u=image_uri: store.read_bytes(u),
                            image_group=image_group(row["image"]))


def read_vlmeval_tsv(uri: str, report: StageReport) -> Iterator[Candidate]:
    """One candidate per row; options A-J are appended to the question as VLMEvalKit prints them."""
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    reader = csv.DictReader(io.StringIO(decode_text(store.read_bytes(uri), uri)), delimiter="\t")
    for i, row in enumerate(reader, start=2):  # row 1 is the header
        where = f"{uri} row {i}"
        missing = [f for f in ("image", "question") if not row.get(f)]
        if missing:
            report.drop("missing_field", f"{where}: field '{missing[0]}' missing or empty")
            continue
        options = [(k, row[k]) for k in OPTION_LETTERS if row.get(k) not in (None, "", "nan")]
        question = row["question"].strip()
        if options:
            question += "\n" + "\n".join(f"{k}. {v}" for k, v in options)
        image_b64 = row["image"]
        if image_b64.startswith("["):
            report.drop("multi_image_row", f"{where}: field 'image' holds several images; not a single-image seed")
            continue
        reference = row.get("answer") or None
        yield Candidate(uri, str(row.get("index", i)), f"{uri}#{row.get('index', i)}", question, reference,
                        _answer_type(reference, bool(options), row.get("answer_type")),
                        lambda b=image_b64: base64.b64decode(b, validate=True))


def read_candidates(uri: str, report: StageReport, image_root: str | None = None,
                    images_outside_root: bool = False) -> Iterator[Candidate]:
    if uri.endswith(".json"):
        return read_llava_json(uri, report, image_root, images_outside_root)
    if uri.endswith(".tsv"):
        return read_vlmeval_tsv(uri, report)
    raise InputError(uri, "unknown seed format; expected a LLaVA .json or a VLMEvalKit .tsv file")


def strip_suffixes(question: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        question = re.sub(r"\s*" + re.escape(suffix) + r"\s*$", "", question)
    return question.strip()


def _load_image(c: Candidate) -> tuple[bytes, str]:
    """The image's bytes and format, after checking it decodes completely within the pixel limit."""
    where = f"{c.source} row {c.source_row}: field 'image' ({c.image_key})"
    try:
        data = c.fetch()
    except (OSError, ValueError, binascii.Error) as e:  # a missing file, an S3 error, bad base64
        raise BadImage(where, f"{type(e).__name__}: {e}") from None
    with load_image(data, where) as im:  # verify() misses truncated files; a full decode does not
        return data, (im.format or "PNG").lower()


def run(*, sources: list[str], output_dir: str, params: SampleParams, image_root: str | None = None) -> StageReport:
    """Pick prompts from `sources` (LLaVA .json or VLMEvalKit .tsv, local or s3://)."""
    report = StageReport("sample")
    out = output_path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    candidates = [c for uri in sources for c in read_candidates(uri, report, image_root, params.images_outside_root)]
    report.rows_in = len(candidates) + sum(report.dropped.values())
    rng = random.Random(params.seed)
    rng.shuffle(candidates)
    per_image: Counter[str] = Counter()
    not_picked: Counter[str] = Counter()  # over a quota: not a loss, so not a drop
    prompts: list[Prompt] = []
    ids: set[str] = set()
    bad_images: set[str] = set()
    for c in progress(candidates, desc="sample", total=len(candidates)):
        if len(prompts) >= params.num_prompts:
            not_picked["over_num_prompts"] += 1
            continue
        if c.image_key in bad_images:
            report.drop("unreadable_image", f"{c.source} row {c.source_row}: image {c.image_key} (seen before)")
            continue
        if per_image[c.image_key] >= params.max_questions_per_image:
            not_picked["over_max_questions_per_image"] += 1
            continue
        question = strip_suffixes(c.question, params.strip_suffixes)
        # The image is part of the id: rows that share an id field and a question still differ by image.
        prompt_id = schema.stable_id(c.source, c.source_row, c.image_key, question)
        if prompt_id in ids:
            report.drop("duplicate_prompt", f"{c.source} row {c.source_row}: the same question on the same image "
                        f"again (prompt {prompt_id})")
            continue
        try:
            data, fmt = _load_image(c)
        except BadImage as e:
            bad_images.add(c.image_key)
            report.drop(e.reason, str(e))
            continue
        rel = f"images/{schema.stable_id(c.image_key)}.{fmt}"
        if not (out / rel).exists():
            (out / rel).write_bytes(data)
        per_image[c.image_key] += 1
        ids.add(prompt_id)
        prompts.append(Prompt(id=prompt_id, images=[rel],
                              question=question, source=c.source, source_row=c.source_row,
                              reference=c.reference, answer_type=c.answer_type,
                              meta={"image_group": c.image_group} if c.image_group else {}))
    if 0 < len(prompts) < params.num_prompts:
        log.warning("sample: %d prompts picked, fewer than sample.num_prompts=%d: the seeds hold no more usable "
                    "questions (see the drops and not_picked in the report)", len(prompts), params.num_prompts)
        report.extra["short_of_num_prompts"] = params.num_prompts - len(prompts)
    report.rows_out = schema.write_rows(out / schema.PROMPTS_FILE, prompts)
    report.extra.update(not_picked=dict(not_picked), sources=sources, images=len(per_image),
                        answer_types=dict(Counter(p.answer_type or "none" for p in prompts)))
    report.write(out)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--input", action="append", required=True, dest="sources",
                        help="Seed file URI: LLaVA .json or VLMEvalKit .tsv, local or s3:// (repeatable).")
    parser.add_argument("--image-root", default=None, help="Where LLaVA rows' image paths start (default: beside the JSON).")
    parser.add_argument("--output", required=True, help="Output directory for prompts.jsonl, images/ and report.json.")
    recipes.add_arguments(parser, "sample")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "sample")
    run(sources=args.sources, output_dir=args.output, params=recipe.sample, image_root=args.image_root)
    return 0
