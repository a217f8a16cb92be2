"""The data contract between stages, validated on read.

Every stage reads and writes JSON Lines files of the rows below, inside a directory (a KFP
artifact or any local folder) that also holds the images the rows point to, by paths relative to
that directory. Every row carries a stable id derived from its content, so the same seed gives
the same ids in every run and a resumed stage can tell which rows it has already done.

    sample   -> prompts.jsonl   (Prompt)
    augment  -> views.jsonl     (View)
    rollout  -> responses.jsonl (Response)
    filter   -> pairs.jsonl     (Pair: TRL's preference format plus provenance)
    train    -> visalign_model.json (ModelCard) beside the weights or adapter
    evaluate -> results.json, predictions/<benchmark>.jsonl (Prediction)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from visalign.errors import InputError, StageError

PROMPTS_FILE = "prompts.jsonl"
VIEWS_FILE = "views.jsonl"
RESPONSES_FILE = "responses.jsonl"
PAIRS_FILE = "pairs.jsonl"
MODEL_CARD_FILE = "visalign_model.json"
RESULTS_FILE = "results.json"
PAIRED_KEY = "_paired"  # results.json: each model against the base, with intervals and p-values
REPORT_FILE = "report.json"


class SchemaError(StageError, ValueError):
    """A row does not match the contract; the message names the file, row and field."""

    def __init__(self, file: str | os.PathLike, row: int, field_name: str, problem: str):
        self.file, self.row, self.field, self.problem = str(file), row, field_name, problem
        super().__init__(f"{file}: row {row}: field '{field_name}': {problem}")


def stable_id(*parts: Any) -> str:
    """A 16-hex-digit id from the JSON form of `parts` (same content, same id, any run)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Prompt:
    """One image(s)-question pair picked from the seeds."""

    id: str
    images: list[str]  # relative to the dataset directory
    question: str
    source: str  # the seed file or URI it came from
    source_row: str  # the row's index or id in that source
    reference: str | None = None  # ground-truth / reference answer, when the seed has one
    answer_type: str | None = None  # yes_no, multiple_choice, short, ... when known
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class View:
    """An augmented view of one prompt's images.

    space == "pixel": the transform was applied to the image; `images` holds the augmented files.
    space == "tensor": the transform applies to the processor's normalised tensor (SeVa's
    diffusion noise), so it is recorded here with its seed and replayed exactly by rollout;
    storing the noised float tensors would cost ~1 MB per prompt at LLaVA's 336 px.
    """

    id: str
    prompt_id: str
    name: str
    space: str  # "pixel" or "tensor"
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    images: list[str] | None = None  # pixel space only, relative to the views directory


@dataclass
class Response:
    """One generated answer to a prompt, on its clean images or on one of its views."""

    id: str
    prompt_id: str
    view: str  # "clean" or the View id
    text: str
    num_tokens: int
    finish_reason: str  # "eos" or "length"
    sample_index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pair:
    """A preference pair in TRL's format (images, prompt, chosen, rejected) plus provenance."""

    id: str
    images: list[str]  # relative to the pairs directory
    prompt: str  # the user question; the chat template is applied at training time
    chosen: str
    rejected: str
    prompt_id: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelCard:
    """What a model artifact is and where it came from (saved beside the weights)."""

    kind: str  # "adapter" (PEFT, needs `base`) or "full" (a complete HF model directory)
    base: str | None  # URI or path of the base model, for adapters
    recipe: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # pairs count, pairs artifact id, ...
    mlflow_run_id: str | None = None
    merged: str | None = None  # sub-directory with the merged model, when asked for
    # How the base was loaded (visalign.models.loading_policy): safetensors only, trust_remote_code.
    loading: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """One benchmark question answered by one model."""

    index: str
    question: str
    answer: str  # ground truth
    prediction: str  # raw model output
    extracted: str | None  # the answer read out of the prediction (letter, yes/no, ...)
    correct: bool
    category: str | None = None
    # Judge-scored benchmarks: the judge's score (MM-Vet 0-1, LLaVA-Bench 1-10) and, for LLaVA-Bench,
    # its score of the reference answer; `judge` is the judge's raw answer where it read an answer
    # the rules could not (evaluate.judge_extraction).
    score: float | None = None
    reference_score: float | None = None
    judge: str | None = None


Row = TypeVar("Row")

_ROW_TYPES: dict[str, type] = {
    PROMPTS_FILE: Prompt,
    VIEWS_FILE: View,
    RESPONSES_FILE: Response,
    PAIRS_FILE: Pair,
}


def _check_type(value: Any, annotation: str) -> bool:
    """A light check of the annotations used above (strings under `from __future__`)."""
    optional = "None" in annotation
    if value is None:
        return optional
    base = annotation.replace(" | None", "").strip()
    checks = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "dict[str, Any]": lambda v: isinstance(v, dict),
    }
    return checks.get(base, lambda v: True)(value)


def from_dict(cls: type[Row], data: Any, *, file: str | os.PathLike = "<memory>", row: int = 0) -> Row:
    """Build a row dataclass from a dict, naming the file, row and field of any problem."""
    if not isinstance(data, dict):
        raise SchemaError(file, row, "<row>", f"expected a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SchemaError(file, row, unknown[0], f"unknown field for {cls.__name__}")
    for f in known.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in data:
            if required:
                raise SchemaError(file, row, f.name, f"missing (required by {cls.__name__})")
            continue
        if not _check_type(data[f.name], str(f.type)):
            raise SchemaError(
                file, row, f.name, f"expected {f.type}, got {type(data[f.name]).__name__}: {data[f.name]!r:.60}"
            )
    return cls(**data)


def to_dict(row: Any) -> dict[str, Any]:
    return asdict(row)


def write_rows(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows as JSON Lines (atomically: a half-written file never looks finished)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(to_dict(r) if dataclasses.is_dataclass(r) else r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def append_rows(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Append rows to a JSON Lines file (for checkpointed, resumable stages)."""
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(to_dict(r) if dataclasses.is_dataclass(r) else r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def iter_rows(path: str | os.PathLike, cls: type[Row] | None = None) -> Iterator[Row]:
    """Read and validate rows; the row type follows from the file name unless given."""
    path = Path(path)
    cls = cls or _ROW_TYPES.get(path.name)
    if cls is None:
        raise ValueError(f"{path}: no row type is known for this file name; pass cls=")
    if not path.is_file():
        raise InputError(path, "no such file; is its directory the output of the stage before this one?")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if raw.strip():
                yield parse_line(raw, cls, path, i)


def parse_line(raw: bytes, cls: type[Row], path: str | os.PathLike, row: int) -> Row:
    """One JSON Lines row read as bytes (a kill inside a multi-byte character tears the UTF-8 too),
    decoded, parsed and validated; a SchemaError names the file, row and field of any problem."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SchemaError(path, row, "<row>", f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start} "
                          "of the line") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise SchemaError(path, row, "<row>", f"not valid JSON: {getattr(e, 'msg', 'nested too deeply')}") from None
    return from_dict(cls, data, file=path, row=row)


def read_rows(path: str | os.PathLike, cls: type[Row] | None = None) -> list[Row]:
    return list(iter_rows(path, cls))


def read_checkpoint(path: str | os.PathLike, cls: type[Row]) -> list[Row]:
    """Rows already written by an interrupted run; a torn last line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, "rb") as f:
        for i, line in enumerate(f, start=1):
            try:
                rows.append(parse_line(line, cls, path, i))
            except SchemaError:
                break
    return rows


def read_model_card(model_dir: str | os.PathLike) -> ModelCard | None:
    path = Path(model_dir) / MODEL_CARD_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(path, 1, "<file>", f"not a UTF-8 JSON model card ({e})") from None
    return from_dict(ModelCard, data, file=path, row=1)


def write_model_card(model_dir: str | os.PathLike, card: ModelCard) -> None:
    Path(model_dir, MODEL_CARD_FILE).write_text(json.dumps(asdict(card), indent=2, default=str))
