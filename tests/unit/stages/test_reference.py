"""Precomputed reference log-probs (stages.reference) against TRL's inline reference forward."""

import dataclasses
import json

import pytest

from visalign.recipes import TrainParams
from visalign.stages import reference, train

# A high learning rate so the policy leaves the reference after the first step: from then on a wrong
# reference value would change the loss and the gradients.
BASE = dict(lora_r=8, lora_alpha=16, learning_rate=5e-3, per_device_batch_size=4, gradient_accumulation_steps=1,
            max_length=128, deepspeed=None, gradient_checkpointing=False, warmup_ratio=0.0, data_repeats=2,
            num_epochs=1.0, reference_batch_size=3, checkpoint_dir=None)
MPO_MIX = dict(loss_type=("sigmoid", "bco_pair", "sft"), loss_weights=(0.8, 0.2, 1.0), bco_delta=True, lora_r=0,
               learning_rate=1e-3)


@pytest.fixture
def pairs_dir(tmp_path):
    from assets import colour_pairs

    return colour_pairs(tmp_path / "pairs", 8)


@pytest.fixture(autouse=True)
def local_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)


def _train(tiny_model, pairs_dir, out, **params):
    report = train.run(pairs_dir=str(pairs_dir), model=str(tiny_model), output_dir=str(out),
                       params=TrainParams(**{**BASE, **params}))
    curve = [p for p in json.loads((out / "loss_curve.json").read_text()) if "loss" in p]
    return report, curve


def _weights(folder):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("case", ["sigmoid_lora", "mpo_mix_full"])
def test_precomputed_reference_trains_as_the_inline_one(tiny_model, pairs_dir, tmp_path, case):
    extra = MPO_MIX if case == "mpo_mix_full" else {}
    inline, inline_curve = _train(tiny_model, pairs_dir, tmp_path / "inline", precompute_reference="off", **extra)
    pre, pre_curve = _train(tiny_model, pairs_dir, tmp_path / "pre", precompute_reference="on", **extra)
    assert inline.extra["reference"]["precomputed"] is False and pre.extra["reference"]["precomputed"] is True
    # 8 pairs fed twice: one reference pass over the 8, not 16
    assert pre.extra["reference"]["computed"] == 8 and pre.extra["reference"]["reused"] == 0
    assert len(inline_curve) == len(pre_curve) == 4
    keys = ["loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins"]
    if case == "mpo_mix_full":
        keys += ["mpo/delta", "mpo/bco", "mpo/dpo"]
        # full parameters: the inline path loads a reference copy, the precomputed one none
        assert inline.extra["reference"]["reference_model_loaded"] is True
        assert pre.extra["reference"]["reference_model_loaded"] is False
    assert abs(inline_curve[-1]["rewards/margins"]) > 1e-3  # the policy has left the reference: the test can fail
    for a, b in zip(inline_curve, pre_curve, strict=True):
        for k in keys:
            assert b[k] == pytest.approx(a[k], abs=1e-4), (a["step"], k)
    wa, wb = _weights(tmp_path / "inline"), _weights(tmp_path / "pre")
    assert wa.keys() == wb.keys()
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


def test_values_equal_trl_inline_reference_and_are_reused_until_an_input_changes(tiny_model, pairs_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    first, _ = _train(tiny_model, pairs_dir, tmp_path / "a", precompute_reference="on", checkpoint_dir=str(ckpt))
    saved = json.loads((tmp_path / "a" / reference.CACHE_FILE).read_text())
    assert set(saved["pairs"]) == {str(i) for i in range(8)} and saved["key"]["max_length"] == 128
    # The stored values are TRL's own inline reference forward (adapter off = the base model) of each pair.
    _check_against_trl(tiny_model, pairs_dir, saved)
    # A retried step with the same checkpoint folder reuses every value (and resumes its checkpoints).
    again, _ = _train(tiny_model, pairs_dir, tmp_path / "b", precompute_reference="on", checkpoint_dir=str(ckpt),
                      save_steps=1)
    assert again.extra["reference"]["computed"] == 0 and again.extra["reference"]["reused"] == 8
    # Another max_length is another key: computed again.
    other, _ = _train(tiny_model, pairs_dir, tmp_path / "c", precompute_reference="on",
                      checkpoint_dir=str(tmp_path / "ckpt2"), max_length=120)
    assert other.extra["reference"]["computed"] == 8
    cache = json.loads((tmp_path / "c" / reference.CACHE_FILE).read_text())
    assert cache["key"]["max_length"] == 120


def _check_against_trl(tiny_model, pairs_dir, saved):
    """Each stored pair's values equal TRL's compute_ref_log_probs on that pair alone (no padding)."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from visalign.models import from_pretrained, load_processor

    dataset, pairs = train.load_pairs_dataset(pairs_dir)
    model = from_pretrained(tiny_model, dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="trl", report_to=[], max_length=128,
                                                     remove_unused_columns=False, bf16=False),
                         train_dataset=dataset, processing_class=load_processor(tiny_model))
    for i, p in enumerate(pairs[:3]):
        batch = trainer.data_collator([dataset[i]])
        c, r = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        assert saved["pairs"][p.id]["chosen"] == pytest.approx(c.item(), abs=1e-4)
        assert saved["pairs"][p.id]["rejected"] == pytest.approx(r.item(), abs=1e-4)


def test_a_changed_pair_is_computed_again_and_the_rest_reused(tiny_model, pairs_dir, tmp_path):
    from visalign import schema

    ckpt = tmp_path / "ckpt"
    _train(tiny_model, pairs_dir, tmp_path / "a", precompute_reference="on", checkpoint_dir=str(ckpt))
    pairs = schema.read_rows(pairs_dir / schema.PAIRS_FILE)
    pairs[0] = dataclasses.replace(pairs[0], rejected="purple")  # same id, other text
    schema.write_rows(pairs_dir / schema.PAIRS_FILE, pairs)
    again, _ = _train(tiny_model, pairs_dir, tmp_path / "b", precompute_reference="on", checkpoint_dir=str(ckpt),
                      resume_mismatch="restart")
    assert again.extra["reference"]["computed"] == 1 and again.extra["reference"]["reused"] == 7


def test_auto_precomputes_where_it_saves_work():
    auto = "auto"
    assert reference.should_precompute(auto, data_repeats=2, num_epochs=1, lora_r=1024)  # SeVa: fed twice
    assert reference.should_precompute(auto, data_repeats=1, num_epochs=3, lora_r=128)  # MIA-DPO: 3 epochs
    assert reference.should_precompute(auto, data_repeats=1, num_epochs=1, lora_r=0)  # MPO: full parameters
    assert not reference.should_precompute(auto, data_repeats=1, num_epochs=1, lora_r=64)  # one pass either way
    assert not reference.should_precompute("off", data_repeats=2, num_epochs=3, lora_r=0)
    assert reference.should_precompute("on", data_repeats=1, num_epochs=1, lora_r=64)


def test_an_unknown_setting_is_refused():
    from visalign import recipes

    with pytest.raises(ValueError, match="train.precompute_reference='always': choose auto, on or off"):
        recipes.load("seva", overrides={"train.precompute_reference": "always"})


@pytest.mark.slow
def test_precompute_under_deepspeed_matches_inline(tiny_model, pairs_dir, tmp_path, monkeypatch):
    """The reference pass through DeepSpeed's inference engine with ZeRO-3's sharded parameters gathered, in one
    CPU process (ZeRO-2 takes the same engine path)."""
    stage = "zero3"
    pytest.importorskip("deepspeed")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    _, inline = _train(tiny_model, pairs_dir, tmp_path / "inline", precompute_reference="off", deepspeed=stage)
    report, pre = _train(tiny_model, pairs_dir, tmp_path / "pre", precompute_reference="on", deepspeed=stage)
    assert report.extra["reference"]["computed"] == 8
    assert [p["loss"] for p in pre] == pytest.approx([p["loss"] for p in inline], abs=1e-4)
