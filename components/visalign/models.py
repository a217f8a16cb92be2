"""Loading models the one way every stage does: from a local path or an s3:// URI.

A model artifact is a Hugging Face directory (any image-text-to-text model with a processor) or
a PEFT adapter directory whose `visalign_model.json` names its base by URI. Nothing here knows
about a particular architecture.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.schema import ModelCard, read_model_card

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, or a peft PeftModel wrapping one
    processor: Any
    path: Path  # local directory it was loaded from
    card: ModelCard | None


def local_dir(uri: str | os.PathLike) -> Path:
    """A local directory for `uri`, downloading an s3:// prefix into the cache first."""
    uri = str(uri)
    if uri.startswith("s3://"):
        from visalign.infra import store

        return Path(store.local_path(uri))
    path = Path(uri.removeprefix("file://"))
    if not path.is_dir():
        raise FileNotFoundError(f"model {uri}: no such directory; pass a Hugging Face model directory or s3:// URI")
    return path


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str):
    """auto = bf16 on GPU (the papers' precision), fp32 on CPU (bf16 matmuls are slow there)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
            "float32": torch.float32, "fp32": torch.float32}[name]


def load_processor(path: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    # Batched generation appends new tokens on the right, so prompts are padded on the left.
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(uri: str | os.PathLike, *, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load a full model or base + adapter for inference, in eval mode on `device`."""
    from transformers import AutoModelForImageTextToText

    device = device or pick_device()
    path = local_dir(uri)
    card = read_model_card(path)
    torch_dtype = pick_dtype(dtype, device)
    if card is not None and card.kind == "adapter":
        from peft import PeftModel

        if not card.base:
            raise ValueError(f"{path}/visalign_model.json: field 'base': an adapter needs its base model's URI")
        base = load_model(card.base, dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base.model, path)
        processor = load_processor(path) if (path / "processor_config.json").exists() else base.processor
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        processor = load_processor(path)
    model.to(device).eval()
    log.info("loaded %s (%s) on %s as %s", uri, type(model).__name__, device, torch_dtype)
    return LoadedModel(model=model, processor=processor, path=path, card=card)
