"""Attention capture during generation: what rollout records for MIA-DPO's attention-aware selection
(`rollout.capture_attention`; the ratios are computed in visalign.mia_dpo.attention).

For one decoder layer, the attention of every generated token (the prefill is excluded)
to each image's tokens, averaged over heads and over the generated rows, plus each step's max
log-softmax (for the response's perplexity). It is done through transformers' documented
extension point for attention (AttentionInterface): the language model runs a registered
implementation that delegates to SDPA everywhere and, for the one hooked layer at decode steps,
also computes that step's softmax(q k^T) from the same q and k and folds its head-mean into a
running sum. `generate(output_attentions=True)` would instead keep every layer's full weights for
every step (layers x heads x query x key per step: for LLaVA-1.5-7B's ~600-token single-image
prompt, 32 x 32 x 600^2 fp32 = 1.5 GB for the prefill alone, growing with each image); here the
extra memory is one batch x key row per step for one layer, and nothing is kept but the sums.

Which prompt tokens belong to which image comes from visalign.image_layout (the processor's outputs
and the model config's image token id, checked against each other), for every family it knows:
one run per image, tiles with row tokens between them, one block for all images.
"""

from __future__ import annotations

import math
from typing import Any

from visalign.image_layout import ImageLayout

CAPTURE_IMPLEMENTATION = "visalign_attention_capture"
_ACTIVE: dict[int, Capture] = {}  # id(attention module) -> the capture session hooked on it
_registered = False


def perplexity(mean_max_logprob: float) -> float:
    """exp(-mean log max-softmax) over the generated tokens (MIA-DPO's confidence filter)."""
    return math.exp(-mean_max_logprob)


# ---- the capture --------------------------------------------------------------------------------

def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA for every call; for the hooked layer at decode steps, also this step's head-mean weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    capture = _ACTIVE.get(id(module))
    if capture is not None and kwargs.get("softcap") is not None:
        # Gemma-family logit soft-capping (tanh(s / cap) * cap) is not in observe(): its weights would be wrong
        raise NotImplementedError(f"{type(module).__name__}: attention with softcap={kwargs['softcap']} (Gemma "
                                  "family) is not supported by attention capture; use a model without soft-capping "
                                  "or set rollout.capture_attention=false")
    if capture is not None and query.shape[2] == 1:  # q_len 1: a decode step (the prefill is excluded)
        capture.observe(query, key, attention_mask, kwargs.get("scaling"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register the capture implementation (and SDPA's mask for it) with transformers, once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)
    _registered = True


def decoder_attention(model: Any, layer: int | None) -> tuple[Any, int]:
    """The self-attention module of decoder layer `layer` (None: the middle one) and its index."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(decoder).__name__}: no .layers; attention capture needs a decoder with layers")
    index = len(layers) // 2 if layer is None else layer
    if not 0 <= index < len(layers):
        raise ValueError(f"rollout.attention_layer={layer}: the decoder has {len(layers)} layers (0-based)")
    attn = getattr(layers[index], "self_attn", None)
    if attn is None:
        raise ValueError(f"{type(layers[index]).__name__}: no self_attn module to hook")
    return attn, index


def enable(model: Any) -> None:
    """Switch the language model (not the vision tower) to the capture implementation."""
    register()
    decoder_config = model.get_decoder().config
    sub = next((k for k in model.config.sub_configs if getattr(model.config, k, None) is decoder_config), None)
    model.set_attn_implementation({sub: CAPTURE_IMPLEMENTATION} if sub else CAPTURE_IMPLEMENTATION)


class Capture:
    """One generate() call's capture: a logits processor (pass it to generate) plus the layer hook.

        with Capture(model, layer, enc, image_layout.layout(enc, processor, model.config, num_images), eos_ids) as cap:
            model.generate(**enc, logits_processor=LogitsProcessorList([cap]))
        cap.results()  # one dict per row
    """

    def __init__(self, model: Any, layer: int | None, enc: Any, layout: ImageLayout, eos_ids: set[int]):
        import torch

        self.module, self.layer = decoder_attention(model, layer)
        ids = enc["input_ids"]
        self.prompt_len = ids.shape[1]
        self.layout = layout  # per row, per image: its token positions, token map (grid) and tile order
        batch, device = ids.shape[0], ids.device
        # generation_config.eos_token_id may be None: only real ids go into the stop set
        self.eos = torch.tensor(sorted(i for i in eos_ids if i is not None), dtype=torch.long, device=device)
        self.attn_sum = torch.zeros(batch, self.prompt_len, dtype=torch.float32, device=device)
        self.rows = torch.zeros(batch, dtype=torch.float32, device=device)
        self.logprob_sum = torch.zeros(batch, dtype=torch.float32, device=device)
        self.tokens = torch.zeros(batch, dtype=torch.float32, device=device)
        self.pending = None  # the hooked layer's weights of the step whose logits come next

    def __enter__(self) -> Capture:
        _ACTIVE[id(self.module)] = self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.pop(id(self.module), None)

    def observe(self, query, key, mask, scaling) -> None:
        """softmax(q k^T * scaling + mask) of this decode step, mean over heads, prompt columns only."""
        import torch

        q, k = query.float(), key.float()
        if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
        if mask is not None:
            mask = mask[..., : scores.shape[-1]]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        weights = torch.softmax(scores, dim=-1).mean(dim=1)[:, 0, : self.prompt_len]  # batch x prompt keys
        self.pending = weights

    def __call__(self, input_ids, scores):
        """Logits processor: runs after each forward; books that step for the rows still generating."""
        import torch

        generated = input_ids[:, self.prompt_len:]
        alive = ~torch.isin(generated, self.eos).any(dim=1) if generated.shape[1] else \
            torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        alive_f = alive.float()
        self.logprob_sum += torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values * alive_f
        self.tokens += alive_f
        if self.pending is not None:  # this step's query was the previous token: a generated row
            self.attn_sum += self.pending * alive_f[:, None]
            self.rows += alive_f
            self.pending = None
        return scores

    def results(self) -> list[dict[str, Any]]:
        """Per row: layer, generated rows seen, per-image mean attention vectors, token grids, perplexity."""
        out = []
        lay = self.layout
        for b, positions in enumerate(lay.tokens):
            rows = float(self.rows[b])
            mean = (self.attn_sum[b] / rows).tolist() if rows else None
            images = [[round(mean[p], 8) for p in image] for image in positions] if mean else None
            tokens = float(self.tokens[b])
            mlp = float(self.logprob_sum[b] / tokens) if tokens else None
            # grids: an image's token map (rows, cols); None if unknown (grid/pic-in-pic refuse it)
            attention = {"layer": self.layer, "rows": int(rows), "images": images, "grids": lay.grids[b],
                         "layout": lay.kind}
            order = [lay.order(b, i) for i in range(len(positions))]
            if any(o is not None for o in order):  # tiles joined into one map (Idefics3)
                attention["grid_order"] = order
            out.append({"attention": attention,
                        "mean_max_logprob": mlp, "perplexity": perplexity(mlp) if mlp is not None else None})
        return out
