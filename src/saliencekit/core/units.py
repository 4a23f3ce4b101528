"""Unit targets: explain the activation of chosen feature maps or neurons instead of a class.

``Units(layer, channels=[...], positions=[(c, i, j), ...])`` scores each row with the summed
activation of the chosen feature maps (every position of each listed channel) plus the chosen
neurons (channel ``c`` at row ``i``, column ``j``) of ``layer``'s output. It works with every
method (``explain(model, x, "smoothgrad", target=Units(...))``), CAMs included: the map then
shows what drives those units (Smooth Grad-CAM++, Omeiza et al. 2019, selection (c)).

``layer`` is a dotted module name (resolved against the explained model by ``explain``) or the
module itself. Token layers (B x N x C) are read as a grid after dropping ``prefix_tokens``
leading tokens (``None``: the smallest count that leaves a square number of tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .checks import optional_nonneg_int
from .hooks import resolve_layer


def _int_list(name: str, v) -> list | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.reshape(-1).tolist()
    if isinstance(v, (int, str, bytes)) or not isinstance(v, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(v).__name__}")
    out = []
    for t in v:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"{name}: expected ints, got {t!r}")
        out.append(t)
    if not out:
        raise ValueError(f"{name}: expected at least one index")
    return out


def tokens_to_grid(a: torch.Tensor, prefix_tokens: int | None, aspect: float = 1.0) -> torch.Tensor:
    """B x N x C token activations -> B x C x h x w, dropping ``prefix_tokens`` leading tokens.

    ``prefix_tokens=None``: the smallest p (0 <= p < N) such that N - p tokens form an h x w grid
    with h / w = ``aspect`` (a class token gives p = 1, class + 4 register tokens p = 5).
    """
    if a.dim() != 3:
        raise ValueError(f"layer: expected a B x N x C token output, got shape {tuple(a.shape)}")
    b, n, c = a.shape
    p, h, w = grid_of_tokens(n, prefix_tokens, aspect)
    return a[:, p:].reshape(b, h, w, c).permute(0, 3, 1, 2)


def grid_of_tokens(n: int, prefix_tokens: int | None, aspect: float = 1.0):
    """(prefix, h, w) for n tokens; see ``tokens_to_grid``."""
    def fits(m):
        if m < 1:
            return None
        h = round((m * aspect) ** 0.5)
        if h >= 1 and m % h == 0 and abs(h / (m // h) - aspect) < 1e-6:
            return h, m // h
        return None

    if optional_nonneg_int("prefix_tokens", prefix_tokens) is not None:
        hw = fits(n - prefix_tokens)
        if hw is None:
            raise ValueError(f"prefix_tokens: {n} tokens minus {prefix_tokens} prefix tokens do not form a grid "
                             f"with the input's aspect ratio")
        return (prefix_tokens,) + hw
    for p in range(n):
        hw = fits(n - p)
        if hw is not None:
            return (p,) + hw
    raise ValueError(f"prefix_tokens: cannot infer a token grid from {n} tokens; pass prefix_tokens=")


def as_grid(a: torch.Tensor, prefix_tokens: int | None = None, aspect: float = 1.0) -> torch.Tensor:
    """A layer output as B x C x h x w: 4-D outputs unchanged, B x N x C token outputs re-gridded."""
    if a.dim() == 4:
        return a
    if a.dim() == 3:
        return tokens_to_grid(a, prefix_tokens, aspect)
    raise ValueError(f"layer: expected a 4-D (B x C x H x W) or token (B x N x C) output, "
                     f"got shape {tuple(a.shape)}")


class Units:
    """Target = summed activation of feature maps (``channels``) and neurons (``positions``)."""

    def __init__(self, layer, channels=None, positions=None, prefix_tokens: int | None = None):
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(f"layer: expected a module name (str) or an nn.Module, got {type(layer).__name__}")
        self.layer = layer
        self.channels = _int_list("channels", channels)
        if positions is not None:
            if isinstance(positions, torch.Tensor):
                positions = positions.tolist()
            if not isinstance(positions, Sequence) or isinstance(positions, (str, bytes)) or not positions:
                raise TypeError("positions: expected a non-empty sequence of (channel, row, col) triples")
            pos = []
            for t in positions:
                if not isinstance(t, Sequence) or len(t) != 3 or \
                        any(isinstance(v, bool) or not isinstance(v, int) for v in t):
                    raise TypeError(f"positions: expected (channel, row, col) int triples, got {t!r}")
                pos.append(tuple(t))
            positions = pos
        self.positions = positions
        if self.channels is None and self.positions is None:
            raise ValueError("Units: give channels=[...] and/or positions=[(c, i, j), ...]")
        self.prefix_tokens = prefix_tokens
        self._module = layer if isinstance(layer, nn.Module) else None

    def bind(self, model: nn.Module) -> Units:
        """A copy whose layer is resolved against ``model`` (unknown names list close candidates)."""
        u = object.__new__(Units)
        u.__dict__.update(self.__dict__)
        u._module = resolve_layer(model, self.layer)
        return u

    @property
    def layers(self):
        if self._module is None:
            raise ValueError(f"Units: the layer {self.layer!r} is a name; pass the module, or use it through "
                             f"saliencekit.explain, which resolves it against the model")
        return (self._module,)

    def score(self, outputs: torch.Tensor, captures) -> torch.Tensor:
        mod = self.layers[0]
        a = captures.get(mod)
        if a is None:
            raise RuntimeError("layer: the unit target's layer was not executed in the forward pass")
        g = as_grid(a, self.prefix_tokens)
        b, c, h, w = g.shape
        s = torch.zeros(b, device=g.device, dtype=torch.float32)
        if self.channels is not None:
            bad = [k for k in self.channels if not -c <= k < c]
            if bad:
                raise ValueError(f"channels: index {bad[0]} is out of range for a layer with {c} feature maps")
            s = s + g[:, self.channels].float().sum(dim=(1, 2, 3))
        if self.positions is not None:
            for k, i, j in self.positions:
                if not (-c <= k < c and -h <= i < h and -w <= j < w):
                    raise ValueError(f"positions: ({k}, {i}, {j}) is out of range for a layer output of "
                                     f"{c} x {h} x {w}")
            ks, is_, js = (list(t) for t in zip(*self.positions))
            s = s + g[:, ks, is_, js].float().sum(dim=1)
        return s

    def __repr__(self) -> str:
        name = self.layer if isinstance(self.layer, str) else type(self.layer).__name__
        return f"Units({name!r}, channels={self.channels}, positions={self.positions})"


__all__ = ["Units", "as_grid", "grid_of_tokens", "tokens_to_grid"]
