"""The demo's base model: a tiny LLaVA briefly fine-tuned on the toy world's train split.

Answer-only supervised fine-tuning: the loss covers the answer tokens and </s>, never the prompt
or image tokens. Prompt and answer are tokenised apart and their ids joined, exactly as TRL does
for preference data, so the base model is trained on the very token sequences the alignment
stages later score. A fixed seed and a fixed STEP COUNT (never a time budget) make the run
repeatable: how long the tiny model sits at the 'answer without looking' loss varies. Training runs
under `deterministic_training`: the same seed, steps and thread count give bit-identical weights on
one machine whatever its load (a different thread count sums in another order: other weights).

    train_base_model("world/", "base_model/", steps=DEFAULT_BASE_STEPS)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.report import progress
from visalign.schema import ModelCard, write_model_card
from visalign.toyworld.export import CORPUS_FILE, LLAVA_FILE, WORLD_FILE
from visalign.toyworld.model import build_tiny_vlm

log = logging.getLogger("visalign.toyworld")

IGNORE_INDEX = -100  # label value the HF loss skips
# The demo's step count, measured on the default world (seed 0, 2 threads): ~2 min of training;
# short answers well above chance (count 0.89), POPE just above (0.57), multiple choice a constant
# letter. 2,400 steps were no better and took 60% longer.
DEFAULT_BASE_STEPS = 1500
SFT_RECORD_FILE = "toyworld_sft.json"


@dataclass
class Example:
    image: int  # index into the pixel-value tensor
    prompt_ids: list[int]
    answer_ids: list[int]  # answer tokens + </s>: the only positions with a loss


def build_untrained_model(world_dir_or_corpus: str | os.PathLike | Iterable[str], out_dir: str | os.PathLike,
                          seed: int = 0) -> Path:
    """The tiny VLM with random weights and the world's tokenizer (fast; for tests)."""
    if isinstance(world_dir_or_corpus, (str, os.PathLike)):
        corpus = Path(world_dir_or_corpus, CORPUS_FILE).read_text(encoding="utf-8").splitlines()
        image_size = json.loads(Path(world_dir_or_corpus, WORLD_FILE).read_text())["image_size"]
    else:  # a corpus given directly: the world's default image size
        corpus, image_size = list(world_dir_or_corpus), 64
    return build_tiny_vlm(out_dir, corpus, image_size=image_size, seed=seed)


def train_base_model(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 2e-3,
    warmup_ratio: float = 0.05,
    threads: int = 2,
    log_every: int = 100,
    build_model: Callable[..., Path] | None = None,
    extra_examples: Callable[[Path, Any, int], list[Example]] | None = None,
    mix: str | None = None,
) -> Path:
    """Build the tiny VLM on the world's corpus, SFT it for `steps` steps, save it to `out_dir`.

    A recipe whose demo needs more than short answers (MPO's chain of thought, IPA's verdicts) adds
    `extra_examples(train_dir, processor, seed)` to the standard mix under the name `mix`, and may
    give its own `build_model(world_dir, out_dir, seed=)` (a tokenizer that knows its phrases)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    problems = [f"{k}={v}: must be >= 1" for k, v in
                (("steps", steps), ("batch_size", batch_size), ("threads", threads), ("log_every", log_every)) if v < 1]
    if not 0 < lr < 1:
        problems.append(f"lr={lr}: must be in (0, 1); 2e-3 suits the tiny model")
    if not 0 <= warmup_ratio < 1:
        problems.append(f"warmup_ratio={warmup_ratio}: must be in [0, 1)")
    if problems:
        raise ValueError("toyworld sft: " + "; ".join(problems))
    # Everything from the model's initialisation to the last step runs under one setting.
    with deterministic_training(seed, threads):
        out = (build_model or build_untrained_model)(world_dir, out_dir, seed=seed)
        processor = AutoProcessor.from_pretrained(out)
        model = LlavaForConditionalGeneration.from_pretrained(out)
        split = Path(world_dir) / "train"
        pixels, examples = load_examples(split, processor)
        extra = extra_examples(split, processor, seed) if extra_examples else []
        log.info("toyworld sft: %d examples (+%d %s) on %d images, %d steps of %d, %d threads", len(examples),
                 len(extra), mix or "standard", len(pixels), steps, batch_size, threads)
        start = time.monotonic()
        losses = _train(model, pixels, examples + extra, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                        warmup_ratio=warmup_ratio, log_every=log_every, pad_id=processor.tokenizer.pad_token_id)
        seconds = round(time.monotonic() - start, 1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    params = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
              **({"mix": mix} if mix else {})}
    # The weights depend on the thread count too (reductions split per thread), so it is recorded.
    record = {**params, "threads": threads, "deterministic": True, "seconds": seconds, "examples": len(examples),
              "loss_curve": losses,
              **({"extra_examples": len(extra)} if extra_examples else {})}
    Path(out, SFT_RECORD_FILE).write_text(json.dumps(record, indent=1))
    world = json.loads(Path(world_dir, WORLD_FILE).read_text())
    write_model_card(out, ModelCard(kind="full", base=None, recipe={"toyworld_sft": params},
                                    data={"world_seed": world["seed"], "train_sha256": world["sha256"]["train"]}))
    log.info("toyworld sft: saved %s after %d steps (%.1f s)", out, steps, seconds)
    return out


@contextlib.contextmanager
def deterministic_training(seed: int, threads: int) -> Iterator[None]:
    """A fixed thread count, deterministic kernels and seeded torch/numpy/random for one training
    run; the thread count, the deterministic flag and the random states are put back afterwards,
    so the rest of the process (other stages, tests) is unaffected.

    Measured on 2 cores (torch 2.13 CPU, MKL + OpenMP): the same thread count gave bit-identical
    weights with or without heavy load (three busy processes); 1 vs 2 threads gave different ones.
    Every op the tiny LLaVA trains with (SDPA on CPU included) has a deterministic CPU kernel, so
    warn_only=False holds: an op without one raises rather than silently varying."""
    import numpy as np
    import torch

    saved_threads = torch.get_num_threads()
    saved_flag = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    saved_random = (random.getstate(), np.random.get_state())
    torch.set_num_threads(threads)
    try:
        # Once per process, before any inter-op work, and never undone: later calls raise. It only
        # sizes the pool that torch.jit.fork uses; the training ops run on the intra-op threads above.
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        log.debug("toyworld sft: inter-op threads already fixed at %d", torch.get_num_interop_threads())
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        with torch.random.fork_rng(devices=[]):  # CPU only: the caller's torch random state comes back
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(saved_flag[0], warn_only=saved_flag[1])
        torch.set_num_threads(saved_threads)
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])


def load_examples(split_dir: Path, processor) -> tuple[Any, list[Example]]:
    """Pixel values of every image once, and (prompt ids, answer ids) per LLaVA entry."""
    import torch
    from PIL import Image

    entries = json.loads((split_dir / LLAVA_FILE).read_text(encoding="utf-8"))
    image_index: dict[str, int] = {}
    for e in entries:
        image_index.setdefault(e["image"], len(image_index))
    images = [Image.open(split_dir / rel).convert("RGB") for rel in image_index]
    pixels = torch.cat([processor.image_processor(images[i:i + 256], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(images), 256)])
    tok = processor.tokenizer
    cache: dict[str, list[int]] = {}
    examples = []
    for e in progress(entries, "toyworld sft tokenise"):
        question = e["conversations"][0]["value"].removeprefix("<image>\n")
        answer = e["conversations"][1]["value"]
        if question not in cache:
            cache[question] = prompt_ids(processor, question, images[image_index[e["image"]]])
        # " answer</s>": what the chat template renders after "ASSISTANT:" (see model.py).
        answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append(Example(image_index[e["image"]], cache[question], answer_ids))
    return pixels, examples


def prompt_ids(processor, question: str, image) -> list[int]:
    """The generation prompt's ids with the image tokens expanded, as rollout/evaluate build it.
    The tiny LLaVA has a fixed resolution, so the ids do not depend on which image is shown."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=image, return_tensors="pt")["input_ids"][0].tolist()


def collate(batch: list[Example], pixels, pad_id: int) -> dict[str, Any]:
    """Right-padded ids; labels only on the answer positions (answer-only SFT)."""
    import torch

    length = max(len(e.prompt_ids) + len(e.answer_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, e in enumerate(batch):
        seq = e.prompt_ids + e.answer_ids
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, len(e.prompt_ids):len(seq)] = torch.tensor(e.answer_ids)
        mask[row, :len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": pixels[[e.image for e in batch]]}


def lr_lambda(warmup: int, steps: int, floor: float = 0.1):
    """Linear warmup, then cosine down to `floor` x lr (the ENVIRONMENT.md probe's schedule)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _train(model, pixels, examples: list[Example], *, steps: int, seed: int, batch_size: int, lr: float,
           warmup_ratio: float, log_every: int, pad_id: int) -> list[dict[str, float]]:
    """The loop: seeded shuffles epoch by epoch, AdamW, clipped gradients; returns the loss curve."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(max(1, int(warmup_ratio * steps)), steps))
    model.train()
    order: list[int] = []
    curve, running, start = [], 0.0, time.monotonic()
    for step in range(1, steps + 1):  # progress: a log line every log_every steps
        if len(order) < batch_size:  # next epoch: a fresh seeded permutation
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = model(**collate(batch, pixels, pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = step % log_every or log_every
            curve.append({"step": step, "loss": round(running / n, 4), "seconds": round(time.monotonic() - start, 1)})
            log.info("toyworld sft: step %d/%d loss %.4f lr %.2e", step, steps, running / n, sched.get_last_lr()[0])
            running = 0.0
    model.eval()
    return curve
