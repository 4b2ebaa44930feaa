"""Image bytes for a record: read in place, fully decoded (catching truncation), shrunk if asked, JPEG out.

Kept free of TFDS and JAX so build worker processes start fast and small.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import PIL.Image

from geor_jax.data import archives

UNREADABLE = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")  # PIL names its BytesIO: differs per process


def encode_image(data: bytes, max_long_side: int | None = None, quality: int = 95) -> bytes:
    """Decode an image fully, shrink its long side if asked, return JPEG bytes.

    An RGB JPEG that needs no resize keeps its original bytes (no re-encoding loss).
    Raises OSError/ValueError for unreadable data.
    """
    with PIL.Image.open(io.BytesIO(data)) as image:
        image.load()
        keep = image.format == "JPEG" and image.mode == "RGB"
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"empty image {width}x{height}")
        if max_long_side and max(width, height) > max_long_side:
            scale = max_long_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.convert("RGB").resize(size, PIL.Image.BICUBIC, reducing_gap=3.0)
            keep = False
        if keep:
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=quality)
        return out.getvalue()


def load_image(source: archives.Source, max_long_side: int | None, quality: int) -> tuple[bytes | None, str]:
    """(JPEG bytes, "") for an image ``Source``, or (None, why it is unreadable)."""
    try:
        return encode_image(archives.read_source(source), max_long_side, quality), ""
    except UNREADABLE as error:
        message = _OBJECT_REPR.sub("", str(error))
        return None, f"{archives.describe_source(source)}: {type(error).__name__}: {message}"


def load_images(sources: Sequence[archives.Source], max_long_side: int | None,
                quality: int) -> list[tuple[bytes | None, str]]:
    """``load_image`` for several sources: one task per batch keeps inter-process overhead small."""
    return [load_image(source, max_long_side, quality) for source in sources]
