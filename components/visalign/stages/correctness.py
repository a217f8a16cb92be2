"""Is a chain-of-thought answer right? Answer extraction and per-type scorers (MPO, METHODS.md 3).

A response must end in a reasoning followed by one line "Final answer: X"; the answer is what
follows the LAST "Final answer:". A response with no such line, no reasoning before it or more
than one line after it is a format negative: wrong whatever X says (`extract` tells why).

Scoring: a case-insensitive exact match scores 1.0 first; otherwise the scorer of the prompt's
answer type decides. A response is correct when its score reaches the threshold (MPO: 0.9).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FINAL_ANSWER = "final answer:"

# Format problems, as report drop/count reasons.
NO_FINAL_ANSWER = "no_final_answer"
NO_RATIONALE = "no_rationale"
EMPTY_ANSWER = "empty_answer"
MULTI_LINE_ANSWER = "multi_line_answer"


@dataclass(frozen=True)
class Extracted:
    answer: str | None  # None when the response does not parse
    problem: str | None = None  # one of the format reasons above when it does not


def extract(text: str) -> Extracted:
    """The answer after the last 'Final answer:' (case-insensitive), or why there is none."""
    at = text.lower().rfind(FINAL_ANSWER)
    if at < 0:
        return Extracted(None, NO_FINAL_ANSWER)
    rationale, answer = text[:at].strip(), text[at + len(FINAL_ANSWER):].strip()
    if not rationale:
        return Extracted(None, NO_RATIONALE)
    if not answer:
        return Extracted(None, EMPTY_ANSWER)
    if "\n" in answer:
        return Extracted(None, MULTI_LINE_ANSWER)
    return Extracted(answer.strip().rstrip("."))


# ---- scorers: (answer, references, rel_tol) -> score in [0, 1] ------------------------------

_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.):]|\s|$)")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def choice_letter(text: str) -> str | None:
    """'B', '(B)', 'B. a red circle', 'b)' -> 'B'; None when the text does not start with a letter option."""
    m = _LETTER.match(text.strip())
    return m.group(1).upper() if m else None


def multiple_choice(answer: str, references: Sequence[str], rel_tol: float) -> float:
    letter = choice_letter(answer)
    return float(letter is not None and any(letter == choice_letter(r) for r in references))


def parse_number(text: str) -> float | None:
    """The first number in the text ('12', '-3.5', '1,200', '2e3'); number words zero-ten too."""
    m = _NUMBER.search(text)
    if m:
        return float(m.group(0).replace(",", ""))
    word = _PUNCT.sub("", text.lower()).strip()
    return float(_NUMBER_WORDS[word]) if word in _NUMBER_WORDS else None


def numeric(answer: str, references: Sequence[str], rel_tol: float) -> float:
    """1 when |a - r| <= rel_tol * |r| (MPO: 1e-3); an exact 0 reference needs an exact 0."""
    a = parse_number(answer)
    if a is None:
        return 0.0
    for ref in references:
        r = parse_number(ref)
        if r is not None and abs(a - r) <= rel_tol * abs(r):
            return 1.0
    return 0.0


def _normalise(text: str) -> str:
    """VQA-style: lower case, no punctuation or articles, number words as digits, single spaces."""
    text = _ARTICLES.sub(" ", _PUNCT.sub("", text.lower()))
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.split())


def vqa_accuracy(answer: str, references: Sequence[str], rel_tol: float) -> float:
    """VQA accuracy min(#matching references / 3, 1) over normalised answers. With fewer than 3
    references the divisor is their count, so a single ground truth scores 0 or 1."""
    if not references:
        return 0.0
    a = _normalise(answer)
    matches = sum(a == _normalise(r) for r in references)
    return min(1.0, matches / min(3, len(references)))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


ANLS_TAU = 0.5  # ANLS's threshold: a normalised distance at or above it scores 0 (Biten et al. 2019)


def anls(answer: str, references: Sequence[str], rel_tol: float) -> float:
    """ANLS = max over references of 1 - NL, NL = edit distance / longer length (0 when NL >= 0.5).
    A SIMILARITY: identical strings score 1 (the MPO reference code returns the distance, inverted)."""
    best = 0.0
    a = " ".join(answer.lower().split())
    for ref in references:
        r = " ".join(ref.lower().split())
        longest = max(len(a), len(r))
        nl = edit_distance(a, r) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < ANLS_TAU else 0.0)
    return best


Scorer = Callable[[str, Sequence[str], float], float]

SCORERS: dict[str, Scorer] = {
    "multiple_choice": multiple_choice,
    "numeric": numeric,
    "vqa": vqa_accuracy,
    "anls": anls,
}
# The answer types seeds use elsewhere in the project, mapped onto a scorer.
# MathVista-style seeds and benchmarks name their types integer / float / text.
ALIASES: dict[str, str] = {"yes_no": "vqa", "short": "vqa", "count": "numeric", "number": "numeric",
                           "letter": "multiple_choice", "integer": "numeric", "float": "numeric", "text": "vqa"}


def scorer_for(answer_type: str | None) -> str | None:
    """The scorer name for an answer type; None when it is unknown."""
    if answer_type is None:
        return None
    name = ALIASES.get(answer_type, answer_type)
    return name if name in SCORERS else None


def references_of(reference: str) -> list[str]:
    """A prompt's reference may list several accepted answers separated by ' | ' (VQA's ten)."""
    return [r.strip() for r in reference.split(" | ") if r.strip()]


def score(answer: str, reference: str, answer_type: str, *, rel_tol: float = 1e-3) -> float:
    """Case-insensitive exact match first (1.0), else the answer type's scorer."""
    refs = references_of(reference)
    if any(answer.strip().lower() == r.lower() for r in refs):
        return 1.0
    name = scorer_for(answer_type)
    if name is None:
        raise ValueError(f"answer_type={answer_type!r}: no scorer; known: {sorted(SCORERS)} "
                         f"(aliases {sorted(ALIASES)})")
    return SCORERS[name](answer, refs, rel_tol)
