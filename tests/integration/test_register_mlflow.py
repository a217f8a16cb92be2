"""register (and evaluate's metrics) against a real MLflow server with S3 artifacts (the `stack` fixture).

Three registrations of one model name walk the promotion gate through the registry: the first
beats the base and becomes champion, a worse second becomes challenger, a better third takes
champion. Model names are unique per test, so the session's server can be shared.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pytest

from visalign import schema
from visalign.infra import store
from visalign.recipes import EvaluateParams, RegisterParams
from visalign.report import read_report
from visalign.stages import evaluate, register
from visalign.stages.rollout import GenerationResult

pytestmark = pytest.mark.integration


def model_dir(root: Path, pairs: int, run_id: str | None = None) -> Path:
    """A stand-in model directory: the registry stores files, it never loads them here."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llava", "note": f"pairs={pairs}"}))
    (root / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    schema.write_model_card(root, schema.ModelCard(
        kind="adapter", base="s3://visalign/models/base", recipe={"name": "seva", "train": {"beta": 0.1}},
        data={"pairs": pairs, "pairs_digest": f"digest{pairs}"}, mlflow_run_id=run_id))
    return root


def eval_dir(root: Path, aligned_f1: float, aligned_acc: float = 0.5) -> Path:
    root.mkdir(parents=True)
    results = {"base": {"toy_pope": {"f1": 0.6, "accuracy": 0.6}, "toy_mc": {"accuracy": 0.5}},
               "aligned": {"toy_pope": {"f1": aligned_f1, "accuracy": 0.6}, "toy_mc": {"accuracy": aligned_acc}},
               "_meta": {"limit": None}}
    (root / schema.RESULTS_FILE).write_text(json.dumps(results))
    return root


def test_champion_challenger_champion(stack, tmp_path):
    name = f"visalign-test-{uuid.uuid4().hex[:8]}"
    params = RegisterParams(model_name=name, target_metric="toy_pope/f1", guard_metrics=("toy_mc/accuracy",),
                            max_guard_drop=0.02, min_improvement=0.0, require_significance=False)
    client = mlflow.MlflowClient()
    mlflow.set_experiment("visalign")
    with mlflow.start_run(run_name="train") as train_run:  # train logs into a run; register reuses it
        pass

    def register_one(i: int, f1: float, pairs: int, run_id: str | None = None) -> dict:
        out = tmp_path / f"register{i}"
        register.run(model_dir=str(model_dir(tmp_path / f"model{i}", pairs, run_id)),
                     eval_dir=str(eval_dir(tmp_path / f"eval{i}", f1)), output_dir=str(out), params=params)
        return read_report(out)

    first = register_one(1, 0.70, pairs=100, run_id=train_run.info.run_id)
    assert (first["alias"], first["reference"], first["version"]) == ("champion", "base", "1")
    assert first["mlflow_run_id"] == train_run.info.run_id
    assert any("candidate 0.7000 vs base 0.6000" in r for r in first["reasons"])

    second = register_one(2, 0.65, pairs=200)
    assert (second["alias"], second["reference"], second["version"]) == ("challenger", "champion v1", "2")
    assert second["mlflow_run_id"] != train_run.info.run_id  # no run in the card: a new run

    third = register_one(3, 0.80, pairs=300)
    assert (third["alias"], third["reference"], third["version"]) == ("champion", "champion v1", "3")
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert client.get_model_version_by_alias(name, "challenger").version == "2"

    tags = client.get_model_version(name, "1").tags
    assert tags["eval.toy_pope/f1"] == "0.7" and tags["base_eval.toy_pope/f1"] == "0.6"
    assert tags["data.pairs"] == "100" and tags["data.pairs_digest"] == "digest100"
    assert tags["visalign.recipe_name"] == "seva" and tags["visalign.model_kind"] == "adapter"
    assert tags["visalign.alias"] == "champion" and "decision: champion" in tags["visalign.reasons"]
    assert client.get_run(train_run.info.run_id).data.tags["visalign.registered_version"] == "1"

    # The champion's files came through the S3-backed artifact proxy, and it is a pyfunc model.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl")))
    assert (local / "MLmodel").exists()
    card = next(local.rglob(schema.MODEL_CARD_FILE))
    assert json.loads(card.read_text())["data"]["pairs"] == 300
    assert (card.parent / "adapter_model.safetensors").stat().st_size == 64


def test_register_refuses_a_misnamed_target_before_logging_anything(stack, tmp_path):
    name = f"visalign-test-{uuid.uuid4().hex[:8]}"
    params = RegisterParams(model_name=name, target_metric="toy_pope/recall")
    with pytest.raises(register.MetricNotFound, match="toy_pope/recall.*available"):
        register.run(model_dir=str(model_dir(tmp_path / "m", 10)), eval_dir=str(eval_dir(tmp_path / "e", 0.7)),
                     output_dir=str(tmp_path / "out"), params=params)
    assert mlflow.MlflowClient().search_model_versions(f"name='{name}'") == []


class YesEngine:
    def generate(self, requests):
        return [GenerationResult(id=r.id, text="Yes", num_tokens=1, finish_reason="eos") for r in requests]


def test_evaluate_reads_an_s3_prefix_and_logs_model_bench_metric_keys(stack, tmp_path):
    import base64
    import csv
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    with open(tmp_path / "toy_pope.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer", "category"])
        w.writerows([[i, image, "Is there a red circle?", a, "random"] for i, a in enumerate(["yes", "no", "yes", "no"])])
    prefix = f"s3://{stack.settings.bucket}/benchmarks-{uuid.uuid4().hex[:8]}"
    store.write_bytes(f"{prefix}/toy_pope.tsv", (tmp_path / "toy_pope.tsv").read_bytes())
    report = evaluate.run(benchmarks=[prefix], models={"base": "b", "aligned": "a"},
                          output_dir=str(tmp_path / "eval"), params=EvaluateParams(),
                          engine_factory=lambda uri, params: YesEngine())
    run = mlflow.MlflowClient().get_run(report.extra["mlflow_run_id"])
    assert run.data.metrics["aligned/toy_pope/yes_ratio"] == 1.0
    assert run.data.metrics["base/toy_pope/precision"] == 0.5
    assert run.data.metrics["base/toy_pope/random/recall"] == 1.0
    assert report.extra["benchmarks"]["toy_pope"]["source"] == f"{prefix}/toy_pope.tsv"
    # the comparison and one predictions table per model and benchmark, as MLflow artifacts
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/results.json", "evaluate/comparison.md"} <= logged
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluate/predictions/base/toy_pope.json",
                                                      str(tmp_path / "dl"))).read_text())
    assert table["columns"][:3] == ["index", "question", "answer"] and len(table["data"]) == 4
    assert "| toy_pope | f1 |" in (tmp_path / "eval" / "comparison.md").read_text()


def test_judge_cache_on_s3_outlives_the_pod(stack):
    """evaluate.judge_cache as an s3:// URI: a second Judge (a retried pod) reads the first one's answers."""
    from visalign.stages import judge

    class Asker:
        identity = {"backend": "stand-in", "model": "scripted", "url": ""}  # a scripted judge, no model

        def __init__(self):
            self.calls = 0

        def ask_many(self, requests):
            self.calls += len(requests)
            return ["0.5" for _ in requests]

    uri = f"s3://{stack.settings.bucket}/judge-{uuid.uuid4().hex[:8]}/cache.jsonl"
    first = Asker()
    assert judge.Judge(first, judge.JudgeCache(uri)).ask(["a", "b"]) == ["0.5", "0.5"] and first.calls == 2
    second = Asker()
    j = judge.Judge(second, judge.JudgeCache(uri))
    assert j.ask(["a", "b", "c"]) == ["0.5"] * 3 and second.calls == 1 and j.stats["cache_hits"] == 2
    assert len(store.read_text(uri).splitlines()) == 3
