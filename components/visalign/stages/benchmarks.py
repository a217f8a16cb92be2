"""Reading benchmarks in VLMEvalKit's TSV format, and the task a file's columns imply.

An `answer_type` column makes a benchmark step-by-step (MPO's CoT questions); a file named like
VLMEvalKit's MM-Vet (its stem holds "mmvet") is judge-scored MM-Vet; `caption` and `gpt4_ans`
columns (or a stem holding "llavabench") make it judge-scored LLaVA-Bench in-the-wild; option
columns (A, B, ... beyond D where a file has them; a `hint` column goes before the question: MMBench,
MMStar, SEED, AI2D, ScienceQA) make it multiple choice; answers that are all yes/no make it yes/no
(POPE); anything else is a short answer. Malformed rows are dropped and reported with the file, row
and field named.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import json
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visalign.errors import EmptyResult, InputError
from visalign.infra import store
from visalign.inputs import IMAGE_TOO_LARGE, BadImage, decode_text, load_image
from visalign.report import StageReport

MULTIPLE_CHOICE, YES_NO, SHORT = "multiple_choice", "yes_no", "short"
# A TSV with an `answer_type` column (MPO's step-by-step questions): asked with rollout's "cot" template,
# the answer read after "Final answer:" and scored by visalign.stages.correctness.
COT = "cot"
# Judge-scored (visalign.stages.judge): open-ended answers graded by a judge model.
MMVET, LLAVA_BENCH = "mmvet", "llava_bench"
JUDGED = (MMVET, LLAVA_BENCH)
LETTERS = string.ascii_uppercase
# VLMEvalKit stores a repeated image once; other rows hold the owning row's index (<= 64 chars).
IMAGE_REF_MAX_LEN = 64


@dataclass
class BenchRow:
    index: str
    images: list[bytes]
    question: str
    answer: str
    category: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    hint: str | None = None
    answer_type: str | None = None  # when given: the chain-of-thought task (COT)
    caption: str | None = None  # LLaVA-Bench: the image described in words, for the judge


@dataclass
class Benchmark:
    name: str  # the file stem
    source: str
    task: str
    rows: list[BenchRow]
    rows_read: int  # before malformed rows were dropped


def _image_strings(value: str) -> list[str]:
    """One base64 string, or a JSON / Python list of them (multi-image rows)."""
    value = value.strip()
    if not value.startswith("["):
        return [value]
    try:
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            items = ast.literal_eval(value)  # VLMEvalKit writes str(list): single quotes
    except (RecursionError, MemoryError):  # "[[[[...": a parser's stack, not a list of images
        raise ValueError("nested too deeply; expected a flat list of base64 strings") from None
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ValueError("expected a non-empty list of base64 strings")
    return items


def _decode_image(b64: str, cache: dict[str, bytes]) -> bytes:
    """Decoded image bytes, after a full decode within the pixel limit (truncated files and bombs
    fail here, not mid-batch)."""
    if b64 not in cache:
        data = base64.b64decode(b64, validate=True)
        load_image(data, "image").close()  # the caller names the row
        cache[b64] = data
    return cache[b64]


class _RowProblem(ValueError):
    """One row is unusable: the field, the problem and the drop reason."""

    def __init__(self, field_name: str, problem: str, reason: str = "missing_field"):
        self.field, self.problem, self.reason = field_name, problem, reason
        super().__init__(f"{field_name}: {problem}")


def _parse_row(raw: dict[str, str], letters: list[str], image_map: dict[str, str],
               cache: dict[str, bytes]) -> BenchRow:
    """A BenchRow, or a _RowProblem naming the field."""
    if not (raw.get("answer") or "").strip() and (raw.get("gpt4_ans") or "").strip():
        raw = {**raw, "answer": raw["gpt4_ans"]}  # LLaVA-Bench: the reference answer is GPT-4's
    if None in raw:  # csv puts the cells beyond the header under None
        raise _RowProblem("<row>", f"{len(raw[None])} more cells than the header has columns", "malformed_row")
    for name in ("question", "answer", "image"):
        if not (raw.get(name) or "").strip():
            raise _RowProblem(name, "missing or empty")
    try:
        images = []
        for item in _image_strings(raw["image"]):
            if len(item) <= IMAGE_REF_MAX_LEN:  # a reference to another row's image
                item = image_map.get(item, "")
                if len(item) <= IMAGE_REF_MAX_LEN:
                    raise ValueError(f"refers to row index {item!r}, which holds no image")
            images.append(_decode_image(item, cache))
    except BadImage as e:
        raise _RowProblem("image", e.problem, e.reason if e.reason == IMAGE_TOO_LARGE else "bad_image") from None
    except (ValueError, SyntaxError, OSError, binascii.Error) as e:
        raise _RowProblem("image", f"{type(e).__name__}: {e}"[:300], "bad_image") from None
    options = {k: raw[k].strip() for k in letters if (raw.get(k) or "").strip() not in ("", "nan")}
    if letters and len(options) < 2:
        raise _RowProblem(letters[0], "a multiple-choice row needs at least two options")
    hint = (raw.get("hint") or "").strip()
    answer_type = (raw.get("answer_type") or "").strip() or None
    if answer_type is not None:
        from visalign.stages.correctness import SCORERS as COT_SCORERS
        from visalign.stages.correctness import scorer_for

        if scorer_for(answer_type) is None:
            raise _RowProblem("answer_type", f"{answer_type!r} has no scorer; known: {sorted(COT_SCORERS)}")
    return BenchRow(index=str(raw.get("index") or ""), images=images, question=raw["question"].strip(),
                    answer=raw["answer"].strip(), category=(raw.get("category") or "").strip() or None,
                    options=options, hint=hint if hint not in ("", "nan") else None, answer_type=answer_type,
                    caption=(raw.get("caption") or "").strip() or None)


def _stem_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def infer_task(rows: Sequence[BenchRow], name: str = "", columns: Sequence[str] = ()) -> str:
    if rows and all(r.answer_type for r in rows):
        return COT
    if "mmvet" in _stem_key(name):
        return MMVET
    if "llavabench" in _stem_key(name) or {"caption", "gpt4_ans"} <= set(columns):
        return LLAVA_BENCH
    if any(r.options for r in rows):
        return MULTIPLE_CHOICE
    if rows and all(r.answer.lower() in ("yes", "no") for r in rows):
        return YES_NO
    return SHORT


def read_benchmark(uri: str, report: StageReport, limit: int | None = None) -> Benchmark:
    """Read one TSV; malformed rows are dropped with the file, row and field named."""
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    reader = csv.DictReader(io.StringIO(decode_text(store.read_bytes(uri), uri)), delimiter="\t")
    if not reader.fieldnames or not {"question", "image"} <= set(reader.fieldnames):
        raise InputError(uri, f"not a VLMEvalKit benchmark TSV: the header {reader.fieldnames or []} lacks "
                         "'question' or 'image' (tab-separated, with index, image, question, answer columns)")
    letters = [c for c in (reader.fieldnames or []) if c in LETTERS]
    every = list(reader)
    # A row may refer to the image of a row beyond the limit: map the images of every row.
    image_map = {str(r.get("index")): r.get("image") or "" for r in every}
    raws = every[:limit]
    rows, cache = [], {}
    for i, raw in enumerate(raws, start=2):  # row 1 is the header
        try:
            rows.append(_parse_row(raw, letters, image_map, cache))
        except _RowProblem as e:
            report.drop(e.reason, f"{uri}: row {i} (index {raw.get('index')}): field '{e.field}': {e.problem}")
    if not rows:
        raise EmptyResult(f"{uri}: no usable row of {len(raws)} (dropped so far: {dict(report.dropped) or 'none'}); "
                          "a benchmark needs rows with index, image, question and answer")
    name = Path(uri).stem
    return Benchmark(name=name, source=uri, task=infer_task(rows, name, reader.fieldnames or []), rows=rows,
                     rows_read=len(raws))


def find_benchmarks(specs: Sequence[str]) -> list[str]:
    """TSV files from file paths, directories and s3:// prefixes (sorted per directory)."""
    uris: list[str] = []
    for spec in specs:
        if spec.endswith(".tsv"):
            uris.append(spec)
        else:  # a directory or s3:// prefix: its TSVs, not those of sub-directories
            uris += [u for u in store.list_uris(spec, recursive=False) if u.endswith(".tsv")]
    names = [Path(u).stem for u in uris]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(str(dupes), "several benchmark TSVs share a name (file stem); results are keyed by it")
    if not uris:
        raise InputError(str(list(specs)), "no .tsv benchmark found; pass TSV files, directories or s3:// prefixes")
    return uris
