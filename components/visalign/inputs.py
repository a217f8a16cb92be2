"""Reading what users hand us: text that must be UTF-8, images that must decode within a pixel limit,
seed image paths that must stay under their root.

Every stage opens images and decodes text through here, so a bad file fails the same way
everywhere: a whole file that cannot be read is an InputError naming it (and the byte offset); one
bad image is a BadImage that the stage counts as a drop of its row, naming the file and row.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from pathlib import Path
from typing import Any

from visalign.errors import InputError

MAX_IMAGE_PIXELS_ENV = "VISALIGN_MAX_IMAGE_PIXELS"
# PIL's own warning threshold (1024 * 1024 * 1024 // 4 // 3, about 9459 x 9459): above it, a file's
# header alone can make the decoder allocate gigabytes (a decompression bomb).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"


class BadImage(InputError):
    """One image that cannot be used; `reason` is the drop reason the stage counts it under."""

    def __init__(self, where: str, problem: str, reason: str = UNREADABLE_IMAGE):
        self.reason = reason
        super().__init__(where, problem)


def max_image_pixels() -> int:
    """The pixel limit: VISALIGN_MAX_IMAGE_PIXELS, else PIL's bomb threshold."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(MAX_IMAGE_PIXELS_ENV, f"{raw!r} is not a positive whole number of pixels")
    return value


def decode_text(data: bytes, file: str | os.PathLike) -> str:
    """`data` as UTF-8 text (a leading byte-order mark dropped), or an InputError naming the file,
    the byte offset and the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(file, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) "
                         f"cannot be decoded ({e.reason}); save the file as UTF-8") from None


def _open(source: bytes | str | os.PathLike):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)


def load_image(source: bytes | str | os.PathLike, where: str, max_pixels: int | None = None) -> Any:
    """The image fully decoded (a truncated file fails here, not mid-batch), its format kept in
    `.format`; a BadImage naming `where` when it cannot be decoded or has more than the pixel limit."""
    from PIL import Image

    limit = max_pixels or max_image_pixels()
    # PIL warns at its MAX_IMAGE_PIXELS and refuses at twice that: made our limit, it never refuses
    # an image we accept, and the check below refuses the rest before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max(limit, Image.MAX_IMAGE_PIXELS or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(source)
            width, height = im.size
            if width * height > limit:
                im.close()
                raise BadImage(where, f"{width}x{height} = {width * height} pixels is over the limit of {limit} "
                               f"(a decompression bomb or a huge scan; raise {MAX_IMAGE_PIXELS_ENV} to allow it)",
                               IMAGE_TOO_LARGE)
            im.load()
            return im
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(where, f"{e} (raise {MAX_IMAGE_PIXELS_ENV} to allow it)", IMAGE_TOO_LARGE) from None
    except FileNotFoundError:
        raise BadImage(where, "no such file") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError, zlib.error, ...
        raise BadImage(where, f"cannot decode the image ({type(e).__name__}: {e})"[:300]) from None


def load_rgb(source: bytes | str | os.PathLike, where: str, max_pixels: int | None = None) -> Any:
    """load_image converted to RGB, the mode every processor takes."""
    with load_image(source, where, max_pixels) as im:
        return im.convert("RGB")


def image_size(path: str | os.PathLike, where: str) -> tuple[int, int]:
    """(width, height) from the header alone (no pixel is decoded, so no limit is needed)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as im:
                return im.size
    except Exception as e:
        raise BadImage(where, f"cannot read the image header ({type(e).__name__}: {e})"[:300]) from None


def _normal(path: str) -> str:
    """A URI or local path with `.` and `..` resolved (local paths made absolute)."""
    if "://" in path:
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.abspath(path)


def confine(root: str, rel: str, where: str, allow_outside: bool = False) -> str:
    """`rel` joined to `root` (a local path or a URI prefix), refused (InputError) when the result is
    outside `root`: a `../` path, an absolute path or another URI, unless `allow_outside`."""
    root = root.rstrip("/") or "/"
    joined = rel if "://" in rel or rel.startswith("/") else f"{root}/{rel}"
    if allow_outside:
        return joined
    normal, base = _normal(joined), _normal(root).rstrip("/")
    if not normal.startswith(base + "/"):
        raise InputError(where, f"image path {rel!r} leads outside the seed directory {root} (to {normal}); keep "
                         "images under it, set --image-root, or set sample.images_outside_root=true to allow it")
    return joined  # as joined, not resolved: the image's key (and so the prompt ids) stays what it was


def output_path(output_dir: str | os.PathLike) -> Path:
    """A stage's output directory as a local path; a URI is refused (the `visalign` command stages s3://
    outputs in a local directory and uploads them: visalign.infra.staging), never made a folder named 's3:'."""
    text = str(output_dir)
    if "://" in text:
        raise InputError(text, "a stage writes to a local directory; give a local path, or run the stage through "
                         "`visalign <stage> --output s3://...`, which writes locally and uploads at the end")
    return Path(text)
