"""Attention capture (against transformers' own eager attentions), MIA-DPO ratios and thresholds."""

import math

import pytest
from PIL import Image, ImageDraw

from visalign import attention
from visalign.recipes import SelectParams
from visalign.select import threshold


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
    assert attention.image_spans(ids, 9, 1) == [[(1, 5), (6, 10)]]  # tiles: an equal share of runs each
    with pytest.raises(ValueError, match="2 runs of image token 9 for 3 images"):
        attention.image_spans(ids, 9, 3)
    assert attention.token_grid(64) == [8, 8] and attention.token_grid(60) is None
    assert attention.token_grid(16, grid_thw=[1, 8, 8], merge=2) == [4, 4]
    assert attention.perplexity(math.log(0.5)) == pytest.approx(2.0)


def _img(colour):
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=colour)
    return im


def test_capture_matches_eager_output_attentions_in_a_padded_batch(tiny_model):
    """The hooked layer's head-mean, generated-rows-only attention equals what transformers' eager
    attention returns with output_attentions=True, for each request of a left-padded batch."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visalign.rollout import GenerationRequest, HFEngine, user_message

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

    from visalign.rollout import HFEngine

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert attention.decoder_attention(model, None)[1] == 1  # 2 layers -> index 1 (32 -> 16)
    with pytest.raises(ValueError, match="attention_layer=5: the decoder has 2 layers"):
        HFEngine(model, AutoProcessor.from_pretrained(tiny_model), batch_size=1, max_new_tokens=1,
                 capture_attention=True, attention_layer=5)
