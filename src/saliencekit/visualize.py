"""Heatmap reductions and pictures: the SmoothGrad paper's visualisation lessons.

``heatmap(attr, sign=..., channels=..., clip=..., normalize=...)`` turns a raw attribution
(B x C x H x W or B x H x W) into a B x H x W map in [0, 1]:

- ``sign="abs"`` (ImageNet default): absolute values; ``"positive"`` / ``"negative"`` keep one
  sign; ``"signed"`` keeps the sign and maps to a diverging [0, 1] scale centred at 0.5.
- ``channels="sum"`` (sum over channels of the signed-then-processed values), ``"max"`` or
  ``"mean"``. For ``sign="abs"`` the sum is the sum of absolute values.
- ``clip=99``: cap outliers at that percentile (per image); ``None`` disables it.
- ``normalize=True``: min-max to [0, 1] per image (for ``"signed"``: symmetric span
  ``|clip-th percentile of |v||`` around 0.5).

Pictures: ``overlay`` / ``colorize`` give bare arrays; ``map_figure`` / ``annotated`` (one map) and
``grid`` (images x methods) add what the web explorer shows: a title (image, class, method) and a
colour bar with the map's legend ("0 (low)" .. "1 (high)"; signed maps "lowers score" .. "raises
score").
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from .core.imageops import minmax, percentile

SIGNS = ("abs", "positive", "negative", "signed")
CHANNEL_REDUCTIONS = ("sum", "max", "mean")


def heatmap(attr: torch.Tensor, sign: str = "abs", channels: str = "sum", clip: Optional[float] = 99,
            normalize: bool = True) -> torch.Tensor:
    if not isinstance(attr, torch.Tensor):
        raise TypeError("attr: expected a tensor")
    if sign not in SIGNS:
        raise ValueError(f"sign: expected one of {', '.join(SIGNS)}, got {sign!r}")
    if channels not in CHANNEL_REDUCTIONS:
        raise ValueError(f"channels: expected one of {', '.join(CHANNEL_REDUCTIONS)}, got {channels!r}")
    if clip is not None and not (0 < float(clip) <= 100):
        raise ValueError(f"clip: expected a percentile in (0, 100] or None, got {clip!r}")
    a = attr.detach().float()
    if a.dim() == 3:
        a = a[:, None]
    if a.dim() != 4:
        raise ValueError(f"attr: expected B x C x H x W or B x H x W, got shape {tuple(attr.shape)}")
    if sign == "abs":
        a = a.abs()
    elif sign == "positive":
        a = a.clamp(min=0)
    elif sign == "negative":
        a = (-a).clamp(min=0)
    if channels == "sum":
        m = a.sum(1)
    elif channels == "max":
        m = a.amax(1) if sign != "signed" else torch.gather(a, 1, a.abs().argmax(1, keepdim=True))[:, 0]
    else:
        m = a.mean(1)
    b, h, w = m.shape
    flat = m.reshape(b, -1)
    if sign == "signed":
        if clip is not None:
            span = percentile(flat.abs(), float(clip))
        else:
            span = flat.abs().amax(1, keepdim=True)
        span = torch.where(span > 0, span, torch.ones_like(span))
        out = flat.clamp(-span, span) / span if normalize else flat
        if normalize:
            out = (out + 1) / 2
        return out.reshape(b, h, w)
    if clip is not None:
        cap = percentile(flat, float(clip))
        flat = torch.minimum(flat, cap)
    if normalize:
        flat = minmax(flat)
    return flat.reshape(b, h, w)


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """H x W map in [0, 1] -> H x W x 3 uint8 via a matplotlib colormap."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    rgb = cm(np.clip(np.asarray(heat, dtype=np.float64), 0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def overlay(image01: np.ndarray, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a colormapped H x W heatmap over an H x W x 3 image in [0, 1]; returns uint8."""
    img = np.clip(np.asarray(image01, dtype=np.float64), 0, 1)
    col = colorize(heat, cmap).astype(np.float64) / 255
    return ((1 - alpha) * img + alpha * col).clip(0, 1).__mul__(255).round().astype(np.uint8)


def save_png(array: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def default_cmap(signed: bool) -> str:
    return "bwr" if signed else "jet"


# The colour bar's labels, the words of the web explorer's page: a signed map's colours say whether
# a pixel lowers or raises the explained score, an unsigned map's say how much it matters.
SIGNED_TICKS = ((0.0, 0.5, 1.0), ("\u2212 lowers score", "0", "raises score +"))
UNSIGNED_TICKS = ((0.0, 1.0), ("0 (low)", "1 (high)"))


def _colorbar(fig, ax, signed: bool, fontsize: float = 7):
    """A horizontal colour bar under ``ax`` (an axes or a list of them) with the map's legend."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=default_cmap(signed))
    cb = fig.colorbar(sm, ax=ax, orientation="horizontal", fraction=0.06, pad=0.02, aspect=25)
    ticks, labels = SIGNED_TICKS if signed else UNSIGNED_TICKS
    cb.set_ticks(list(ticks))
    cb.set_ticklabels(list(labels), fontsize=fontsize)
    return cb


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def map_figure(image01: Optional[np.ndarray], heat: np.ndarray, title: str, signed: bool = False,
               alpha: float = 0.5, dpi: int = 100):
    """One map as a matplotlib figure: the overlay on the image (a signed map, or a map with no image,
    is drawn on its own with the diverging colours), ``title`` above it and a colour bar with its
    legend below (a signed map: lowers / raises the score), as the web explorer shows it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heat = np.asarray(heat)
    h, w = heat.shape
    side = max(h, w, 160)
    fig = Figure(figsize=(side * w / max(h, w) / dpi + 0.6, side * h / max(h, w) / dpi + 1.0), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if image01 is not None and not signed:
        ax.imshow(overlay(image01, heat, default_cmap(False), alpha))
    else:
        ax.imshow(colorize(heat, default_cmap(signed)))
    ax.set_title(_wrap(title, 44), fontsize=8)
    ax.axis("off")
    _colorbar(fig, ax, signed, fontsize=6.5)
    return fig


def render(fig) -> np.ndarray:
    """A matplotlib figure as an H x W x 3 uint8 picture, cropped to what is drawn."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.04, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def annotated(image01: Optional[np.ndarray], heat: np.ndarray, title: str, signed: bool = False,
              alpha: float = 0.5) -> np.ndarray:
    """``map_figure`` rendered as an H' x W' x 3 uint8 picture (what ``Explanation.save`` writes)."""
    return render(map_figure(image01, heat, title, signed, alpha))


def grid(images01: Sequence[np.ndarray], maps: Mapping[str, Sequence[np.ndarray]],
         row_titles: Optional[Sequence[str]] = None, signed: Optional[Mapping[str, bool]] = None,
         alpha: float = 0.5):
    """A matplotlib figure: one row per image, the photo (titled with ``row_titles``: image and class)
    then one overlay per method (titled with the method), and under each method's column a colour
    bar with its legend (signed maps: lowers / raises the score)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(maps)
    n, m = len(images01), len(names) + 1
    fig, axes = plt.subplots(n, m, figsize=(2.2 * m, 2.3 * n + 0.6), squeeze=False, layout="constrained")
    for r, img in enumerate(images01):
        axes[r, 0].imshow(np.clip(img, 0, 1))
        axes[r, 0].set_title(_wrap(row_titles[r], 30) if row_titles else "input", fontsize=8)
        for c, name in enumerate(names, start=1):
            is_signed = bool(signed and signed.get(name))
            heat = maps[name][r]
            if is_signed:
                axes[r, c].imshow(colorize(heat, default_cmap(True)))
            else:
                axes[r, c].imshow(overlay(img, heat, default_cmap(False), alpha))
            axes[r, c].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    for c, name in enumerate(names, start=1):
        _colorbar(fig, list(axes[:, c]), bool(signed and signed.get(name)), fontsize=6)
    return fig
