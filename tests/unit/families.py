"""Tiny random-initialised models of the VLM families users bring, built from transformers' own
configs and processor classes (nothing downloaded): text hidden 64, 2 layers; vision 32, 2 layers;
PIL image processors at 32 px with the family's own tiling/anyres/dynamic-resolution geometry kept.

    path = build("qwen2_vl", tmp_path)   # a Hugging Face directory AutoModelForImageTextToText loads

Each family's tokenizer is a byte-level BPE trained on a few sentences, with the family's own image
tokens as specials, and a chat template that writes the family's own image placeholder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.models import processor_without_video

CORPUS = ["What colour is the circle? red blue green yellow one two three yes no",
          "Describe the image. There is a small red circle and a blue square on white.",
          "USER: ASSISTANT: user assistant model \n"] * 20

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)


def chat_template(image: str, user: str = "USER: ", assistant: str = "ASSISTANT:", end: str = "</s>") -> str:
    """LLaVA-1.5's turn shape with the family's image placeholder: the generation prompt is a prefix
    of the rendered assistant turn, so prompt and answer tokenise the same joined or apart."""
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] == 'user' %}}{user}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}{{% elif c['type'] == 'text' %}}{{{{ c['text'] }}}}{{% endif %}}"
        "{% endfor %}{% endif %} "
        f"{{% elif message['role'] == 'assistant' %}}{assistant}"
        "{% if message['content'] is string %} {{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}"
        f"{{% endfor %}}{{% endif %}}{end}"
        "{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{assistant}{{% endif %}}"
    )


def tokenizer(specials: list[str], named: dict[str, str], template: str, bos: str | None = "<s>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=base + [s for s in specials if s not in base],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token=bos, eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens=named, chat_template=template,
                                   padding_side="left", model_max_length=2048)


def _text(tok, **extra) -> dict[str, Any]:
    return {**TEXT, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, **extra}


def _clip(**extra) -> dict[str, Any]:
    return dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32, **extra)


def _siglip(**extra) -> dict[str, Any]:
    return dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8, **extra)


# ---- one builder per family: (tokenizer, processor, config) --------------------------------------

def _llava(tok_only=False):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    tok = tokenizer(["<image>"], {"image_token": "<image>"}, chat_template("<image>\n"))
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=tok.chat_template)
    cfg = LlavaConfig(vision_config=_clip(), text_config=dict(model_type="llama", **_text(tok)),
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    return tok, proc, cfg


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _llava_next():
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

    tok = tokenizer(["<image>"], {"image_token": "<image>"}, chat_template("<image>\n"))
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=tok.chat_template)
    cfg = LlavaNextConfig(vision_config=_clip(), text_config=dict(model_type="llama", **_text(tok)),
                          image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                          vision_feature_select_strategy="default", image_grid_pinpoints=PINPOINTS,
                          pad_token_id=tok.pad_token_id)
    return tok, proc, cfg


def _llava_onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    tok = tokenizer(["<image>", "<video>"], {"image_token": "<image>", "video_token": "<video>"},
                    chat_template("<image>\n"))
    ip = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    proc = processor_without_video(LlavaOnevisionProcessor)(image_processor=ip, tokenizer=tok, num_image_tokens=16,
                                   vision_feature_select_strategy="full", chat_template=tok.chat_template)
    cfg = LlavaOnevisionConfig(vision_config=_siglip(), text_config=dict(model_type="qwen2", **_text(tok)),
                               image_token_id=tok.convert_tokens_to_ids("<image>"),
                               video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS,
                               pad_token_id=tok.pad_token_id)
    return tok, proc, cfg


QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_processor(cls_name: str, tok):
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    # min/max pixels keep a 32-64 px image at 4x4-8x8 patches of 8 px, i.e. 4-16 tokens after the 2x2 merge
    ip = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    return processor_without_video(getattr(transformers, cls_name))(image_processor=ip, tokenizer=tok,
                                                                    chat_template=tok.chat_template)


def _qwen_tok():
    return tokenizer(QWEN_SPECIALS, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                     chat_template(QWEN_IMAGE))


def _qwen_ids(tok) -> dict[str, int]:
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _qwen(config: str, processor: str, text_type: str, vision: dict, **text):
    """A Qwen-VL family member: its config class and processor, the shared tokenizer and special ids."""
    import transformers

    tok = _qwen_tok()
    cfg = getattr(transformers, config)(vision_config=vision,
                                        text_config=dict(model_type=text_type, **_text(tok), **text), **_qwen_ids(tok))
    return tok, _qwen_processor(processor, tok), cfg


MROPE = {"rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}}


def _qwen2_vl():
    return _qwen("Qwen2VLConfig", "Qwen2VLProcessor", "qwen2_vl_text",
                 dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2), **MROPE)


def _qwen2_5_vl():
    return _qwen("Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "qwen2_5_vl_text",
                 dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1]),
                 **MROPE)


def _qwen3_vl():
    return _qwen("Qwen3VLConfig", "Qwen3VLProcessor", "qwen3_vl_text",
                 dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[1]),
                 head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "mrope_section": [2, 2, 4], "mrope_interleaved": True})


def _idefics_like(kind: str):
    import transformers

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + \
        [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = tokenizer(specials, {"image_token": "<image>"}, chat_template("<image>", end="<end_of_utterance>"))
    ip_cls = getattr(transformers, f"{kind}ImageProcessorPil")
    # longest edge 64, tiles of 32: a wide image splits into 1x2 tiles + the global view
    ip = ip_cls(do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    proc_kwargs = dict(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=tok.chat_template)
    cls = getattr(transformers, f"{kind}Processor")
    proc = (processor_without_video(cls) if kind == "SmolVLM" else cls)(**proc_kwargs)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = getattr(transformers, f"{kind}Config")(
        vision_config=vision, text_config=dict(model_type="llama", **_text(tok)), scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return tok, proc, cfg


def _gemma3():
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    tok = tokenizer(["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                    {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                     "eoi_token": "<end_of_image>"},
                    chat_template("<start_of_image>", end="<end_of_turn>"))
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=tok.chat_template)
    cfg = Gemma3Config(vision_config=_siglip(), mm_tokens_per_image=4,
                       text_config=dict(model_type="gemma3_text", **_text(tok), head_dim=16, sliding_window=64),
                       image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
                       boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    return tok, proc, cfg


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

    tok = tokenizer(["<image>"], {"image_token": "<image>"}, chat_template("<image>"))
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)
    cfg = PaliGemmaConfig(vision_config=dict(**_siglip(), projection_dim=64),
                          text_config=dict(model_type="gemma", **_text(proc.tokenizer), head_dim=16),
                          image_token_index=proc.image_token_id, projection_dim=64, hidden_size=64)
    return proc.tokenizer, proc, cfg


def _internvl():
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor

    tok = tokenizer(["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
                    {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                     "video_token": "<video>"}, chat_template("<IMG_CONTEXT>\n"))
    ip = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
                                  max_patches=4)
    proc = processor_without_video(InternVLProcessor)(image_processor=ip, tokenizer=tok, image_seq_length=4,
                             chat_template=tok.chat_template)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[32, 32], patch_size=[8, 8])
    cfg = InternVLConfig(vision_config=vision, text_config=dict(model_type="qwen2", **_text(tok)),
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                         vision_feature_layer=-1)
    return tok, proc, cfg


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], tuple[Any, Any, Any]]
    note: str = ""


FAMILIES = {f.name: f for f in [
    Family("llava", _llava, "LLaVA-1.5: one fixed-size image, one run of tokens"),
    Family("llava_next", _llava_next, "anyres tiles, padded to the batch's largest tile count"),
    Family("llava_onevision", _llava_onevision, "anyres for one image, base view per image for several"),
    Family("qwen2_vl", _qwen2_vl, "dynamic resolution: flattened patch rows, image_grid_thw"),
    Family("qwen2_5_vl", _qwen2_5_vl, "as Qwen2-VL, windowed vision attention"),
    Family("qwen3_vl", _qwen3_vl, "as Qwen2-VL, deepstack vision features"),
    Family("idefics3", lambda: _idefics_like("Idefics3"), "tiles + global view, row/column tokens"),
    Family("smolvlm", lambda: _idefics_like("SmolVLM"), "as Idefics3"),
    Family("gemma3", _gemma3, "boi/eoi around soft image tokens"),
    Family("paligemma", _paligemma, "every image's tokens in one block at the start"),
    Family("internvl", _internvl, "a row of pixel_values per tile, num_patches"),
]}


def build(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build family `name`'s tiny model and processor, save both to `out_dir`; returns it."""
    import torch
    from transformers import AutoModelForImageTextToText

    tok, processor, config = FAMILIES[name].build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    with torch.no_grad():  # matrices some families initialise to zero (Gemma 3's projector): random too,
        for param in model.parameters():  # else the image never reaches the text and nothing can be checked
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.02)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
