import dataclasses
import json

import pytest

from visalign import schema
from visalign.errors import EmptyResult, ResumeMismatch
from visalign.recipes import TrainParams
from visalign.stages import train

TOY = dict(lora_r=8, lora_alpha=16, learning_rate=2e-3, per_device_batch_size=4, gradient_accumulation_steps=1,
           max_length=128, deepspeed=None, gradient_checkpointing=False, warmup_ratio=0.0, data_repeats=2)


@pytest.fixture
def pairs_dir(tmp_path):
    from assets import colour_pairs

    return colour_pairs(tmp_path / "pairs", 8)


@pytest.fixture(autouse=True)
def local_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts in ./mlruns


def test_lora_targets_only_the_language_model(tiny_model):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    names = train.language_model_linear_layers(model)
    assert names and all("language_model" in n for n in names)
    assert not any(k in n for n in names for k in ("vision", "projector", "lm_head"))
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"}


def test_dpo_trains_an_adapter_with_card_and_loss_curve(tiny_model, pairs_dir, tmp_path):
    import mlflow

    out = tmp_path / "adapter"
    report = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(out),
                       params=TrainParams(**TOY, num_epochs=3, merge=True))
    card = schema.read_model_card(out)
    assert card.kind == "adapter" and card.base == str(tiny_model) and card.data["pairs"] == 8
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    curve = json.loads((out / "loss_curve.json").read_text())
    losses = [p["loss"] for p in curve if "loss" in p]
    assert report.extra["steps"] == 12 and len(losses) >= 10
    assert losses[-1] < losses[0]  # DPO on fixed pairs must move the margin
    history = mlflow.MlflowClient().get_metric_history(card.mlflow_run_id, "loss")
    assert len(history) == len(losses)
    run = mlflow.get_run(card.mlflow_run_id)
    assert run.data.params["train.beta"] == "0.1"
    assert not (out / "_checkpoints").exists()
    # The adapter loads through the one loading path, base resolved from its card.
    from peft import PeftModel

    from visalign.models import load_model

    loaded = load_model(str(out))
    assert isinstance(loaded.model, PeftModel)


def test_resume_skips_finished_steps(tiny_model, pairs_dir, tmp_path):
    params = TrainParams(**{**TOY, "data_repeats": 1}, save_steps=1, checkpoint_dir=str(tmp_path / "ckpt"))
    first = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(tmp_path / "a"), params=params)
    assert first.extra["resumed"] is False and any((tmp_path / "ckpt").glob("checkpoint-*"))
    again = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(tmp_path / "b"), params=params)
    assert again.extra["resumed"] is True and again.extra["steps"] == first.extra["steps"]
    # Checkpoints of another run (here: another beta) are not resumed, unless asked to start afresh.
    other = TrainParams(**{**TOY, "data_repeats": 1}, save_steps=1, checkpoint_dir=str(tmp_path / "ckpt"), beta=0.5)
    with pytest.raises(ResumeMismatch, match=r"the train work in it does not match this run \(parameters changed\)"):
        train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(tmp_path / "c"), params=other)
    fresh = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(tmp_path / "c"),
                      params=dataclasses.replace(other, resume_mismatch="restart"))
    assert fresh.extra["resumed"] is False and fresh.extra["steps"] == first.extra["steps"]


def test_no_pairs_is_a_clear_error(tiny_model, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / schema.PAIRS_FILE).write_text("")
    with pytest.raises(EmptyResult, match="no pairs to train on"):
        train.run(pairs_dir=str(tmp_path / "p"), model=str(tiny_model), output_dir=str(tmp_path / "o"),
                  params=TrainParams(**TOY))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_single_process_on_cpu(tiny_model, pairs_dir, tmp_path, stage, monkeypatch):
    """ZeRO-2/3 through TRL in one CPU process (gloo); multi-process DeepSpeed is for GPUs."""
    pytest.importorskip("deepspeed")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    report = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(tmp_path / stage),
                       params=TrainParams(**{**TOY, "deepspeed": stage, "data_repeats": 1}))
    assert report.extra["deepspeed"] == stage and report.extra["steps"] == 2
    assert (tmp_path / stage / "adapter_model.safetensors").exists()
    # The next model this process loads is whole again (not ZeRO-3-partitioned into empty tensors).
    from transformers import AutoModelForImageTextToText
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    assert not is_deepspeed_zero3_enabled()
    again = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert all(p.numel() > 0 for p in again.parameters())
