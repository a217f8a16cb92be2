"""Stage 'augment': make one augmented view of every prompt's images (SeVa's negatives).

SeVa's rejected answer is the policy's answer on an augmented image. Its reference code uses
forward-diffusion noise on the processor's normalised tensor, which cannot be stored as an image:
such "tensor-space" views are recorded here (name, seed, parameters) and replayed exactly by the
rollout stage through `apply_to_pixel_values`. The paper's other augmentations work on pixels
(visalign.stages.augment_pixel); their augmented images are written as PNG next to views.jsonl.

    run(prompts_dir="out/sample", output_dir="out/augment", params=AugmentParams(name="diffusion"))
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from visalign import inputs, recipes, schema
from visalign.errors import InputError
from visalign.inputs import output_path
from visalign.recipes import AugmentParams
from visalign.report import StageReport, progress
from visalign.stages.augment_pixel import PIXEL_RECIPES

if TYPE_CHECKING:  # torch is imported lazily: recipes.validate imports this module for its names
    import torch

log = logging.getLogger("visalign")

IMAGES_DIR = "images"


# ---- SeVa's diffusion noise (METHODS.md section 1) --------------------------------------------

def _check_diffusion(step: int, timesteps: int, beta_start: float, beta_end: float) -> None:
    problems = []
    if timesteps < 1:
        problems.append(f"timesteps={timesteps}: must be >= 1 (SeVa: 1000)")
    if not 0 <= step < timesteps:
        problems.append(f"step={step}: must be in [0, timesteps={timesteps}); SeVa uses 500 (weak) or 800 (strong)")
    if not 0 < beta_start < beta_end < 1:
        problems.append(f"beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start < beta_end < 1 "
                        "(SeVa: 1e-5 and 5e-3)")
    if problems:
        raise ValueError("diffusion noise: " + "; ".join(problems))


def diffusion_schedule(timesteps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s), beta = sigmoid(linspace(-6, 6, T)) scaled to
    [beta_start, beta_end] (SeVa's code, borrowed from VCD). float64: the reference computes in
    float32, which differs by < 1e-6 in sqrt(abar)."""
    import torch

    _check_diffusion(0, timesteps, beta_start, beta_end)
    betas = torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=torch.float64))
    betas = betas * (beta_end - beta_start) + beta_start
    return torch.cumprod(1 - betas, dim=0)


def add_diffusion_noise(pixel_values: torch.Tensor, step: int, seed: int, timesteps: int = 1000,
                        beta_start: float = 1e-5, beta_end: float = 5e-3) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, on the processor-normalised pixel_values.

    eps is drawn on the CPU in float32 from a generator seeded with `seed`, then moved to the
    input's device, so a view replays identically on any device and batch layout: the noise
    depends only on the number of elements (a (3, H, W) tensor and its (1, 3, H, W) slice get
    the same noise). The result has the input's shape, dtype and device.
    """
    import torch

    _check_diffusion(step, timesteps, beta_start, beta_end)
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values has dtype {pixel_values.dtype}; diffusion noise applies to the "
                        "processor's normalised float tensor, not to raw uint8 pixels")
    abar = float(diffusion_schedule(timesteps, beta_start, beta_end)[step])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(pixel_values.shape, generator=generator, dtype=torch.float32)
    noisy = math.sqrt(abar) * pixel_values.float() + math.sqrt(1.0 - abar) * eps.to(pixel_values.device)
    return noisy.to(pixel_values.dtype)


# ---- the registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Augmentation:
    name: str
    space: str  # "tensor": fn(pixel_values, seed=, **params); "pixel": fn(PIL image, numpy rng)
    fn: Callable[..., Any]
    view_params: Callable[[AugmentParams], dict[str, Any]]  # what a View records (and validates)
    description: str


def _diffusion_params(p: AugmentParams) -> dict[str, Any]:
    _check_diffusion(p.diffusion_step, p.diffusion_timesteps, p.beta_start, p.beta_end)
    return {"step": p.diffusion_step, "timesteps": p.diffusion_timesteps,
            "beta_start": p.beta_start, "beta_end": p.beta_end}


def _no_params(p: AugmentParams) -> dict[str, Any]:
    return {}  # pixel recipes have fixed parameters; the seed alone reproduces the view


AUGMENTATIONS: dict[str, Augmentation] = {
    "diffusion": Augmentation("diffusion", "tensor", add_diffusion_noise, _diffusion_params,
                              "SeVa's forward-diffusion noise on the normalised image tensor."),
    **{name: Augmentation(name, "pixel", fn, _no_params, (fn.__doc__ or name).strip().splitlines()[0])
       for name, fn in PIXEL_RECIPES.items()},
}


def get(name: str) -> Augmentation:
    """The registered augmentation `name`; a ValueError listing the known names otherwise."""
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}") from None


def view_seed(base_seed: int, prompt_id: str) -> int:
    """A prompt's view seed, from the base seed and the prompt id only (not the row order), so
    re-sampled or sharded prompt files give each prompt the same view. 31 bits: fits any RNG."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def augment_image(image: Image.Image, name: str, seed: int) -> Image.Image:
    """Apply the pixel-space augmentation `name` to one image, reproducibly from `seed`."""
    aug = get(name)
    if aug.space != "pixel":
        raise ValueError(f"augmentation {name!r} works on the processor's tensor, not on images; "
                         "use apply_to_pixel_values")
    return aug.fn(image.convert("RGB"), np.random.default_rng(seed))


def apply_to_pixel_values(pixel_values: torch.Tensor, view: schema.View) -> torch.Tensor:
    """Replay a tensor-space view on the processor's pixel_values for that view's prompt."""
    aug = get(view.name)
    if aug.space != "tensor" or view.space != "tensor":
        raise ValueError(
            f"view {view.id}: {view.name!r} is a {view.space}-space view; its augmented images are listed "
            f"in view.images and go through the processor like clean ones. Only tensor-space views "
            f"({sorted(n for n, a in AUGMENTATIONS.items() if a.space == 'tensor')}) are replayed here")
    return aug.fn(pixel_values, seed=view.seed, **view.params)


# ---- the stage --------------------------------------------------------------------------------

def _open_image(path: Path) -> Image.Image:
    """Decoded fully now (a truncated file fails here, not in rollout), in RGB as the processors
    convert it and our ops assume; a BadImage names it."""
    return inputs.load_rgb(path, f"image {path}")


def _make_view(aug: Augmentation, prompt: schema.Prompt, seed: int, view_id: str,
               prompts_dir: Path, output_dir: Path) -> list[str] | None:
    """Open every image of the prompt first (no orphan PNGs when a later one fails), then write
    the augmented ones. Returns their paths relative to output_dir, or None in tensor space."""
    images = [_open_image(prompts_dir / rel) for rel in prompt.images]
    if aug.space == "tensor":
        return None
    rng = np.random.default_rng(seed)  # one stream per prompt, shared by its images in order
    paths = []
    for k, img in enumerate(images):
        rel = f"{IMAGES_DIR}/{view_id}_{k}.png"
        aug.fn(img, rng).save(output_dir / rel, format="PNG")
        paths.append(rel)
    return paths


def run(*, prompts_dir: str, output_dir: str, params: AugmentParams) -> StageReport:
    """Read prompts.jsonl from prompts_dir; write views.jsonl (one View per prompt), the augmented
    images (pixel space) and report.json to output_dir."""
    # Resolve and validate the augmentation before touching any file.
    aug = get(params.name)
    vparams = aug.view_params(params)
    src, out = Path(prompts_dir), output_path(output_dir)
    prompts_file = src / schema.PROMPTS_FILE
    if not prompts_file.exists():
        raise InputError(prompts_file, "not found; --prompts must be the sample stage's output directory")
    prompts = schema.read_rows(prompts_file, schema.Prompt)
    out.mkdir(parents=True, exist_ok=True)
    if aug.space == "pixel":
        (out / IMAGES_DIR).mkdir(exist_ok=True)

    report = StageReport("augment")
    report.rows_in = len(prompts)
    report.extra.update(augmentation=aug.name, space=aug.space, base_seed=params.seed, params=vparams,
                        warnings=[])
    views = []
    for i, prompt in enumerate(progress(prompts, desc="augment"), start=1):
        where = f"{prompts_file}: row {i} (prompt {prompt.id})"
        if not prompt.images:
            report.drop("no_image", f"{where}: the prompt has no image to augment")
            continue
        seed = view_seed(params.seed, prompt.id)
        view_id = schema.stable_id(prompt.id, aug.name, vparams, seed)
        try:
            images = _make_view(aug, prompt, seed, view_id, src, out)
        except inputs.BadImage as e:
            report.drop(e.reason, f"{where}: {e}")
            continue
        views.append(schema.View(id=view_id, prompt_id=prompt.id, name=aug.name, space=aug.space,
                                 seed=seed, params=vparams, images=images))

    report.rows_out = schema.write_rows(out / schema.VIEWS_FILE, views)
    if not prompts:
        report.extra["warnings"].append(f"{prompts_file} has no prompts; wrote an empty {schema.VIEWS_FILE}")
    elif not views:
        report.extra["warnings"].append(f"every prompt was dropped ({dict(report.dropped)}); "
                                        f"wrote an empty {schema.VIEWS_FILE}")
    for w in report.extra["warnings"]:
        log.warning("augment: %s", w)
    report.write(out)
    return report


# ---- CLI --------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, metavar="DIR",
                        help="Directory holding prompts.jsonl and its images (the sample stage's output).")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="Directory for views.jsonl, images/ and report.json.")
    recipes.add_arguments(parser, "augment")


def cli(args: argparse.Namespace) -> int:
    recipe = recipes.recipe_from_args(args, "augment")
    run(prompts_dir=args.prompts, output_dir=args.output, params=recipe.augment)
    return 0
