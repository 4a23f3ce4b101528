"""Images in, normalised batches out; sample photos; folder datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .core.checks import optional_positive_int
from .models import IMAGENET, Preprocessing

ImageLike = Union[str, Path, Image.Image, np.ndarray]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def to_pil(item: ImageLike, *, argname: str = "items") -> Image.Image:
    if isinstance(item, (str, Path)):
        p = Path(item)
        if not p.is_file():
            raise FileNotFoundError(f"{argname}: no such image file: {p}")
        try:
            with Image.open(p) as im:
                im.load()
                return im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"{argname}: cannot read {p} as an image ({e})") from None
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"{argname}: expected an H x W x 3 array, got shape {a.shape}")
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
                a = (a * 255).round()
            a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(a[..., :3]))
    raise TypeError(f"{argname}: expected paths, PIL images or H x W x 3 uint8 arrays, got {type(item).__name__}")


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


def pil_to_tensor01(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


def load_images(items: Union[ImageLike, Sequence[ImageLike]], size: Optional[int] = None,
                resize: Optional[int] = None, preprocessing: Preprocessing = IMAGENET,
                device: str | torch.device = "cpu", normalize: bool = True) -> torch.Tensor:
    """Paths / PIL images / H x W x 3 uint8 arrays -> a normalised B x 3 x size x size batch.

    Resize the short side to ``resize`` (256) then centre-crop ``size`` (224), by default those
    of ``preprocessing``. ``normalize=False`` returns pixels in [0, 1].
    """
    if isinstance(items, (str, Path, Image.Image, np.ndarray)):
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
    batch = torch.stack([pil_to_tensor01(resize_crop(to_pil(it), resize, size)) for it in items])
    batch = batch.to(device)
    return preprocessing.normalize(batch) if normalize else batch


def sample_images() -> List[Tuple[str, np.ndarray]]:
    """The bundled sample photos (from scikit-image): a cat and a cup of espresso."""
    import skimage.data

    return [("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee())]


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
    (the bundled samples when ``directory`` is None), preprocessed with ``preprocessing``;
    ``labels``: file name -> class index from the folder's ``labels.json``; ``skipped``:
    ``(file name, reason)`` for files that could not be read as images.
    """
    limit = optional_positive_int("limit", limit)
    kw = {"normalize": False} if preprocessing is None else {"preprocessing": preprocessing, "normalize": False}
    if directory is None:
        items = [(name, load_images(arr, **kw)[0]) for name, arr in sample_images()]
        return items[:limit], {}, []
    files = list_images(directory)[:limit]
    known = load_labels(directory)
    items, labels, skipped = [], {}, []
    for p in files:
        try:
            t = load_images(p, **kw)[0]
        except (ValueError, FileNotFoundError, OSError) as e:
            skipped.append((p.name, str(e)))
            continue
        items.append((p.name, t))
        if p.name in known:
            labels[p.name] = known[p.name]
    return items, labels, skipped
