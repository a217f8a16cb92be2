"""visalign.stages.answer_matching against VLMEvalKit's own results (data/vlmevalkit_matching.json, made by
data/make_vlmevalkit_matching.py from VLMEvalKit's code), and its judge fallback and CircularEval rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visalign.stages import answer_matching as am

CORPUS = json.loads((Path(__file__).parent / "data" / "vlmevalkit_matching.json").read_text())
CASES = CORPUS["cases"]
FNS = {"can_infer_option", "can_infer_text", "can_infer", "yorn_extraction", "process_punctuation"}


def _case_id(case: dict) -> str:
    verbose = "-verbose" if case["verbose"] else ""
    options = f"[{''.join(case['choices'])}]" if case["choices"] is not None else ""
    return f"{case['fn']}{verbose}{options}:{json.dumps(case['answer'], ensure_ascii=False)[:48]}"


def _run(case: dict):
    fn, answer, choices = case["fn"], case["answer"], case["choices"]
    if fn == "can_infer_option":
        return am.can_infer_option(answer, choices, verbose=case["verbose"])
    if fn == "can_infer":
        return am.can_infer(answer, choices, verbose=case["verbose"])
    if fn == "can_infer_text":
        return am.can_infer_text(answer, choices)
    return getattr(am, fn)(answer)


def test_corpus_is_large_and_covers_every_function():
    assert CORPUS["vlmevalkit_commit"] == "e8e78f05f3080fe28154f2130321f17951c3be94"
    assert len(CASES) >= 60
    assert {c["fn"] for c in CASES} == FNS
    assert {p["fn"] for p in CORPUS["prompts"]} == {"choice_match_prompt", "yorn_match_prompt"}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_port_gives_vlmevalkits_result(case):
    assert _run(case) == case["expected"]


@pytest.mark.parametrize("prompt", CORPUS["prompts"], ids=lambda p: p["fn"])
def test_prompts_are_vlmevalkits(prompt):
    if prompt["fn"] == "yorn_match_prompt":
        assert am.yorn_match_prompt(prompt["question"], prompt["prediction"]) == prompt["expected"]
    else:
        assert am.option_string(prompt["choices"]) == prompt["option_string"]
        assert am.choice_match_prompt(prompt["question"], prompt["choices"], prompt["prediction"]) == prompt["expected"]


def test_option_string_lists_present_options():
    assert am.option_string({"A": "cat", "B": None, "C": float("nan"), "D": "dog"}) == (
        "There are several options: \nA. cat\nD. dog\n")


def test_choice_prompt_text():
    prompt = am.choice_match_prompt("What is shown", {"A": "cat", "B": "dog"}, "a kitten")
    assert prompt.startswith("You are an AI assistant who will help me to match an answer with several options "
                             "of a single-choice question. ")
    assert prompt.endswith("Example 3: \nQuestion: What is shown?\nOptions: There are several options: \n"
                           "A. cat\nB. dog\n\nAnswer: a kitten\nYour output: ")


def test_yorn_prompt_text():
    assert am.yorn_match_prompt("Is there a dog", "I see one.") == (
        "You are an AI assistant who will help me to match an answer with two options of a question. "
        "The options are only Yes / No. You are provided with a question and an answer, and you need to find "
        "which option (Yes / No) is most similar to the answer. If the meaning of all options are significantly "
        "different from the answer, output Unknown. Your should output a single word among the following 3 "
        "choices: Yes, No, Unknown.\nExample 1: \nQuestion: Is the word in this image 'Hello'?\nAnswer: The word "
        "in this image is 'Hello'.\nYour output: Yes\nExample 2: \nQuestion: Is the word in this image 'Hello'?\n"
        "Answer: The word in this image is not 'Hello'.\nYour output: No\nExample 3: \n"
        "Question: Is there a dog?\nAnswer: I see one.\nYour output: ")


class Scripted:
    """A scripted stand-in for a judge: answers from a list, recording (prompt, temperature) per call."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, float]] = []

    def __call__(self, prompt: str, temperature: float) -> str | None:
        self.calls.append((prompt, temperature))
        return self.answers.pop(0)


CHOICES = {"A": "cat", "B": "dog", "C": "bird"}


def test_choice_judge_not_asked_when_the_rules_suffice():
    ask = Scripted()
    assert am.choice_with_judge("What animal", CHOICES, "(B)", ask) == ("B", "(B)")
    assert am.choice_with_judge("What animal", CHOICES, "a dog", ask) == ("B", "a dog")
    assert ask.calls == []


def test_choice_judge_retries_at_temperature_zero():
    ask = Scripted("I am not sure", None, "Failed to obtain answer via API", "C")
    assert am.choice_with_judge("What animal", CHOICES, "a parrot, I think", ask, retries=4) == ("C", "C")
    prompt = am.choice_match_prompt("What animal", CHOICES, "a parrot, I think")
    assert ask.calls == [(prompt, 0.0)] * 4


def test_choice_judge_gives_none_after_all_retries():
    ask = Scripted("hmm", None, "no idea at all, sorry")
    opt, log = am.choice_with_judge("What animal", CHOICES, "a parrot, I think", ask)
    assert opt is None and "3 judge tries" in log and len(ask.calls) == 3


def test_choice_judge_refusal_is_z():
    ask = Scripted("Z")
    assert am.choice_with_judge("What animal", CHOICES, "a parrot, I think", ask) == (am.REFUSAL, "Z")


def test_yorn_judge_not_asked_when_the_rule_suffices():
    ask = Scripted()
    assert am.yorn_with_judge("Is there a dog", "Yes, there is.", ask) == "Yes"
    assert ask.calls == []


def test_yorn_judge_temperatures_and_first_answer_wins():
    ask = Scripted("Unknown", None, "No", "Yes")
    assert am.yorn_with_judge("Is there a dog", "There might be one", ask) == "No"
    prompt = am.yorn_match_prompt("Is there a dog", "There might be one")
    assert ask.calls == [(prompt, 0.0), (prompt, 0.5), (prompt, 1.0)]


def test_yorn_judge_unknown_after_all_retries():
    ask = Scripted("Unknown", None, "yes and no", "maybe", "Unknown")
    assert am.yorn_with_judge("Is there a dog", "There might be one", ask) == am.UNKNOWN
    assert [t for _, t in ask.calls] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_circular_group():
    assert am.circular_group(17) == 17 and am.circular_group(3_000_017) == 17


def test_circular_hits():
    rows = [
        (1, "A", "A"), (1_000_001, "C", "C"), (2_000_001, "B", "B"),  # all right
        (2, "A", "A"), (1_000_002, "D", "C"),  # one wrong
        (3, "B", "B"), (1_000_003, None, "A"),  # one unextracted
        (1_000_004, "A", "A"), (2_000_004, "B", "B"),  # no main row: ignored
        (5, "Z", "Z"),  # a group of one
    ]
    assert am.circular_hits(rows) == {1: True, 2: False, 3: False, 5: True}


def test_can_infer_text_leaves_its_argument_alone():
    choices = {"A": "Red", "B": "Blue"}
    assert am.can_infer_text("red", choices) == "A"
    assert am.can_infer("BLUE", choices) == "B"
    assert choices == {"A": "Red", "B": "Blue"}
