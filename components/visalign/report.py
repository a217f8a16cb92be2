"""The JSON report every stage writes next to its output: rows in, rows out, drops by reason.

Nothing is dropped silently: a stage calls `report.drop(reason, detail)` for every row it skips,
and the report keeps the count per reason plus the first few details (file, row, field) so a
user can find the bad input.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from visalign.errors import EmptyResult
from visalign.schema import REPORT_FILE

log = logging.getLogger("visalign")
T = TypeVar("T")

MAX_EXAMPLES_PER_REASON = 5


class StageReport:
    def __init__(self, stage: str):
        self.stage = stage
        self.rows_in = 0
        self.rows_out = 0
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.extra: dict[str, Any] = {}
        self._start = time.monotonic()
        self.seconds: float | None = None

    def drop(self, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if detail and len(examples) < MAX_EXAMPLES_PER_REASON:
            examples.append(detail)
            log.warning("%s: dropped (%s) %s", self.stage, reason, detail)

    def finish(self) -> StageReport:
        self.seconds = round(time.monotonic() - self._start, 3)
        return self

    def to_dict(self) -> dict[str, Any]:
        seconds = self.seconds if self.seconds is not None else time.monotonic() - self._start
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            "drop_examples": self.examples,
            "seconds": round(seconds, 3),
            "rows_per_second": round(self.rows_in / seconds, 3) if seconds > 0 else None,
            **self.extra,
        }

    def write(self, output_dir: str | os.PathLike, allow_empty: bool = False) -> Path:
        """Write report.json; then, unless allow_empty, fail the stage (EmptyResult) when no row came
        out: the next stage would only fail later, further from the reason."""
        self.finish()
        path = Path(output_dir) / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        log.info("%s: %d in, %d out, dropped %s, %.1f s", self.stage, self.rows_in, self.rows_out,
                 dict(self.dropped) or "none", self.seconds)
        if self.rows_out == 0 and not allow_empty:
            raise EmptyResult(self.empty_message(path))
        return path

    def empty_message(self, path: str | os.PathLike | None = None) -> str:
        reasons = "; ".join(f"{n} {reason} (e.g. {self.examples[reason][0]})" if self.examples.get(reason)
                            else f"{n} {reason}" for reason, n in self.dropped.most_common())
        return (f"{self.stage}: no rows out of {self.rows_in} in; dropped: {reasons or 'none'}"
                + (f"; the report is {path}" if path else ""))


def read_report(output_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(output_dir) / REPORT_FILE).read_text())


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """tqdm in a terminal; logged progress lines (every ~10%) in a pod or a pipe."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total)
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    step = max(1, (total or 0) // 10)
    start = time.monotonic()
    for i, item in enumerate(items, start=1):
        yield item
        if total and (i % step == 0 or i == total):
            elapsed = time.monotonic() - start
            log.info("%s: %d/%d (%.0f%%, %.1f s)", desc, i, total, 100 * i / total, elapsed)


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
