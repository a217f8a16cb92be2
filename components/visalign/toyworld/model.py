"""A tiny LLaVA-architecture VLM built from config, with a tokenizer trained on the toy world.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on the world's text, the
image processor is CLIP's PIL processor at `image_size` pixels, and the model is a CLIP vision
tower + Llama decoder wrapped in LlavaForConditionalGeneration. The result is a standard Hugging
Face directory that AutoProcessor / AutoModelForImageTextToText load like any hub model, so the
stages run the real loading code on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

# LLaVA-1.5's conversation shape. The generation prompt ends with "ASSISTANT:" and an assistant
# turn renders as "ASSISTANT: answer</s>", so the prompt is a prefix of the rendered turn and
# prompt and answer tokenise the same whether joined or apart (TRL tokenises them apart).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


# Normalise the toy world's white canvas to exactly 0. CLIP's patch embedding has no bias, so an
# empty patch then embeds to 0 and only shapes carry signal. With CLIP's own mean/std, white maps to
# ~1.9 and the shared background swamps the few shape patches: measured on the shapes world, SFT
# sat at the 'answer without looking' loss for all of 1,200 steps; with white = 0 it left that
# plateau within ~300 steps (visalign toyworld report).
WHITE_IS_ZERO_MEAN = (1.0, 1.0, 1.0)
WHITE_IS_ZERO_STD = (0.5, 0.5, 0.5)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 420):
    """Byte-level BPE on the world's text; ~420 tokens make every toy answer one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + ["USER: ASSISTANT: \n"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=512,
    )


def build_tiny_vlm(
    out_dir: str | os.PathLike,
    corpus: Iterable[str],
    *,
    image_size: int = 64,
    patch_size: int = 8,
    text_hidden: int = 64,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vocab_size: int = 420,
    image_mean: tuple[float, float, float] = WHITE_IS_ZERO_MEAN,
    image_std: tuple[float, float, float] = WHITE_IS_ZERO_STD,
    seed: int = 0,
) -> Path:
    """Build, randomly initialise (seeded) and save a tiny LLaVA; returns the directory."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    # "default" drops CLIP's CLS token, so an image is (image_size / patch_size)^2 tokens.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 4, num_hidden_layers=vision_layers,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_hidden * 4,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        # -1: with a 2-layer tower, LLaVA's usual -2 would silently drop the last layer.
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
