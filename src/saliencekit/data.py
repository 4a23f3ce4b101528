"""Images in, normalised batches out; sample photos; folder datasets.

``read_image`` is the package's one image reader: ``load_images`` (the API), the command line
(``read_folder``, ``load_images``), the Ray workers and the web explorer's uploads
(``web.uploads.decode_image``) all decode through it, so a file gives the same pixels everywhere:

- the size is read from the header and checked against ``max_pixels`` before any pixel is decoded
  (decompression bombs are refused with the file and the limit named);
- the EXIF orientation is applied;
- every Pillow mode becomes 8-bit RGB: 16-bit grayscale (``I;16``, and ``I`` holding 0..65535) is
  scaled by 65535/255, floats (``F``) in [0, 1] by 255 (other ranges min-max with a note),
  palette / CMYK / YCbCr / 1-bit / grayscale converted, and transparency (``LA``, ``RGBA``, ``PA``,
  palette or colour-key transparency) flattened onto white.

Images much smaller than the model's input are upscaled with a note: an ``ImageNote`` warning from
``load_images`` (the command line prints it as a line on stderr), a note in the web explorer.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .core.checks import optional_positive_int
from .models import IMAGENET, Preprocessing

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# Refused above this many pixels, from the header, before decoding: 50 MP is 150 MB as 8-bit RGB.
MAX_PIXELS = 50_000_000
# An image whose short side must be magnified more than this to reach the model's input gets a note.
UPSCALE_NOTE_FACTOR = 4.0

MODE_NAMES = {"L": "grayscale", "1": "black-and-white", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr",
              "LAB": "Lab", "HSV": "HSV", "RGBX": "RGBX"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """An image that cannot be used. ``detail`` is the message without the argument's name (it names
    the file); ``reason`` is ``"unreadable"`` (not an image), ``"corrupt"`` (it could not be decoded),
    ``"too_large"`` (more pixels than the limit) or ``"mode"`` (a pixel format with no RGB conversion)."""

    def __init__(self, argname: str, detail: str, reason: str):
        super().__init__(f"{argname}: {detail}")
        self.detail = detail
        self.reason = reason


class ImageNote(UserWarning):
    """Something done to an image that changes what its map can show (a tiny image upscaled many times)."""


def _megapixels(n: float) -> str:
    return f"{n / 1e6:.3g} megapixels"


def _bomb_pixels(err: Exception) -> Optional[int]:
    """The pixel count in Pillow's decompression-bomb message, when it gives one."""
    m = re.search(r"\((\d+) pixels\)", str(err))
    return int(m.group(1)) if m else None


def read_image(source: ImageLike, *, name: Optional[str] = None, argname: str = "items",
               max_pixels: Optional[int] = MAX_PIXELS, max_side: Optional[int] = None
               ) -> Tuple[Image.Image, List[str]]:
    """One image -> ``(RGB PIL image, notes)``; the reader behind every entry point (module docstring).

    ``source``: a path, the bytes of an image file, a PIL image or an H x W (x 1 | 3 | 4) array.
    ``name`` names the image in messages (default: the path). ``max_pixels`` (``None``: no limit of
    ours; Pillow's own decompression-bomb limit still applies) is checked on files and bytes from the
    header, before decoding. ``max_side``: a longer side above it is downscaled (with a note), and a
    large JPEG is decoded at a reduced scale. Errors are ``ImageReadError`` (a ``ValueError``)
    starting with ``argname``; a missing file is a ``FileNotFoundError``.
    """
    max_pixels = optional_positive_int("max_pixels", max_pixels)
    max_side = optional_positive_int("max_side", max_side)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{argname}: no such image file: {path}")
        return _read_file(path, name or str(path), argname, max_pixels, max_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_file(io.BytesIO(bytes(source)), name or "the image", argname, max_pixels, max_side)
    if isinstance(source, Image.Image):
        return _finish(source, name or _pil_name(source) or "the image", argname, [], max_side)
    if isinstance(source, np.ndarray):
        return _finish(_array_to_pil(source, argname), name or "the array", argname, [], max_side)
    raise TypeError(f"{argname}: expected paths, image bytes, PIL images or H x W x 3 uint8 arrays, "
                    f"got {type(source).__name__}")


def _read_file(fp, name: str, argname: str, max_pixels: Optional[int], max_side: Optional[int]):
    try:
        with warnings.catch_warnings():
            # the size is checked below against our own limit; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as e:
        n = _bomb_pixels(e)
        size = _megapixels(n) if n else "more pixels than Pillow decodes safely"
        raise ImageReadError(argname, f"{name} has {size}; the limit is "
                             f"{_megapixels(max_pixels or Image.MAX_IMAGE_PIXELS)} (refused before decoding: "
                             f"a possible decompression bomb). Downscale it first.", "too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageReadError(argname, f"{name} is not an image that can be read (expected {FORMATS}).",
                             "unreadable") from None
    with im:
        fmt = im.format or "image"
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageReadError(argname, f"{name} has no pixels ({w}x{h}).", "corrupt")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageReadError(argname, f"{name} is {w}x{h} ({_megapixels(w * h)}); the limit is "
                                 f"{_megapixels(max_pixels)}. Downscale it first.", "too_large")
        notes: List[str] = []
        try:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                notes.append(f"The {fmt} has {frames} frames; the first one is used.")
            if max_side is not None and fmt == "JPEG" and max(w, h) > max_side:
                im.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast and small
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise ImageReadError(argname, f"{name} looks like a {fmt} but could not be decoded "
                                 f"(truncated or corrupt?).", "corrupt") from None
        # _finish returns new images only (exif_transpose copies), so closing the file is safe
        return _finish(im, name, argname, notes, max_side, original=(w, h))


def _finish(im: Image.Image, name: str, argname: str, notes: List[str], max_side: Optional[int],
            original: Optional[Tuple[int, int]] = None) -> Tuple[Image.Image, List[str]]:
    """EXIF orientation, RGB conversion and the optional downscale of a decoded image."""
    orientation = 1
    try:
        orientation = im.getexif().get(0x0112, 1)
        rotated = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        rotated = im.copy()
        notes.append("The EXIF orientation could not be read; the image is used as stored.")
    if orientation not in (1, None):
        notes.append("The image was rotated / flipped as its EXIF orientation says.")
    rgb, note = to_rgb(rotated, name, argname)
    if note:
        notes.append(note)
    if rgb is im:   # never hand back the caller's own image object
        rgb = rgb.copy()
    if max_side is not None and max(rgb.size) > max_side:
        w, h = original or rgb.size
        rgb.thumbnail((max_side, max_side), Image.LANCZOS)
        notes.append(f"The image is large ({w}x{h}): it was downscaled to {rgb.size[0]}x{rgb.size[1]} before "
                     f"processing.")
    return rgb, notes


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or ("transparency" in im.info and im.mode in ("P", "L", "RGB"))


def flatten_alpha(im: Image.Image) -> Image.Image:
    """An image with transparency composited onto white, as RGB (every entry point flattens this way)."""
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """Integers in 0..65535 -> uint8 in 0..255, rounded (v / 257, exact in integers; no ties occur)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_rgb(im: Image.Image, name: str = "the image", argname: str = "items") -> Tuple[Image.Image, str]:
    """A decoded image in 8-bit RGB and a note saying what was converted (empty when it was RGB)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im, ""
    if _has_alpha(im):
        try:
            return (flatten_alpha(im),
                    f"The {mode} image has transparency: it was flattened onto white and converted to RGB.")
        except ValueError:
            raise ImageReadError(argname, f"{name}: the {mode} pixel format cannot be converted to RGB.",
                                 "mode") from None
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            gray = sixteen_to_eight(a)
            note = f"The {mode} (16-bit) grayscale image was scaled from 0..65535 to 8 bits and converted to RGB."
        else:
            span = max(hi - lo, 1)
            gray = np.round((a.astype(np.float64) - lo) * (255.0 / span)).astype(np.uint8)
            note = (f"The {mode} (32-bit integer) image holds values {lo}..{hi}: this range was scaled to 8 bits "
                    f"and converted to RGB.")
        return Image.fromarray(gray, "L").convert("RGB"), note
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.where(finite, a, np.float32(lo))
        if lo >= 0.0 and hi <= 1.0:
            gray = np.round(a * np.float32(255)).astype(np.uint8)
            note = "The floating-point image (values in [0, 1]) was scaled to 8 bits and converted to RGB."
        else:
            span = (hi - lo) or 1.0
            gray = np.round((a - np.float32(lo)) * np.float32(255.0 / span)).clip(0, 255).astype(np.uint8)
            note = (f"The floating-point image holds values {lo:.4g}..{hi:.4g}: this range was scaled to 8 bits "
                    f"and converted to RGB.")
        if not finite.all():
            note += " Its NaN / infinite pixels were set to the lowest value."
        return Image.fromarray(gray, "L").convert("RGB"), note
    try:
        rgb = im.convert("RGB")
    except ValueError:
        raise ImageReadError(argname, f"{name}: the {mode} pixel format cannot be converted to RGB.",
                             "mode") from None
    return rgb, f"The {MODE_NAMES.get(mode, mode)} image was converted to RGB."


def _array_to_pil(item: np.ndarray, argname: str) -> Image.Image:
    """An H x W (x 1 | 3 | 4) array as an 8-bit RGB(A) picture: uint8 as is, uint16 scaled by 65535,
    floats in [0, 1] scaled by 255, other values clipped to 0..255."""
    a = item
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{argname}: expected an H x W x 3 array, got shape {item.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{argname}: the array has no pixels (shape {item.shape})")
    if a.dtype == np.uint16:
        a = sixteen_to_eight(a)
    elif a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
            a = (a * 255).round()
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(a), "RGBA" if a.shape[2] == 4 else "RGB")


def _pil_name(im: Image.Image) -> Optional[str]:
    filename = getattr(im, "filename", None)
    return str(filename) if filename else None


def image_name(item: ImageLike) -> Optional[str]:
    """The name an image is known by: a path's stem, an opened PIL image's file stem, else ``None``."""
    if isinstance(item, (str, Path)):
        return Path(item).stem
    if isinstance(item, Image.Image) and _pil_name(item):
        return Path(_pil_name(item)).stem
    return None


def to_pil(item: ImageLike, *, argname: str = "items") -> Image.Image:
    """One image as an RGB PIL image, read by ``read_image`` (the caller's own image is never changed)."""
    return read_image(item, argname=argname)[0]


def resize_crop(im: Image.Image, resize: Optional[int] = 256, size: Optional[int] = 224) -> Image.Image:
    if resize:
        w, h = im.size
        s = resize / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    if size:
        w, h = im.size
        if w < size or h < size:
            im = im.resize((max(w, size), max(h, size)), Image.BILINEAR)
            w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def upscale_note(size_wh: Tuple[int, int], resize: Optional[int], size: Optional[int],
                 name: str = "The image") -> Optional[str]:
    """A note when ``resize_crop`` magnifies an image of ``size_wh`` (width, height) more than
    ``UPSCALE_NOTE_FACTOR`` times on its short side; ``None`` otherwise."""
    target = max(resize or 0, size or 0)
    w, h = size_wh
    if not target or min(w, h) < 1:
        return None
    factor = target / min(w, h)
    if factor <= UPSCALE_NOTE_FACTOR:
        return None
    return (f"{name} is only {w}x{h} pixels: it was upscaled {factor:.3g}x (short side {min(w, h)} -> {target} "
            f"pixels) for the model's input, so its map can show little detail.")


def pil_to_tensor01(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


def load_images(items: Union[ImageLike, Sequence[ImageLike]], size: Optional[int] = None,
                resize: Optional[int] = None, preprocessing: Preprocessing = IMAGENET,
                device: str | torch.device = "cpu", normalize: bool = True,
                max_pixels: Optional[int] = MAX_PIXELS) -> torch.Tensor:
    """Paths / image bytes / PIL images / H x W x 3 arrays -> a normalised B x 3 x size x size batch.

    Resize the short side to ``resize`` (256) then centre-crop ``size`` (224), by default those
    of ``preprocessing``. ``normalize=False`` returns pixels in [0, 1]. Every image is read by
    ``read_image``: files over ``max_pixels`` (50 megapixels; ``None`` lifts it) are refused from the
    header, EXIF orientation is applied, 16-bit / float / palette / CMYK images are converted and
    transparency is flattened onto white. An image magnified more than 4x to reach the input size
    gives an ``ImageNote`` warning.

    The batch carries the images' names as ``x.image_names`` (file stems; ``image{i}`` for arrays)
    when at least one is known; ``explain`` keeps them and ``Explanation.save`` names files after them.
    """
    if isinstance(items, (str, Path, bytes, Image.Image, np.ndarray)):
        items = [items]
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"items: expected paths, PIL images or H x W x 3 uint8 arrays (or a list of them), "
                        f"got {type(items).__name__}") from None
    if not items:
        raise ValueError("items: expected at least one image")
    size = preprocessing.size if size is None else size
    resize = preprocessing.resize if resize is None else resize
    max_pixels = optional_positive_int("max_pixels", max_pixels)
    pixels, names = [], []
    for i, it in enumerate(items):
        known = image_name(it)
        label = str(it) if isinstance(it, (str, Path)) else (known or f"image {i}")
        im, _ = read_image(it, name=label, max_pixels=max_pixels)
        note = upscale_note(im.size, resize, size, label)
        if note:
            warnings.warn(f"items: {note}", ImageNote, stacklevel=2)
        pixels.append(pil_to_tensor01(resize_crop(im, resize, size)))
        names.append(known)
    batch = torch.stack(pixels).to(device)
    batch = preprocessing.normalize(batch) if normalize else batch
    if any(n is not None for n in names):
        batch.image_names = [n if n is not None else f"image{i}" for i, n in enumerate(names)]
    return batch


def sample_images() -> List[Tuple[str, np.ndarray]]:
    """The bundled sample photos (from scikit-image): a cat and a cup of espresso."""
    import skimage.data

    return [("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee())]


def write_samples(directory: Union[str, Path], overwrite: bool = False) -> List[Tuple[Path, str]]:
    """Write the bundled sample photos into ``directory`` as lossless PNG files (``chelsea.png``,
    ``coffee.png``): the same pixels as ``sample_images()``. Returns ``(path, what happened)`` with
    ``"written"``, ``"unchanged"`` (already there, same pixels) or ``"kept"`` (a different file of
    that name is left alone unless ``overwrite``). Files are written to a temporary name then moved
    into place, so an interrupted run leaves no partial file."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"directory: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, arr in sample_images():
        path = directory / f"{name}.png"
        if path.exists():
            try:
                with Image.open(path) as im:
                    same = im.mode == "RGB" and np.array_equal(np.asarray(im), arr)
            except (OSError, ValueError, SyntaxError):
                same = False
            if same:
                out.append((path, "unchanged"))
                continue
            if not overwrite:
                out.append((path, "kept"))
                continue
        tmp = path.with_name(f".{path.name}.partial")
        try:
            Image.fromarray(arr).save(tmp, format="PNG")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        out.append((path, "written"))
    return out


def list_images(folder: Union[str, Path]) -> List[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: not a directory: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_labels(folder: Union[str, Path]) -> dict:
    """``labels.json`` of a folder (a list of {file, class_index, ...}) as file -> class_index."""
    p = Path(folder) / "labels.json"
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    return {d["file"]: int(d["class_index"]) for d in data}


def read_folder(directory: Optional[Union[str, Path]], limit: Optional[int] = None,
                preprocessing: Optional[Preprocessing] = None
                ) -> Tuple[List[Tuple[str, torch.Tensor]], dict, List[Tuple[str, str]]]:
    """The images ``saliencekit evaluate`` takes: ``(images, labels, skipped)``.

    ``images``: ``(file name, pixels C x H x W in [0, 1])`` in file-name order, the first ``limit``
    readable ones (the bundled samples when ``directory`` is None), preprocessed with ``preprocessing``;
    ``labels``: file name -> class index from the folder's ``labels.json``; ``skipped``:
    ``(file name, reason)`` for files that could not be read as images.
    """
    limit = optional_positive_int("limit", limit)
    kw = {"normalize": False} if preprocessing is None else {"preprocessing": preprocessing, "normalize": False}
    if directory is None:
        items = [(name, load_images(arr, **kw)[0]) for name, arr in sample_images()]
        return items[:limit], {}, []
    files = list_images(directory)  # all of them: ``limit`` counts readable images, not files
    known = load_labels(directory)
    items, labels, skipped = [], {}, []
    for p in files:
        if limit is not None and len(items) == limit:
            break
        try:
            t = load_images(p, **kw)[0]
        except (ValueError, FileNotFoundError, OSError) as e:
            skipped.append((p.name, str(e)))
            continue
        items.append((p.name, t))
        if p.name in known:
            labels[p.name] = known[p.name]
    return items, labels, skipped
