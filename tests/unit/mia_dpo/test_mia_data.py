"""Multi-image rows through TRL's vision preference collator and the train stage; the multi-image
toy benchmarks through the evaluate stage."""

import json

import pytest

from visalign import schema
from visalign.recipes import EvaluateParams, TrainParams
from visalign.schema import Pair
from visalign.stages import train
from visalign.stages.rollout import user_content

SEQ = "Image1: <image>\nImage2: <image>\nImage3: <image>\nIn Image2, what colour is the circle?"


def test_image_markers_become_interleaved_chat_parts():
    assert user_content(SEQ, 3) == [
        {"type": "text", "text": "Image1: "}, {"type": "image"}, {"type": "text", "text": "\nImage2: "},
        {"type": "image"}, {"type": "text", "text": "\nImage3: "}, {"type": "image"},
        {"type": "text", "text": "\nIn Image2, what colour is the circle?"}]
    # no markers (or not one per image): images first, as for single-image prompts
    assert user_content("What colour?", 2) == [{"type": "image"}, {"type": "image"},
                                               {"type": "text", "text": "What colour?"}]


@pytest.fixture
def multi_pairs(tmp_path):
    from assets import COLOURS, draw

    d = tmp_path / "pairs"
    (d / "images").mkdir(parents=True)
    for i, c in enumerate(COLOURS):
        draw(c).save(d / "images" / f"{i}.png")
    pairs = [Pair(id="s3", images=["images/0.png", "images/1.png", "images/2.png"], prompt=SEQ, chosen="green",
                  rejected="red", prompt_id="p0"),
             Pair(id="s2", images=["images/3.png", "images/0.png"],
                  prompt="Image1: <image>\nImage2: <image>\nIn Image1, what colour is the circle?", chosen="yellow",
                  rejected="red", prompt_id="p1"),
             Pair(id="g1", images=["images/1.png"], prompt="In Image3, what colour is the circle?", chosen="green",
                  rejected="blue", prompt_id="p2")]
    schema.write_rows(d / schema.PAIRS_FILE, pairs)
    return d


def test_multi_image_rows_through_trls_vision_collator(tiny_model, multi_pairs):
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    processor = AutoProcessor.from_pretrained(tiny_model)
    dataset, _ = train.load_pairs_dataset(multi_pairs)
    batch = DataCollatorForVisionPreference(processor=processor)([dataset[i] for i in range(3)])
    # chosen and rejected each carry every image of the row: (3 + 2 + 1) x 2
    assert batch["pixel_values"].shape[0] == 12
    image_id = processor.image_token_id
    per_row = (batch["input_ids"] == image_id).sum(dim=1).tolist()
    assert per_row == [3 * 64, 2 * 64, 64] * 2  # 64 tokens per 64 px image, per row, chosen then rejected
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.index("Image1:") < text.index("<image>") < text.index("Image2:") < text.index("In Image2")


def test_train_stage_runs_on_multi_image_pairs(tiny_model, multi_pairs, tmp_path, monkeypatch):
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # a ZeRO-3 run earlier in this process leaves its global config behind
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    params = TrainParams(lora_r=4, lora_alpha=8, learning_rate=1e-3, per_device_batch_size=3,
                         gradient_accumulation_steps=1, max_length=400, deepspeed=None, gradient_checkpointing=False,
                         warmup_ratio=0.0, data_repeats=1, num_epochs=2)
    report = train.run(pairs_dir=str(multi_pairs), model=str(tiny_model), output_dir=str(tmp_path / "adapter"),
                       params=params)
    assert report.extra["steps"] == 2 and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_train_refuses_a_max_length_that_cuts_image_tokens_before_training(tiny_model, multi_pairs, tmp_path,
                                                                           monkeypatch):
    import re

    from transformers import AutoProcessor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    params = TrainParams(lora_r=4, lora_alpha=8, per_device_batch_size=3, gradient_accumulation_steps=1,
                         max_length=150, deepspeed=None, gradient_checkpointing=False, data_repeats=1)
    with pytest.raises(ValueError, match=r"train.max_length=150: pair s3 \(3 images\) has a \d+-token prompt") as e:
        train.run(pairs_dir=str(multi_pairs), model=str(tiny_model), output_dir=str(tmp_path / "a"), params=params)
    needed = int(re.search(r"set train.max_length >= (\d+)", str(e.value)).group(1))
    assert needed > 3 * 64  # three images' tokens and the text
    assert not (tmp_path / "a" / "report.json").exists()
    # the length it asks for is enough for every row
    dataset, pairs = train.load_pairs_dataset(multi_pairs)
    train.check_max_length(multi_pairs, dataset, pairs, AutoProcessor.from_pretrained(tiny_model), needed)


def test_multi_image_benchmarks_are_vlmevalkit_rows_evaluate_reads(tmp_path):
    from visalign.report import StageReport
    from visalign.stages import benchmarks, evaluate
    from visalign.toyworld import build_world, check_disjoint, read_tsv

    info = build_world(tmp_path / "w", seed=3, num_seed_images=20, num_train_images=20, num_bench_images=12,
                       num_heldout_images=16, num_multi_seq_rows=48)
    assert info["counts"]["toy_multi_seq_rows"] > 40 and info["counts"]["toy_multi_grid_rows"] > 40
    check_disjoint(tmp_path / "w")
    rows = read_tsv(tmp_path / "w" / "benchmarks" / "toy_multi_seq.tsv")
    for row in rows:
        images = json.loads(row["image"])  # VLMEvalKit's multi-image cell: a list of base64 images
        assert 2 <= len(images) <= 4 and row["question"].count("<image>") == len(images)
        k = int(row["question"].split("In Image")[1].split(",")[0])
        assert 1 <= k <= len(images)
    report = StageReport("evaluate")
    seq = evaluate.read_benchmark(str(tmp_path / "w" / "benchmarks" / "toy_multi_seq.tsv"), report)
    grid = evaluate.read_benchmark(str(tmp_path / "w" / "benchmarks" / "toy_multi_grid.tsv"), report)
    assert not report.dropped and seq.task == grid.task == benchmarks.SHORT
    assert [len(r.images) for r in seq.rows] == [len(json.loads(r["image"])) for r in rows]
    assert all(len(r.images) == 1 and r.question.startswith("In Image") for r in grid.rows)


def test_evaluate_answers_multi_image_rows_with_the_model(tiny_model, tmp_path):
    from visalign.stages import evaluate
    from visalign.toyworld import build_world

    build_world(tmp_path / "w", seed=3, num_seed_images=8, num_train_images=8, num_bench_images=8,
                num_heldout_images=8)
    report = evaluate.run(benchmarks=[str(tmp_path / "w" / "benchmarks" / "toy_multi_seq.tsv")],
                          models={"base": str(tiny_model)}, output_dir=str(tmp_path / "eval"),
                          params=EvaluateParams(batch_size=8, max_new_tokens=2, limit=8))
    results = json.loads((tmp_path / "eval" / schema.RESULTS_FILE).read_text())
    assert results["base"]["toy_multi_seq"]["n"] == 8 and report.extra["predictions"] == 8
