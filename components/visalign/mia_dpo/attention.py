"""MIA-DPO's attention ratios (METHODS.md section 2), from the attention rollout captured
(visalign.stages.capture) for each response.

Pure functions of the captured per-image attention vectors:
  sequence:   mean attention to the target image / sum over images of their mean attention;
  grid:       the image's token map split into the collage's cells; target cell / total;
  pic_in_pic: attention inside the pasted central box / total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# ---- ratios: pure functions -------------------------------------------------------------------

def sequence_ratio(per_image: Sequence[Sequence[float]], target: int) -> float:
    """Mean attention to image `target` (1-based) over the sum of every image's mean attention."""
    means = [sum(v) / len(v) if len(v) else 0.0 for v in per_image]
    total = sum(means)
    if not 1 <= target <= len(means):
        raise ValueError(f"target={target}: must be in 1..{len(means)}")
    return means[target - 1] / total if total > 0 else 0.0


class CanvasMismatch(ValueError):
    """The token map's shape does not follow the canvas's: the cell and box geometry would be wrong."""


def check_canvas(grid: Sequence[int], canvas: Sequence[int]) -> None:
    """Refuse a token map whose aspect differs from the canvas's by more than one token per side.

    token_centres lays the map over the whole canvas. That holds when the processor resizes the whole
    image (Qwen2-VL; any processor on a square canvas), not when it centre-crops (CLIP's
    do_center_crop cuts a wide collage's outer cells away, yet still gives a square map). The
    processor is not known here, but a crop shows as a square map over a non-square canvas.
    """
    h, w = grid
    width, height = canvas
    aspect = width / height
    if abs(w / h - aspect) > aspect * (1 / h + 1 / w):  # one token of rounding per side (Qwen2-VL's resize)
        raise CanvasMismatch(
            f"canvas {width}x{height} (aspect {aspect:.2f}) under a {h}x{w} token map (aspect {w / h:.2f}): the "
            "processor cropped or squashed the image (CLIP-style processors resize the short side and centre-crop), "
            "so the recorded cells and boxes do not line up with the tokens; compose with "
            "compose.square_canvas=true")


def token_centres(grid: Sequence[int], canvas: Sequence[int]) -> list[tuple[float, float]]:
    """Pixel centre of each token of an h x w token map laid over a canvas of (width, height)
    (the whole canvas: see check_canvas)."""
    h, w = grid
    width, height = canvas
    return [((c + 0.5) * width / w, (r + 0.5) * height / h) for r in range(h) for c in range(w)]


def _distance(point: tuple[float, float], box: Sequence[float]) -> float:
    x, y = point
    dx = max(box[0] - x, 0.0, x - box[2])
    dy = max(box[1] - y, 0.0, y - box[3])
    return math.hypot(dx, dy)


def grid_ratio(attention: Sequence[float], grid: Sequence[int], canvas: Sequence[int],
               cells: Sequence[Sequence[float]], target: int) -> float:
    """Share of the image's attention on the target cell (1-based). Every token belongs to the cell
    nearest its centre (inside = 0), so margins and padding split between neighbouring cells, as an
    equal split of the map into rows x columns would."""
    if len(attention) != grid[0] * grid[1]:
        raise ValueError(f"attention has {len(attention)} tokens, the token grid {grid} has {grid[0] * grid[1]}")
    check_canvas(grid, canvas)
    total = sum(attention)
    if total <= 0:
        return 0.0
    on_target = 0.0
    for a, centre in zip(attention, token_centres(grid, canvas), strict=True):
        nearest = min(range(len(cells)), key=lambda i: _distance(centre, cells[i]))
        if nearest == target - 1:
            on_target += a
    return on_target / total


def region_ratio(attention: Sequence[float], grid: Sequence[int], canvas: Sequence[int], box: Sequence[float]) -> float:
    """Share of the image's attention on tokens whose centre lies inside `box` (pic-in-pic's centre)."""
    if len(attention) != grid[0] * grid[1]:
        raise ValueError(f"attention has {len(attention)} tokens, the token grid {grid} has {grid[0] * grid[1]}")
    check_canvas(grid, canvas)
    total = sum(attention)
    inside = sum(a for a, c in zip(attention, token_centres(grid, canvas), strict=True) if _distance(c, box) == 0)
    return inside / total if total > 0 else 0.0
