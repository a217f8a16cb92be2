"""VLMEvalKit's rule-based answer extraction, its LLM-judge fallback and MMBench's CircularEval rule.

A faithful, dependency-free port of VLMEvalKit at commit e8e78f05f3080fe28154f2130321f17951c3be94, so
that an extracted option (or Yes/No) is the one VLMEvalKit would extract and scores compare with the
numbers papers report through it. Each function comes from:

- vlmeval/utils/matching_util.py: can_infer_option, can_infer_text, can_infer
- vlmeval/smp/misc.py: process_punctuation
- vlmeval/dataset/utils/yorn.py: YOrN_Extraction (yorn_extraction), YOrN_match_prompt
  (yorn_match_prompt), YOrN_auxeval (yorn_with_judge)
- vlmeval/smp/vlm.py: build_option_str (option_string)
- vlmeval/dataset/utils/multiple_choice.py: build_prompt (choice_match_prompt), extract_answer_from_item
  (choice_with_judge), prefetch_circular_group / eval_circular_group / mcq_circular_eval
  (circular_group, circular_hits)

Its quirks are kept on purpose (tests/unit/stages/data/vlmevalkit_matching.json holds VLMEvalKit's own
results, and the tests check this port against every one). The differences are of interface only:
"nothing found" is None rather than False, the VERBOSE environment variable is a `verbose` argument,
the caller's choices are never mutated, and the judge is an `ask(prompt, temperature)` callable. The
one deliberate change of behaviour: choice_with_judge returns None where VLMEvalKit picks a random option.
Only the English matching prompt is ported (not the Chinese, BLINK, WeMath or LEGO variants).

VLMEvalKit, Apache License 2.0, Copyright 2023 VLMEvalKit Authors.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence

REFUSAL = "Z"  # VLMEvalKit's "cannot answer / refused" option
UNKNOWN = "Unknown"  # its yes/no refusal

API_FAILURE = "Failed to obtain answer via API"  # what VLMEvalKit's API wrappers answer when a call failed

# Matches verbose chain-of-thought answers such as "The correct answer is **B**. Here's why: ...".
# Case-insensitive and without a word boundary: "the answer is definitely ..." reads as D. Only A-D.
_VERBOSE_ANSWER_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")

_REJECT_TO_ANSWER = (
    "Sorry, I can't help with images of people yet.", "I can't process this file.",
    "I'm sorry, but without the image provided", "Cannot determine the answer",
)
_SPLIT_CHARS = ".()[],:;!*#{}"

_PUNCT = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")


def process_punctuation(text: str) -> str:
    """VLMEvalKit's (from the VQA evaluation code), quirks included.

    A punctuation mark is deleted when it stands next to a space anywhere in the text, or when the text
    has a comma between digits anywhere (then every mark is deleted); otherwise it becomes a space.
    Periods not touching a digit are deleted, but only the first 32: VLMEvalKit passes re.UNICODE (32)
    where `sub` takes its count.
    """
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def can_infer_option(answer: str, choices: Sequence[str] | Mapping[str, str], verbose: bool = False) -> str | None:
    """The option letter an answer names by rule, "Z" for a refusal, None when it names none.

    `verbose` is VLMEvalKit's VERBOSE environment variable: with it, a lone capital "A" in an answer of
    more than three words is taken for the article and nothing is returned.
    """
    if API_FAILURE in answer:
        return None
    if any(err in answer for err in _REJECT_TO_ANSWER):
        return REFUSAL

    def count_choice(splits: list[str], options: Sequence[str] | Mapping[str, str] | set[str]) -> int:
        return sum(1 for c in options if c in splits)

    answer_mod = answer
    for c in _SPLIT_CHARS:
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)

    if count == 1:
        for ch in choices:
            if "A" in splits and len(splits) > 3 and verbose:
                return None  # "A might be a quantifier"
            # The letter must be among the last four words: "B is wrong because ..." names nothing.
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and count_choice(splits, {"Z", ""}) == 1:
        return REFUSAL

    match = _VERBOSE_ANSWER_RE.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The one option whose text the answer contains (case-insensitive substring), else None.

    An answer longer than twice the options' total text length is not read at all. VLMEvalKit lowercases
    the caller's dict in place; this reads a lowercased copy (same results, the argument left alone).
    """
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    lowered = {}
    for k, v in choices.items():
        if k not in string.ascii_uppercase:
            raise ValueError(f"option key {k!r} is not an uppercase letter")
        lowered[k] = str(v).lower()
    cands = [k for k, v in lowered.items() if v in answer]
    return cands[0] if len(cands) == 1 else None


def can_infer(answer: object, choices: Mapping[str, str], verbose: bool = False) -> str | None:
    """The option an answer names by letter, else by text (VLMEvalKit's prefetch), else None."""
    answer = str(answer)
    return can_infer_option(answer, choices, verbose) or can_infer_text(answer, choices)


def yorn_extraction(output: str) -> str:
    """ "Yes" / "No" when the answer has exactly one of the words yes, no (after punctuation), else "Unknown"."""
    words = process_punctuation(output.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return UNKNOWN


def option_string(choices: Mapping[str, str]) -> str:
    """The options as the matching prompt lists them; missing (None / NaN) options are left out."""
    s = "There are several options: \n"
    for c, content in choices.items():
        if not (content is None or (isinstance(content, float) and content != content)):
            s += f"{c}. {content}\n"
    return s


_CHOICE_TMPL = (
    'You are an AI assistant who will help me to match '
    'an answer with several options of a single-choice question. '
    'You are provided with a question, several options, and an answer, '
    'and you need to find which option is most similar to the answer. '
    'If the meaning of all options are significantly different from the answer, output Z. '
    'Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n'
    'Example 1: \n'
    'Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n'
    'Answer: a cute teddy bear\nYour output: A\n'
    'Example 2: \n'
    'Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n'
    'Answer: Spider\nYour output: Z\n'
    'Example 3: \n'
    'Question: {}?\nOptions: {}\nAnswer: {}\nYour output: '
)

_YORN_TMPL = (
    'You are an AI assistant who will help me to match an answer with two options of a question. '
    'The options are only Yes / No. '
    'You are provided with a question and an answer, '
    'and you need to find which option (Yes / No) is most similar to the answer. '
    'If the meaning of all options are significantly different from the answer, output Unknown. '
    'Your should output a single word among the following 3 choices: Yes, No, Unknown.\n'
    'Example 1: \n'
    "Question: Is the word in this image 'Hello'?\nAnswer: The word in this image is 'Hello'.\nYour output: Yes\n"
    'Example 2: \n'
    "Question: Is the word in this image 'Hello'?\n"
    "Answer: The word in this image is not 'Hello'.\nYour output: No\n"
    'Example 3: \n'
    'Question: {}?\nAnswer: {}\nYour output: '
)


def choice_match_prompt(question: str, choices: Mapping[str, str], prediction: str) -> str:
    """VLMEvalKit's English prompt asking a judge which option (or Z) a free-form answer means."""
    return _CHOICE_TMPL.format(question, option_string(choices), prediction)


def yorn_match_prompt(question: str, prediction: str) -> str:
    """VLMEvalKit's prompt asking a judge whether a free-form answer means Yes, No or Unknown."""
    return _YORN_TMPL.format(question, prediction)


def choice_with_judge(question: str, choices: Mapping[str, str], prediction: str,
                      ask: Callable[[str, float], str | None], retries: int = 3) -> tuple[str | None, str]:
    """(option letter, "Z" or None; a log): the rules first, then the judge (extract_answer_from_item).

    The judge is asked only when the rules find nothing, at temperature 0 (VLMEvalKit's generate
    default), up to `retries` times; each answer is read with can_infer, and an answer that never came
    (None, or VLMEvalKit's API-failure text) uses up a try. The one deliberate deviation from VLMEvalKit:
    after the last failed try it picks a random option (or Z), here the result is None, which the caller
    counts as unextractable, so that a score is reproducible rather than luck.
    """
    ret = can_infer(prediction, choices)
    if ret:
        return ret, prediction
    prompt = choice_match_prompt(question, choices, prediction)
    for _ in range(retries):
        ans = ask(prompt, 0.0)
        if ans is None or API_FAILURE in ans:
            continue
        ret = can_infer(ans, choices)
        if ret:
            return ret, ans
    return None, f"Failed to extract an option in {retries} judge tries; unextractable (VLMEvalKit: random)"


def yorn_with_judge(question: str, prediction: str, ask: Callable[[str, float], str | None],
                    retries: int = 5) -> str:
    """ "Yes" / "No" / "Unknown": the rule first, the judge only for "Unknown" (YOrN_auxeval).

    Try i (from 0) asks at temperature 0.5 * i; the first answer that extracts to Yes or No wins. An
    answer that never came (None) uses up a try.
    """
    ans = yorn_extraction(prediction)
    if ans != UNKNOWN:
        return ans
    prompt = yorn_match_prompt(question, prediction)
    for i in range(retries):
        out = ask(prompt, 0.5 * i)
        if out is None:
            continue
        ans = yorn_extraction(out)
        if ans != UNKNOWN:
            return ans
    return UNKNOWN


def circular_group(index: int) -> int:
    """The CircularEval group of a row: MMBench numbers a question's rotations index + k * 1e6."""
    return int(index % 1e6)


def circular_hits(rows: Sequence[tuple[int, str | None, str]]) -> dict[int, bool]:
    """Per circular group: True when every rotation was extracted as its gold letter (mcq_circular_eval).

    `rows` are (index, extracted letter or None, gold letter). A group counts only when its main row
    (index == group index) is among the rows: VLMEvalKit builds groups from the main rows only, so rows
    of a group without one are ignored. A None extraction is a miss, as an unmatched rotation is in
    VLMEvalKit once its judge (or the lack of one) has failed. Groups come in the order of their main rows.
    """
    groups: dict[int, bool] = {}
    for index, _, _ in rows:
        if circular_group(index) == index:
            groups[index] = True
    for index, extracted, gold in rows:
        g = circular_group(index)
        if g in groups and (extracted is None or extracted != gold):
            groups[g] = False
    return groups
