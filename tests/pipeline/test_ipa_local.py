"""The whole `ipa` pipeline through kfp.local on a small slice, against the real local stack.

The base model is the untrained tiny model (as in the SeVa pipeline test): it cannot judge, so the
verifier here is the endpoint backend pointed at a local HTTP stand-in for an OpenAI-compatible
endpoint (tests/unit/verifier_standin.py). Its verdict is a deterministic function of the
response text, not a judgement: this test checks the wiring of the rounds (pending seeds, trained
policy, merged pairs, final training), not the quality of a verifier. The local verifier is
covered by tests/unit/ipa/test_verify.py and the demo.
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest
from visalign_pipelines.local import find_output, run_pipeline

from visalign.ipa import verify

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from verifier_standin import StandInEndpoint  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.pipeline, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_inputs(toy_slice):
    return toy_slice("pipeline-test-ipa", seeds="llava.json", benchmarks=["toy_pope.tsv", "toy_mc.tsv"],
                     num_seed_images=8, num_bench_images=4)


@pytest.fixture
def stand_in_judge(monkeypatch):
    server = StandInEndpoint(judge=lambda reference, response: hashlib.sha256(response.encode()).digest()[0] % 2 == 0)
    monkeypatch.setenv(verify.ENV_URL, server.url)  # the components (subprocesses) inherit the env
    monkeypatch.setenv(verify.ENV_MODEL, "stand-in")
    yield server
    server.close()


# greedy, one sample per view: some seeds end round 1 without a pair, so round 2 has work
OVERRIDES = {"sample.num_prompts": 12, "evaluate.limit": 8, "rollout.max_new_tokens": 4, "rollout.num_samples": 1,
             "rollout.do_sample": False, "ipa.feedback_max_new_tokens": 4, "verify.backend": "endpoint",
             "verify.endpoint_send_images": False, "register.model_name": "pipeline-test-ipa"}


def _task_dirs(run_dir, prefix):
    return sorted(p.name for p in Path(run_dir).iterdir() if p.is_dir() and p.name.startswith(prefix))


def test_ipa_two_rounds_end_to_end(s3_inputs, stand_in_judge, tmp_path):
    run_dir = run_pipeline("ipa", {**s3_inputs, "rounds": 2, "profile": "toy", "overrides": OVERRIDES,
                                   "experiment": "pipeline-test-ipa"}, tmp_path / "runs")
    assert _task_dirs(run_dir, "ipa-collect") == ["ipa-collect", "ipa-collect-2"]  # round 3 did not run
    assert _task_dirs(run_dir, "train") == ["train-2", "train-3"]  # after round 1, final of two rounds
    r1 = json.loads((find_output(run_dir, "ipa-pairs", "pairs") / "report.json").read_text())
    r2 = json.loads((find_output(run_dir, "ipa-pairs-2", "pairs") / "report.json").read_text())
    c2 = json.loads((find_output(run_dir, "ipa-collect-2", "candidates") / "report.json").read_text())
    # round 2 works on exactly the seeds round 1 left without a pair, with the trained policy and,
    # being the last round, reference-guided feedback
    assert c2["pending_in"] == r1["pending_after"] == c2["rows_in"] > 0
    assert c2["reference_guided"] is True and c2["model"].endswith("adapter")
    rounds = r2["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0]["seeds"] == 12
    assert rounds[1]["pairs_so_far"] == rounds[0]["pairs_so_far"] + rounds[1]["new_pairs"] - rounds[1]["duplicates_merged"]
    assert 0 < rounds[0]["verified_rate"] < 1 and rounds[0]["verdicts"].get("error") is None
    final_train = json.loads((find_output(run_dir, "train-3", "adapter") / "report.json").read_text())
    assert final_train["rows_in"] == rounds[1]["pairs_so_far"]
    pairs = [json.loads(x) for x in (find_output(run_dir, "ipa-pairs-2", "pairs") / "pairs.jsonl").read_text().splitlines()]
    assert all(p["provenance"]["chosen_verdict"]["status"] == "verified" for p in pairs)
    results = json.loads((find_output(run_dir, "evaluate-3", "results") / "results.json").read_text())
    assert set(results["aligned"]) == {"toy_pope", "toy_mc"}
    register = json.loads((find_output(run_dir, "register-2", "decision") / "report.json").read_text())
    assert register["alias"] in ("champion", "challenger")
    # the demo's per-round summary reads the run through the IR's display names
    from visalign.ipa import summary as ipa_summary

    summary = ipa_summary.summarize(run_dir)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert list(summary["evaluations"]) == ["evaluate after round 1", "evaluate final (2 rounds)"]
    assert summary["metrics"]["aligned"] == results["aligned"] and summary["registry"]["alias"] == register["alias"]


def test_rounds_outside_the_unrolled_range_fail_the_first_round(s3_inputs, stand_in_judge, tmp_path):
    with pytest.raises(RuntimeError):
        run_pipeline("ipa", {**s3_inputs, "rounds": 4, "profile": "toy", "overrides": OVERRIDES,
                             "experiment": "pipeline-test-ipa"}, tmp_path / "runs")
    assert not _task_dirs(next((tmp_path / "runs").iterdir(), tmp_path), "ipa-pairs")
