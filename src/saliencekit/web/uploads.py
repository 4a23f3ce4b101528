"""Uploaded images: the limits, decoding the bytes a user sends, and keeping prepared images in memory.

- ``decode_image`` turns uploaded bytes into an RGB picture or a clear ``InputError``: size limit,
  decompression bombs refused from the header before decoding, EXIF orientation applied, grayscale /
  palette / CMYK / 16-bit / float converted, transparency flattened on white, huge pictures downscaled;
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
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ..core.checks import positive_int
from ..core.imageops import minmax

# All overridable through Explorer / create_app.
MAX_UPLOAD_BYTES = 10_000_000             # raw upload size (10 MB)
MAX_PIXELS = 50_000_000                   # refuse before decoding above this (decompression bombs)
MAX_SIDE = 1024                           # longer side above this is downscaled, with a note
MAX_IMAGES = 64                           # uploaded images kept in memory (oldest dropped)

FORMATS = "JPEG, PNG, WebP, BMP, GIF or TIFF"
ID_RE = re.compile(r"^[0-9a-f]{32}$")
MODE_NAMES = {"L": "grayscale", "1": "black-and-white", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr",
              "LAB": "Lab", "HSV": "HSV"}


class InputError(ValueError):
    """Bad input from the page; the message is shown to the user as is, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(raw: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
                 max_side: int = MAX_SIDE) -> Tuple[Image.Image, List[str]]:
    """Uploaded bytes -> (RGB image, notes for the user). Raises ``InputError`` with a readable message."""
    if len(raw) > max_bytes:
        raise InputError(f"The file is {len(raw) / 1e6:.1f} MB; uploads are limited to {max_bytes / 1e6:.1f} MB.",
                         status=413)
    if not raw:
        raise InputError(f"The upload is empty: choose an image file ({FORMATS}).")
    notes: List[str] = []
    try:
        im = Image.open(io.BytesIO(raw))
        fmt = im.format or "image"
        w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise InputError(f"This file is not an image that can be read (expected {FORMATS}).") from None
    if w < 1 or h < 1:
        raise InputError("The image has no pixels.")
    if w * h > max_pixels:
        raise InputError(f"The image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels. Please downscale it first.", status=413)
    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"The {fmt} has {im.n_frames} frames; the first one is used.")
        if fmt == "JPEG" and max(w, h) > max_side:
            im.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast and small
        im.load()
        im = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        raise InputError(f"The file looks like a {fmt} but could not be decoded (truncated or corrupt?).") from None
    im, note = _to_rgb(im)
    if note:
        notes.append(note)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
        notes.append(f"The image is large ({w}x{h}): it was downscaled to {im.size[0]}x{im.size[1]} before "
                     f"processing.")
    return im, notes


def _to_rgb(im: Image.Image) -> Tuple[Image.Image, str]:
    """The picture in RGB and a note saying what was converted (empty when it already was RGB)."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return (Image.alpha_composite(white, rgba).convert("RGB"),
                f"The {mode} image has transparency: it was flattened onto white and converted to RGB.")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 0 else 1.0
        return (Image.fromarray((a / hi * 255).round().astype(np.uint8)).convert("RGB"),
                f"The {mode} (high bit depth) grayscale image was rescaled to 8 bits and converted to RGB.")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a01 = minmax(torch.from_numpy(a).reshape(1, -1)).reshape(a.shape).numpy()
        return (Image.fromarray((a01 * 255).round().astype(np.uint8)).convert("RGB"),
                "The floating-point image was rescaled to 8 bits and converted to RGB.")
    if mode != "RGB":
        return im.convert("RGB"), f"The {MODE_NAMES.get(mode, mode)} image was converted to RGB."
    return im, ""


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
