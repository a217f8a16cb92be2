"""visalign.image_layout on hand-made encodings: the rules it refuses to guess past, Idefics3's joined
tile map, and Mistral 3 against its own model (its processor cannot be built without torchvision)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from visalign import image_layout


def _enc(ids, **extra):
    import torch

    return {"input_ids": torch.tensor(ids), **extra}


def test_image_token_id_comes_from_the_model_config():
    assert image_layout.image_token_id(SimpleNamespace(image_token_id=5)) == 5
    assert image_layout.image_token_id(SimpleNamespace(image_token_index=7)) == 7  # Gemma 3, PaliGemma
    with pytest.raises(ValueError, match="no image_token_id or image_token_index"):
        image_layout.image_token_id(SimpleNamespace())


def test_one_block_for_all_images_is_split_only_into_whole_tiles():
    import torch

    config = SimpleNamespace(image_token_id=9)
    pv = torch.zeros(2, 3, 4, 4)
    got = image_layout.layout(_enc([[9, 9, 9, 9, 1, 2]], pixel_values=pv), None, config, [2])  # PaliGemma: a block
    assert got.tokens == [[[0, 1], [2, 3]]] and got.regions == [[[(slice(0, 1),)], [(slice(1, 2),)]]]
    with pytest.raises(ValueError, match="3 image tokens over 2 pixel_values rows"):
        image_layout.layout(_enc([[9, 9, 9, 1]], pixel_values=pv), None, config, [2])
    with pytest.raises(ValueError, match="2 runs of image token 9 for 3 images"):
        image_layout.layout(_enc([[9, 9, 0, 9, 9, 9, 9]], pixel_values=torch.zeros(3, 3, 4, 4)), None, config, [3])


def test_qwen_rows_and_tokens_follow_image_grid_thw():
    import torch

    processor = SimpleNamespace(image_processor=SimpleNamespace(merge_size=2))
    thw = torch.tensor([[1, 2, 4], [1, 4, 4]])  # 8 rows -> 2 tokens, 16 rows -> 4 tokens
    enc = _enc([[9, 9, 0, 9, 9, 9, 9]], pixel_values=torch.zeros(24, 12), image_grid_thw=thw)
    got = image_layout.layout(enc, processor, SimpleNamespace(image_token_id=9), [2])
    assert got.tokens == [[[0, 1], [3, 4, 5, 6]]]
    assert got.regions == [[[(slice(0, 8),)], [(slice(8, 24),)]]] and got.grids == [[[1, 2], [2, 2]]]
    enc["input_ids"] = torch.tensor([[9, 9, 0, 9, 9, 9]])
    with pytest.raises(ValueError, match=r"gives \[2, 4\] image tokens per image \(6\), the prompt holds 5"):
        image_layout.layout(enc, processor, SimpleNamespace(image_token_id=9), [2])


def test_idefics3_tiles_join_into_one_map_in_reading_order():
    # one image split into 1 row x 2 columns of 2x2-token tiles, then the global view
    row_col = {100: (1, 1), 101: (1, 2)}
    G = 50  # <global-img>
    row = [100, 9, 9, 9, 9, 101, 9, 9, 9, 9, G, 9, 9, 9, 9]
    runs = [[1, 2, 3, 4], [6, 7, 8, 9], [11, 12, 13, 14]]
    grid, order = image_layout._tile_map(row, runs, row_col)
    # the image's tokens: tile (1,1) = 0..3, tile (1,2) = 4..7; map row 0 = tile 1 row 0 + tile 2 row 0
    assert grid == [2, 4] and order == [0, 1, 4, 5, 2, 3, 6, 7]
    assert image_layout._tile_map(row, runs[2:], row_col) == ([2, 2], None)  # the global view alone
    assert image_layout._tile_map([100, 9, 9, 9, 9, 101, 9, 9, G, 9, 9, 9, 9], [[1, 2, 3, 4], [6, 7], [9, 10, 11, 12]],
                                  row_col) == (None, None)  # unequal tiles: no map


def test_mistral3_layout_matches_the_models_own_image_features():
    """Mistral 3's real model and Pixtral's real PIL image processor; the text expansion PixtralProcessor
    does (rows of [IMG] ended by [IMG_BREAK], the last by [IMG_END]) is written out here because the
    processor class itself cannot be built without torchvision. The stand-in processor carries only
    the two settings the layout reads."""
    import torch
    from PIL import Image
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    IMG, BREAK, END = 10, 11, 12
    images = [Image.new("RGB", (64, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    pixels = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=8)(images, return_tensors="pt")
    config = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=64, patch_size=8, head_dim=16),
        text_config=dict(model_type="mistral", vocab_size=100, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
        image_token_index=IMG, spatial_merge_size=2, vision_feature_layer=-1)
    model = Mistral3ForConditionalGeneration(config).eval()
    ids = [1]
    for h, w in pixels["image_sizes"].tolist():
        rows = [[IMG] * (w // 16) + [BREAK] for _ in range(h // 16)]
        rows[-1][-1] = END
        ids += [t for r in rows for t in r] + [2]
    enc = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long), **pixels}
    stand_in = SimpleNamespace(patch_size=8, spatial_merge_size=2)
    got = image_layout.layout(enc, stand_in, config, [2])
    features = model.get_image_features(pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"])
    assert [len(t) for t in got.tokens[0]] == [f.shape[0] for f in features.pooler_output] == [8, 4]
    assert all(ids[p] == IMG for t in got.tokens[0] for p in t) and got.grids == [[[2, 4], [2, 2]]]
    # the 32x32 image sits in the corner of a canvas padded to 32x64: its region is that corner only
    assert got.regions[0][1] == [(1, slice(None), slice(0, 32), slice(0, 32))]
    with torch.inference_mode():
        model(**enc)  # the model scatters its features into exactly these tokens
