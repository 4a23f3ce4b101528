"""The result of ``explain``: raw attributions plus everything needed to reproduce and show them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import visualize


@dataclass
class Explanation:
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
        out = []
        for t in self.targets.tolist():
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

    def save(self, directory, names: Optional[List[str]] = None, alpha: float = 0.5) -> List[Path]:
        """Write one overlay PNG per image, the heatmaps, the raw tensors and a JSON summary."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        heat = self.heatmap().cpu().numpy()
        pix = self.pixels()
        names = names or [f"image{i}" for i in range(heat.shape[0])]
        written = []
        cmap = visualize.default_cmap(self.signed)
        for i, name in enumerate(names):
            if pix is not None and not self.signed:
                img = visualize.overlay(pix[i], heat[i], cmap, alpha)
            else:
                img = visualize.colorize(heat[i], cmap)
            written.append(visualize.save_png(img, directory / f"{name}_{self.method}.png"))
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
        """A matplotlib figure: each image with its map."""
        heat = self.heatmap().cpu().numpy()
        pix = self.pixels()
        if pix is None:
            pix = np.zeros(heat.shape + (3,))
        return visualize.grid(list(pix), {self.method: list(heat)}, row_titles=self.target_names(),
                              signed={self.method: self.signed}, alpha=alpha)


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
