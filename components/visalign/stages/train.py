"""Train: preference optimisation of the policy on the pairs, with TRL's DPOTrainer.

LoRA on the language model's linear layers (not the projector, the vision tower or lm_head, as
SeVa), a frozen reference (PEFT's disabled adapter), DeepSpeed ZeRO-2/3 from the configs shipped
in visalign/deepspeed/, bf16 on GPU. The resolved recipe, the parameters and the loss curve go
to MLflow; the adapter (and, on request, the merged model) is the model artifact, with a
visalign_model.json naming its base and provenance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.errors import EmptyResult
from visalign.inputs import output_path
from visalign.recipes import Recipe, TrainParams
from visalign.report import StageReport

log = logging.getLogger(__name__)

DEEPSPEED_CONFIGS = ("zero2", "zero3")


def deepspeed_config(name: str) -> str:
    """Path of a shipped DeepSpeed config; 'auto' values are filled in by transformers."""
    if name not in DEEPSPEED_CONFIGS:
        raise ValueError(f"train.deepspeed={name!r}: choose one of {DEEPSPEED_CONFIGS} or None")
    return str(resources.files("visalign") / "deepspeed" / f"{name}.json")


def language_model_linear_layers(model: Any) -> list[str]:
    """Names of every nn.Linear inside the language model (what SeVa's LoRA targets).

    Found through get_decoder() rather than architecture-specific names, so LLaVA, Qwen2-VL,
    Idefics3 and InternVL all work; lm_head sits outside the decoder and is left alone.
    """
    import torch

    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    names = [f"{prefix}.{n}" for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__}: no linear layers found in its language model ({prefix})")
    return names


def load_pairs_dataset(pairs_dir: str | os.PathLike, repeats: int = 1, report: StageReport | None = None):
    """The valid pairs (checked as filter.pair_problem checks them; the rest dropped into `report`) as a
    datasets.Dataset in TRL's conversational vision format, images decoded lazily."""
    from datasets import Dataset, Image, List

    from visalign.stages.filter import pair_problem
    from visalign.stages.rollout import user_message

    report = report if report is not None else StageReport("train")
    file = Path(pairs_dir) / schema.PAIRS_FILE
    pairs, seen, checked = [], set(), {}
    for row, p in enumerate(schema.iter_rows(file), start=1):
        report.rows_in += 1
        problem = ("duplicate_pair", f"pair id {p.id} again") if p.id in seen else pair_problem(p, pairs_dir, checked)
        if problem:
            report.drop(problem[0], f"{file}: row {row}: {problem[1]}")
            continue
        seen.add(p.id)
        pairs.append(p)
    if not pairs:
        raise EmptyResult(f"{file}: no pairs to train on ({report.empty_message()}); see also the report.json "
                          "of the step that built them for the rows it dropped and why")
    rows = [{
        "pair_id": p.id,  # repeated rows find their pair's precomputed reference log-probs (stages.reference)
        "images": [str(Path(pairs_dir) / im) for im in p.images],
        # the same chat turn rollout builds: images first, or where the prompt's <image> markers are
        "prompt": user_message(p.prompt, len(p.images)),
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": p.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": p.rejected}]}],
    } for p in pairs] * repeats  # SeVa's reference code feeds the data twice per epoch
    return Dataset.from_list(rows).cast_column("images", List(Image())), pairs


def _longest_rows(pairs_dir: str | os.PathLike, pairs: list, k: int) -> list[int]:
    """Indices of the rows likeliest to be longest: the k with the most images (then text), and the k
    with the most pixels (dynamic-resolution processors spend tokens per pixel, not per image)."""
    from visalign.inputs import image_size

    def pixels(p) -> int:
        total = 0
        for rel in p.images:
            width, height = image_size(Path(pairs_dir) / rel, f"{pairs_dir}/{rel}")  # reads the header only
            total += width * height
        return total

    order = range(len(pairs))
    by_images = sorted(order, key=lambda i: (len(pairs[i].images), len(pairs[i].prompt)), reverse=True)[:k]
    by_pixels = sorted(order, key=lambda i: pixels(pairs[i]), reverse=True)[:k]
    return list(dict.fromkeys(by_images + by_pixels))


def _row_lengths(row: dict[str, Any], processor: Any) -> tuple[int, int]:
    """(prompt tokens with the image tokens, longest answer's tokens), rendered as TRL 1.16's
    DataCollatorForVisionPreference renders them."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    row = {**row, "prompt": prepare_multimodal_messages(row["prompt"], images=row["images"]),
           "chosen": prepare_multimodal_messages(row["chosen"]), "rejected": prepare_multimodal_messages(row["rejected"])}
    text = apply_chat_template(row, processor)
    prompt = processor(images=[row["images"]], text=[text["prompt"]], add_special_tokens=False)["input_ids"][0]
    # the tokenizer alone: some processors refuse text without images (PaliGemma) or return tensors that
    # answers of unequal length cannot fill (Pixtral); an answer holds no image tokens either way
    answers = [processor.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text["chosen"], text["rejected"])]
    return len(prompt), max(len(a) for a in answers)


def check_max_length(pairs_dir: str | os.PathLike, dataset: Any, pairs: list, processor: Any,
                     max_length: int | None, k: int = 4) -> None:
    """Fail before training when a prompt, image tokens included, does not fit train.max_length.

    TRL 1.16 skips its length filter for image datasets and its collator cuts input_ids at
    max_length, image tokens too; the model then fails at the first batch with "Image features and
    image tokens do not match". Rendering the few longest rows finds that up front.
    """
    if max_length is None:
        return
    for i in _longest_rows(pairs_dir, pairs, k):
        prompt, answer = _row_lengths(dataset[i], processor)
        if prompt >= max_length:
            raise ValueError(
                f"train.max_length={max_length}: pair {pairs[i].id} ({len(pairs[i].images)} images) has a {prompt}-"
                f"token prompt (image tokens included) and answers of up to {answer} tokens, {prompt + answer} in "
                f"all; the prompt must fit with room for its answer (TRL cuts input_ids at max_length, image tokens "
                f"too); set train.max_length >= {prompt + answer}")
        if prompt + answer > max_length:
            log.warning("train: pair %s: answers are cut at train.max_length=%d (%d tokens needed)", pairs[i].id,
                        max_length, prompt + answer)


# Processors whose model reads token_type_ids 0 as a bidirectional prefix and that refuse text alone.
PREFIX_LM_PROCESSORS = ("PaliGemmaProcessor",)


class _TextAloneToTokenizer:
    """The processor, except that a call without images goes to its tokenizer (with token_type_ids,
    which TRL's collator joins to the prompt's)."""

    def __init__(self, processor: Any):
        self._processor = processor

    def __call__(self, images=None, text=None, **kwargs):
        if images is None:
            return self._processor.tokenizer(text, return_token_type_ids=True, **kwargs)
        return self._processor(images=images, text=text, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._processor, name)


def preference_collator(processor: Any, max_length: int | None):
    """TRL's vision preference collator, or, for PaliGemma, a subclass of it: PaliGemma's processor
    refuses the text-only calls TRL makes for the answers, and its model attends bidirectionally over
    every token_type_ids == 0 position, so answers tokenised as text (type 0) would each see the
    tokens after them. The subclass tokenises answers with the tokenizer, marks them type 1 (as
    PaliGemma's own suffix= does) and drops the prompt-only labels its processor adds. None: TRL's own."""
    if type(processor).__name__ not in PREFIX_LM_PROCESSORS:
        return None
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class PrefixLMVisionPreferenceCollator(DataCollatorForVisionPreference):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            out.pop("labels", None)
            out["token_type_ids"] = torch.where(out["completion_mask"].bool(), 1, out["token_type_ids"])
            return out

    return PrefixLMVisionPreferenceCollator(processor=_TextAloneToTokenizer(processor), max_length=max_length)


def _single_process_env(use_deepspeed: bool) -> None:
    """DeepSpeed needs a process group even for one process (else it looks for mpi4py)."""
    if not use_deepspeed or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _dpo_config(params: TrainParams, ckpt_dir: Path, bf16: bool):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(ckpt_dir), loss_type=list(params.loss_type),
        loss_weights=list(params.loss_weights) if params.loss_weights else None, beta=params.beta,
        learning_rate=params.learning_rate, lr_scheduler_type=params.lr_scheduler, weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        num_train_epochs=params.num_epochs, per_device_train_batch_size=params.per_device_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps, max_length=params.max_length,
        bf16=bf16, gradient_checkpointing=params.gradient_checkpointing, logging_steps=params.logging_steps,
        save_strategy="steps", save_steps=params.save_steps, save_total_limit=2, seed=params.seed,
        deepspeed=deepspeed_config(params.deepspeed) if params.deepspeed else None,
        report_to=[], remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
    )


def _loss_curve_callback(run_id: str | None):
    """Sends every logged step (loss, rewards, margins, accuracies) to the stage's MLflow run."""
    from transformers import TrainerCallback

    class LossCurve(TrainerCallback):
        def __init__(self):
            self.history: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            self.history.append({"step": state.global_step, **numbers})
            if run_id and state.is_world_process_zero:
                import mlflow

                now = int(time.time() * 1000)
                mlflow.MlflowClient().log_batch(run_id, metrics=[
                    mlflow.entities.Metric(k, v, now, state.global_step) for k, v in numbers.items()])

    return LossCurve()


def run(*, pairs_dir: str, model: str, output_dir: str, params: TrainParams, recipe: Recipe | None = None,
        experiment: str = "visalign") -> StageReport:
    """Train a LoRA adapter (or the full model, lora_r=0) on the pairs; save it with its card."""
    import mlflow
    import torch
    from peft import LoraConfig

    from visalign.infra import tracking
    from visalign.models import from_pretrained, load_processor, local_dir
    from visalign.stages import reference
    from visalign.stages.resume import model_digest

    tracking.check_reachable()  # in seconds, before the model loads (MLflow's client retries ~250 s)
    report = StageReport("train")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        dataset, pairs = load_pairs_dataset(pairs_dir, params.data_repeats, report)
    except EmptyResult:
        report.write(out, allow_empty=True)  # the drops by reason, as every stage leaves them
        raise
    gpu = torch.cuda.is_available()
    bf16 = params.precision == "bf16" or (params.precision == "auto" and gpu)
    _single_process_env(params.deepspeed is not None)
    base_dir = local_dir(model)
    ckpt_dir = Path(params.checkpoint_dir) if params.checkpoint_dir else out / "_checkpoints"
    resumable = _check_resume(ckpt_dir, base_dir, pairs, params)  # before the model takes memory
    precompute = reference.should_precompute(params.precompute_reference, data_repeats=params.data_repeats,
                                             num_epochs=params.num_epochs, lora_r=params.lora_r)
    processor = load_processor(base_dir)
    check_max_length(pairs_dir, dataset, pairs, processor, params.max_length)  # before the model takes memory
    # safetensors only, unless opted in (visalign.models.loading_policy)
    policy = from_pretrained(base_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    peft_config = None
    if params.lora_r > 0:
        peft_config = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                                 target_modules=language_model_linear_layers(policy), task_type="CAUSAL_LM")
    resume_from = _last_complete_checkpoint(ckpt_dir) if resumable else None  # None: start afresh
    resume = resume_from is not None
    with tracking.start_run(experiment, run_name=f"train-{recipe.name if recipe else 'dpo'}") as mlrun:
        tracking.log_params_flat({"recipe": recipe.to_dict() if recipe else {}, "train": _asdict(params),
                                  "base_model": str(model), "pairs": len(pairs)})
        curve = _loss_curve_callback(mlrun.info.run_id)
        if resume:
            curve.history = _take_over(ckpt_dir, resume_from, mlrun.info.run_id)
        _record_run(ckpt_dir, mlrun.info.run_id)
        trainer_class, extra = _trainer(params), {}
        if precompute:
            extra["reference_cache"] = reference.ReferenceCache(ckpt_dir, {
                "model": model_digest(base_dir), "max_length": params.max_length, "dtype": str(policy.dtype)},
                {p.id: reference.pair_digest(p, pairs_dir) for p in pairs})
            trainer_class = reference.precomputed_reference_trainer(trainer_class)
        trainer = trainer_class(model=policy, args=_dpo_config(params, ckpt_dir, bf16), train_dataset=dataset,
                                processing_class=processor, peft_config=peft_config, callbacks=[curve],
                                data_collator=preference_collator(processor, params.max_length), **extra)
        ref_stats = {"precomputed": precompute, "reference_model_loaded": trainer.ref_model is not None,
                     **(extra["reference_cache"].stats if precompute else {})}
        log.info("train: %d pairs x %d repeats, %s, resume=%s", len(pairs), params.data_repeats,
                 f"LoRA r={params.lora_r}" if peft_config else "full", resume)
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
            _save(trainer, processor, out, params, model, recipe, pairs, pairs_dir, mlrun.info.run_id)
            if precompute:  # beside the model too: what it was trained against, per pair
                shutil.copy(ckpt_dir / reference.CACHE_FILE, out / reference.CACHE_FILE)
        finally:
            _release_deepspeed()
        (out / "loss_curve.json").write_text(json.dumps(curve.history))
        mlflow.log_artifact(str(out / "loss_curve.json"))
    if not params.checkpoint_dir:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    report.rows_out = len(pairs)
    metrics = result.metrics
    report.extra.update(
        model=str(model), steps=result.global_step, resumed=resume, final_loss=round(result.training_loss, 6),
        train_seconds=metrics.get("train_runtime"), samples_per_second=metrics.get("train_samples_per_second"),
        mlflow_run_id=mlrun.info.run_id, deepspeed=params.deepspeed, bf16=bf16,
        peak_gpu_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 3) if gpu else None, reference=ref_stats,
    )
    report.write(out)
    return report


RUN_FILE = "mlflow_run.json"  # in the checkpoint directory: the MLflow run its checkpoints belong to
RESUMED_FROM_TAG = "visalign.resumed_from"


def _rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # the other ranks log to a throwaway store (train_node)


def _check_resume(ckpt_dir: Path, base_dir: Path, pairs: list, params: TrainParams) -> bool:
    """Whether the checkpoints may be resumed. Those made from another base, other pairs or other
    settings are not this run's (stages.resume): refuse, or with train.resume_mismatch=restart, start
    afresh (rank 0 removes them; the other ranks start afresh without looking at them)."""
    from visalign.stages import resume

    settings = {k: v for k, v in _asdict(params).items()
                if k not in ("checkpoint_dir", "save_steps", "logging_steps", "resume_mismatch", "merge",
                             "precompute_reference", "reference_batch_size")}  # these leave the result as it is
    parts = resume.fingerprint(model=resume.model_digest(base_dir), pairs=sorted(p.id for p in pairs),
                               parameters=settings)
    return resume.check(ckpt_dir, parts, sorted(ckpt_dir.glob("checkpoint-*")), params.resume_mismatch, "train",
                        "train", owner=_rank_zero())


def _record_run(ckpt_dir: Path, run_id: str) -> None:
    if _rank_zero():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id}))


def _last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The highest checkpoint-N holding its trainer_state.json (the trainer writes it last: a process
    killed while saving leaves a checkpoint without it, which must not be resumed from)."""
    found = sorted((int(p.name.split("-")[1]), p) for p in ckpt_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    complete = [p for _, p in found if (p / "trainer_state.json").exists()]
    if len(complete) < len(found):
        log.warning("train: %s: skipping checkpoints without trainer_state.json (cut off while saving): %s",
                    ckpt_dir, [p.name for _, p in found if p not in complete])
    return str(complete[-1]) if complete else None


def _take_over(ckpt_dir: Path, checkpoint: str, run_id: str) -> list[dict[str, float]]:
    """A resume: the run that wrote the checkpoints marked KILLED if a killed process left it RUNNING,
    the new run tagged with it, and the loss curve of `checkpoint` (the one the trainer resumes from)
    logged into the new run at its steps. Returns those points."""
    import mlflow

    from visalign.infra import tracking

    entries = json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("log_history", [])
    points = [{"step": int(e["step"]), **{k: float(v) for k, v in e.items() if k != "step" and
                                          isinstance(v, (int, float))}} for e in entries if "step" in e]
    if not _rank_zero():
        return points
    previous = json.loads((ckpt_dir / RUN_FILE).read_text())["run_id"] if (ckpt_dir / RUN_FILE).exists() else None
    client = mlflow.MlflowClient()
    if previous and previous != run_id:
        tracking.end_stale_run(previous)
        client.set_tag(run_id, RESUMED_FROM_TAG, previous)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, p["step"])
                                      for p in points for k, v in p.items() if k != "step"])
    log.info("train: resuming from %s (run %s): %d logged steps carried into run %s", checkpoint, previous,
             len(points), run_id)
    return points


def _release_deepspeed() -> None:
    """Forget the trainer's DeepSpeed config: transformers keeps it module-global, and while it is
    set every later from_pretrained in this process builds ZeRO-3-partitioned (empty) weights."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _trainer(params: TrainParams):
    """TRL's DPOTrainer, or MPO's subclass when bco_pair is to carry the reward shift delta."""
    from trl import DPOTrainer

    if "bco_pair" in params.loss_type and params.bco_delta:
        from visalign.stages.mpo_loss import trainer_class

        return trainer_class()
    return DPOTrainer


def _asdict(params: TrainParams) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params)


def _save(trainer, processor, out: Path, params: TrainParams, base: str, recipe: Recipe | None,
          pairs: list, pairs_dir: str, run_id: str) -> None:
    """Adapter (or full model) + processor + card; the merged model too when asked for."""
    from visalign.models import loading_policy

    trainer.save_model(str(out))
    processor.save_pretrained(out)
    merged = None
    if params.merge and params.lora_r > 0:
        merged = "merged"
        trainer.model.merge_and_unload().save_pretrained(out / merged)
        processor.save_pretrained(out / merged)
    card = schema.ModelCard(
        kind="adapter" if params.lora_r > 0 else "full", base=str(base) if params.lora_r > 0 else None,
        recipe=recipe.to_dict() if recipe else {"train": _asdict(params)},
        data={"pairs": len(pairs), "pairs_dir": str(pairs_dir),
              "pairs_digest": schema.stable_id(sorted(p.id for p in pairs))},
        mlflow_run_id=run_id, merged=merged, loading=loading_policy())
    schema.write_model_card(out, card)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--pairs", required=True, help="Directory with pairs.jsonl and images (the filter's output).")
    parser.add_argument("--model", required=True, help="Base model directory or s3:// URI.")
    parser.add_argument("--output", required=True, help="Output directory for the adapter and report.json.")
    recipes.add_arguments(parser, "train")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "train")
    run(pairs_dir=args.pairs, model=args.model, output_dir=args.output, params=recipe.train, recipe=recipe,
        experiment=f"visalign-{recipe.name}")
    return 0
