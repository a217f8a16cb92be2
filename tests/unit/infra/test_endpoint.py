"""The one endpoint client (visalign.infra.endpoint) against a real OpenAI-compatible server:
`transformers serve` serving the tiny model on CPU; outages against a port nobody listens on."""

from __future__ import annotations

import socket

import pytest
from assets import draw

from visalign.infra.endpoint import (
    RETRIES_EXHAUSTED,
    SKIPPED_AFTER_OUTAGE,
    ChatEndpoint,
    ChatRequest,
    EndpointConfig,
    NoAnswer,
    RetryPolicy,
)

pytestmark = pytest.mark.slow


def _requests():
    return [ChatRequest(prompt=q, images=[draw(c)], max_tokens=6)
            for q, c in [("What colour is the circle?", "red"), ("Is there a blue circle?", "blue"),
                         ("How many shapes are there?", "green"), ("What colour is the circle?", "yellow")]]


def test_answers_from_a_real_server_in_order_whatever_the_concurrency(served_tiny_model):
    url, model, _ = served_tiny_model
    one = ChatEndpoint(EndpointConfig(url, model), RetryPolicy(timeout_s=60, concurrency=1))
    four = ChatEndpoint(EndpointConfig(url, model, api_key="sk-unused"), RetryPolicy(timeout_s=60, concurrency=4))
    first, second = one.ask_many(_requests()), four.ask_many(_requests())
    assert all(isinstance(a, str) for a in first)
    assert first == second  # greedy: the same answers, in request order, with 4 in flight
    assert not one.stats and not four.stats  # no failed try
    assert one.identity == {"backend": "endpoint", "model": model, "url": url + "/chat/completions"}


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_retried_with_backoff_then_the_breaker_opens():
    sleeps = []
    policy = RetryPolicy(timeout_s=5, retries=2, backoff_s=0.5, backoff_factor=3.0, backoff_max_s=1.0,
                         max_consecutive_errors=2)
    ep = ChatEndpoint(EndpointConfig(f"http://127.0.0.1:{_dead_port()}/v1", "m"), policy, sleep=sleeps.append)
    answers = ep.ask_many([ChatRequest(prompt=str(i)) for i in range(5)])
    assert answers == [NoAnswer(RETRIES_EXHAUSTED)] * 2 + [NoAnswer(SKIPPED_AFTER_OUTAGE)] * 3
    assert sleeps == [0.5, 1.0] * 2  # 0.5, then 1.5 capped at 1.0; per request
    assert ep.stats["APIConnectionError"] == 6 and ep.stats["retries"] == 4 and ep.stats[SKIPPED_AFTER_OUTAGE] == 3


def test_with_requests_in_flight_the_breaker_still_bounds_the_calls():
    """With 3 in flight, at most limit + concurrency - 1 requests are tried before the breaker opens."""
    policy = RetryPolicy(timeout_s=5, retries=0, concurrency=3, max_consecutive_errors=2)
    ep = ChatEndpoint(EndpointConfig(f"http://127.0.0.1:{_dead_port()}/v1", "m"), policy)
    answers = ep.ask_many([ChatRequest(prompt=str(i)) for i in range(20)])
    tried = sum(a == NoAnswer(RETRIES_EXHAUSTED) for a in answers)
    assert 2 <= tried <= 4 and tried + ep.stats[SKIPPED_AFTER_OUTAGE] == 20


def test_settings_come_from_the_environment_and_never_show_the_key():
    env = {"VISALIGN_JUDGE_URL": "https://user:pw@judge.example/v1?api-version=1", "VISALIGN_JUDGE_MODEL": "j",
           "VISALIGN_JUDGE_API_KEY": "sk-secret"}
    cfg = EndpointConfig.from_env("VISALIGN_JUDGE", "evaluate.judge='endpoint'", env)
    assert (cfg.model, cfg.api_key) == ("j", "sk-secret")
    ep = ChatEndpoint(cfg, RetryPolicy())
    assert ep.identity["url"] == "https://judge.example/v1/chat/completions" and "sk-" not in str(ep.identity)
    with pytest.raises(ValueError, match=r"evaluate.judge='endpoint' needs \['VISALIGN_JUDGE_MODEL'\]"):
        EndpointConfig.from_env("VISALIGN_JUDGE", "evaluate.judge='endpoint'", {"VISALIGN_JUDGE_URL": "http://x"})
    with pytest.raises(ValueError, match="must start with http"):
        EndpointConfig.from_env("VISALIGN_JUDGE", "judge", {**env, "VISALIGN_JUDGE_URL": "judge.example/v1"})


def test_a_reply_without_content_is_retried_not_taken_as_an_empty_answer():
    """A 200 whose content is null (content_filter) must not become "" (it would be cached for good)."""
    from verifier_standin import StandInEndpoint

    server = StandInEndpoint(script=["null"])
    try:
        ep = ChatEndpoint(EndpointConfig(server.url, "m"), RetryPolicy(timeout_s=5, retries=1, backoff_s=0.0))
        answer = ep.ask(ChatRequest(prompt="Reference: red\nResponse: red"))
    finally:
        server.close()
    assert isinstance(answer, str) and answer.startswith("entails: yes")
    assert ep.stats["EmptyAnswer"] == 1 and ep.stats["retries"] == 1 and len(server.requests) == 2
