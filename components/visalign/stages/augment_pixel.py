"""Pixel-space augmentations of SeVa's Table 1, with PIL and numpy (no torchvision).

SeVa's reference code contains only the diffusion noise (visalign.stages.augment); the paper's other
augmentations (RandFlip, RandomResizedCrop, AutoAugment, MoCo-v2, SimCLR, BYOL) are not in it, so
their parameters here are the usual torchvision recipes, reimplemented (unverified against the
paper). torchvision cannot be imported on the CPU machines we target, hence the port: each op
mirrors the PIL branch of torchvision.transforms (same sampling order and ranges), drawing its
random numbers from a numpy Generator instead of torch's global RNG so a view is reproducible
from its seed alone.

Every recipe is `fn(image: PIL.Image.Image, rng: numpy.random.Generator) -> PIL.Image.Image`,
keeps the image size, and is built from the small ops below.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

PixelFn = Callable[[Image.Image, np.random.Generator], Image.Image]


# ---- basic ops (torchvision's PIL functional ops) ---------------------------------------------

def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def grayscale(img: Image.Image) -> Image.Image:
    """Grayscale kept as 3 channels (RandomGrayscale's num_output_channels = input channels)."""
    return img.convert("L").convert(img.mode)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """Shift hue in PIL's HSV space by hue_factor in [-0.5, 0.5] of a turn (torchvision's PIL path)."""
    if img.mode in ("L", "1", "I", "F"):
        return img  # no hue to shift, as in torchvision
    h, s, v = img.convert("HSV").split()
    # int16 then mod 256: torchvision relies on uint8 wrap-around, which numpy 2 no longer does
    # silently for negative shifts.
    shifted = (np.asarray(h, dtype=np.int16) + int(hue_factor * 255)) % 256
    h = Image.fromarray(shifted.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert(img.mode)


def gaussian_blur(img: Image.Image, sigma: float, kernel_size: int | None = None) -> Image.Image:
    """Gaussian blur. kernel_size None: PIL's filter (MoCo-v2's reference code does exactly this);
    an odd kernel_size: torchvision's GaussianBlur (truncated kernel, reflect padding), which the
    SimCLR and BYOL recipes use."""
    if kernel_size is None:
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))
    half = (kernel_size - 1) * 0.5
    x = np.linspace(-half, half, kernel_size)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    pad = kernel_size // 2
    # Reflect padding needs the side longer than the pad; tiny images fall back to edge padding.
    mode = "reflect" if min(arr.shape[:2]) > pad else "edge"
    out = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    # Separable convolution as shifted sums (no scipy). Taps under 1e-9 of the total are skipped:
    # with sigma <= 2 a 1024 px image's 103-tap kernel has ~20 that matter, and the skipped ones
    # move no pixel by more than 1e-6 of a grey level.
    taps = [(i, k) for i, k in enumerate(kernel) if k > 1e-9]
    h, w = arr.shape[:2]
    out = sum(k * out[i:i + h] for i, k in taps)
    out = sum(k * out[:, i:i + w] for i, k in taps)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out[:, :, 0] if img.mode == "L" else out, img.mode)


def blur_kernel_size(img: Image.Image) -> int:
    """SimCLR's kernel of 10% of the side, made odd (23 px at 224, BYOL's value)."""
    k = int(0.1 * min(img.size))
    return max(3, k + 1 if k % 2 == 0 else k)


def rrc_box(width: int, height: int, rng: np.random.Generator,
            scale: tuple[float, float] = (0.08, 1.0),
            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params: 10 tries at a random area and log-uniform aspect ratio,
    then a centre crop clamped to the ratio range. Returns (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                 resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """RandomResizedCrop resized back to the input size (the processor resizes afterwards anyway)."""
    top, left, h, w = rrc_box(img.width, img.height, rng, scale)
    return img.crop((left, top, left + w, top + h)).resize(img.size, resample)


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float) -> Image.Image:
    """ColorJitter: the four factors are drawn, then applied in a random order (torchvision)."""
    order = rng.permutation(4)
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    h = rng.uniform(-hue, hue)
    for fn_id in order:
        if fn_id == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif fn_id == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif fn_id == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, h)
    return img


def _maybe(rng: np.random.Generator, p: float) -> bool:
    """RandomApply's coin; always drawn, so the random stream does not depend on p."""
    return bool(rng.random() < p)


# ---- AutoAugment (torchvision's AutoAugmentPolicy.IMAGENET) -----------------------------------

# (op, probability, magnitude bin) pairs, copied from torchvision.transforms.AutoAugment.
IMAGENET_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)

NUM_BINS = 10


def autoaugment_magnitudes(width: int, height: int) -> dict[str, tuple[np.ndarray, bool]]:
    """torchvision's AutoAugment._augmentation_space(10, [w, h]): op -> (bins, signed)."""
    return {
        "ShearX": (np.linspace(0.0, 0.3, NUM_BINS), True),
        "ShearY": (np.linspace(0.0, 0.3, NUM_BINS), True),
        "TranslateX": (np.linspace(0.0, 150.0 / 331.0 * width, NUM_BINS), True),
        "TranslateY": (np.linspace(0.0, 150.0 / 331.0 * height, NUM_BINS), True),
        "Rotate": (np.linspace(0.0, 30.0, NUM_BINS), True),
        "Brightness": (np.linspace(0.0, 0.9, NUM_BINS), True),
        "Color": (np.linspace(0.0, 0.9, NUM_BINS), True),
        "Contrast": (np.linspace(0.0, 0.9, NUM_BINS), True),
        "Sharpness": (np.linspace(0.0, 0.9, NUM_BINS), True),
        "Posterize": (8 - np.round(np.arange(NUM_BINS) / ((NUM_BINS - 1) / 4)).astype(int), False),
        "Solarize": (np.linspace(255.0, 0.0, NUM_BINS), False),
        "AutoContrast": (np.zeros(1), False),
        "Equalize": (np.zeros(1), False),
        "Invert": (np.zeros(1), False),
    }


def _affine(img: Image.Image, inverse: tuple[float, ...]) -> Image.Image:
    """PIL affine with torchvision's AutoAugment settings: nearest neighbour, black fill."""
    return img.transform(img.size, Image.Transform.AFFINE, inverse, Image.Resampling.NEAREST, fillcolor=0)


# The shear matrices are torchvision's _get_inverse_affine_matrix with centre (0, 0) and
# shear = degrees(atan(m)), which reduces to the original AutoAugment's (1, m, 0, 0, 1, 0).
# Translations are truncated to whole pixels as torchvision does (int(magnitude)).
AUTOAUGMENT_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "ShearX": lambda img, m: _affine(img, (1.0, m, 0.0, 0.0, 1.0, 0.0)),
    "ShearY": lambda img, m: _affine(img, (1.0, 0.0, 0.0, m, 1.0, 0.0)),
    "TranslateX": lambda img, m: _affine(img, (1.0, 0.0, -int(m), 0.0, 1.0, 0.0)),
    "TranslateY": lambda img, m: _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, -int(m))),
    "Rotate": lambda img, m: img.rotate(m, Image.Resampling.NEAREST, fillcolor=0),
    "Brightness": lambda img, m: ImageEnhance.Brightness(img).enhance(1.0 + m),
    "Color": lambda img, m: ImageEnhance.Color(img).enhance(1.0 + m),
    "Contrast": lambda img, m: ImageEnhance.Contrast(img).enhance(1.0 + m),
    "Sharpness": lambda img, m: ImageEnhance.Sharpness(img).enhance(1.0 + m),
    "Posterize": lambda img, m: ImageOps.posterize(img, int(m)),
    "Solarize": lambda img, m: ImageOps.solarize(img, m),
    "AutoContrast": lambda img, m: ImageOps.autocontrast(img),
    "Equalize": lambda img, m: ImageOps.equalize(img),
    "Invert": lambda img, m: ImageOps.invert(img),
}


def autoaugment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """AutoAugment with torchvision's ImageNet policy (25 sub-policies of two ops).

    One random sub-policy; each op fires with its probability and signed magnitudes get a random
    sign. As in torchvision, some draws (about 1 in 30 here) leave the image unchanged."""
    policy_id = int(rng.integers(len(IMAGENET_POLICY)))
    probs = rng.random(2)
    signs = rng.integers(2, size=2)
    for i, (op, p, bin_id) in enumerate(IMAGENET_POLICY[policy_id]):
        if probs[i] <= p:
            bins, signed = autoaugment_magnitudes(img.width, img.height)[op]
            magnitude = float(bins[bin_id]) if bin_id is not None else 0.0
            if signed and signs[i] == 0:
                magnitude = -magnitude
            img = AUTOAUGMENT_OPS[op](img, magnitude)
    return img


# ---- the named recipes ------------------------------------------------------------------------
# The usual torchvision recipes of each method: SeVa's code does not include them (unverified).

def flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandFlip with p = 1: with p = 0.5 half the 'negatives' would be the clean image itself."""
    return hflip(img)


def random_resized_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)), bilinear, back to the input size."""
    return resized_crop(img, rng)


def mocov2(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """MoCo-v2's augmentation (its main_moco.py, aug_plus)."""
    img = resized_crop(img, rng, scale=(0.2, 1.0))
    if _maybe(rng, 0.8):
        img = color_jitter(img, rng, 0.4, 0.4, 0.4, 0.1)
    if _maybe(rng, 0.2):
        img = grayscale(img)
    sigma = rng.uniform(0.1, 2.0)
    if _maybe(rng, 0.5):
        img = gaussian_blur(img, sigma)
    return hflip(img) if _maybe(rng, 0.5) else img


def simclr(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """SimCLR's augmentation with colour strength s = 1 (the usual torchvision port)."""
    img = resized_crop(img, rng)
    if _maybe(rng, 0.5):
        img = hflip(img)
    if _maybe(rng, 0.8):
        img = color_jitter(img, rng, 0.8, 0.8, 0.8, 0.2)
    if _maybe(rng, 0.2):
        img = grayscale(img)
    sigma = rng.uniform(0.1, 2.0)
    if _maybe(rng, 0.5):
        img = gaussian_blur(img, sigma, blur_kernel_size(img))
    return img


def byol(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """BYOL's first view T (blur p = 1, solarize p = 0).

    Its second view T' differs only in blur p = 0.1 and solarize p = 0.2; SeVa needs one negative
    view per prompt, and we take T."""
    img = resized_crop(img, rng, resample=Image.Resampling.BICUBIC)
    if _maybe(rng, 0.5):
        img = hflip(img)
    if _maybe(rng, 0.8):
        img = color_jitter(img, rng, 0.4, 0.4, 0.2, 0.1)
    if _maybe(rng, 0.2):
        img = grayscale(img)
    sigma = rng.uniform(0.1, 2.0)
    if _maybe(rng, 1.0):
        img = gaussian_blur(img, sigma, blur_kernel_size(img))
    if _maybe(rng, 0.0):
        img = ImageOps.solarize(img, 128)
    return img


PIXEL_RECIPES: dict[str, PixelFn] = {
    "flip": flip,
    "random_resized_crop": random_resized_crop,
    "autoaugment": autoaugment,
    "mocov2": mocov2,
    "simclr": simclr,
    "byol": byol,
}
