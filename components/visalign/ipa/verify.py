"""IPA's instruction-oriented verification: a verifier model judges a response against the
seed's reference answer on four binary criteria (METHODS.md section 4).

    entails     the response entails the reference answer
    complete    it misses no key detail of the reference
    consistent  it contradicts nothing (in the reference or the image)
    follows     it follows the question's instruction

A response is *verified* when every criterion in `VerifyParams.require` holds. The verifier is a
model behind a prompt, behind one interface (`Verifier.judge`: prompts in, raw answers out) with
two implementations:

- `LocalVerifier`: the policy itself, or any local Hugging Face model, through rollout's
  generation engine (the image goes with the prompt, so "consistent" can look at it);
- `EndpointVerifier`: any OpenAI-compatible chat endpoint (`POST {url}/chat/completions`) through
  the project's one endpoint client (visalign.infra.endpoint). URL, model and key come from the
  environment (on a cluster from the verifier Secret, see
  pipelines/settings.py), never from pipeline parameters. Timeouts, connection errors, truncated
  or undecodable bodies, 429 and 5xx answers are retried with exponential backoff; after the last
  try the sample is counted as unverified with status "error" and the run goes on. A circuit
  breaker stops calling an endpoint that gave no answer for `max_consecutive_errors` items in a
  row: the rest count as "error" (reason "skipped_after_outage") instead of each waiting out every
  retry (ipa_pairs then fails the step when errors exceed `max_error_share`).

The answer is parsed from a structured reply (`parse_verdict`): JSON, "key: yes/no" lines, or the
compact "yes yes no yes" (the criteria in order). An unparseable answer is asked again once with
`retry_suffix` appended; if that fails too it is counted as "unparseable" (unverified).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Why an item got no answer (Verdict.reason of an "error" verdict; counted per round by ipa_pairs).
from visalign.infra.endpoint import (  # noqa: F401 (NO_ANSWER.. re-exported: callers read them here)
    NO_ANSWER,
    RETRIES_EXHAUSTED,
    SKIPPED_AFTER_OUTAGE,
    ChatEndpoint,
    ChatRequest,
    EndpointConfig,
    NoAnswer,
    RetryPolicy,
)
from visalign.recipes import VerifyParams

log = logging.getLogger(__name__)

CRITERIA = ("entails", "complete", "consistent", "follows")
# Where the endpoint verifier finds its settings; a cluster fills them from a Secret.
ENV_PREFIX = "VISALIGN_VERIFIER"
ENV_URL, ENV_MODEL, ENV_KEY = f"{ENV_PREFIX}_URL", f"{ENV_PREFIX}_MODEL", f"{ENV_PREFIX}_API_KEY"
VERIFIED, REJECTED, UNPARSEABLE, ERROR = "verified", "rejected", "unparseable", "error"
_YES = {"yes", "true", "y", "1", "pass"}
_NO = {"no", "false", "n", "0", "fail"}


@dataclass
class Verdict:
    """A verifier's judgement of one response; kept with each pair as provenance."""

    status: str  # verified, rejected, unparseable or error
    criteria: dict[str, bool] | None = None
    reason: str = ""
    raw: str = ""
    attempts: int = 0

    @property
    def verified(self) -> bool:
        return self.status == VERIFIED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyItem:
    """One response to judge: the question, the seed's reference and the response text."""

    id: str
    question: str
    reference: str
    response: str
    images: list[Any] = field(default_factory=list)  # PIL images, for verifiers that look


def _bool(word: Any) -> bool | None:
    if isinstance(word, bool):
        return word
    w = str(word).strip().strip(".,;*\"'").lower()
    return True if w in _YES else False if w in _NO else None


def parse_verdict(text: str) -> tuple[dict[str, bool], str] | None:
    """(criteria, reason) from a verifier's answer; None when it does not state all four."""
    text = (text or "").strip()
    found: dict[str, bool] = {}
    reason = ""
    obj = re.search(r"\{.*\}", text, re.S)
    if obj:
        try:
            data = json.loads(obj.group(0))
            if isinstance(data, dict):
                found = {k: b for k in CRITERIA if k in data and (b := _bool(data[k])) is not None}
                reason = str(data.get("reason", ""))
        except json.JSONDecodeError:
            pass
    if len(found) < len(CRITERIA):
        for key in CRITERIA:
            m = re.search(rf"\b{key}\b[\s*]*[:=][\s*]*(\w+)", text, re.I)
            if m and (b := _bool(m.group(1))) is not None:
                found[key] = b
        m = re.search(r"\breason\b[\s*]*[:=][\s*]*(.+)", text, re.I)
        reason = reason or (m.group(1).strip() if m else "")
    if len(found) < len(CRITERIA):
        # compact form: the four verdicts in CRITERIA order, e.g. "yes yes no yes | reason"
        head, _, tail = text.partition("|")
        words = head.replace(",", " ").split()
        flags = [_bool(w) for w in words[:len(CRITERIA)]]
        if len(flags) == len(CRITERIA) and None not in flags:
            found = dict(zip(CRITERIA, flags, strict=True))
            reason = reason or tail.strip() or " ".join(words[len(CRITERIA):])
    if len(found) < len(CRITERIA):
        return None
    return {k: found[k] for k in CRITERIA}, reason


def render_prompt(template: str, item: VerifyItem) -> str:
    return template.format(question=item.question, reference=item.reference, response=item.response)


class Verifier(Protocol):
    """Prompts in, raw answers out (a NoAnswer, or None, where the verifier could not answer).

    `identity` says which model judges ({"backend", "model"}, never a key): kept with every pair."""

    name: str
    identity: dict[str, str]

    def judge(self, items: Sequence[VerifyItem], prompts: Sequence[str]) -> list[str | NoAnswer | None]: ...


class LocalVerifier:
    """The policy (or any local Hugging Face VLM) answering the verification prompt, greedily.

    Give the engine, or `load` to build it on first use: a round without candidates then never
    loads the verifier model."""

    name = "local"

    def __init__(self, engine: Any = None, model: str = "", load: Callable[[], Any] | None = None):
        if engine is None and load is None:
            raise ValueError("LocalVerifier: give an engine or a load() that builds one")
        self._engine, self._load = engine, load  # a rollout.GenerationEngine, or its builder
        self.identity = {"backend": self.name, "model": model}

    @property
    def engine(self) -> Any:
        if self._engine is None:
            assert self._load is not None
            self._engine = self._load()
        return self._engine

    def judge(self, items: Sequence[VerifyItem], prompts: Sequence[str]) -> list[str | NoAnswer | None]:
        from visalign.stages.rollout import GenerationRequest

        requests = [GenerationRequest(id=it.id, images=it.images, question=p) for it, p in zip(items, prompts,
                                                                                             strict=True)]
        return [r.text for r in self.engine.generate(requests)]


def _policy(params: VerifyParams) -> RetryPolicy:
    return RetryPolicy(timeout_s=params.endpoint_timeout_s, retries=params.endpoint_retries,
                       backoff_s=params.endpoint_backoff_s, backoff_factor=params.endpoint_backoff_factor,
                       backoff_max_s=params.endpoint_backoff_max_s, concurrency=params.endpoint_concurrency,
                       max_consecutive_errors=params.max_consecutive_errors)


class EndpointVerifier:
    """Any OpenAI-compatible chat endpoint through the shared client (visalign.infra.endpoint):
    retried with backoff, at most `endpoint_concurrency` requests in flight, never fatal."""

    name = "endpoint"

    def __init__(self, url: str, model: str, api_key: str | None, params: VerifyParams,
                 sleep: Callable[[float], None] = time.sleep):
        self.params = params
        self.endpoint = ChatEndpoint(EndpointConfig(url, model, api_key), _policy(params), name="verify",
                                     sleep=sleep)
        self.identity = self.endpoint.identity

    @property
    def stats(self) -> Counter[str]:
        return self.endpoint.stats

    @classmethod
    def from_env(cls, params: VerifyParams, env: dict[str, str] | None = None) -> EndpointVerifier:
        try:
            config = EndpointConfig.from_env(ENV_PREFIX, "verify.backend='endpoint'", env)
        except ValueError as e:
            raise ValueError(f"{e}; or use verify.backend='local'") from None
        return cls(config.url, config.model, config.api_key, params)

    def judge(self, items: Sequence[VerifyItem], prompts: Sequence[str]) -> list[str | NoAnswer | None]:
        send = self.params.endpoint_send_images
        return list(self.endpoint.ask_many([
            ChatRequest(prompt=p, images=it.images if send else [], max_tokens=self.params.max_new_tokens)
            for it, p in zip(items, prompts, strict=True)]))


def verify(items: Sequence[VerifyItem], verifier: Verifier, params: VerifyParams,
           counts: Counter[str] | None = None) -> list[Verdict]:
    """Judge every item; unparseable answers are asked again once. `counts` gets the tallies."""
    counts = Counter() if counts is None else counts
    if not items:  # nothing to ask (a lazily loaded local verifier stays unloaded)
        return []
    prompts = [render_prompt(params.prompt, it) for it in items]
    raws = verifier.judge(items, prompts)
    verdicts: list[Verdict | None] = [None] * len(items)
    again = []
    for i, raw in enumerate(raws):
        if not isinstance(raw, str):
            verdicts[i] = _no_answer(raw, "", 1)
        elif (parsed := parse_verdict(raw)) is not None:
            verdicts[i] = _decide(parsed, raw, 1, params)
        else:
            counts["unparseable_first_try"] += 1
            again.append(i)
    if again:  # one retry, with a reminder of the format
        retried = verifier.judge([items[i] for i in again], [prompts[i] + params.retry_suffix for i in again])
        for i, raw in zip(again, retried, strict=True):
            if not isinstance(raw, str):
                verdicts[i] = _no_answer(raw, str(raws[i]), 2)
            elif (parsed := parse_verdict(raw)) is None:
                verdicts[i] = Verdict(UNPARSEABLE, raw=raw, attempts=2)
            else:
                verdicts[i] = _decide(parsed, raw, 2, params)
    out = [v for v in verdicts if v is not None]
    counts.update(v.status for v in out)
    return out


def _no_answer(failure: NoAnswer | None, raw: str, attempts: int) -> Verdict:
    return Verdict(ERROR, reason=failure.reason if failure is not None else NO_ANSWER, raw=raw, attempts=attempts)


def _decide(parsed: tuple[dict[str, bool], str], raw: str, attempts: int, params: VerifyParams) -> Verdict:
    criteria, reason = parsed
    ok = all(criteria[k] for k in params.require)
    return Verdict(VERIFIED if ok else REJECTED, criteria, reason, raw, attempts)


def build_verifier(params: VerifyParams, policy_engine: Callable[[str], Any], policy: str) -> Verifier:
    """The verifier `params.backend` names. policy_engine(model_uri) builds a generation engine."""
    if params.backend == "endpoint":
        return EndpointVerifier.from_env(params)
    if params.backend == "local":
        uri = params.model or policy
        return LocalVerifier(model=uri, load=lambda: policy_engine(uri))
    raise ValueError(f"verify.backend={params.backend!r}: choose local or endpoint")
