"""One client for every model behind an OpenAI-compatible chat endpoint the project calls: IPA's
verifier, evaluate's judge, and any later engine (vLLM serve, SGLang, LMDeploy, TGI, KServe,
`transformers serve`, a hosted API).

It is the openai SDK's client (`openai.OpenAI`: connection pooling, timeouts, the SDK's error
types), wrapped for what a pipeline step needs and the SDK does not give:

- its own retry loop (the SDK's `max_retries` is set to 0): the backoff is a recipe parameter
  (first delay, factor, cap), every failed try is counted by kind in `stats` (a step report shows
  them), and tests can replace the sleep;
- bounded concurrency (`ask_many`: at most `concurrency` requests in flight, answers in order);
- a circuit breaker: after `max_consecutive_errors` requests in a row without an answer (every
  retry failed) it stops calling and answers NoAnswer(SKIPPED_AFTER_OUTAGE) at once, so an outage
  costs seconds, not every retry of every remaining item;
- never fatal: a request that gets no answer returns NoAnswer(reason); the caller counts it.

URL, model and key come from the environment (`EndpointConfig.from_env(prefix)`; on a cluster from
a Secret, see pipelines/settings.py), never from pipeline parameters, and `identity` (kept with
results as provenance) and every log line name the URL without credentials.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Why a request got no answer (NoAnswer.reason).
RETRIES_EXHAUSTED, SKIPPED_AFTER_OUTAGE, NO_ANSWER = "retries_exhausted", "skipped_after_outage", "no_answer"


@dataclass(frozen=True)
class NoAnswer:
    """What a request that got no answer returns, and why (counted by the caller, never raised)."""

    reason: str


@dataclass(frozen=True)
class EndpointConfig:
    """Where the endpoint is: `url` is the part before /chat/completions (e.g. http://host:8000/v1)."""

    url: str
    model: str
    api_key: str | None = None

    @classmethod
    def from_env(cls, prefix: str, what: str, env: Mapping[str, str] | None = None) -> EndpointConfig:
        """From <prefix>_URL, <prefix>_MODEL and <prefix>_API_KEY; `what` names the setting in errors."""
        env = os.environ if env is None else env
        keys = [f"{prefix}_URL", f"{prefix}_MODEL", f"{prefix}_API_KEY"]
        missing = [k for k in keys[:2] if not env.get(k)]
        if missing:
            raise ValueError(f"{what} needs {missing} in the environment (on a cluster: a Secret, see "
                             "pipelines/settings.py)")
        url = env[keys[0]]
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{keys[0]}={safe_url(url)!r}: must start with http:// or https://, e.g. "
                             "https://host/v1 (the part before /chat/completions)")
        return cls(url, env[keys[1]], env.get(keys[2]) or None)


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float = 60.0
    retries: int = 4  # after a timeout, connection error, bad body, 408, 409, 429 or 5xx (as the SDK retries)
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    concurrency: int = 1
    max_consecutive_errors: int | None = 20  # the circuit breaker; None: never stop calling


@dataclass
class ChatRequest:
    """One user turn (images, PIL, first as data URLs, then the text), after an optional system turn."""

    prompt: str
    images: Sequence[Any] = field(default_factory=list)
    temperature: float = 0.0
    max_tokens: int = 128
    system: str | None = None


def safe_url(url: str) -> str:
    """The URL without user:password and query (either may carry a key): for logs and provenance."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    return urllib.parse.urlunsplit((u.scheme, f"{host}:{u.port}" if u.port else host, u.path, "", ""))


def image_data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class EmptyAnswer(Exception):
    """A 200 whose JSON has no choices[0].message.content: retried like a glitch."""


class ChatEndpoint:
    """An OpenAI-compatible chat endpoint behind retries, bounded concurrency and a circuit breaker."""

    def __init__(self, config: EndpointConfig, policy: RetryPolicy, *, name: str = "endpoint",
                 sleep: Callable[[float], None] = time.sleep):
        import openai

        u = urllib.parse.urlsplit(config.url)  # a query (e.g. ?api-version=...) goes with every request
        base = urllib.parse.urlunsplit(u._replace(query=""))
        query = dict(urllib.parse.parse_qsl(u.query))
        self.client = openai.OpenAI(base_url=base, api_key=config.api_key or "none", timeout=policy.timeout_s,
                                    max_retries=0, default_query=query or None)
        self.config, self.policy, self.name, self.sleep = config, policy, name, sleep
        self.stats: Counter[str] = Counter()
        self.identity = {"backend": "endpoint", "model": config.model,
                         "url": safe_url(base.rstrip("/") + "/chat/completions")}
        self.failures_in_a_row, self.tripped = 0, False
        self._lock = threading.Lock()

    # ---- one request ----
    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_data_url(im)}}
                                         for im in request.images]
        content.append({"type": "text", "text": request.prompt})
        system = [{"role": "system", "content": request.system}] if request.system else []
        return [*system, {"role": "user", "content": content}]

    def _post(self, request: ChatRequest) -> str:
        resp = self.client.chat.completions.create(
            model=self.config.model, messages=self._messages(request), temperature=request.temperature,
            max_tokens=request.max_tokens)
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        if content is None:  # no choices, or a null content (e.g. finish_reason content_filter)
            raise EmptyAnswer(f"answer without choices[0].message.content: {str(resp)[:200]}")
        return str(content)

    def _try(self, request: ChatRequest) -> str | NoAnswer:
        import openai

        p = self.policy
        delay = p.backoff_s
        for attempt in range(1, p.retries + 2):
            try:
                return self._post(request)
            except openai.APIStatusError as e:
                kind = f"http_{e.status_code}"
                if e.status_code not in (408, 409, 429) and e.status_code < 500:  # will not heal by retrying
                    self._count(kind)
                    log.warning("%s: %s answered %s; not retried", self.name, self.identity["url"], e.status_code)
                    return NoAnswer(kind)
            # APITimeoutError, APIConnectionError (refused or reset, a body cut short), a 200 whose
            # body is not JSON (the SDK's decode error), JSON without the answer: all may pass.
            except (openai.APIError, ValueError, EmptyAnswer) as e:
                kind = type(e).__name__
            self._count(kind)
            if attempt <= p.retries:
                self._count("retries")
                self.sleep(min(delay, p.backoff_max_s))
                delay *= p.backoff_factor
        log.warning("%s: %s: a request failed after %d tries", self.name, self.identity["url"], p.retries + 1)
        return NoAnswer(RETRIES_EXHAUSTED)

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.stats[kind] += n

    def ask(self, request: ChatRequest) -> str | NoAnswer:
        """The answer's text, or NoAnswer; skipped at once while the breaker is open."""
        if self.tripped:  # the endpoint is down: do not wait out every retry on every item
            self._count(SKIPPED_AFTER_OUTAGE)
            return NoAnswer(SKIPPED_AFTER_OUTAGE)
        answer = self._try(request)
        self._track(answer)
        return answer

    def _track(self, answer: str | NoAnswer) -> None:
        """The circuit breaker: trip after max_consecutive_errors requests in a row without an answer."""
        with self._lock:
            if isinstance(answer, str):
                self.failures_in_a_row = 0
                return
            self.failures_in_a_row += 1
            limit = self.policy.max_consecutive_errors
            if limit is None or self.failures_in_a_row < limit or self.tripped:
                return
            self.tripped = True
        log.error("%s: endpoint %s (model %s) gave no answer for %d requests in a row; NOT CALLING IT AGAIN in "
                  "this run: the rest count as %s. Check that it is up and that its URL/model/key settings are "
                  "right; stats so far: %s", self.name, self.identity["url"], self.config.model, limit,
                  SKIPPED_AFTER_OUTAGE, dict(self.stats))

    def ask_many(self, requests: Sequence[ChatRequest]) -> list[str | NoAnswer]:
        """Answers in request order, at most policy.concurrency requests in flight."""
        if self.policy.concurrency <= 1 or len(requests) <= 1:
            return [self.ask(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.policy.concurrency) as pool:
            return list(pool.map(self.ask, requests))
