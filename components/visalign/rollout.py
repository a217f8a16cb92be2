"""Rollout: the policy answers every prompt on its clean images (chosen) and on its augmented
view (rejected), greedily and in batches.

Generation goes through a small engine interface (`GenerationEngine`) so that a vLLM engine can
replace the transformers one without touching the stage. Finished responses are appended to
responses.jsonl every `checkpoint_every` prompts; a re-run skips the prompts already answered.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from visalign import schema
from visalign.recipes import RolloutParams
from visalign.report import StageReport, progress
from visalign.schema import Prompt, Response, View

log = logging.getLogger(__name__)
CLEAN = "clean"


@dataclass
class GenerationRequest:
    id: str
    images: list[Any]  # PIL images, in the order their placeholders appear
    question: str
    # Replays a tensor-space augmentation on this request's slice of pixel_values.
    pixel_transform: Callable[[Any], Any] | None = None


@dataclass
class GenerationResult:
    id: str
    text: str
    num_tokens: int
    finish_reason: str  # "eos" or "length"


class GenerationEngine(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


def user_message(question: str, num_images: int) -> list[dict[str, Any]]:
    """The chat turn every stage builds: image placeholders first, then the question."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


class HFEngine:
    """Batched greedy generation with transformers (left padding, one generate() per batch)."""

    def __init__(self, model: Any, processor: Any, *, batch_size: int, max_new_tokens: int):
        self.model, self.processor = model, processor
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.processor.tokenizer.padding_side = "left"

    def _encode(self, batch: Sequence[GenerationRequest]):
        texts = [self.processor.apply_chat_template(user_message(r.question, len(r.images)),
                                                    add_generation_prompt=True) for r in batch]
        images = [im for r in batch for im in r.images]
        enc = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        if "pixel_values" in enc and any(r.pixel_transform for r in batch):
            # pixel_values stacks every request's images in order; transform each request's slice.
            start = 0
            for r in batch:
                n = len(r.images)
                if r.pixel_transform is not None:
                    enc["pixel_values"][start:start + n] = r.pixel_transform(enc["pixel_values"][start:start + n])
                start += n
        return enc

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        results = []
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i:i + self.batch_size]
            enc = self._encode(batch).to(self.model.device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            with torch.inference_mode():
                out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for r, ids in zip(batch, new, strict=True):
                stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                kept = ids if stop is None else ids[:stop + 1]
                results.append(GenerationResult(
                    id=r.id, text=tok.decode(kept, skip_special_tokens=True).strip(),
                    num_tokens=len(kept), finish_reason="length" if stop is None else "eos"))
        return results


def build_engine(name: str, model: Any, processor: Any, params: RolloutParams) -> GenerationEngine:
    if name == "hf":
        return HFEngine(model, processor, batch_size=params.batch_size, max_new_tokens=params.max_new_tokens)
    raise ValueError(f"rollout.engine={name!r}: unknown engine; available: hf")


def open_images(base_dir: str | os.PathLike, rel_paths: list[str]) -> list[Any]:
    from PIL import Image

    images = []
    for rel in rel_paths:
        with Image.open(Path(base_dir) / rel) as im:
            images.append(im.convert("RGB"))
    return images


def _requests_for(prompt: Prompt, view: View | None, prompts_dir: str, views_dir: str | None):
    """The clean request and the augmented-view request of one prompt."""
    from visalign import augment

    clean_images = open_images(prompts_dir, prompt.images)
    reqs = [GenerationRequest(id=CLEAN, images=clean_images, question=prompt.question)]
    if view is not None:
        if view.space == "pixel":
            reqs.append(GenerationRequest(id=view.id, images=open_images(views_dir, view.images or []),
                                          question=prompt.question))
        else:
            reqs.append(GenerationRequest(id=view.id, images=clean_images, question=prompt.question,
                                          pixel_transform=lambda pv, v=view: augment.apply_to_pixel_values(pv, v)))
    return reqs


def run(*, prompts_dir: str, model: str, output_dir: str, params: RolloutParams,
        views_dir: str | None = None, engine: GenerationEngine | None = None) -> StageReport:
    """Answer every prompt on its clean images and, when views are given, on its view."""
    from visalign.models import load_model

    report = StageReport("rollout")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)
    views = {v.prompt_id: v for v in schema.read_rows(Path(views_dir) / schema.VIEWS_FILE)} if views_dir else {}
    report.rows_in = len(prompts)
    ckpt = out / schema.RESPONSES_FILE
    done = {r.prompt_id for r in schema.read_checkpoint(ckpt, Response)}
    if done:
        log.info("rollout: resuming, %d of %d prompts already answered", len(done), len(prompts))
        schema.write_rows(ckpt, schema.read_checkpoint(ckpt, Response))  # drop a torn last line
    if engine is None:
        loaded = load_model(model, dtype=params.dtype)
        engine = build_engine(params.engine, loaded.model, loaded.processor, params)
    todo = [p for p in prompts if p.id not in done]
    tokens, generated, gen_seconds = 0, 0, 0.0
    chunks = [todo[i:i + params.checkpoint_every] for i in range(0, len(todo), params.checkpoint_every)]
    for chunk in progress(chunks, desc="rollout", total=len(chunks)):
        requests, owners = [], []
        for p in chunk:
            if views_dir and p.id not in views:
                report.drop("no_view", f"prompt {p.id}: no augmented view in {views_dir}")
                continue
            try:
                reqs = _requests_for(p, views.get(p.id), prompts_dir, views_dir)
            except OSError as e:
                report.drop("unreadable_image", f"prompt {p.id} ({p.source} row {p.source_row}): {e}")
                continue
            requests += reqs
            owners += [p.id] * len(reqs)
        start = time.monotonic()
        results = engine.generate(requests)
        gen_seconds += time.monotonic() - start
        rows = [Response(id=schema.stable_id(pid, res.id, 0), prompt_id=pid, view=res.id, text=res.text,
                         num_tokens=res.num_tokens, finish_reason=res.finish_reason)
                for pid, res in zip(owners, results, strict=True)]
        tokens += sum(r.num_tokens for r in rows)
        generated += len(rows)
        schema.append_rows(ckpt, rows)
    all_rows = schema.read_rows(ckpt)
    report.rows_out = len(all_rows)
    report.extra.update(
        model=str(model), resumed_prompts=len(done), responses=len(all_rows), new_tokens=tokens,
        generation_seconds=round(gen_seconds, 3),
        responses_per_second=round(generated / gen_seconds, 3) if gen_seconds else None,
        tokens_per_second=round(tokens / gen_seconds, 3) if gen_seconds else None,
    )
    report.write(out)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl (the sample stage's output).")
    parser.add_argument("--views", default=None, help="Directory with views.jsonl (the augment stage's output).")
    parser.add_argument("--model", required=True, help="Model directory or s3:// URI.")
    parser.add_argument("--output", required=True, help="Output directory for responses.jsonl and report.json.")
    recipes.add_arguments(parser, "rollout")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "rollout")
    run(prompts_dir=args.prompts, views_dir=args.views, model=args.model, output_dir=args.output,
        params=recipe.rollout)
    return 0
