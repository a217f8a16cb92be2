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
- `EndpointVerifier`: any OpenAI-compatible chat endpoint (`POST {url}/chat/completions`). URL,
  model and key come from the environment (on a cluster from the verifier Secret, see
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

import base64
import http.client
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from visalign.recipes import VerifyParams

log = logging.getLogger(__name__)

CRITERIA = ("entails", "complete", "consistent", "follows")
# Where the endpoint verifier finds its settings; a cluster fills them from a Secret.
ENV_URL, ENV_MODEL, ENV_KEY = "VISALIGN_VERIFIER_URL", "VISALIGN_VERIFIER_MODEL", "VISALIGN_VERIFIER_API_KEY"
VERIFIED, REJECTED, UNPARSEABLE, ERROR = "verified", "rejected", "unparseable", "error"
_YES = {"yes", "true", "y", "1", "pass"}
_NO = {"no", "false", "n", "0", "fail"}
# Why an item got no answer (Verdict.reason of an "error" verdict; counted per round by ipa_pairs).
RETRIES_EXHAUSTED, SKIPPED_AFTER_OUTAGE, NO_ANSWER = "retries_exhausted", "skipped_after_outage", "no_answer"


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


@dataclass(frozen=True)
class NoAnswer:
    """What a verifier returns for an item it could not get an answer for, and why."""

    reason: str


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


class EndpointError(RuntimeError):
    pass


def safe_url(url: str) -> str:
    """The URL without user:password and query (either may carry a key): for logs and provenance."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    return urllib.parse.urlunsplit((u.scheme, f"{host}:{u.port}" if u.port else host, u.path, "", ""))


class EndpointVerifier:
    """Any OpenAI-compatible chat endpoint; retried with exponential backoff, never fatal.

    Plain HTTP through the standard library: one JSON POST per item needs no client library.
    """

    name = "endpoint"

    def __init__(self, url: str, model: str, api_key: str | None, params: VerifyParams,
                 sleep: Callable[[float], None] = time.sleep):
        u = urllib.parse.urlsplit(url)  # a query (e.g. ?api-version=...) stays after the path
        self.url = urllib.parse.urlunsplit(u._replace(path=u.path.rstrip("/") + "/chat/completions"))
        self.model, self.api_key, self.params, self.sleep = model, api_key, params, sleep
        self.stats: Counter[str] = Counter()
        self.identity = {"backend": self.name, "model": model, "url": safe_url(self.url)}
        self.failures_in_a_row, self.tripped = 0, False

    @classmethod
    def from_env(cls, params: VerifyParams, env: dict[str, str] | None = None) -> EndpointVerifier:
        env = dict(os.environ if env is None else env)
        missing = [k for k in (ENV_URL, ENV_MODEL) if not env.get(k)]
        if missing:
            raise ValueError(f"verify.backend='endpoint' needs {missing} in the environment (on a cluster: the "
                             f"verifier Secret, see pipelines/settings.py); or use verify.backend='local'")
        if not env[ENV_URL].startswith(("http://", "https://")):
            raise ValueError(f"{ENV_URL}={safe_url(env[ENV_URL])!r}: must start with http:// or https://, e.g. "
                             "https://host/v1 (the part before /chat/completions)")
        return cls(env[ENV_URL], env[ENV_MODEL], env.get(ENV_KEY) or None, params)

    def _body(self, item: VerifyItem, prompt: str) -> bytes:
        content: list[dict[str, Any]] = []
        if self.params.endpoint_send_images:
            for im in item.images:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": prompt})
        return json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.params.max_new_tokens,
                           "messages": [{"role": "user", "content": content}]}).encode()

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.params.endpoint_timeout_s) as resp:
            data = json.loads(resp.read())
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"answer without choices[0].message.content: {str(data)[:200]}") from None

    def _one(self, item: VerifyItem, prompt: str) -> str | NoAnswer:
        if self.tripped:  # the endpoint is down: do not wait out every retry on every item
            self.stats[SKIPPED_AFTER_OUTAGE] += 1
            return NoAnswer(SKIPPED_AFTER_OUTAGE)
        answer = self._ask(item, self._body(item, prompt))
        self._track(answer)
        return answer

    def _ask(self, item: VerifyItem, body: bytes) -> str | NoAnswer:
        p = self.params
        delay = p.endpoint_backoff_s
        for attempt in range(1, p.endpoint_retries + 2):
            try:
                return self._post(body)
            except urllib.error.HTTPError as e:
                kind = f"http_{e.code}"
                if e.code != 429 and e.code < 500:  # a client error will not heal by retrying
                    self.stats[kind] += 1
                    log.warning("verify: %s: %s %s; not retried", self.identity["url"], e.code, e.reason)
                    return NoAnswer(kind)
            # OSError: timeouts, refused or reset connections (URLError); HTTPException: a truncated
            # body (IncompleteRead) or a bad status line; ValueError: a 200 whose body is not UTF-8
            # JSON; EndpointError: JSON without the answer. All may be a passing glitch: retried.
            except (OSError, http.client.HTTPException, ValueError, EndpointError) as e:
                kind = type(e).__name__
            self.stats[kind] += 1
            if attempt <= p.endpoint_retries:
                self.stats["retries"] += 1
                self.sleep(min(delay, p.endpoint_backoff_max_s))
                delay *= p.endpoint_backoff_factor
        log.warning("verify: %s: item %s failed after %d tries; counted as unverified", self.identity["url"],
                    item.id, p.endpoint_retries + 1)
        return NoAnswer(RETRIES_EXHAUSTED)

    def _track(self, answer: str | NoAnswer) -> None:
        """The circuit breaker: trip after max_consecutive_errors items in a row without an answer."""
        if isinstance(answer, str):
            self.failures_in_a_row = 0
            return
        self.failures_in_a_row += 1
        limit = self.params.max_consecutive_errors
        if limit is not None and self.failures_in_a_row >= limit:
            self.tripped = True
            log.error("verify: endpoint %s (model %s) gave no answer for %d items in a row; NOT CALLING IT AGAIN "
                      "in this run: the remaining items count as error (skipped_after_outage). Check that it is "
                      "up and that %s/%s/%s (the verifier Secret) are right; stats so far: %s",
                      self.identity["url"], self.model, limit, ENV_URL, ENV_MODEL, ENV_KEY, dict(self.stats))

    def judge(self, items: Sequence[VerifyItem], prompts: Sequence[str]) -> list[str | NoAnswer | None]:
        return [self._one(it, p) for it, p in zip(items, prompts, strict=True)]


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
