"""MIA-DPO's attention ratios and thresholds, on hand-made maps and on a real collage's tokens."""


from types import SimpleNamespace

import pytest
from PIL import Image

from visalign import image_layout
from visalign.mia_dpo import attention
from visalign.mia_dpo.select import threshold
from visalign.recipes import SelectParams


def test_sequence_ratio_is_target_mean_over_sum_of_means():
    # image 1: mean 0.1 over 4 tokens, image 2: mean 0.3 over 2 tokens
    per_image = [[0.1, 0.1, 0.1, 0.1], [0.2, 0.4]]
    assert attention.sequence_ratio(per_image, 2) == pytest.approx(0.3 / 0.4)
    assert attention.sequence_ratio(per_image, 1) == pytest.approx(0.1 / 0.4)
    with pytest.raises(ValueError):
        attention.sequence_ratio(per_image, 3)


def test_grid_ratio_splits_the_token_map_into_cells():
    # a 1x2 collage on a 100x100 canvas: cells left (0-50) and right (50-100), a 4x4 token map
    cells = [[5, 30, 45, 70], [55, 30, 95, 70]]
    att = [0.0] * 16
    for r in range(4):
        att[r * 4 + 0] = att[r * 4 + 1] = 1.0  # left half of every row
        att[r * 4 + 3] = 3.0  # right column
    ratio_right = attention.grid_ratio(att, [4, 4], [100, 100], cells, 2)
    assert ratio_right == pytest.approx(12 / 20)  # padding rows above/below belong to their nearest cell
    assert attention.grid_ratio(att, [4, 4], [100, 100], cells, 1) == pytest.approx(8 / 20)
    with pytest.raises(ValueError, match="token grid"):
        attention.grid_ratio(att[:9], [4, 4], [100, 100], cells, 1)


def test_region_ratio_counts_tokens_inside_the_central_box():
    att = [1.0] * 16
    att[5] = att[6] = att[9] = att[10] = 4.0  # the 4 central tokens of a 4x4 map
    box = [25, 25, 75, 75]  # centres at 37.5 and 62.5 fall inside
    assert attention.region_ratio(att, [4, 4], [100, 100], box) == pytest.approx(16 / 28)


def test_threshold_table_lookups():
    p = SelectParams()
    assert [threshold("sequence", n, p) for n in (2, 3, 4, 5)] == [0.8, 0.7, 0.6, 0.6]
    assert [threshold("grid", n, p) for n in (2, 3, 4, 6, 9)] == [0.7, 0.6, 0.5, 0.4, 0.3]
    assert threshold("pic_in_pic", 2, p) == 0.8
    assert threshold("grid", 4, SelectParams(grid_thresholds=(0.9, 0.8, 0.55, 0.4, 0.3))) == 0.55
    with pytest.raises(ValueError, match="no threshold"):
        threshold("grid", 5, p)
    with pytest.raises(ValueError, match="unknown"):
        threshold("mosaic", 2, p)


def test_a_token_map_that_does_not_follow_the_canvas_is_refused():
    attention.check_canvas([8, 8], [100, 100])
    attention.check_canvas([4, 8], [200, 100])  # Qwen2-VL-style map of a wide canvas: follows it
    attention.check_canvas([5, 8], [200, 100])  # one token of rounding
    with pytest.raises(attention.CanvasMismatch, match="compose.square_canvas=true"):
        attention.check_canvas([8, 8], [216, 76])
    with pytest.raises(attention.CanvasMismatch):
        attention.region_ratio([1.0] * 64, [8, 8], [200, 100], [60, 15, 140, 85])


def test_collage_cells_line_up_with_the_tokens_the_processor_gives(tiny_model):
    """A real collage through the tiny model's (CLIP, centre-cropping) processor: attention put on the
    tokens that show a cell's colour is that cell's share; a wide canvas is cropped, so it is refused."""
    from transformers import AutoProcessor

    from visalign.mia_dpo import compose as mi
    from visalign.stages.rollout import user_message

    processor = AutoProcessor.from_pretrained(tiny_model)
    colours = ["red", "green", "blue", "yellow"]

    def tokens_showing(collage, colour):
        """A hand-made attention map: each token's share of pixels of `colour` in what the model sees."""
        text = processor.apply_chat_template(user_message("What?", 1), add_generation_prompt=True)
        enc = processor(images=[collage.image], text=[text], return_tensors="pt")
        config = SimpleNamespace(image_token_id=processor.image_token_id)  # the tiny LLaVA's config says the same
        grid = image_layout.layout(enc, processor, config, [1]).grids[0][0]
        pixels = enc["pixel_values"][0]
        ref = processor(images=[Image.new("RGB", (64, 64), colour)], text=[text], return_tensors="pt")
        target = ref["pixel_values"][0][:, 0, 0]
        near = ((pixels - target[:, None, None]).abs().amax(dim=0) < 0.1).float()
        ph, pw = pixels.shape[1] // grid[0], pixels.shape[2] // grid[1]
        patches = near.reshape(grid[0], ph, grid[1], pw).mean(dim=(1, 3))
        return patches.flatten().tolist(), grid

    collage = mi.grid_collage([Image.new("RGB", (60, 40), c) for c in colours], "2x2", cell_size=64, margin=6)
    for k, colour in enumerate(colours, start=1):
        att, grid = tokens_showing(collage, colour)
        assert sum(att) > 2  # the colour is visible
        assert attention.grid_ratio(att, grid, collage.image.size, collage.cells, k) == pytest.approx(1.0, abs=0.02)
        others = [attention.grid_ratio(att, grid, collage.image.size, collage.cells, j) for j in range(1, 5) if j != k]
        assert max(others) < 0.02
    wide = mi.grid_collage([Image.new("RGB", (60, 40), c) for c in colours[:3]], "1x3", cell_size=64, margin=6,
                           square_canvas=False)
    att, grid = tokens_showing(wide, "red")
    assert sum(att) == 0  # the centre crop cut the first cell away: its ratio would be meaningless
    with pytest.raises(attention.CanvasMismatch):
        attention.grid_ratio(att, grid, wide.image.size, wide.cells, 1)
