"""Uploaded images: the limits, decoding the bytes a user sends, and keeping prepared images in memory.

- ``decode_image`` turns uploaded bytes into an RGB picture or a clear ``InputError``. It decodes
  with ``data.read_image``, the reader ``load_images`` and the command line use, so an upload gives
  the same pixels as the same file given to the API: the pixel limit checked from the header before
  decoding (decompression bombs named as such), EXIF orientation applied, grayscale / palette / CMYK
  / 16-bit / float converted, transparency flattened on white. Here large pictures are also
  downscaled (``MAX_SIDE``), and tiny ones get a note that they were upscaled;
- ``ImageStore`` keeps the most recent prepared images (``StoredImage``) under random ids. Nothing
  is written to disk, and no name that comes from a request is used as a file-system path.
"""

from __future__ import annotations

import io
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .. import data
from ..core.checks import positive_int

# All overridable through Explorer / create_app.
MAX_UPLOAD_BYTES = 10_000_000             # raw upload size (10 MB)
MAX_PIXELS = data.MAX_PIXELS              # refuse before decoding above this: the API's and the CLI's limit
MAX_SIDE = 1024                           # longer side above this is downscaled, with a note
MAX_IMAGES = 64                           # uploaded images kept in memory (oldest dropped)
INPUT_SIDE = 256                          # the short side the default (ImageNet) preprocessing resizes to

FORMATS = data.FORMATS
ID_RE = re.compile(r"^[0-9a-f]{32}$")


class InputError(ValueError):
    """Bad input from the page; the message is shown to the user as is, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(raw: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
                 max_side: int = MAX_SIDE, name: Optional[str] = None,
                 input_side: Optional[int] = INPUT_SIDE) -> Tuple[Image.Image, List[str]]:
    """Uploaded bytes -> (RGB image, notes for the user). Raises ``InputError`` with a readable message.

    ``name`` (the uploaded file's name) is used in messages; ``input_side`` is the short side the
    model's preprocessing resizes to, for the note on tiny images (``None``: no such note).
    """
    if len(raw) > max_bytes:
        raise InputError(f"The file is {len(raw) / 1e6:.1f} MB; uploads are limited to {max_bytes / 1e6:.1f} MB.",
                         status=413)
    if not raw:
        raise InputError(f"The upload is empty: choose an image file ({FORMATS}).")
    label = f"The file {name!r}" if name else "This file"
    try:
        im, notes = data.read_image(raw, name=label, argname="upload", max_pixels=max_pixels, max_side=max_side)
    except data.ImageReadError as e:
        raise InputError(e.detail, status=413 if e.reason == "too_large" else 400) from None
    note = data.upscale_note(im.size, input_side, None, "The image") if input_side else None
    if note:
        notes.append(note)
    return im, notes


def png_bytes(array: np.ndarray) -> bytes:
    """An H x W x 3 array (uint8, or floats in [0, 1]) encoded as PNG, in memory."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class StoredImage:
    """An image ready to explain: the model's input, what the model sees, and its predictions."""

    x: torch.Tensor                 # 1 x 3 x S x S, model space, on the model's device
    pixels: np.ndarray              # S x S x 3 in [0, 1] (what the model sees)
    preview_png: bytes
    top5: List[Dict[str, Any]]
    notes: List[str]
    name: str
    crop: str = ""


class ImageStore:
    """The ``max_images`` most recent images under random 128-bit hex ids (oldest dropped), thread-safe."""

    def __init__(self, max_images: int = MAX_IMAGES):
        self.max_images = positive_int("max_images", max_images)
        self._images: "OrderedDict[str, StoredImage]" = OrderedDict()
        self._lock = threading.Lock()

    def add(self, stored: StoredImage) -> str:
        image_id = secrets.token_hex(16)
        with self._lock:
            self._images[image_id] = stored
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)
        return image_id

    def get(self, image_id: Any) -> StoredImage:
        if not isinstance(image_id, str) or not ID_RE.match(image_id):
            raise InputError("Unknown image: upload a photo or pick a sample first.", status=404)
        with self._lock:
            stored = self._images.get(image_id)
        if stored is None:
            raise InputError("This image is no longer in memory (the server keeps the most recent ones): "
                             "upload it again.", status=404)
        return stored


__all__ = ["MAX_IMAGES", "MAX_PIXELS", "MAX_SIDE", "MAX_UPLOAD_BYTES", "ImageStore", "InputError", "StoredImage",
           "decode_image", "png_bytes"]
