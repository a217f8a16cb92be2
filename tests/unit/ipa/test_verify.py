"""IPA's verifier: verdict parsing, the local (policy) verifier, and the endpoint verifier against a
local HTTP stand-in for an OpenAI-compatible chat endpoint (named as such: no real endpoint can
be reached from the test machines)."""

from collections import Counter

import pytest
from PIL import Image
from verifier_standin import StandInEndpoint

from visalign import recipes
from visalign.ipa import verify
from visalign.ipa.verify import CRITERIA, EndpointVerifier, LocalVerifier, VerifyItem, parse_verdict
from visalign.recipes import VerifyParams


@pytest.mark.parametrize("text, expected", [
    ("entails: yes\ncomplete: yes\nconsistent: yes\nfollows: yes\nreason: matches the reference",
     ({k: True for k in CRITERIA}, "matches the reference")),
    ('Sure. {"entails": false, "complete": "no", "consistent": true, "follows": "yes", "reason": "wrong colour"}',
     ({"entails": False, "complete": False, "consistent": True, "follows": True}, "wrong colour")),
    ("**Entails**: No\n**Complete**: no\nConsistent = yes\nFollows: YES",
     ({"entails": False, "complete": False, "consistent": True, "follows": True}, "")),
    (" no no no yes | off by one", ({"entails": False, "complete": False, "consistent": False, "follows": True},
                                    "off by one")),
])
def test_parse_verdict_reads_the_structured_forms(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", ["", "red", "yes yes", "entails: yes\ncomplete: maybe\nconsistent: yes\nfollows: yes",
                                  '{"entails": true}', "yes yes perhaps yes"])
def test_parse_verdict_refuses_incomplete_or_garbage(text):
    assert parse_verdict(text) is None


def _item(i=0, response="red", reference="red"):
    return VerifyItem(id=f"r{i}", question="What colour is the circle?", reference=reference, response=response,
                      images=[Image.new("RGB", (64, 64), "white")])


def test_local_verifier_on_a_model_that_answers_garbage_counts_and_retries_once(tiny_model):
    """The untrained tiny model cannot write a verdict: every answer is unparseable, asked again
    once with the retry suffix, then counted; nothing is verified and nothing crashes."""
    from visalign.models import load_model
    from visalign.stages.rollout import HFEngine

    loaded = load_model(str(tiny_model))
    calls = []

    class Counting(HFEngine):
        def generate(self, requests):
            calls.append([r.question for r in requests])
            return super().generate(requests)

    params = VerifyParams(prompt=recipes.IPA_TOY_VERIFY_PROMPT, retry_suffix=" again", max_new_tokens=4)
    verifier = LocalVerifier(Counting(loaded.model, loaded.processor, batch_size=4, max_new_tokens=4))
    counts = Counter()
    verdicts = verify.verify([_item(i) for i in range(3)], verifier, params, counts)
    assert [v.status for v in verdicts] == ["unparseable"] * 3
    assert all(v.attempts == 2 and v.raw is not None for v in verdicts)
    assert len(calls) == 2 and all(q.endswith(" again") for q in calls[1])
    assert counts["unparseable"] == 3 and counts["unparseable_first_try"] == 3


# ---- the endpoint verifier against a local HTTP stand-in ---------------------------------------

@pytest.fixture
def endpoint():
    made = []

    def make(*a, **kw):
        made.append(StandInEndpoint(*a, **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def _params(**kw):
    return VerifyParams(prompt=recipes.IPA_TOY_VERIFY_PROMPT, **{"endpoint_timeout_s": 5.0, "endpoint_concurrency": 1, **kw})


def test_endpoint_verifier_judges_and_sends_model_key_and_image(endpoint, monkeypatch):
    server = endpoint()
    monkeypatch.setenv(verify.ENV_URL, server.url)
    monkeypatch.setenv(verify.ENV_MODEL, "judge-7b")
    monkeypatch.setenv(verify.ENV_KEY, "sk-test")
    verifier = EndpointVerifier.from_env(_params())
    verdicts = verify.verify([_item(0, "red"), _item(1, "blue")], verifier, _params())
    assert [v.status for v in verdicts] == ["verified", "rejected"]
    assert verdicts[1].criteria == {"entails": False, "complete": False, "consistent": False, "follows": True}
    assert verdicts[0].reason == "compared"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-7b" and req["body"]["temperature"] == 0
    assert req["body"]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_endpoint_settings_come_from_the_environment_only(monkeypatch):
    monkeypatch.delenv(verify.ENV_URL, raising=False)
    with pytest.raises(ValueError, match="VISALIGN_VERIFIER_URL"):
        EndpointVerifier.from_env(_params())


def test_endpoint_500s_are_retried_with_backoff_then_succeed(endpoint):
    server = endpoint(script=["500", "500", "429"])
    sleeps = []
    verifier = EndpointVerifier(server.url, "m", None, _params(endpoint_retries=4), sleep=sleeps.append)
    (v,) = verify.verify([_item()], verifier, _params())
    assert v.status == "verified"
    assert sleeps == [1.0, 2.0, 4.0]  # exponential backoff
    assert verifier.stats["http_500"] == 2 and verifier.stats["http_429"] == 1 and verifier.stats["retries"] == 3


def test_endpoint_that_keeps_failing_counts_the_sample_unverified(endpoint):
    server = endpoint(default="500")
    sleeps = []
    params = _params(endpoint_retries=3, endpoint_backoff_s=10.0, endpoint_backoff_max_s=15.0)
    verifier = EndpointVerifier(server.url, "m", None, params, sleep=sleeps.append)
    counts = Counter()
    verdicts = verify.verify([_item(0), _item(1)], verifier, params, counts)
    assert [v.status for v in verdicts] == ["error", "error"] and not any(v.verified for v in verdicts)
    assert sleeps == [10.0, 15.0, 15.0] * 2  # capped at backoff_max_s
    assert len(server.requests) == 8 and counts["error"] == 2


def test_endpoint_timeouts_are_retried_then_counted(endpoint):
    server = endpoint(default="slow", delay=0.6)
    params = _params(endpoint_timeout_s=0.2, endpoint_retries=1, endpoint_backoff_s=0.0)
    verifier = EndpointVerifier(server.url, "m", None, params)
    (v,) = verify.verify([_item()], verifier, params)
    assert v.status == "error" and len(server.requests) == 2
    assert sum(n for k, n in verifier.stats.items() if k != "retries") == 2


def test_endpoint_client_error_is_not_retried(endpoint):
    server = endpoint(default="400")
    verifier = EndpointVerifier(server.url, "m", None, _params(), sleep=lambda s: None)
    (v,) = verify.verify([_item()], verifier, _params())
    assert v.status == "error" and len(server.requests) == 1 and verifier.stats["http_400"] == 1


def test_endpoint_garbage_is_asked_again_once(endpoint):
    server = endpoint(script=["garbage", "garbage", "garbage"])
    verifier = EndpointVerifier(server.url, "m", None, _params())
    counts = Counter()
    v1, v2 = verify.verify([_item(0), _item(1, "blue")], verifier, _params(), counts)
    # item 0: garbage, then garbage again -> unparseable; item 1: garbage, then judged
    assert (v1.status, v1.attempts, v2.status, v2.attempts) == ("unparseable", 2, "rejected", 2)
    assert server.requests[2]["body"]["messages"][0]["content"][-1]["text"].endswith(_params().retry_suffix)
    assert counts["unparseable_first_try"] == 2 and counts["unparseable"] == 1


@pytest.mark.parametrize("action, error", [("truncated", "APIConnectionError"), ("binary", "UnicodeDecodeError")])
def test_endpoint_truncated_or_undecodable_bodies_are_retried_then_counted(endpoint, action, error):
    """A body cut short (the openai SDK's APIConnectionError) or a 200 that is not UTF-8
    (UnicodeDecodeError from the SDK's JSON decode) is retried like a timeout, then counted: no crash."""
    server = endpoint(default=action)
    params = _params(endpoint_retries=2, endpoint_backoff_s=0.0)
    verifier = EndpointVerifier(server.url, "m", None, params)
    counts = Counter()
    (v,) = verify.verify([_item()], verifier, params, counts)
    assert (v.status, v.reason) == ("error", verify.RETRIES_EXHAUSTED) and counts["error"] == 1
    assert len(server.requests) == 3 and verifier.stats[error] == 3 and verifier.stats["retries"] == 2


def test_endpoint_truncated_body_then_a_good_one_is_judged(endpoint):
    server = endpoint(script=["truncated", "binary"])
    verifier = EndpointVerifier(server.url, "m", None, _params(endpoint_backoff_s=0.0))
    (v,) = verify.verify([_item()], verifier, _params())
    assert v.status == "verified" and len(server.requests) == 3


def test_circuit_breaker_stops_calling_a_down_endpoint_and_says_where(endpoint, caplog):
    """After max_consecutive_errors items in a row without an answer, the rest are not asked: they
    are errors with their own reason, and the log names the endpoint (never the key)."""
    server = endpoint(default="500")
    params = _params(endpoint_retries=1, endpoint_backoff_s=0.0, max_consecutive_errors=3)
    verifier = EndpointVerifier(server.url, "judge-7b", "sk-secret", params)
    with caplog.at_level("ERROR", logger="visalign.ipa.verify"):
        verdicts = verify.verify([_item(i) for i in range(10)], verifier, params)
    assert len(server.requests) == 3 * 2  # 3 items x (1 try + 1 retry), then no more calls
    assert [v.reason for v in verdicts] == [verify.RETRIES_EXHAUSTED] * 3 + [verify.SKIPPED_AFTER_OUTAGE] * 7
    assert all(v.status == "error" for v in verdicts) and verifier.stats["skipped_after_outage"] == 7
    assert server.url in caplog.text and "judge-7b" in caplog.text and "sk-secret" not in caplog.text


def test_circuit_breaker_counts_only_failures_in_a_row(endpoint):
    server = endpoint(script=["500", "ok", "500", "ok", "500", "500"])
    params = _params(endpoint_retries=0, max_consecutive_errors=2)
    verifier = EndpointVerifier(server.url, "m", None, params)
    verdicts = verify.verify([_item(i) for i in range(7)], verifier, params)
    assert [v.status for v in verdicts] == ["error", "verified"] * 2 + ["error"] * 3
    assert verdicts[-1].reason == verify.SKIPPED_AFTER_OUTAGE and len(server.requests) == 6


def test_circuit_breaker_can_be_turned_off(endpoint):
    server = endpoint(default="500")
    params = _params(endpoint_retries=0, max_consecutive_errors=None)
    verdicts = verify.verify([_item(i) for i in range(5)], EndpointVerifier(server.url, "m", None, params), params)
    assert len(server.requests) == 5 and {v.reason for v in verdicts} == {verify.RETRIES_EXHAUSTED}


def test_verifier_identity_names_the_model_never_the_key(endpoint, monkeypatch):
    server = endpoint()
    monkeypatch.setenv(verify.ENV_URL, server.url.replace("http://", "http://user:sk-inurl@") + "?key=sk-q")
    monkeypatch.setenv(verify.ENV_MODEL, "judge-7b")
    monkeypatch.setenv(verify.ENV_KEY, "sk-test")
    ident = EndpointVerifier.from_env(_params()).identity
    assert ident == {"backend": "endpoint", "model": "judge-7b", "url": server.url + "/chat/completions"}
    assert "sk-" not in str(ident)
    local = verify.build_verifier(_params(), lambda uri: None, policy="s3://bucket/policy")
    assert local.identity == {"backend": "local", "model": "s3://bucket/policy"}
    other = verify.build_verifier(_params(model="/models/judge"), lambda uri: None, policy="s3://bucket/policy")
    assert other.identity["model"] == "/models/judge"


def test_endpoint_url_without_scheme_is_refused(monkeypatch):
    monkeypatch.setenv(verify.ENV_URL, "localhost:8000/v1")
    monkeypatch.setenv(verify.ENV_MODEL, "m")
    with pytest.raises(ValueError, match="must start with http"):
        EndpointVerifier.from_env(_params())


def test_local_verifier_loads_its_model_on_first_use_only():
    loads = []

    class Echo:
        def generate(self, requests):
            from visalign.stages.rollout import GenerationResult

            return [GenerationResult(id=r.id, text="yes yes yes yes", num_tokens=4, finish_reason="eos")
                    for r in requests]

    verifier = verify.build_verifier(_params(), lambda uri: loads.append(uri) or Echo(), policy="policy-dir")
    assert verify.verify([], verifier, _params()) == [] and loads == []  # zero candidates: nothing loaded
    assert [v.status for v in verify.verify([_item(0), _item(1)], verifier, _params())] == ["verified"] * 2
    verify.verify([_item(2)], verifier, _params())
    assert loads == ["policy-dir"]
