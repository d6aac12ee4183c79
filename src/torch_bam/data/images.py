"""Open an image file as 8-bit ``"L"`` or ``"RGB"``, scaling deep pixels by their bit depth.

PIL's ``convert("L")`` / ``convert("RGB")`` clip 16-bit, 32-bit and float pixels at 255 instead
of scaling them, so a mid-grey 16-bit PNG reads as white. Here each deep mode is scaled to
0..255 by its full range:

- ``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"`` (16-bit grey, as PIL opens a 16-bit PNG):
  ``v / 65535``;
- ``"I"`` (32-bit signed): ``v / (2**bits - 1)``, with ``bits`` from the file where it says
  (16 for a PNG, as older PIL opened 16-bit PNGs; a TIFF's BitsPerSample), else 31 (the
  positive range); negative values become 0;
- ``"F"`` (float): taken as 0..1, the usual range of float images.

Every other mode (8-bit grey, RGB, palette, 16-bit RGB, which PIL already reduces to 8 bits)
goes through PIL's own ``convert``. Used by ``torch-bam visualize``, ``torch-bam eval`` and the
image-folder data.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["load_rgb", "open_image", "to_8bit"]

_UNSIGNED_16 = ("I;16", "I;16L", "I;16B", "I;16N")


def _full_scale(im) -> float:
    """The pixel value that means white in ``im`` (a deep grey mode)."""
    if im.mode in _UNSIGNED_16:
        return 2**16 - 1
    if im.mode == "F":
        return 1.0
    bits = 31  # "I": signed 32-bit
    if im.format == "PNG":
        bits = 16
    elif im.format == "TIFF":
        stated = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample
        stated = stated[0] if isinstance(stated, tuple) else stated
        if isinstance(stated, int) and 0 < stated < 32:
            bits = stated
    return 2**bits - 1


def to_8bit(im, mode: str = "RGB"):
    """``im`` (a PIL image) as an 8-bit ``"L"`` or ``"RGB"`` image, deep pixels scaled."""
    from PIL import Image

    if mode not in ("L", "RGB"):
        raise ValueError(f"to_8bit: mode must be 'L' or 'RGB', got {mode!r}.")
    if im.mode not in (*_UNSIGNED_16, "I", "F"):
        return im.convert(mode)
    a = np.asarray(im, dtype=np.float64) / _full_scale(im)
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)
    grey = Image.fromarray(np.round(a * 255).astype(np.uint8), "L")
    return grey if mode == "L" else grey.convert("RGB")


def open_image(path: str | os.PathLike, mode: str = "RGB"):
    """Read the image file at ``path``, decoded in full, as an 8-bit ``"L"`` or ``"RGB"``
    PIL image (see :func:`to_8bit`).

    Raises:
        OSError: the file is missing, not an image, empty, truncated or corrupt (PIL's own
            decoding errors, such as ``SyntaxError: broken PNG file``, are raised as OSError).
        ValueError: ``mode`` is not ``"L"`` or ``"RGB"``.
    """
    from PIL import Image

    if mode not in ("L", "RGB"):
        raise ValueError(f"open_image: mode must be 'L' or 'RGB', got {mode!r}.")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not in a later resize
            return to_8bit(im, mode)
    except OSError:
        raise
    except (
        SyntaxError,
        ValueError,
        TypeError,
        EOFError,
        IndexError,
        struct.error,
        zlib.error,
        Image.DecompressionBombError,
    ) as e:
        raise OSError(f"{type(e).__name__}: {e}") from e


def load_rgb(path: str):
    """``open_image(path, "RGB")`` for a dataset's loader: an unreadable file raises an
    OSError whose message names it and says what to do."""
    from PIL import UnidentifiedImageError

    try:
        return open_image(path, "RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise OSError(
            f"Cannot read image {path!r} ({e}). Remove or replace the file and run again."
        ) from e
