"""The result of ``explain``: raw attributions plus everything needed to reproduce and show them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import visualize


@dataclass(repr=False)
class Explanation:
    """``repr`` is short (method, shape, targets, parameters); ``summary()`` has everything small."""

    method: str
    attributions: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    params: Dict[str, Any]
    seed: int
    inputs: Optional[torch.Tensor] = field(default=None, repr=False)
    delta: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict, repr=False)
    heatmap_defaults: Dict[str, Any] = field(default_factory=dict, repr=False)
    preprocessing: Any = field(default=None, repr=False)
    class_names: Optional[tuple] = field(default=None, repr=False)
    time_s: float = 0.0
    names: Optional[List[str]] = None   # the images' names, when known (load_images, explain(names=))

    def __repr__(self) -> str:
        n = int(self.targets.shape[0])
        shown = self.targets.tolist()[:MAX_REPR_ITEMS]
        named = self.target_names()[:MAX_REPR_ITEMS]
        targets = ", ".join(str(t) if str(t) == nm else f"{t} ({nm})" for t, nm in zip(shown, named))
        if n > MAX_REPR_ITEMS:
            targets += f", ... {n - MAX_REPR_ITEMS} more"
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        images = ""
        if self.names:
            images = ", images=[" + ", ".join(self.names[:MAX_REPR_ITEMS]) + (", ..." if n > MAX_REPR_ITEMS else "") + "]"
        return (f"Explanation(method={self.method!r}, shape={tuple(self.attributions.shape)}{images}, "
                f"targets=[{targets}], params={{{params}}}, seed={self.seed}, time_s={self.time_s:.3g})")

    @property
    def signed(self) -> bool:
        return self.heatmap_defaults.get("sign") == "signed"

    def heatmap(self, **overrides) -> torch.Tensor:
        """B x H x W in [0, 1] with the method's documented default reduction.

        Keyword overrides: ``sign`` (abs / positive / negative / signed), ``channels``
        (sum / max / mean), ``clip`` (percentile or None), ``normalize``.
        """
        opts = dict(self.heatmap_defaults)
        unknown = set(overrides) - {"sign", "channels", "clip", "normalize"}
        if unknown:
            raise TypeError(f"heatmap: unknown option(s) {sorted(unknown)}; expected sign, channels, clip, normalize")
        opts.update(overrides)
        return visualize.heatmap(self.attributions, **opts)

    def pixels(self) -> Optional[np.ndarray]:
        """The explained images as B x H x W x 3 arrays in [0, 1] (if the inputs were kept)."""
        if self.inputs is None:
            return None
        x = self.inputs.detach().float().cpu()
        if self.preprocessing is not None:
            x = self.preprocessing.denormalize(x)
        return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()

    def target_names(self) -> List[str]:
        """Each image's explained class by name (its index when the class names are unknown; "custom
        target" for a unit or callable target)."""
        out = []
        for t in self.targets.tolist():
            if t < 0:
                out.append("custom target")
                continue
            if self.class_names is not None and 0 <= t < len(self.class_names):
                out.append(self.class_names[t])
            else:
                out.append(str(t))
        return out

    def summary(self) -> Dict[str, Any]:
        d = {
            "method": self.method,
            "targets": self.targets.tolist(),
            "target_names": self.target_names(),
            "scores": [float(s) for s in self.scores.tolist()],
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "seed": self.seed,
            "time_s": round(self.time_s, 4),
        }
        if self.delta is not None:
            d["delta"] = [float(v) for v in self.delta.tolist()]
        for k, v in self.extras.items():
            if isinstance(v, (int, float, str, list)) or (isinstance(v, torch.Tensor) and v.numel() <= 64):
                d[k] = _jsonable(v)
        return d

    def image_labels(self) -> List[str]:
        """The images' names (``names`` when known, else ``image0``, ``image1``, ...)."""
        n = int(self.targets.shape[0])
        return list(self.names) if self.names and len(self.names) == n else [f"image{i}" for i in range(n)]

    def save(self, directory, names: Optional[List[str]] = None, alpha: float = 0.5,
             annotate: bool = True) -> List[Path]:
        """Write one PNG per image, the heatmaps, the raw tensors and a JSON summary.

        Files are named ``{name}_{method}.png`` after ``names``, else the names the explanation
        carries (``explain(names=)`` or the file names ``load_images`` read), else ``image0``, ...;
        characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_`` and repeated names
        get ``_2``, ``_3``. Each PNG is the overlay (a signed map: the diverging map) titled with the
        image, its class and the method, over a colour bar with the map's legend; ``annotate=False``
        writes the bare overlay at the map's resolution instead.
        """
        directory = Path(directory)
        heat = self.heatmap().cpu().numpy()
        n = heat.shape[0]
        if names is None:
            labels = self.image_labels()
        else:
            if isinstance(names, str) or not all(isinstance(v, str) for v in names):
                raise TypeError("names: expected a list of strings, one per image")
            labels = list(names)
            if len(labels) != n:
                raise ValueError(f"names: expected {n} names (one per image), got {len(labels)}")
        stems = file_stems(labels)
        directory.mkdir(parents=True, exist_ok=True)
        pix = self.pixels()
        written = []
        cmap = visualize.default_cmap(self.signed)
        classes = self.target_names()
        for i, stem in enumerate(stems):
            if annotate:
                title = f"{labels[i]} \u00b7 {classes[i]} \u00b7 {self.method}"
                img = visualize.annotated(None if pix is None else pix[i], heat[i], title, self.signed, alpha)
            elif pix is not None and not self.signed:
                img = visualize.overlay(pix[i], heat[i], cmap, alpha)
            else:
                img = visualize.colorize(heat[i], cmap)
            written.append(visualize.save_png(img, directory / f"{stem}_{self.method}.png"))
        tensors = {"attributions": self.attributions.detach().cpu(), "targets": self.targets.cpu(),
                   "scores": self.scores.detach().cpu(), "heatmap": torch.from_numpy(heat)}
        if self.delta is not None:
            tensors["delta"] = self.delta.detach().cpu()
        for k, v in self.extras.items():
            if isinstance(v, torch.Tensor):
                tensors[k] = v.detach().cpu()
        pt = directory / f"{self.method}.pt"
        torch.save(tensors, pt)
        js = directory / f"{self.method}.json"
        js.write_text(json.dumps(self.summary(), indent=2))
        return written + [pt, js]

    def plot(self, alpha: float = 0.5):
        """A matplotlib figure: each image (titled with its name and class) with its map, and a colour
        bar with the map's legend."""
        heat = self.heatmap().cpu().numpy()
        pix = self.pixels()
        if pix is None:
            pix = np.zeros(heat.shape + (3,))
        classes = self.target_names()
        titles = [f"{name}: {cls}" for name, cls in zip(self.image_labels(), classes)] if self.names else classes
        return visualize.grid(list(pix), {self.method: list(heat)}, row_titles=titles,
                              signed={self.method: self.signed}, alpha=alpha)


MAX_REPR_ITEMS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stems(names: List[str]) -> List[str]:
    """Names made safe and unique as file-name stems (``a/b`` -> ``a_b``; a repeat ``x`` -> ``x_2``)."""
    out, seen = [], set()
    for i, name in enumerate(names):
        stem = _UNSAFE.sub("_", name).strip("._") or f"image{i}"
        candidate, k = stem, 2
        while candidate in seen:
            candidate, k = f"{stem}_{k}", k + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def _short(v) -> str:
    """A parameter's value in a few characters (a tensor by its shape, long text cut)."""
    if isinstance(v, torch.Tensor):
        return repr(v.item()) if v.numel() == 1 else f"tensor{tuple(v.shape)}"
    if isinstance(v, torch.nn.Module):
        return type(v).__name__
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist() if v.numel() <= 64 else f"tensor{tuple(v.shape)}"
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, torch.nn.Module):
        return type(v).__name__
    return repr(v)
