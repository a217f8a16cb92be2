"""What a resumable stage's earlier output was made with, so a re-run resumes only its own work.

A resumable stage (rollout, IPA collection; train, through its checkpoints) appends finished rows to its output
and skips them on a re-run. Rows made with another model, other data or other parameters would be
taken as done and reported under the new model's name, so the stage writes a fingerprint beside its
rows (resume.json: a digest of the model's files, the processor's, the inputs and the parameters)
and a re-run with a different fingerprint refuses (ResumeMismatch naming what changed), or, with
`rollout.resume_mismatch=restart`, starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.errors import ResumeMismatch
from visalign.recipes import ConfigError

log = logging.getLogger(__name__)

RESUME_FILE = "resume.json"
REFUSE, RESTART = "refuse", "restart"
# Files above this size are digested by their size, first and last MiB: a 16 GB checkpoint is not
# read whole on every resume, and a changed weight file still changes its size or its ends.
WHOLE_FILE_LIMIT = 64 * 2**20
EDGE = 2**20


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            h.update(f.read())
        else:
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()[:16]


def model_digest(uri: str | os.PathLike) -> str:
    """A digest of a model directory's files (weights, config, processor and tokenizer files), and for
    an adapter of its base's too. An s3:// model is digested in its synced local copy (the one loading
    uses): a changed model at the same URI is another model. A name that is no directory: the name."""
    from visalign.models import local_dir

    if str(uri).startswith("s3://"):
        uri = local_dir(uri)
    path = Path(str(uri).removeprefix("file://"))
    if not path.is_dir():
        return schema.stable_id("uri", str(uri))
    files = {p.relative_to(path).as_posix(): file_digest(p) for p in sorted(path.rglob("*"))
             if p.is_file() and not p.name.endswith(".tmp")}
    card = schema.read_model_card(path)
    base = model_digest(card.base) if card is not None and card.kind == "adapter" and card.base else None
    return schema.stable_id(files, base)


def fingerprint(**parts: Any) -> dict[str, str]:
    """Each part as a short digest (a dict of them is what resume.json holds)."""
    return {name: value if isinstance(value, str) else schema.stable_id(value) for name, value in parts.items()}


def _read(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):  # torn or edited: what made the work is unknown
        return None
    return found if isinstance(found, dict) else None


def check(output_dir: Path, parts: dict[str, str], work: list[Path], on_mismatch: str, stage: str, section: str,
          owner: bool = True) -> bool:
    """Whether the earlier work (`work`: the files or directories holding it, those that exist) in
    `output_dir` may be resumed: True when there is some and it was made with `parts`. On a mismatch:
    ResumeMismatch, or with on_mismatch=restart the work is removed and the stage starts afresh.
    `section.resume_mismatch` is the setting named in messages. Only the `owner` (rank 0 of a
    multi-process run) removes work and writes `parts` for the next re-run; the others only decide."""
    if on_mismatch not in (REFUSE, RESTART):
        raise ConfigError([f"{section}.resume_mismatch={on_mismatch!r}: choose {REFUSE} or {RESTART}"])
    work = [w for w in work if w.exists()]
    path = output_dir / RESUME_FILE
    before = _read(path)
    resume = bool(work)
    if work and before != parts:
        changed = (sorted(k for k in set(parts) | set(before) if parts.get(k) != before.get(k)) if before
                   else ["everything: the earlier work has no readable resume.json, so what made it is unknown"])
        if on_mismatch == REFUSE:
            raise ResumeMismatch(
                f"{output_dir}: the {stage} work in it does not match this run ({', '.join(changed)} changed); "
                f"resuming would pass it off as this run's. Use a new output directory, or set "
                f"{section}.resume_mismatch={RESTART} to discard it and start afresh")
        log.warning("%s: %s changed since the earlier work in %s: discarding it and starting afresh", stage,
                    ", ".join(changed), output_dir)
        for f in work if owner else []:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink(missing_ok=True)
        resume = False
    if owner:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(parts, indent=2))
    return resume
