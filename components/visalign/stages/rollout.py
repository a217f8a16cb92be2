"""Rollout: the policy answers every prompt on its clean images (chosen) and on its augmented
view (rejected), greedily and in batches.

Generation goes through a small engine interface (`GenerationEngine`) so that a vLLM engine can
replace the transformers one without touching the stage. Finished responses are appended to
responses.jsonl every `checkpoint_every` prompts; a re-run skips the prompts already answered.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from visalign import image_layout, inputs, schema
from visalign.inputs import output_path
from visalign.recipes import RolloutParams
from visalign.recipes.registry import PROMPT_TEMPLATES
from visalign.report import StageReport, progress
from visalign.schema import Prompt, Response, View
from visalign.stages import resume

log = logging.getLogger(__name__)
CLEAN = "clean"


@dataclass
class GenerationRequest:
    id: str
    images: list[Any]  # PIL images, in the order their placeholders appear
    question: str
    # Replays a tensor-space augmentation on this request's slice of pixel_values.
    pixel_transform: Callable[[Any], Any] | None = None
    # Text the assistant turn starts with; the model continues it (MPO's DropoutNTP). The result's
    # text is the continuation only, its leading whitespace kept: prefix + text is the whole answer.
    assistant_prefix: str = ""
    # Who owns this request and which sample it is (rollout.run: prompt id and sample index). It
    # enters the batch seed, so the N copies of one prompt, or two prompts asking the same question,
    # draw different samples.
    seed_key: str | None = None


@dataclass
class GenerationResult:
    id: str
    text: str
    num_tokens: int
    finish_reason: str  # "eos" or "length"
    capture: dict[str, Any] | None = None  # attention per image + perplexity, when asked (visalign.stages.capture)


class GenerationEngine(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


def render_question(question: str, template: str) -> str:
    """`question` put through the named template (PROMPT_TEMPLATES)."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"rollout.prompt_template={template!r}: unknown; choose one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[template].format(question=question)


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one engine: greedy unless do_sample (then seeded, reproducible)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_params(cls, params: RolloutParams) -> Sampling:
        return cls(do_sample=params.do_sample, temperature=params.temperature, top_k=params.top_k,
                   top_p=params.top_p, seed=params.seed)

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def batch_seed(self, batch: Sequence[GenerationRequest]) -> int:
        """A seed from the base seed and the batch's content (seed_key included): the same requests in
        the same batches give the same samples in any run, whatever ran before them."""
        key = schema.stable_id(self.seed, [(r.id, r.question, r.assistant_prefix, len(r.images))
                                           + ((r.seed_key,) if r.seed_key is not None else ()) for r in batch])
        return int(key[:8], 16)


IMAGE_MARKER = "<image>"  # in a question: where an image goes (multi-image prompts, e.g. MIA-DPO's sequences)


def user_content(question: str, num_images: int) -> list[dict[str, Any]]:
    """Image placeholders first, then the question; or, when the question holds one IMAGE_MARKER
    per image, text and images interleaved where the markers are (the chat template renders them)."""
    if num_images and question.count(IMAGE_MARKER) == num_images:
        content: list[dict[str, Any]] = []
        for i, part in enumerate(question.split(IMAGE_MARKER)):
            content += ([{"type": "image"}] if i else []) + ([{"type": "text", "text": part}] if part else [])
        return content
    return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]


def user_message(question: str, num_images: int) -> list[dict[str, Any]]:
    """The chat turn every stage builds (see user_content for where the images go)."""
    return [{"role": "user", "content": user_content(question, num_images)}]


class HFEngine:
    """Batched generation with transformers (left padding, one generate() per batch); greedy by
    default, seeded sampling with `sampling`."""

    def __init__(self, model: Any, processor: Any, *, batch_size: int, max_new_tokens: int,
                 capture_attention: bool = False, attention_layer: int | None = None,
                 sampling: Sampling | None = None):
        self.model, self.processor = model, processor
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.sampling = sampling or Sampling()
        self.processor.tokenizer.padding_side = "left"
        self.capture_attention, self.attention_layer = capture_attention, attention_layer
        if capture_attention:  # one decoder layer's attention to each image (visalign.mia_dpo.attention)
            from visalign.stages import capture

            capture.enable(model)
            capture.decoder_attention(model, attention_layer)  # a bad layer fails here, not mid-run

    def _prompt_text(self, r: GenerationRequest) -> str:
        messages = user_message(r.question, len(r.images))
        if not r.assistant_prefix:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # The assistant turn rendered as in training (e.g. LLaVA's space after "ASSISTANT:") and cut
        # where the prefix ends, so the model continues the very tokens it is trained on.
        turn = {"role": "assistant", "content": [{"type": "text", "text": r.assistant_prefix}]}
        return self.processor.apply_chat_template(messages + [turn], continue_final_message=True)

    def _encode(self, batch: Sequence[GenerationRequest]):
        """One processor call for the batch, images passed per prompt (as TRL's collator passes them:
        a flat list lets some processors pair images with the wrong prompt or encode them otherwise);
        tensor-space views replayed on exactly their own images' pixels (visalign.image_layout)."""
        texts = [self._prompt_text(r) for r in batch]
        images = [list(r.images) for r in batch] if any(r.images for r in batch) else None
        enc = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        layout = None
        if "pixel_values" in enc and (self.capture_attention or any(r.pixel_transform for r in batch)):
            layout = image_layout.layout(enc, self.processor, self.model.config, [len(r.images) for r in batch])
            for b, r in enumerate(batch):
                if r.pixel_transform is not None:
                    regions = [idx for image in layout.regions[b] for idx in image]
                    flat = image_layout.gather(enc["pixel_values"], regions)
                    image_layout.scatter(enc["pixel_values"], regions, r.pixel_transform(flat))
        return enc, layout

    def _batches(self, requests: Sequence[GenerationRequest]):
        """Indices of batches of batch_size; one holding prompts with and without images is split in two
        (a processor takes images for every prompt of a call or for none), each part in request order."""
        for i in range(0, len(requests), self.batch_size):
            batch = list(range(i, min(i + self.batch_size, len(requests))))
            with_images = [k for k in batch if requests[k].images]
            if with_images and len(with_images) < len(batch):
                yield with_images
                yield [k for k in batch if not requests[k].images]
            else:
                yield batch

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        results: dict[int, GenerationResult] = {}
        for positions in self._batches(requests):
            batch = [requests[k] for k in positions]
            enc, layout = self._encode(batch)
            enc = enc.to(self.model.device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            capture = self._capture(enc, layout, eos_ids)
            # fork_rng: seeding for this batch leaves the caller's random state alone.
            devices = [self.model.device] if self.model.device.type == "cuda" else []
            with torch.inference_mode(), capture or contextlib.nullcontext(), torch.random.fork_rng(devices):
                torch.manual_seed(self.sampling.batch_seed(batch))
                out = self.model.generate(**enc, **self.sampling.generate_kwargs(), max_new_tokens=self.max_new_tokens,
                                          pad_token_id=tok.pad_token_id,
                                          **({"logits_processor": [capture]} if capture else {}))
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            captured = capture.results() if capture else [None] * len(batch)
            for k, r, ids, cap in zip(positions, batch, new, captured, strict=True):
                stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                kept = ids if stop is None else ids[:stop + 1]
                text = tok.decode(kept, skip_special_tokens=True)
                # A continuation keeps its leading whitespace: it may end the prefix's last word.
                text = text.rstrip() if r.assistant_prefix else text.strip()
                results[k] = GenerationResult(
                    id=r.id, text=text,
                    num_tokens=len(kept), finish_reason="length" if stop is None else "eos", capture=cap)
        return [results[k] for k in range(len(requests))]

    def _capture(self, enc: Any, layout: image_layout.ImageLayout | None, eos_ids: set[int]):
        if not self.capture_attention:
            return None
        from visalign.stages import capture

        if layout is None:  # no images in this batch: nothing to attend to, perplexity still recorded
            layout = image_layout.layout(enc, self.processor, self.model.config, [0] * enc["input_ids"].shape[0])
        return capture.Capture(self.model, self.attention_layer, enc, layout, eos_ids)


def build_engine(name: str, model: Any, processor: Any, params: RolloutParams) -> GenerationEngine:
    if name == "hf":
        return HFEngine(model, processor, batch_size=params.batch_size, max_new_tokens=params.max_new_tokens,
                        capture_attention=params.capture_attention, attention_layer=params.attention_layer,
                        sampling=Sampling.from_params(params))
    raise ValueError(f"rollout.engine={name!r}: unknown engine; available: hf")


def open_images(base_dir: str | os.PathLike, rel_paths: list[str]) -> list[Any]:
    """The images in RGB, fully decoded; a BadImage (visalign.inputs) names the file that is not."""
    return [inputs.load_rgb(Path(base_dir) / rel, f"{base_dir}/{rel}") for rel in rel_paths]


def _requests_for(prompt: Prompt, view: View | None, prompts_dir: str, views_dir: str | None,
                  params: RolloutParams | None = None):
    """The clean request and the augmented-view request of one prompt (without images when
    params.with_image is off; the question through params.prompt_template)."""
    from visalign.stages import augment

    with_image = params.with_image if params is not None else True
    question = render_question(prompt.question, params.prompt_template) if params is not None else prompt.question
    clean_images = open_images(prompts_dir, prompt.images) if with_image else []
    reqs = [GenerationRequest(id=CLEAN, images=clean_images, question=question)]
    if view is not None and with_image:
        if view.space == "pixel":
            reqs.append(GenerationRequest(id=view.id, images=open_images(views_dir, view.images or []),
                                          question=question))
        else:
            reqs.append(GenerationRequest(id=view.id, images=clean_images, question=question,
                                          pixel_transform=lambda pv, v=view: augment.apply_to_pixel_values(pv, v)))
    return reqs


def samples_for(prompt: Prompt, params: RolloutParams) -> int:
    """rollout.num_samples for a prompt with a reference answer, samples_without_reference without
    one (MPO's DropoutNTP uses one answer of those; the correctness pairs need all N)."""
    return params.num_samples if prompt.reference is not None else params.samples_without_reference


def _chunk_requests(chunk: list[Prompt], views: dict[str, View], prompts_dir: str, views_dir: str | None,
                    params: RolloutParams, report: StageReport) -> tuple[list[GenerationRequest], list[tuple[str, int]]]:
    """The requests of one chunk of prompts and, for each, its (prompt id, sample index)."""
    requests, owners = [], []
    for p in chunk:
        if views_dir and p.id not in views:
            report.drop("no_view", f"prompt {p.id}: no augmented view in {views_dir}")
            continue
        try:
            reqs = _requests_for(p, views.get(p.id), prompts_dir, views_dir, params)
        except inputs.BadImage as e:
            report.drop(e.reason, f"prompt {p.id} ({p.source} row {p.source_row}): {e}")
            continue
        for k in range(samples_for(p, params)):  # samples of one request sit together (same batch, if it fits)
            # seed_key: without it the copies of a request are identical, and so are their batches' seeds.
            requests += [replace(r, seed_key=f"{p.id}#{k}") for r in reqs]
            owners += [(p.id, k)] * len(reqs)
    return requests, owners


def generation_settings(params: RolloutParams) -> dict[str, Any]:
    """The parameters responses depend on: all but the checkpoint interval, the resume policy and, for
    greedy decoding, the batch size (a resumed run may use a smaller one after running out of memory)."""
    settings = dataclasses.asdict(params)
    for name in ("checkpoint_every", "resume_mismatch") + (() if params.do_sample else ("batch_size",)):
        settings.pop(name)
    return settings


def _fingerprint(model: str, prompts_dir: str, views_dir: str | None, params: RolloutParams) -> dict[str, str]:
    """What the responses depend on: the model's and processor's files, the prompts and views, and the
    generation settings."""
    settings = generation_settings(params)
    inputs_ = {"prompts": resume.file_digest(Path(prompts_dir) / schema.PROMPTS_FILE)}
    if views_dir:
        inputs_["views"] = resume.file_digest(Path(views_dir) / schema.VIEWS_FILE)
    return resume.fingerprint(model=resume.model_digest(model), inputs=inputs_, parameters=settings)


def run(*, prompts_dir: str, model: str, output_dir: str, params: RolloutParams,
        views_dir: str | None = None, engine: GenerationEngine | None = None) -> StageReport:
    """Answer every prompt on its clean images and, when views are given, on its view."""
    from visalign.models import load_model

    report = StageReport("rollout")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)
    views = {v.prompt_id: v for v in schema.read_rows(Path(views_dir) / schema.VIEWS_FILE)} if views_dir else {}
    report.rows_in = len(prompts)
    ckpt = out / schema.RESPONSES_FILE
    parts = _fingerprint(model, prompts_dir, views_dir, params)
    resume.check(out, parts, [ckpt], params.resume_mismatch, "rollout", "rollout")
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
        requests, owners = _chunk_requests(chunk, views, prompts_dir, views_dir, params, report)
        start = time.monotonic()
        results = engine.generate(requests)
        gen_seconds += time.monotonic() - start
        rows = [Response(id=schema.stable_id(pid, res.id, k), prompt_id=pid, view=res.id, text=res.text,
                         num_tokens=res.num_tokens, finish_reason=res.finish_reason, sample_index=k,
                         meta=res.capture or {})
                for (pid, k), res in zip(owners, results, strict=True)]
        tokens += sum(r.num_tokens for r in rows)
        generated += len(rows)
        schema.append_rows(ckpt, rows)
    all_rows = schema.read_rows(ckpt)
    report.rows_out = len(all_rows)
    report.extra.update(
        model=str(model), resumed_prompts=len(done), responses=len(all_rows), new_tokens=tokens,
        num_samples=params.num_samples, samples_without_reference=params.samples_without_reference,
        prompts_with_reference=sum(p.reference is not None for p in prompts),
        prompts_without_reference=sum(p.reference is None for p in prompts),
        do_sample=params.do_sample, prompt_template=params.prompt_template,
        with_image=params.with_image,
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
