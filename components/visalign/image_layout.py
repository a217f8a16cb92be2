"""Where each image of an encoded batch lives: its tokens in input_ids and its region of pixel_values.

Processors of different families lay images out differently, and a stage that touches "this
request's image" (SeVa's diffusion replay, MIA-DPO's attention capture) must know exactly where:

    family (processor output)                  pixel_values, per image               tokens, per image
    LLaVA-1.5, Gemma 3, PaliGemma              one (3, H, W) row                      one run (PaliGemma: one
                                                                                      block for all images)
    InternVL                                   a (3, H, W) row per tile               one run, <img> ... </img>
    LLaVA-NeXT / OneVision (image_sizes, 5-D)  its first n tiles of a row padded to   one run
                                               the batch's largest tile count (OneVision: the base
                                               view only when a prompt has several images)
    Qwen2-VL / 2.5-VL (image_grid_thw)         t*h*w flattened patch rows             one run of thw / merge^2
    Idefics3 / SmolVLM (pixel_attention_mask)  its tiles of its prompt's row, each    a run per tile, row/col
                                               cropped to its valid pixels            tokens between; ends after
                                                                                      <global-img>
    Pixtral / Mistral 3 (image_sizes, 4-D)     its valid (h, w) corner of a row       rows split by [IMG_BREAK]
                                               padded to the batch's largest image

`layout()` reads the processor's outputs (never the images again) and returns, per prompt and image,
the positions of the model's image tokens and the pixel regions, checked against each other: the
token counts must add up to the image tokens in the row, or it raises naming the processor.
The image token id is the model config's (the one the model scatters image features into; Gemma 3's
processor.image_token_id is the <start_of_image> placeholder instead).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Index = tuple  # an index into pixel_values selecting one region (a view)


def image_token_id(config: Any) -> int:
    """The id the model puts image features at: config.image_token_id (or image_token_index)."""
    for key in ("image_token_id", "image_token_index"):
        tid = getattr(config, key, None)
        if tid is not None:
            return int(tid)
    raise ValueError(f"{type(config).__name__}: no image_token_id or image_token_index; cannot find image tokens")


@dataclass
class ImageLayout:
    kind: str  # which layout, and whose processor: named in errors that depend on it
    tokens: list[list[list[int]]]  # per prompt, per image: positions of its image tokens in input_ids
    regions: list[list[list[Index]]]  # per prompt, per image: indices of its pixel_values regions
    tiles: list[list[int]]  # per prompt, per image: how many tiles (or crops) encode it
    grids: list[list[list[int] | None]]  # per prompt, per image: (rows, cols) of its token map, None if unknown
    # per prompt, per image: which of its tokens (indices into tokens[b][i]) make the grid, row-major;
    # None: all of them, in order (one map). Idefics3's tiles join into one map without the global view.
    grid_order: list[list[list[int] | None]] | None = None

    def order(self, row: int, image: int) -> list[int] | None:
        return self.grid_order[row][image] if self.grid_order is not None else None

    def runs(self, row: int, image: int) -> list[tuple[int, int]]:
        """The image's token positions as [start, end) runs."""
        out: list[tuple[int, int]] = []
        for p in self.tokens[row][image]:
            if out and out[-1][1] == p:
                out[-1] = (out[-1][0], p + 1)
            else:
                out.append((p, p + 1))
        return out


def _runs(ids: Sequence[int], token_id: int) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, t in enumerate(ids):
        if t == token_id:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    return runs


def _split(positions: list[int], counts: list[int], who: str) -> list[list[int]]:
    if sum(counts) != len(positions):
        raise ValueError(f"{who}: the processor's geometry gives {counts} image tokens per image ({sum(counts)}), "
                         f"the prompt holds {len(positions)}; refusing to guess which tokens are whose")
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
    return [positions[bounds[i]:bounds[i + 1]] for i in range(len(counts))]


def _tolist(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def layout(enc: Any, processor: Any, config: Any, num_images: Sequence[int]) -> ImageLayout:
    """The layout of a batch `processor` encoded with images passed per prompt (`num_images[b]` each)."""
    who = type(processor).__name__
    token_id = image_token_id(config)
    ids = _tolist(enc["input_ids"])
    pv = enc.get("pixel_values")
    if len(ids) != len(num_images):
        raise ValueError(f"{who}: {len(ids)} encoded prompts for {len(num_images)} image lists")
    if pv is None or not sum(num_images):
        return ImageLayout(f"no images ({who})", [[] for _ in ids], [[] for _ in ids], [[] for _ in ids],
                           [[] for _ in ids])
    if "image_grid_thw" in enc:
        return _grid_thw(enc, processor, ids, token_id, num_images, who)
    if "pixel_attention_mask" in enc and pv.dim() == 5:
        return _row_tiles(enc, processor, ids, token_id, num_images, who)
    if "image_sizes" in enc and pv.dim() == 5:
        return _anyres(enc, config, ids, token_id, num_images, who)
    if "image_sizes" in enc and pv.dim() == 4:
        return _padded_canvas(enc, processor, config, ids, token_id, num_images, who)
    if pv.dim() == 4:
        return _fixed_tiles(enc, ids, token_id, num_images, who)
    raise ValueError(f"{who}: pixel_values of shape {tuple(pv.shape)} with outputs {sorted(enc.keys())}: an image "
                     "layout visalign does not know; attention capture and tensor-space augmentation cannot run")


def _one_run_each(row: list[int], token_id: int, n: int, who: str) -> list[list[int]]:
    runs = _runs(row, token_id)
    if len(runs) != n:
        raise ValueError(f"{who}: {len(runs)} runs of image token {token_id} for {n} images; expected one per image")
    return runs


def _square(n: int) -> list[int] | None:
    side = math.isqrt(n)
    return [side, side] if side * side == n else None


def _fixed_tiles(enc, ids, token_id, num_images, who) -> ImageLayout:
    """One or more fixed-size (3, H, W) rows per image, images in batch order (LLaVA, Gemma 3, PaliGemma,
    InternVL's tiles). A tile's token count is the same everywhere, so an image's tiles = its tokens / that."""
    pv = enc["pixel_values"]
    total_tokens = sum(r.count(token_id) for r in ids)
    if pv.shape[0] == 0 or total_tokens % pv.shape[0]:
        raise ValueError(f"{who}: {total_tokens} image tokens over {pv.shape[0]} pixel_values rows: not a whole "
                         "number per row")
    per_tile = total_tokens // pv.shape[0]
    out = ImageLayout(f"fixed-size tiles ({who})", [], [], [], [])
    k = 0
    for row, n in zip(ids, num_images, strict=True):
        runs = _runs(row, token_id)
        if len(runs) == n:
            tokens = runs
        elif len(runs) == 1 and len(runs[0]) == n * per_tile:  # one block for all (PaliGemma)
            tokens = _split(runs[0], [per_tile] * n, who)
        else:
            raise ValueError(f"{who}: {len(runs)} runs of image token {token_id} for {n} images")
        tiles = [len(t) // per_tile for t in tokens]
        if any(len(t) % per_tile for t in tokens):
            raise ValueError(f"{who}: image token runs {[len(t) for t in tokens]} are not whole tiles of {per_tile}")
        regions = []
        for t in tiles:
            regions.append([(slice(k, k + t),)])
            k += t
        out.tokens.append(tokens)
        out.regions.append(regions)
        out.tiles.append(tiles)
        out.grids.append([_square(len(t)) if c == 1 else None for t, c in zip(tokens, tiles, strict=True)])
    if k != pv.shape[0]:
        raise ValueError(f"{who}: the prompts' images take {k} pixel_values rows of {pv.shape[0]}")
    return out


def _grid_thw(enc, processor, ids, token_id, num_images, who) -> ImageLayout:
    """Qwen2-VL family: image k is prod(thw_k) flattened patch rows and prod(thw_k) / merge^2 tokens."""
    thw = _tolist(enc["image_grid_thw"])
    merge = int(getattr(processor.image_processor, "merge_size", 1))
    if len(thw) != sum(num_images):
        raise ValueError(f"{who}: image_grid_thw has {len(thw)} images, the prompts {sum(num_images)}")
    out = ImageLayout(f"image_grid_thw patches ({who})", [], [], [], [])
    k, start = 0, 0
    for row, n in zip(ids, num_images, strict=True):
        grids = thw[k:k + n]
        counts = [t * h * w // (merge * merge) for t, h, w in grids]
        out.tokens.append(_split([i for i, t in enumerate(row) if t == token_id], counts, who))
        regions = []
        for t, h, w in grids:
            regions.append([(slice(start, start + t * h * w),)])
            start += t * h * w
        out.regions.append(regions)
        out.tiles.append([1] * n)
        out.grids.append([[h // merge, w // merge] if t == 1 else None for t, h, w in grids])
        k += n
    return out


def _row_tiles(enc, processor, ids, token_id, num_images, who) -> ImageLayout:
    """Idefics3 / SmolVLM: pixel_values is (prompt, tile, 3, H, W); an image is its tiles (a run of
    tokens each), the last being the global view after <global-img>; tiles are padded to the batch's
    largest H and W, pixel_attention_mask says which pixels are real."""
    mask = enc["pixel_attention_mask"]
    row_cols = _row_col_tokens(processor.tokenizer)
    global_id = getattr(processor, "global_image_token_id", None)
    if global_id is None:
        global_id = processor.tokenizer.convert_tokens_to_ids("<global-img>")
    out = ImageLayout(f"row/column tiles ({who})", [], [], [], [], grid_order=[])
    for b, (row, n) in enumerate(zip(ids, num_images, strict=True)):
        runs = _runs(row, token_id)
        images: list[list[list[int]]] = [[]]
        for run in runs:
            images[-1].append(run)
            if run[0] > 0 and row[run[0] - 1] == global_id:  # the global view closes an image
                images.append([])
        images = [im for im in images if im]
        if len(images) != n:
            raise ValueError(f"{who}: found {len(images)} images (runs closed by <global-img>) for {n}")
        out.tokens.append([[p for run in im for p in run] for im in images])
        tiles = [len(im) for im in images]
        regions, t = [], 0
        for count in tiles:
            image_regions = []
            for j in range(t, t + count):
                rows = int(mask[b, j].any(dim=1).sum())
                cols = int(mask[b, j].any(dim=0).sum())
                image_regions.append((b, j, slice(None), slice(0, rows), slice(0, cols)))
            regions.append(image_regions)
            t += count
        if t != int(mask[b].flatten(1).any(dim=1).sum()):
            raise ValueError(f"{who}: prompt {b}: its images take {t} tiles, pixel_attention_mask has "
                             f"{int(mask[b].flatten(1).any(dim=1).sum())} real ones")
        out.regions.append(regions)
        out.tiles.append(tiles)
        maps = [_tile_map(row, im, row_cols) for im in images]
        out.grids.append([m[0] for m in maps])
        out.grid_order.append([m[1] for m in maps])
    return out


_ROW_COL_TOKENS: weakref.WeakKeyDictionary[Any, dict[int, tuple[int, int]]] = weakref.WeakKeyDictionary()


def _row_col_tokens(tokenizer: Any) -> dict[int, tuple[int, int]]:
    """Idefics3's tile tokens: id of <row_r_col_c> -> (r, c), 1-based. Read from the vocabulary once per
    tokenizer (every batch asks for them)."""
    if tokenizer not in _ROW_COL_TOKENS:
        out = {}
        for token, tid in tokenizer.get_vocab().items():
            m = re.fullmatch(r"<row_(\d+)_col_(\d+)>", token)
            if m:
                out[tid] = (int(m.group(1)), int(m.group(2)))
        _ROW_COL_TOKENS[tokenizer] = out
    return _ROW_COL_TOKENS[tokenizer]


def _tile_map(row: list[int], runs: list[list[int]], row_cols: dict[int, tuple[int, int]]):
    """(grid, order) of one Idefics3 image: its global view alone is one square map; split into tiles,
    the tiles (each marked by its <row_r_col_c> token) join into one map of rows*s x cols*s tokens,
    the global view left out. (None, None) when the tiles do not form a full square-tiled grid."""
    if len(runs) == 1:
        return _square(len(runs[0])), None
    side = _square(len(runs[0]))
    places = [row_cols.get(row[run[0] - 1]) for run in runs[:-1]]  # the last run is the global view
    if side is None or None in places or any(len(run) != len(runs[0]) for run in runs):
        return None, None
    s = side[0]
    rows, cols = max(r for r, _ in places), max(c for _, c in places)
    if sorted(places) != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
        return None, None
    start = {place: k * s * s for k, place in enumerate(places)}  # offsets in the image's token list
    order = [start[(gr // s + 1, gc // s + 1)] + (gr % s) * s + gc % s for gr in range(rows * s) for gc in range(cols * s)]
    return [rows * s, cols * s], order


def _anyres(enc, config, ids, token_id, num_images, who) -> ImageLayout:
    """LLaVA-NeXT / OneVision: pixel_values is (image, tile, 3, H, W) padded to the batch's largest tile
    count; image k uses its first n_k tiles (image_size_to_num_patches from image_sizes, as the model
    does; OneVision uses the base view alone for prompts with several images)."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    sizes = _tolist(enc["image_sizes"])
    several = "batch_num_images" in enc  # OneVision's processor marks it
    out = ImageLayout(f"anyres tiles ({who})", [], [], [], [])
    k = 0
    for row, n in zip(ids, num_images, strict=True):
        out.tokens.append(_one_run_each(row, token_id, n, who))
        tiles = [1 if several and n > 1 else image_size_to_num_patches(
            image_size=sizes[k + i], grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size) for i in range(n)]
        out.regions.append([[(k + i, slice(0, tiles[i]))] for i in range(n)])
        out.tiles.append(tiles)
        out.grids.append([_square(len(t)) if c == 1 else None for t, c in zip(out.tokens[-1], tiles, strict=True)])
        k += n
    return out


def _padded_canvas(enc, processor, config, ids, token_id, num_images, who) -> ImageLayout:
    """Pixtral / Mistral 3: image k is the (h_k, w_k) corner of a row padded to the batch's largest
    image; its tokens are (h / p) x (w / p) patches merged m x m, rows split by [IMG_BREAK]."""
    sizes = _tolist(enc["image_sizes"])
    patch = int(getattr(processor, "patch_size", None) or config.vision_config.patch_size)
    merge = int(getattr(processor, "spatial_merge_size", None) or getattr(config, "spatial_merge_size", 1))
    out = ImageLayout(f"padded canvas ({who})", [], [], [], [])
    k = 0
    for row, n in zip(ids, num_images, strict=True):
        grids = [[h // (patch * merge), w // (patch * merge)] for h, w in sizes[k:k + n]]
        out.tokens.append(_split([i for i, t in enumerate(row) if t == token_id], [r * c for r, c in grids], who))
        out.regions.append([[(k + i, slice(None), slice(0, h), slice(0, w))] for i, (h, w) in
                            enumerate(sizes[k:k + n])])
        out.tiles.append([1] * n)
        out.grids.append(grids)
        k += n
    return out


# ---- reading and writing one image's pixels ------------------------------------------------------

def gather(pixel_values: Any, regions: Sequence[Index]):
    """The regions' values, flattened and joined in order (a copy)."""
    import torch

    return torch.cat([pixel_values[idx].reshape(-1) for idx in regions])


def scatter(pixel_values: Any, regions: Sequence[Index], flat: Any) -> None:
    """Write `flat` (as gather returned it) back into the regions, in place."""
    start = 0
    for idx in regions:
        view = pixel_values[idx]
        n = view.numel()
        pixel_values[idx] = flat[start:start + n].reshape(view.shape).to(pixel_values.dtype)
        start += n
