"""Regenerate vlmevalkit_matching.json: VLMEvalKit's own answer-extraction results for a corpus of cases.

A maintainer's tool, not run by the tests (it needs a VLMEvalKit checkout). The expected values come
from running VLMEvalKit's code, never visalign's port (visalign.stages.answer_matching), which
tests/unit/stages/test_answer_matching.py then checks against every case. Run it from the repository
root with a VLMEvalKit work tree or git directory (read with `git show`, no work tree needed):

    VLMEVALKIT_REPO=/path/to/VLMEvalKit [VLMEVALKIT_REV=HEAD] \\
        .venv/bin/python tests/unit/stages/data/make_vlmevalkit_matching.py

It loads vlmeval/utils/matching_util.py whole (its `vlmeval.smp.log` import stubbed with the standard
logging module), and YOrN_Extraction (vlmeval/dataset/utils/yorn.py), process_punctuation
(vlmeval/smp/misc.py), build_option_str (vlmeval/smp/vlm.py), build_prompt (multiple_choice.py) and
YOrN_match_prompt (yorn.py) as single functions cut out of their modules, which import pandas, numpy
and much of vlmeval. VLMEvalKit's VERBOSE environment variable is set per case for the "A as an
article" rule, its False ("nothing found") is written as null, and each call gets its own copy of the
choices (can_infer_text lowercases them in place).

VLMEvalKit, Apache License 2.0, Copyright 2023 VLMEvalKit Authors.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

OUT = Path(__file__).with_name("vlmevalkit_matching.json")

ABCD = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
ABC = {"A": "cat", "B": "dog", "C": "bird"}
ABCDEF = {"A": "one", "B": "two", "C": "three", "D": "four", "E": "five", "F": "six"}
LONG = {"A": "a teddy bear", "B": "a rabbit", "C": "a cat", "D": "a dog"}

# (fn, answer, choices, verbose)
OPTION_CASES = [
    # lone letters and their punctuation
    ("can_infer_option", "A", ABCD, False),
    ("can_infer_option", "A", ABCD, True),  # one word: the article rule needs more than three
    ("can_infer_option", "B", ABCD, False),
    ("can_infer_option", "(B)", ABCD, False),
    ("can_infer_option", "B.", ABCD, False),
    ("can_infer_option", "B)", ABCD, False),
    ("can_infer_option", "[C]", ABCD, False),
    ("can_infer_option", "{D}", ABCD, False),
    ("can_infer_option", "#B", ABCD, False),
    ("can_infer_option", "**C**", ABCD, False),
    ("can_infer_option", "B:", ABCD, False),
    ("can_infer_option", "B!", ABCD, False),
    ("can_infer_option", "B-", ABCD, False),  # '-' is no split char: "B-" is no letter
    ("can_infer_option", "B/C", ABCD, False),
    ("can_infer_option", "Answer: B", ABCD, False),
    ("can_infer_option", "Answer: B", ABCD, True),
    ("can_infer_option", "The answer: B", ABCD, False),
    ("can_infer_option", "(B) blue", ABCD, False),
    # "The answer is A.": one letter, last word; verbose takes it for the article
    ("can_infer_option", "The answer is A.", ABCD, False),
    ("can_infer_option", "The answer is A.", ABCD, True),
    ("can_infer_option", "The answer is B.", ABCD, True),
    ("can_infer_option", "A dog is in the picture", ABCD, False),
    ("can_infer_option", "A dog is in the picture", ABCD, True),
    ("can_infer_option", "I choose A", ABCD, True),  # three words: not "more than three"
    ("can_infer_option", "I choose A now", ABCD, True),
    # the position rule: the letter among the last four words
    ("can_infer_option", "B is correct here", ABCD, False),
    ("can_infer_option", "B is the correct one", ABCD, False),
    ("can_infer_option", "B, because the picture shows a blue car", ABCD, False),
    ("can_infer_option", "The answer is B, because the picture shows a blue car", ABCD, False),
    ("can_infer_option", "The answer is B because the picture shows a blue car", ABCD, False),
    ("can_infer_option", "Looking at the image closely I would say C", ABCD, False),
    ("can_infer_option", "Option C is what I would pick for this one", ABCD, False),
    # two or more letters
    ("can_infer_option", "A or B", ABCD, False),
    ("can_infer_option", "A B C D", ABCD, False),
    ("can_infer_option", "Not A, the answer is B", ABCD, False),
    ("can_infer_option", "The correct answer is **B**, not C", ABCD, False),
    ("can_infer_option", "correct answer is D", ABCD, False),
    ("can_infer_option", "The correct answer is D", ABC, False),  # D not an option
    # the regex fallback (count != 1): case-insensitive, no word boundary
    ("can_infer_option", "answer is b", ABCD, False),
    ("can_infer_option", "the answer is c", ABCD, False),
    ("can_infer_option", "The answer is definitely the red one", ABCD, False),
    ("can_infer_option", "The answer is definitely the red one", ABC, False),
    ("can_infer_option", "The answer is because A and B are both wrong", ABCD, False),
    ("can_infer_option", "The answer is ** B", ABCD, False),
    ("can_infer_option", "The answer is **B**. Here's why: the sky is blue in the picture", ABCD, False),
    ("can_infer_option", "The answer isB", ABCD, False),
    # lowercase letters are not letters
    ("can_infer_option", "b", ABCD, False),
    ("can_infer_option", "(c)", ABCD, False),
    # Z, the refusal
    ("can_infer_option", "Z", ABCD, False),
    ("can_infer_option", "Z.", ABCD, False),
    ("can_infer_option", "z", ABCD, False),
    ("can_infer_option", "None of the above, Z", ABCD, False),
    ("can_infer_option", "Z and A", ABCD, False),
    ("can_infer_option", "Z Z", ABCD, False),
    ("can_infer_option", "", ABCD, False),
    ("can_infer_option", "   ", ABCD, False),
    ("can_infer_option", "I cannot tell from the image", ABCD, False),
    ("can_infer_option", "Sorry, I can't help with images of people yet.", ABCD, False),
    ("can_infer_option", "I can't process this file.", ABCD, False),
    ("can_infer_option", "I'm sorry, but without the image provided, B", ABCD, False),
    ("can_infer_option", "I\u2019m sorry, but without the image provided, B", ABCD, False),
    ("can_infer_option", "Cannot determine the answer", ABCD, False),
    ("can_infer_option", "cannot determine the answer", ABCD, False),
    ("can_infer_option", "Failed to obtain answer via API", ABCD, False),
    ("can_infer_option", "Failed to obtain answer via API. A", ABCD, False),
    # letters beyond D: the count rule knows them, the regex does not
    ("can_infer_option", "E", ABCDEF, False),
    ("can_infer_option", "(F)", ABCDEF, False),
    ("can_infer_option", "The answer is E", ABCDEF, False),
    ("can_infer_option", "The answer is E, since the picture shows five birds on the wire", ABCDEF, False),
    ("can_infer_option", "The answer is B, since the picture shows two birds on the wire", ABCDEF, False),
    ("can_infer_option", "E", ABCD, False),
    ("can_infer_option", "A", {"B": "x", "C": "y"}, False),
    # a list of letters instead of a dict
    ("can_infer_option", "C", ["A", "B", "C"], False),
    ("can_infer_option", "The answer is D", ["A", "B", "C"], False),
]

TEXT_CASES = [
    ("can_infer_text", "red", ABCD, False),
    ("can_infer_text", "RED", ABCD, False),
    ("can_infer_text", "It is red", ABCD, False),
    ("can_infer_text", "blue.", ABCD, False),
    ("can_infer_text", "red and blue", ABCD, False),  # two option texts
    ("can_infer_text", "The colour of the car in the image is red", ABCD, False),  # over the length limit
    ("can_infer_text", "it's red ok yo", {"A": "red", "B": "blue"}, False),  # exactly 2 * 7 characters
    ("can_infer_text", "it's red ok you", {"A": "red", "B": "blue"}, False),  # one over
    ("can_infer_text", "red", {"A": "red", "B": "reddish"}, False),
    ("can_infer_text", "reddish", {"A": "red", "B": "reddish"}, False),  # "red" in "reddish"
    ("can_infer_text", "bored", {"A": "red", "B": "blue"}, False),  # substring inside a word
    ("can_infer_text", "3", {"A": "3", "B": "13"}, False),
    ("can_infer_text", "13", {"A": "3", "B": "13"}, False),
    ("can_infer_text", "12", {"A": 12, "B": 5}, False),  # non-string option texts are str()-ed
    ("can_infer_text", "2.0", {"A": 2.0, "B": 3.0}, False),
    ("can_infer_text", "red car", {"A": "Red Car", "B": "Blue Car"}, False),
    ("can_infer_text", "", ABCD, False),
    ("can_infer_text", "dog", {"A": "", "B": "cat"}, False),  # an empty option text is in every answer
    ("can_infer_text", "cat", {"A": "", "B": "cat"}, False),
    ("can_infer_text", "a rabbit", LONG, False),
    ("can_infer_text", "a cat", LONG, False),  # "a cat" only: "a dog" not in it
    ("can_infer_text", "the cat", LONG, False),
    ("can_infer_text", "none", {"A": None, "B": "some"}, False),
]

INFER_CASES = [
    ("can_infer", "B", ABCD, False),
    ("can_infer", "blue", ABCD, False),
    ("can_infer", "Blue!", ABCD, False),
    ("can_infer", "(C) green", ABCD, False),
    ("can_infer", "b", {"A": "a", "B": "b"}, False),  # not a letter, but option B's text
    ("can_infer", "The answer is A.", ABCD, True),  # the article rule, then too long for the texts
    ("can_infer", "The answer is A.", LONG, True),
    ("can_infer", "A cat", LONG, True),
    ("can_infer", "A teddy bear is shown", LONG, True),
    ("can_infer", "A teddy bear is shown", LONG, False),
    ("can_infer", "Failed to obtain answer via API", {"A": "answer via API", "B": "something else"}, False),
    ("can_infer", "Cannot determine the answer", ABCD, False),
    ("can_infer", "", ABCD, False),
    ("can_infer", 3, {"A": "3", "B": "4"}, False),  # str(answer) first
    ("can_infer", 2.5, {"A": "2.5", "B": "3.5"}, False),
    ("can_infer", None, {"A": "none", "B": "some"}, False),
    ("can_infer", "red or blue", ABCD, False),
    ("can_infer", "B is the correct one", {"A": "bear", "B": "rabbit"}, False),
    ("can_infer", "b is the correct one", {"A": "bear", "B": "b is the correct one"}, False),
    ("can_infer", "z", {"A": "x", "B": "y"}, False),
]

YORN_CASES = [
    ("yorn_extraction", "Yes", None, False),
    ("yorn_extraction", "Yes.", None, False),
    ("yorn_extraction", "yes", None, False),
    ("yorn_extraction", "No", None, False),
    ("yorn_extraction", "NO!", None, False),
    ("yorn_extraction", "No, there is no dog.", None, False),
    ("yorn_extraction", "yes, no", None, False),
    ("yorn_extraction", "Yes and no", None, False),
    ("yorn_extraction", "", None, False),
    ("yorn_extraction", "Nope", None, False),
    ("yorn_extraction", "I don't know", None, False),
    ("yorn_extraction", "not", None, False),
    ("yorn_extraction", "The answer is yes.", None, False),
    ("yorn_extraction", "Yes, it is not red.", None, False),
    ("yorn_extraction", "yes/no", None, False),
    ("yorn_extraction", "yes-no", None, False),
    ("yorn_extraction", "yes / no", None, False),
    ("yorn_extraction", "Yes,I think so", None, False),
    ("yorn_extraction", "yes,no", None, False),
    ("yorn_extraction", "Yes, 3.5 meters", None, False),
    ("yorn_extraction", "No. 3.5", None, False),
    ("yorn_extraction", "no.yes", None, False),
    ("yorn_extraction", "yes,sir", None, False),
    ("yorn_extraction", "1,000 yes,sir", None, False),  # a digit comma: every mark deleted, not spaced
    ("yorn_extraction", "1,000 cats, no", None, False),
    ("yorn_extraction", "(yes)", None, False),
    ("yorn_extraction", "\"No\"", None, False),
    ("yorn_extraction", "Yes!!!", None, False),
    ("yorn_extraction", "No...", None, False),
    ("yorn_extraction", "No" + "." * 40, None, False),  # only the first 32 periods go
    ("yorn_extraction", "Yes\nNo", None, False),
    ("yorn_extraction", "YES", None, False),
    ("yorn_extraction", "yes's", None, False),
    ("yorn_extraction", "Unknown", None, False),
]

PUNCT_CASES = [
    ("process_punctuation", "yes, no", None, False),
    ("process_punctuation", "yes,no", None, False),
    ("process_punctuation", "a,b c;d", None, False),
    ("process_punctuation", "a, b;c", None, False),
    ("process_punctuation", "1,000 a;b", None, False),
    ("process_punctuation", "3.14 is pi.", None, False),
    ("process_punctuation", "a.b", None, False),
    ("process_punctuation", "3. and .5", None, False),
    ("process_punctuation", "a." * 35, None, False),
    ("process_punctuation", "(x)=y+z", None, False),
    ("process_punctuation", "(x) = y+z", None, False),
    ("process_punctuation", "path\\to_file-name", None, False),
    ("process_punctuation", "<a@b>`c`", None, False),
    ("process_punctuation", "what? why!", None, False),
    ("process_punctuation", "it's 'quoted'", None, False),
    ("process_punctuation", "", None, False),
]

CASES = OPTION_CASES + TEXT_CASES + INFER_CASES + YORN_CASES + PUNCT_CASES

PROMPTS = [
    ("What is the main object in image", {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"},
     "a cute teddy bear"),
    ("Which colour is the car", {"A": "red", "B": None, "C": "green"}, "It's kind of greenish"),
    ("Is the word in this image 'Hello'", None, "The word is not 'Hello'."),
]


class _Source:
    """VLMEvalKit's files, from a work tree or (no work tree) a git directory at a revision."""

    def __init__(self, repo: Path, rev: str) -> None:
        self.repo, self.rev = repo, rev
        self.tree = (repo / "vlmeval").is_dir()

    def commit(self) -> str:
        try:
            return subprocess.run(["git", "-C", str(self.repo), "rev-parse", self.rev], check=True,
                                  capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown (not a git checkout)"

    def read(self, path: str) -> str:
        if self.tree:
            return (self.repo / path).read_text()
        return subprocess.run(["git", "-C", str(self.repo), "show", f"{self.rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout


def _function(source: str, name: str) -> str:
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    raise LookupError(name)


def load_vlmevalkit(src: _Source) -> dict:
    """VLMEvalKit's functions, run from its own source."""
    stubs = {"vlmeval": types.ModuleType("vlmeval"), "vlmeval.smp": types.ModuleType("vlmeval.smp"),
             "vlmeval.smp.log": types.ModuleType("vlmeval.smp.log")}
    stubs["vlmeval.smp.log"].get_logger = logging.getLogger
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        matching: dict = {"__name__": "vlmeval.utils.matching_util"}
        path = "vlmeval/utils/matching_util.py"
        exec(compile(src.read(path), path, "exec"), matching)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v

    pandas_stub = types.SimpleNamespace(isna=lambda x: x is None or x != x)  # pd.isna on a scalar
    ns: dict = {"pd": pandas_stub}
    for path, name in [("vlmeval/smp/misc.py", "process_punctuation"),
                       ("vlmeval/dataset/utils/yorn.py", "YOrN_Extraction"),
                       ("vlmeval/dataset/utils/yorn.py", "YOrN_match_prompt"),
                       ("vlmeval/smp/vlm.py", "build_option_str"),
                       ("vlmeval/dataset/utils/multiple_choice.py", "build_prompt")]:
        exec(compile(_function(src.read(path), name), path, "exec"), ns)
    return {**{k: matching[k] for k in ("can_infer_option", "can_infer_text", "can_infer")}, **ns}


def run_case(fns: dict, fn: str, answer, choices, verbose: bool):
    if verbose:
        os.environ["VERBOSE"] = "1"
    else:
        os.environ.pop("VERBOSE", None)
    if fn == "yorn_extraction":
        result = fns["YOrN_Extraction"](answer)
    elif fn == "process_punctuation":
        result = fns["process_punctuation"](answer)
    else:
        result = fns[fn](answer, copy.deepcopy(choices))
    return None if result is False else result


def main() -> None:
    repo = os.environ.get("VLMEVALKIT_REPO")
    if not repo:
        sys.exit("set VLMEVALKIT_REPO to a VLMEvalKit work tree or git directory (see the docstring)")
    src = _Source(Path(repo), os.environ.get("VLMEVALKIT_REV", "HEAD"))
    fns = load_vlmevalkit(src)
    verbose_before = os.environ.get("VERBOSE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # process_punctuation's positional count warns on Python 3.13
        cases = [{"fn": fn, "answer": answer, "choices": choices, "verbose": verbose,
                  "expected": run_case(fns, fn, answer, choices, verbose)}
                 for fn, answer, choices, verbose in CASES]
    if verbose_before is None:
        os.environ.pop("VERBOSE", None)
    else:
        os.environ["VERBOSE"] = verbose_before
    prompts = []
    for question, choices, prediction in PROMPTS:
        if choices is None:
            prompts.append({"fn": "yorn_match_prompt", "question": question, "prediction": prediction,
                            "expected": fns["YOrN_match_prompt"]({"question": question, "prediction": prediction})})
        else:
            options = fns["build_option_str"](choices)
            prompts.append({"fn": "choice_match_prompt", "question": question, "choices": choices,
                            "prediction": prediction, "option_string": options,
                            "expected": fns["build_prompt"](question, options, prediction)})
    doc = {"source": "VLMEvalKit (https://github.com/open-compass/VLMEvalKit), Apache License 2.0, "
                     "Copyright 2023 VLMEvalKit Authors; generated by make_vlmevalkit_matching.py",
           "vlmevalkit_commit": src.commit(), "cases": cases, "prompts": prompts}
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases, {len(prompts)} prompts -> {OUT}")


if __name__ == "__main__":
    main()
