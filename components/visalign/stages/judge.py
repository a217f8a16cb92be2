"""The judge: a model behind an OpenAI-compatible endpoint that grades open-ended answers (MM-Vet,
LLaVA-Bench in-the-wild) and, optionally, reads answers the rules cannot (VLMEvalKit's LLM answer
extraction, visalign.stages.answer_matching).

The prompts and score parsing are VLMEvalKit's (vlmeval/dataset/utils/mmvet.py and llavabench.py at
commit e8e78f05; VLMEvalKit, Apache License 2.0, Copyright 2023 VLMEvalKit Authors), so the scores
compare with the numbers papers report through it:

- MM-Vet: the official few-shot grading prompt; the judge completes a 0.0-1.0 correctness score.
  An answer that is not a number in [0, 1] is asked again at temperature 0.5 * try, 5 tries in
  all, then scored 0.0 (and counted). Per capability (rec, ocr, know, gen, spat, math: a sample
  counts for each capability its category names), per category combination, and total. VLMEvalKit
  prints these x100; here they are 0-1 like every other metric of evaluate.
- LLaVA-Bench: the judge sees the image caption, the question, the reference answer (GPT-4's) as
  assistant 1 and the prediction as assistant 2, at temperature 0.2 with VLMEvalKit's system
  prompt, and writes "score1 score2" (1-10) on its first line. The relative score is
  mean(prediction) / mean(reference) per category (conv, detail, complex) and overall. A first line
  that is not two numbers is [-1, -1], kept in the means as VLMEvalKit keeps it, and counted.

Every judge call is cached by (judge model and URL, temperature, prompt) in a JSON-lines file: the
prompt holds the question, reference and prediction, so a re-run (or a resumed one) pays only for
what it has not asked yet, and a changed judge or prompt is asked anew. Answers that never came (an
outage) are not cached. Judge model, prompt version and temperatures are stored with the results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from visalign.stages.metrics import safe_key

log = logging.getLogger(__name__)

PROMPT_VERSION = "vlmevalkit-e8e78f05"
ENV_PREFIX = "VISALIGN_JUDGE"  # VISALIGN_JUDGE_URL / _MODEL / _API_KEY (on a cluster: the judge Secret)
MMVET_TRIES = 5
MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
LLAVA_BENCH_TEMPERATURE = 0.2
LLAVA_BENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

MMVET_PROMPT = """
Compare the ground truth and prediction from AI models, to give a correctness score for the prediction.
<AND> in the ground truth means it is totally right
only when all elements in the ground truth are present in the prediction,
and <OR> means it is totally right when any one element in the ground truth is present in the prediction.
The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right).
Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries
Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes,
while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues
because the names of these countries do not accurately represent their landscapes. |
The meme talks about Iceland and Greenland. It's pointing out that despite their names,
Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries
Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes,
while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues
because the names of these countries do not accurately represent their landscapes. |
The meme is using humor to point out the misleading nature of Iceland's and Greenland's names.
Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow.
The text 'This is why I have trust issues' is a playful way to suggest
that these contradictions can lead to distrust or confusion.
The humor in this meme is derived from the unexpected contrast between the names of the countries
and their actual physical characteristics. | 1.0
"""

LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
    "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first "
    "output a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. "
    "The two scores are separated by a space.\nIn the subsequent line, please provide a comprehensive "
    "explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the "
    "responses were presented does not affect your judgment.")


def mmvet_prompt(question: str, answer: str, prediction: str) -> str:
    """VLMEvalKit's build_mmvet_gpt4_prompt."""
    gt = str(answer).replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + " | ".join([question, gt, str(prediction), ""])


def mmvet_read(output: str) -> float | None:
    """A score in [0, 1], or None (MMVet_auxeval's float_cvt and range check)."""
    try:
        score = float(output)
    except (TypeError, ValueError):
        return None
    return score if 0 <= score <= 1 else None


def llava_bench_prompt(caption: str, question: str, reference: str, prediction: str) -> str:
    """VLMEvalKit's llavabench.build_prompt (the same rule for conv, detail and complex)."""
    role = "Assistant"
    return (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{prediction}\n\n[End of {role} 2]\n\n[System]\n{LLAVA_BENCH_RULE}\n\n")


def llava_bench_read(review: str) -> tuple[float, float]:
    """(reference score, prediction score) from the first line; (-1, -1) when unreadable (parse_score)."""
    try:
        parts = review.split("\n")[0].replace(",", " ").split(" ")
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except (AttributeError, ValueError):
        pass
    return -1.0, -1.0


# ---- the judge and its cache -------------------------------------------------------------------

class Asker(Protocol):
    """What answers the judge prompts: visalign.infra.endpoint.ChatEndpoint (or a stand-in in tests)."""

    identity: dict[str, str]

    def ask_many(self, requests: Sequence[Any]) -> list[Any]: ...


class JudgeCache:
    """Judge answers by key, in a JSON-lines file (local path or s3:// URI) written after every chunk
    of answers, so a killed or failed run keeps what it was given."""

    def __init__(self, uri: str | Path | None):
        from visalign.infra import store

        self.uri = str(uri) if uri else None
        self.answers: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.uri and store.exists(self.uri):
            for n, line in enumerate(store.read_text(self.uri).splitlines(), start=1):
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by a kill
                    log.warning("judge cache %s: line %d unreadable; it will be asked again", self.uri, n)

    @staticmethod
    def _lines(items: dict[str, str]) -> str:
        return "".join(json.dumps({"key": k, "answer": v}) + "\n" for k, v in items.items())

    def add(self, items: dict[str, str]) -> None:
        from visalign.infra import store

        if not items:
            return
        with self._lock:
            self.answers.update(items)
            if not self.uri:
                return
            if store.is_s3(self.uri):  # objects cannot be appended to: every answer, rewritten
                store.write_text(self.uri, self._lines(self.answers))
            else:
                path = Path(self.uri)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(self._lines(items))


class Judge:
    """Prompts in, answers out (None where the endpoint gave none), cached; counts calls and hits.

    The cache key is (judge model, temperature, system prompt, max_tokens, prompt, attempt): not the
    URL, so the same judge behind another address (a restarted server) reuses its answers; `attempt`
    keeps the retries of a deterministic judge (VLMEvalKit asks again at the same temperature) apart."""

    CHUNK = 64  # answers between cache writes: a kill loses at most this many calls' answers

    def __init__(self, asker: Asker, cache: JudgeCache, max_tokens: int = 2048):
        self.asker, self.cache, self.max_tokens = asker, cache, max_tokens
        self.identity = dict(asker.identity)
        self.stats: Counter[str] = Counter()

    def key(self, prompt: str, temperature: float, system: str | None, attempt: int = 0) -> str:
        blob = json.dumps([self.identity.get("model"), temperature, system, self.max_tokens, prompt, attempt])
        return hashlib.sha256(blob.encode()).hexdigest()

    def ask(self, prompts: Sequence[str], temperature: float = 0.0, system: str | None = None,
            attempt: int = 0) -> list[str | None]:
        from visalign.infra.endpoint import ChatRequest

        keys = [self.key(p, temperature, system, attempt) for p in prompts]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.cache.answers}.values())
        hits = len(prompts) - len(todo)
        self.stats.update({"cache_hits": hits} if hits else {})
        for start in range(0, len(todo), self.CHUNK):
            chunk = todo[start:start + self.CHUNK]
            answers = self.asker.ask_many([ChatRequest(prompt=prompts[i], temperature=temperature,
                                                       max_tokens=self.max_tokens, system=system) for i in chunk])
            got = {keys[i]: a for i, a in zip(chunk, answers, strict=True) if isinstance(a, str)}
            missing = len(chunk) - len(got)
            self.stats.update({"calls": len(chunk), **({"no_answer": missing} if missing else {})})
            self.cache.add(got)
        return [self.cache.answers.get(k) for k in keys]

    def asker_for_extraction(self) -> Callable[[str, float], str | None]:
        """answer_matching's ask(prompt, temperature): each repeat of a prompt is a new attempt."""
        tries: Counter[str] = Counter()

        def ask(prompt: str, temperature: float) -> str | None:
            tries[prompt] += 1
            return self.ask([prompt], temperature, attempt=tries[prompt] - 1)[0]

        return ask

    def provenance(self) -> dict[str, Any]:
        return {**self.identity, "prompt_version": PROMPT_VERSION, "mmvet_temperatures":
                [0.5 * i for i in range(MMVET_TRIES)], "llava_bench_temperature": LLAVA_BENCH_TEMPERATURE,
                "max_tokens": self.max_tokens}


# ---- scoring -----------------------------------------------------------------------------------

def mmvet_scores(judge: Judge, rows: Sequence[tuple[str, str, str]], counts: Counter[str]) -> list[float]:
    """A 0-1 score per (question, answer, prediction): try t at temperature 0.5 * t, then 0.0."""
    prompts = [mmvet_prompt(q, a, p) for q, a, p in rows]
    scores: list[float | None] = [None] * len(rows)
    answered = [False] * len(rows)  # did the judge answer at all (if only garbage)?
    for attempt in range(MMVET_TRIES):
        todo = [i for i, s in enumerate(scores) if s is None]
        if not todo:
            break
        for i, out in zip(todo, judge.ask([prompts[i] for i in todo], temperature=0.5 * attempt), strict=True):
            answered[i] = answered[i] or out is not None
            scores[i] = mmvet_read(out) if out is not None else None
    counts["judge_failed"] += sum(s is None for s in scores)
    counts["judge_unanswered"] += sum(not a for a in answered)  # an outage, not a bad grade
    return [0.0 if s is None else s for s in scores]


def mmvet_metrics(categories: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """MMVet_acc: per capability, per category combination ('rec_ocr'), overall; 0-1.

    One deliberate difference: VLMEvalKit keeps the capability and the combination sums in one dict,
    so a sample whose category is exactly one capability ("rec") counts twice in that capability's
    score; MM-Vet's own evaluator counts it once, as here. The total is the same either way.
    """
    cap_total: dict[str, float] = defaultdict(float)
    cap_n: dict[str, int] = defaultdict(int)
    combo_total: dict[str, float] = defaultdict(float)
    combo_n: dict[str, int] = defaultdict(int)
    for cat, score in zip(categories, scores, strict=True):
        for capability in MMVET_CAPABILITIES:
            if capability in cat:
                cap_n[capability] += 1
                cap_total[capability] += score
        combo = cat.replace(",", "_")
        combo_n[combo] += 1
        combo_total[combo] += score
    out = {"score": sum(scores) / len(scores)}
    out.update({f"capability/{c}": cap_total[c] / cap_n[c] for c in MMVET_CAPABILITIES if cap_n[c]})
    out.update({f"category/{safe_key(c)}": combo_total[c] / combo_n[c] for c in sorted(combo_n) if c})
    return out


def llava_bench_scores(judge: Judge, rows: Sequence[tuple[str, str, str, str]],
                       counts: Counter[str]) -> list[tuple[float, float]]:
    """(reference, prediction) 1-10 scores per (caption, question, reference, prediction)."""
    prompts = [llava_bench_prompt(*r) for r in rows]
    out = []
    for review in judge.ask(prompts, temperature=LLAVA_BENCH_TEMPERATURE, system=LLAVA_BENCH_SYSTEM):
        pair = llava_bench_read(review) if review is not None else (-1.0, -1.0)
        counts["judge_failed"] += pair == (-1.0, -1.0)
        counts["judge_unanswered"] += review is None
        out.append(pair)
    return out


def llava_bench_metrics(categories: Sequence[str], pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """LLaVABench_score: relative score (prediction / reference) overall and per category; 0-1."""
    def block(sel: list[tuple[float, float]]) -> dict[str, float]:
        ref = sum(p[0] for p in sel) / len(sel)
        pred = sum(p[1] for p in sel) / len(sel)
        return {"relative_score": pred / ref if ref else 0.0, "model_score": pred / 10, "reference_score": ref / 10}

    out = block(list(pairs))
    for cat in sorted(set(categories) - {""}):
        for k, v in block([p for c, p in zip(categories, pairs, strict=True) if c == cat]).items():
            out[f"{safe_key(cat)}/{k}"] = v
    return out
