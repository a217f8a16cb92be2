"""Attention capture during generation, against transformers' own eager attentions."""

import math

import pytest
from PIL import Image, ImageDraw

from visalign import image_layout
from visalign.stages import capture


def test_perplexity_is_the_exp_of_minus_the_mean_max_logprob():
    assert capture.perplexity(math.log(0.5)) == pytest.approx(2.0)


def test_softcap_attention_is_refused_on_the_hooked_layer():
    module = object()
    capture._ACTIVE[id(module)] = object()  # a capture session hooked on this module
    try:
        with pytest.raises(NotImplementedError, match="softcap=50.0"):
            capture._capture_attention(module, None, None, None, None, softcap=50.0)
    finally:
        capture._ACTIVE.pop(id(module))


def test_an_eos_id_of_none_is_left_out_of_the_stop_set(tiny_model):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    enc = {"input_ids": torch.tensor([[1, 2, 3]])}
    cap = capture.Capture(model, 1, enc, image_layout.layout(enc, None, model.config, [0]), {None, 2})
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
        layout = image_layout.layout(enc, processor, model.config, [len(req.images)])
        spans = [layout.runs(0, i) for i in range(len(req.images))]
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
    assert capture.decoder_attention(model, None)[1] == 1  # 2 layers -> index 1 (32 -> 16)
    with pytest.raises(ValueError, match="attention_layer=5: the decoder has 2 layers"):
        HFEngine(model, AutoProcessor.from_pretrained(tiny_model), batch_size=1, max_new_tokens=1,
                 capture_attention=True, attention_layer=5)
