"""Loading models the one way every stage does: from a local path or an s3:// URI.

A model artifact is a Hugging Face directory (any image-text-to-text model with a processor) or
a PEFT adapter directory whose `visalign_model.json` names its base by URI. Nothing here knows
about a particular architecture.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.errors import InputError
from visalign.schema import ModelCard, read_model_card

log = logging.getLogger(__name__)

# Opt-ins, off by default: pickle weights run code when loaded, and so does a repository's own code.
ALLOW_PICKLE_ENV = "VISALIGN_ALLOW_PICKLE_WEIGHTS"
TRUST_REMOTE_CODE_ENV = "VISALIGN_TRUST_REMOTE_CODE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tekken.json")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def loading_policy() -> dict[str, bool]:
    """How models are loaded here (recorded in every model card train writes)."""
    return {"safetensors_only": not _flag(ALLOW_PICKLE_ENV), "trust_remote_code": _flag(TRUST_REMOTE_CODE_ENV)}


def check_weights(path: Path) -> None:
    """Refuse a directory whose weights are pickle files only, unless VISALIGN_ALLOW_PICKLE_WEIGHTS opts in:
    unpickling can run any code the file holds (torch's weights_only guard is all that stops it)."""
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files) or not loading_policy()["safetensors_only"]:
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES) and not f.startswith("training_args"))
    if pickles:
        raise InputError(path, f"holds pickle weights only ({', '.join(pickles[:3])}); pickle files can run code when "
                         "loaded, so only safetensors load by default. Convert them (model.save_pretrained(dir, "
                         f"safe_serialization=True)) or, for a file you trust, set {ALLOW_PICKLE_ENV}=1")


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
        raise InputError(f"model {uri}", "no such directory; pass a Hugging Face model directory or s3:// URI")
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


# Extras a family's processor imports at run time, and the optional dependency group that installs them.
FAMILY_EXTRAS = {"num2words": "families"}


class _NoVideoProcessor:
    """Stands where a processor loaded without its video processor reads that part's settings
    (SmolVLM's apply_chat_template reads num_frames and fps even for images): None, no videos."""

    num_frames = None
    fps = None


def processor_without_video(cls: type) -> type:
    """`cls` with its video_processor part removed: transformers derives a processor's parts from the
    parameters of its __init__, so a subclass whose __init__ lacks video_processor loads (and saves)
    the image processor and tokenizer only. Its name stays cls's, so what it saves loads as cls."""
    # from_pretrained passes a processor's settings (image_seq_len, num_image_tokens, ...) only when
    # they are named parameters of __init__ (it reads __init__.__code__), so the subclass's __init__ is
    # written out with every parameter of cls's but video_processor.
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name not in ("self", "video_processor") and p.kind is p.POSITIONAL_OR_KEYWORD]
    defaults = {p.name: None if p.default is p.empty else p.default for p in params}
    names = [p.name for p in params]
    source = (f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in names)}, **kwargs):\n"
              f"    _cls.__init__(self, video_processor=None, {', '.join(f'{n}={n}' for n in names)}, **kwargs)\n"
              "    self.video_processor = _NoVideoProcessor()\n")
    namespace = {"_cls": cls, "_defaults": defaults, "_NoVideoProcessor": _NoVideoProcessor}
    exec(source, namespace)  # noqa: S102 - the source above, built from cls's own parameter names
    return type(cls.__name__, (cls,), {"__init__": namespace["__init__"], "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _processor_class(path: Path) -> type | None:
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.exists():
            cls_name = json.loads(file.read_text()).get("processor_class")
            if cls_name:
                return getattr(transformers, cls_name, None)
    return None


def _raise_if_extra_missing(path: Path, error: BaseException) -> None:
    """An ImportError with the install line when `error` is a family extra missing."""
    pkg = next((pkg for pkg in FAMILY_EXTRAS if pkg in str(error)), None)
    if pkg:
        raise ImportError(f"{path}: the processor needs {pkg!r}: pip install 'visalign[{FAMILY_EXTRAS[pkg]}]' "
                          f"({error})") from error


def load_processor(path: Path):
    """AutoProcessor, or, when a part other than the image processor and tokenizer cannot load (the
    video processor needs torchvision, which CPU machines may lack), the processor without it and a
    warning: image work does not need it. An extra the family needs is named with its install line."""
    from transformers import AutoProcessor

    path = Path(path)
    trust = loading_policy()["trust_remote_code"]
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ImportError, AttributeError, ValueError) as e:
        _raise_if_extra_missing(path, e)
        cls = _processor_class(path)
        if getattr(cls, "is_dummy", False):  # transformers' placeholder for a class whose backend is absent
            raise RuntimeError(f"{path}: {cls.__name__} cannot be built here: transformers gates it on a backend "
                               "that is not installed (torchvision); install the torchvision build that matches "
                               "torch (constraints.txt pins it)") from e
        if not any((path / name).exists() for name in TOKENIZER_FILES):  # else a misleading sentencepiece error
            raise InputError(path, f"no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); save the processor "
                             "beside the model (processor.save_pretrained(dir)), or copy them from the base "
                             "model") from e
        if cls is None or "video_processor" not in getattr(cls, "get_attributes", list)():
            raise RuntimeError(f"{path}: cannot load the processor ({type(e).__name__}: "
                               f"{' '.join(str(e).split())})") from e
        try:
            processor = processor_without_video(cls).from_pretrained(path)
        except ImportError as e2:
            _raise_if_extra_missing(path, e2)
            raise
        log.warning("%s: loaded %s without its video processor, which failed to load (%s: %s); images work, "
                    "videos do not. Install the torchvision build that matches torch to load it whole.",
                    path, cls.__name__, type(e).__name__, str(e).splitlines()[0][:200])
    # Batched generation appends new tokens on the right, so prompts are padded on the left.
    processor.tokenizer.padding_side = "left"
    return processor


def from_pretrained(path: Path, **kwargs: Any):
    """AutoModelForImageTextToText.from_pretrained under the loading policy: safetensors only and no
    repository code unless opted in (VISALIGN_ALLOW_PICKLE_WEIGHTS, VISALIGN_TRUST_REMOTE_CODE)."""
    from transformers import AutoModelForImageTextToText

    policy = loading_policy()
    if not (path / "config.json").exists():
        raise InputError(path, "no config.json: not a Hugging Face model directory (save it with save_pretrained)")
    check_weights(path)
    return AutoModelForImageTextToText.from_pretrained(
        path, use_safetensors=True if policy["safetensors_only"] else None,
        trust_remote_code=policy["trust_remote_code"], **kwargs)


def load_model(uri: str | os.PathLike, *, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load a full model or base + adapter for inference, in eval mode on `device`."""
    device = device or pick_device()
    path = local_dir(uri)
    card = read_model_card(path)
    torch_dtype = pick_dtype(dtype, device)
    if card is not None and card.kind == "adapter":
        from peft import PeftModel

        if not card.base:
            raise ValueError(f"{path}/visalign_model.json: field 'base': an adapter needs its base model's URI")
        base = load_model(card.base, dtype=dtype, device=device)
        check_weights(path)
        model = PeftModel.from_pretrained(base.model, path)
        processor = load_processor(path) if (path / "processor_config.json").exists() else base.processor
    else:
        model = from_pretrained(path, dtype=torch_dtype)
        processor = load_processor(path)
    model.to(device).eval()
    log.info("loaded %s (%s) on %s as %s", uri, type(model).__name__, device, torch_dtype)
    return LoadedModel(model=model, processor=processor, path=path, card=card)
