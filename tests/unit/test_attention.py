"""Attention capture (against transformers' own eager attentions), MIA-DPO ratios and thresholds."""

import math

import pytest
from PIL import Image, ImageDraw

from visalign.mia_dpo import attention
from visalign.recipes import SelectParams
from visalign.mia_dpo.select import threshold


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


def test_image_spans_and_token_grid_from_processor_output():
    ids = [0, 9, 9, 9, 9, 1, 9, 9, 9, 9, 2]
    assert attention.image_spans(ids, 9, 2) == [[(1, 5)], [(6, 10)]]
    with pytest.raises(ValueError, match="2 runs of image token 9 for 3 images"):
        attention.image_spans(ids, 9, 3)
    assert attention.token_grid(64) == [8, 8] and attention.token_grid(60) is None
    assert attention.token_grid(16, grid_thw=[1, 8, 8], merge=2) == [4, 4]
    assert attention.perplexity(math.log(0.5)) == pytest.approx(2.0)


def test_several_runs_per_image_only_with_the_processors_tile_counts():
    # 4 runs for 2 images: image 1 has one tile, image 2 three; an equal share (2 + 2) would be wrong
    ids = [9, 0, 9, 1, 9, 2, 9]
    runs = [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert attention.image_spans(ids, 9, 2, counts=[1, 3]) == [runs[:1], runs[1:]]
    assert attention.image_spans(ids, 9, 2, counts=[3, 1]) == [runs[:3], runs[3:]]
    with pytest.raises(ValueError, match="TinyVLM: found 4 runs of image token 9 for 2 images and no per-image tile "
                                         "count in the processor output"):
        attention.image_spans(ids, 9, 2, who="TinyVLM")
    with pytest.raises(ValueError, match=r"per-image tile counts \[1, 1\]"):
        attention.image_spans(ids, 9, 2, counts=[1, 1])
    assert attention.image_spans([9, 9, 0, 9], 9, 2, counts=[3, 4]) == [[(0, 2)], [(3, 4)]]  # one run each still holds
    assert attention.runs_per_image({"num_patches": [1, 3]}) == [1, 3]
    assert attention.runs_per_image({"input_ids": [[0]]}) is None
    # the batch's flat tile counts are split by row; a tiled image has no single token map (grid None)
    spans = attention.Capture._spans([[9, 0, 9, 0], [9, 9, 0, 0]], {"image_num_patches": [2, 1]}, [1, 1], 9, "m")
    assert spans == [[[(0, 1), (2, 3)]], [[(0, 2)]]]


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
        grid = attention.token_grid(int((enc["input_ids"] == processor.image_token_id).sum()))
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


def test_softcap_attention_is_refused_on_the_hooked_layer():
    module = object()
    attention._ACTIVE[id(module)] = object()  # a capture session hooked on this module
    try:
        with pytest.raises(NotImplementedError, match="softcap=50.0"):
            attention._capture_attention(module, None, None, None, None, softcap=50.0)
    finally:
        attention._ACTIVE.pop(id(module))


def test_an_eos_id_of_none_is_left_out_of_the_stop_set(tiny_model):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    cap = attention.Capture(model, 1, {"input_ids": torch.tensor([[1, 2, 3]])}, [0], 9, {None, 2})
    assert cap.eos.tolist() == [2]
    cap(torch.tensor([[1, 2, 3]]), torch.zeros(1, 5))  # the first generated token is booked
    cap(torch.tensor([[1, 2, 3, 2]]), torch.zeros(1, 5))  # it was eos (2): the row has ended
    assert float(cap.tokens[0]) == 1.0


def _img(colour):
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=colour)
    return im


def test_capture_matches_eager_output_attentions_in_a_padded_batch(tiny_model):
    """The hooked layer's head-mean, generated-rows-only attention equals what transformers' eager
    attention returns with output_attentions=True, for each request of a left-padded batch."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visalign.stages.rollout import GenerationRequest, HFEngine, user_message

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    requests = [GenerationRequest(id="seq", images=[_img("red"), _img("blue")],
                                  question="Image1: <image>\nImage2: <image>\nIn Image2, what colour is the circle?"),
                GenerationRequest(id="one", images=[_img("green")], question="What colour?")]
    engine = HFEngine(model, processor, batch_size=8, max_new_tokens=4, capture_attention=True, attention_layer=1)
    results = engine.generate(requests)
    reference = AutoModelForImageTextToText.from_pretrained(tiny_model, attn_implementation="eager").eval()
    for req, res in zip(requests, results, strict=True):
        text = processor.apply_chat_template(user_message(req.question, len(req.images)), add_generation_prompt=True)
        enc = processor(images=req.images, text=[text], return_tensors="pt")
        out = reference.generate(**enc, max_new_tokens=4, do_sample=False, output_attentions=True, output_scores=True,
                                 return_dict_in_generate=True)
        prompt_len = enc["input_ids"].shape[1]
        generated = out.sequences[0, prompt_len:].tolist()
        assert processor.tokenizer.decode(generated, skip_special_tokens=True).strip() == res.text
        n = generated.index(processor.tokenizer.eos_token_id) + 1 if processor.tokenizer.eos_token_id in generated \
            else len(generated)
        rows = [out.attentions[s][1][0].mean(0)[0, :prompt_len] for s in range(1, n)]  # prefill excluded
        mean = torch.stack(rows).mean(0)
        spans = attention.image_spans(enc["input_ids"][0].tolist(), model.config.image_token_id, len(req.images))
        want = [[float(mean[i]) for s, e in runs for i in range(s, e)] for runs in spans]
        got = res.capture["attention"]
        assert got["layer"] == 1 and got["rows"] == n - 1 and got["grids"] == [[8, 8]] * len(req.images)
        assert [len(v) for v in got["images"]] == [64] * len(req.images)
        for w, g in zip(want, got["images"], strict=True):
            assert g == pytest.approx(w, abs=1e-6)
        logp = torch.stack([torch.log_softmax(out.scores[s][0], -1).max() for s in range(n)]).mean()
        assert res.capture["mean_max_logprob"] == pytest.approx(float(logp), abs=1e-5)
        assert res.capture["perplexity"] == pytest.approx(math.exp(-float(logp)), rel=1e-5)


def test_capture_default_layer_is_the_middle_one_and_bad_layers_fail_early(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visalign.stages.rollout import HFEngine

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert attention.decoder_attention(model, None)[1] == 1  # 2 layers -> index 1 (32 -> 16)
    with pytest.raises(ValueError, match="attention_layer=5: the decoder has 2 layers"):
        HFEngine(model, AutoProcessor.from_pretrained(tiny_model), batch_size=1, max_new_tokens=1,
                 capture_attention=True, attention_layer=5)
