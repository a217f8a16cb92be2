"""IPA, one round of collection: contrastive sampling and reflective revision (METHODS.md section 4).

For every seed this round works on (round 1: all; round r > 1: the seeds the previous round left
without a pair, read from its `pending.jsonl`), the round's policy answers

- on the clean image, and on each perturbed image (`ipa.perturbations`): noise is augment's
  forward-diffusion noise on the processor's tensor, blur and scale are pixel operations
  (augment_pixel's Gaussian blur, a down-then-up resize);

then, with `ipa.revise`, the reviser (the policy unless `ipa.reviser_model`) writes feedback on
each of those responses and a refined response from it. The last round's feedback is
reference-guided: its template shows the seed's reference answer. Every response is a candidate
for the verifier (visalign.ipa.pairs), written as responses.jsonl with its origin in `view`
("clean", "noise", "blur", "scale", "revised:<view>", with the revised sample's sample_index) and
the feedback in `meta`.
With `rollout.num_samples` > 1 and `rollout.do_sample` (rollout's seeded sampling), each view is
sampled that many times ("normal sampling"); the reviser decodes greedily.

Resumable like rollout: candidates are appended per chunk of prompts; a re-run skips the prompts
whose candidates are all there and redoes those a kill left half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.errors import InputError
from visalign.inputs import BadImage, decode_text, output_path
from visalign.recipes import ConfigError, IpaParams, Recipe
from visalign.report import StageReport, progress
from visalign.schema import Prompt, Response
from visalign.stages import resume
from visalign.stages.rollout import CLEAN, GenerationRequest, generation_settings, open_images

log = logging.getLogger(__name__)
PENDING_FILE = "pending.jsonl"  # written by ipa_pairs: the seeds of the next round
REVISED = "revised:"


# ---- contrastive sampling: the perturbed views -------------------------------------------------

def _noise(params: IpaParams, prompt: Prompt):
    from visalign.stages import augment

    seed = augment.view_seed(params.seed, f"{prompt.id}:noise")
    return lambda pv: augment.add_diffusion_noise(pv, params.noise_step, seed)


def _blur(images: list[Any], params: IpaParams) -> list[Any]:
    from visalign.stages.augment_pixel import gaussian_blur

    return [gaussian_blur(im, params.blur_sigma) for im in images]


def _scale(images: list[Any], params: IpaParams) -> list[Any]:
    from PIL import Image

    out = []
    for im in images:
        small = (max(1, round(im.width * params.scale_factor)), max(1, round(im.height * params.scale_factor)))
        out.append(im.resize(small, Image.Resampling.BILINEAR).resize(im.size, Image.Resampling.BILINEAR))
    return out


def sample_requests(prompt: Prompt, images: list[Any], params: IpaParams, num_samples: int = 1
                    ) -> list[GenerationRequest]:
    """The clean request and one request per perturbation, each `num_samples` times; ids are
    "<view>#<sample index>" (the samples of a view sit together, in one batch when it fits)."""
    views = [GenerationRequest(id=CLEAN, images=images, question=prompt.question)]
    for name in params.perturbations:
        if name == "noise":
            views.append(GenerationRequest(id=name, images=images, question=prompt.question,
                                           pixel_transform=_noise(params, prompt)))
        else:
            views.append(GenerationRequest(id=name, images=(_blur if name == "blur" else _scale)(images, params),
                                           question=prompt.question))
    return [replace(v, id=f"{v.id}#{k}") for v in views for k in range(num_samples)]


# ---- reflective revision ----------------------------------------------------------------------

def feedback_text(params: IpaParams, prompt: Prompt, response: str, reference_guided: bool) -> str:
    if reference_guided:
        return params.reference_feedback_prompt.format(question=prompt.question, response=response,
                                                       reference=prompt.reference)
    return params.feedback_prompt.format(question=prompt.question, response=response)


def refine_text(params: IpaParams, prompt: Prompt, response: str, feedback: str) -> str:
    return params.refine_prompt.format(question=prompt.question, response=response, feedback=feedback)


def _collect_chunk(chunk: list[tuple[Prompt, list[Any]]], policy, reviser, params: IpaParams, round_index: int,
                   reference_guided: bool, num_samples: int) -> list[Response]:
    """Sample (clean + perturbed), then feedback and refinement on each sample, as batched calls."""
    owners, reqs = [], []
    for prompt, images in chunk:
        for r in sample_requests(prompt, images, params, num_samples):
            owners.append((prompt, images))
            reqs.append(r)
    samples = policy.generate(reqs)
    rows = [_row(p, req.id, res, round_index) for (p, _), req, res in zip(owners, reqs, samples, strict=True)]
    if not params.revise or not rows:
        return rows
    fb_reqs = [GenerationRequest(id=row.id, images=images, question=feedback_text(params, p, row.text, reference_guided))
               for (p, images), row in zip(owners, rows, strict=True)]
    feedback = reviser.generate(fb_reqs)
    refine_reqs = [GenerationRequest(id=row.id, images=images, question=refine_text(params, p, row.text, fb.text))
                   for (p, images), row, fb in zip(owners, rows, feedback, strict=True)]
    refined = reviser.generate(refine_reqs)
    for (p, _), row, fb, res in zip(owners, list(rows), feedback, refined, strict=True):
        rows.append(_row(p, f"{REVISED}{row.view}#{row.sample_index}", res, round_index,
                         {"revised_from": row.id, "feedback": fb.text, "reference_guided": reference_guided}))
    return rows


def _row(prompt: Prompt, request_id: str, res, round_index: int, meta: dict[str, Any] | None = None) -> Response:
    view, _, k = request_id.rpartition("#")
    return Response(id=schema.stable_id(prompt.id, view, int(k), round_index), prompt_id=prompt.id, view=view,
                    text=res.text, num_tokens=res.num_tokens, finish_reason=res.finish_reason, sample_index=int(k),
                    meta={"round": round_index, **(meta or {})})


# ---- the stage --------------------------------------------------------------------------------

def pending_prompts(prompts: list[Prompt], state_dir: str | None, report: StageReport
                    ) -> tuple[list[Prompt], int | None]:
    """Round 1 (no state): every prompt. Later rounds: those in the previous round's pending list;
    a pending id that is not among the prompts is counted in `report` (unknown_pending_id)."""
    if not state_dir:
        return prompts, None
    path = Path(state_dir) / PENDING_FILE
    if not path.exists():
        raise InputError(path, "not found; --state must be the previous round's ipa-pairs output")
    ids = set()
    for i, line in enumerate(decode_text(path.read_bytes(), path).splitlines(), start=1):
        if line.strip():
            try:
                ids.add(json.loads(line)["prompt_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise schema.SchemaError(path, i, "prompt_id", "expected {\"prompt_id\": ...}") from None
    known = {p.id for p in prompts}
    for pid in sorted(ids - known):
        report.drop("unknown_pending_id", f"{path}: prompt_id {pid} is not in the prompts (was --state made "
                                          "from another sample step's prompts?)")
    return [p for p in prompts if p.id in ids], len(ids)


def expected_ids(prompt: Prompt, params: IpaParams, num_samples: int, round_index: int) -> set[str]:
    """The ids of every candidate a finished prompt has (the same ids _row gives)."""
    views = [CLEAN, *params.perturbations]
    views += [REVISED + v for v in views] if params.revise else []
    return {schema.stable_id(prompt.id, v, k, round_index) for v in views for k in range(num_samples)}


def _resume(ckpt: Path, prompts: list[Prompt], recipe: Recipe, round_index: int) -> tuple[set[str], int]:
    """The prompts whose candidates are all in the checkpoint, and how many were partial. A kill
    mid-append can leave a prompt half-written: its rows are dropped so that it is done again."""
    rows = schema.read_checkpoint(ckpt, Response)
    have: dict[str, set[str]] = {}
    for r in rows:
        have.setdefault(r.prompt_id, set()).add(r.id)
    by_id = {p.id: p for p in prompts}
    done = {pid for pid, ids in have.items() if pid in by_id and
            expected_ids(by_id[pid], recipe.ipa, recipe.rollout.num_samples, round_index) <= ids}
    schema.write_rows(ckpt, [r for r in rows if r.prompt_id in done])  # also drops a torn last line
    return done, len(have) - len(done)


def build_engines(model: str, recipe: Recipe):
    """The policy's engine (greedy, or seeded sampling with rollout.do_sample) and the reviser's
    (greedy; the same loaded model unless ipa.reviser_model)."""
    from visalign.models import load_model
    from visalign.stages.rollout import HFEngine, Sampling

    policy = load_model(model, dtype=recipe.rollout.dtype)
    reviser = policy if not recipe.ipa.reviser_model else load_model(recipe.ipa.reviser_model, dtype=recipe.rollout.dtype)
    return (HFEngine(policy.model, policy.processor, batch_size=recipe.rollout.batch_size,
                     max_new_tokens=recipe.rollout.max_new_tokens, sampling=Sampling.from_params(recipe.rollout)),
            HFEngine(reviser.model, reviser.processor, batch_size=recipe.rollout.batch_size,
                     max_new_tokens=recipe.ipa.feedback_max_new_tokens))


def _notes(params: IpaParams) -> list[str]:
    """Settings that run but probably not as meant; logged and kept in the report."""
    notes = []
    if params.rounds > 1 and not params.revise:
        notes.append(f"ipa.revise=False with ipa.rounds={params.rounds}: the last round gets no reference-guided "
                     "feedback (revision writes it), so later rounds only resample; set ipa.revise=True for IPA's "
                     "round 3")
    for note in notes:
        log.warning("ipa-collect: %s", note)
    return notes


def run(*, prompts_dir: str, model: str, output_dir: str, recipe: Recipe, round_index: int,
        state_dir: str | None = None, engines: tuple[Any, Any] | None = None) -> StageReport:
    """Candidates of round `round_index` (1-based) of `recipe.ipa.rounds` for the pending seeds."""
    params = recipe.ipa
    if not 1 <= round_index <= params.rounds:
        raise ConfigError([f"round_index={round_index}: must be in [1, ipa.rounds={params.rounds}]"])
    report = StageReport("ipa-collect")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts, pending_in = pending_prompts(schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE), state_dir,
                                          report)
    # The last round's feedback sees the reference: it is for the hard seeds that earlier rounds left
    # without a pair, so a single-round run (no earlier round) has none.
    reference_guided = params.revise and round_index == params.rounds > 1
    notes = _notes(params)
    report.rows_in = len(prompts)
    ckpt = out / schema.RESPONSES_FILE
    # Candidates made by another policy, reviser or recipe are not this round's: refuse (or restart).
    parts = resume.fingerprint(model=resume.model_digest(model),
                               reviser=resume.model_digest(params.reviser_model or model),
                               prompts=resume.file_digest(Path(prompts_dir) / schema.PROMPTS_FILE),
                               parameters={"ipa": dataclasses.asdict(params), "round": round_index,
                                           "rollout": generation_settings(recipe.rollout)})
    resume.check(out, parts, [ckpt], recipe.rollout.resume_mismatch, "ipa-collect", "rollout")
    done, partial = _resume(ckpt, prompts, recipe, round_index)
    todo = []
    for p in prompts:
        if p.id in done:
            continue
        if not (p.reference or "").strip():
            report.drop("no_reference", f"prompt {p.id} ({p.source} row {p.source_row}): field 'reference' is "
                                        "empty; IPA verifies against the seed's reference answer")
            continue
        todo.append(p)
    if todo and engines is None:
        engines = build_engines(model, recipe)
    chunk_size = recipe.rollout.checkpoint_every
    start = time.monotonic()
    for i in progress(range(0, len(todo), chunk_size), desc=f"ipa round {round_index}",
                      total=-(-len(todo) // chunk_size)):
        chunk = []
        for p in todo[i:i + chunk_size]:
            try:
                chunk.append((p, open_images(prompts_dir, p.images)))
            except BadImage as e:
                report.drop(e.reason, f"prompt {p.id} ({p.source} row {p.source_row}): {e}")
        schema.append_rows(ckpt, _collect_chunk(chunk, engines[0], engines[1], params, round_index, reference_guided,
                                                recipe.rollout.num_samples))
    rows = schema.read_rows(ckpt)
    report.rows_out = len(rows)
    report.extra.update(round=round_index, rounds=params.rounds, model=str(model), pending_in=pending_in,
                        reference_guided=reference_guided, resumed_prompts=len(done), partial_prompts_redone=partial,
                        notes=notes,
                        candidates_by_view=dict(Counter(r.view for r in rows)),
                        generation_seconds=round(time.monotonic() - start, 3))
    report.write(out, allow_empty=state_dir is not None)  # a later round may have nothing left pending
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl (with references) and images.")
    parser.add_argument("--model", required=True, help="The round's policy: model directory, adapter or s3:// URI.")
    parser.add_argument("--output", required=True, help="Output directory for responses.jsonl and report.json.")
    parser.add_argument("--round", type=int, default=1, dest="round_index", help="This round (1-based).")
    parser.add_argument("--state", default=None, help="The previous round's ipa-pairs output (rounds > 1).")
    recipes.add_arguments(parser, "ipa")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "ipa")
    run(prompts_dir=args.prompts, model=args.model, output_dir=args.output, recipe=recipe,
        round_index=args.round_index, state_dir=args.state)
    return 0
