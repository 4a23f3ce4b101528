"""Target resolution and score spaces.

The explained class is resolved once, on the clean input; it is never re-picked per noisy
sample. A target may also be an object with a ``score(outputs, captures)`` method (and an
optional ``layers`` attribute naming modules whose outputs it needs, see ``Units``), or any
callable mapping the model's output (rows x classes) to one score per row.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

SCORE_SPACES = ("logit", "softmax", "log_softmax")


def check_score_space(score: str) -> str:
    if score not in SCORE_SPACES:
        raise ValueError(f"score: expected one of {', '.join(SCORE_SPACES)}, got {score!r}")
    return score


def apply_space(outputs: torch.Tensor, space: str) -> torch.Tensor:
    if space == "logit":
        return outputs
    # probabilities in float32 at least (float64 models keep float64)
    if space == "softmax":
        return F.softmax(outputs if outputs.dtype == torch.float64 else outputs.float(), dim=1)
    if space == "log_softmax":
        return F.log_softmax(outputs if outputs.dtype == torch.float64 else outputs.float(), dim=1)
    raise ValueError(f"score: expected one of {', '.join(SCORE_SPACES)}, got {space!r}")


def is_custom_target(target: Any) -> bool:
    """True for unit targets / callables (anything that is not a class index spec)."""
    if isinstance(target, (str, numbers.Integral, torch.Tensor, np.ndarray, Sequence)) and not hasattr(target, "score"):
        return False
    return hasattr(target, "score") or callable(target)


def resolve_classes(target: Any, outputs: torch.Tensor) -> torch.Tensor:
    """Resolve ``target`` to one class index per image (LongTensor on the outputs' device).

    ``outputs`` are the model's outputs on the clean batch (B x K).
    """
    if isinstance(target, str) and target == "predicted":
        return outputs.argmax(dim=1).long()
    idx = class_indices(target, outputs.shape[0], outputs.device)
    check_class_range(idx, outputs.shape[1])
    return idx


def class_indices(target: Any, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Explicit class indices for ``n`` images, checked for type and count but not for range (the
    model's width is not known yet); ``check_class_range`` does the rest."""
    if isinstance(target, str):
        raise ValueError(f"target: expected 'predicted', an int, a sequence or a tensor of "
                         f"class indices, got the string {target!r}")
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target: expected a class index, got a bool")
    if isinstance(target, np.ndarray):  # numpy class indices, like a tensor
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target: expected integer class indices, got a numpy array of dtype {target.dtype}")
        target = torch.from_numpy(np.ascontiguousarray(target)).long()
    if isinstance(target, numbers.Integral):
        target = int(target)
    if isinstance(target, int):
        idx = torch.full((n,), target, dtype=torch.long, device=device)
    elif isinstance(target, torch.Tensor):
        if target.dtype.is_floating_point or target.dtype == torch.bool or target.dtype.is_complex:
            raise TypeError(f"target: expected an integer tensor of class indices, got dtype {target.dtype}")
        idx = target.reshape(-1).long().to(device)
        if idx.numel() == 1:
            idx = idx.expand(n).clone()
    elif isinstance(target, Sequence):
        try:
            vals = [int(t) for t in target]
        except (TypeError, ValueError):
            raise TypeError("target: expected a sequence of integer class indices") from None
        if any(isinstance(t, bool) or (isinstance(t, float) and not float(t).is_integer()) for t in target):
            raise TypeError("target: expected integer class indices")
        idx = torch.tensor(vals, dtype=torch.long, device=device)
    else:
        raise TypeError(f"target: expected 'predicted', an int, a sequence or tensor of class indices, "
                        f"or a unit target; got {type(target).__name__}")
    if idx.numel() != n:
        raise ValueError(f"target: expected one class index per image ({n}), got {idx.numel()}")
    return idx


def check_class_range(idx: torch.Tensor, k: int) -> None:
    if (idx < 0).any() or (idx >= k).any():
        bad = idx[(idx < 0) | (idx >= k)][0].item()
        raise ValueError(f"target: class index {bad} is out of range for a model with {k} outputs "
                         f"(expected 0..{k - 1})")


def explicit_classes(target: Any, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``class_indices`` plus the part of the range check that needs no model: indices >= 0. For
    callers that learn the model's width only from their first chunk of outputs."""
    idx = class_indices(target, n, device)
    if (idx < 0).any():
        raise ValueError(f"target: class index {idx[idx < 0][0].item()} is out of range (expected >= 0)")
    return idx


class ClassScore:
    """Score of a fixed class per image in a chosen score space."""

    layers: tuple = ()

    def __init__(self, classes: torch.Tensor, space: str = "logit"):
        self.classes = classes
        self.space = check_score_space(space)

    def rows(self, outputs: torch.Tensor, image_index: torch.Tensor, captures=None) -> torch.Tensor:
        scores = apply_space(outputs, self.space)
        cls = self.classes.to(outputs.device)[image_index.to(outputs.device)]
        return scores.gather(1, cls[:, None])[:, 0]


class ClassInPass:
    """A class target resolved inside a method's own pass over the clean batch.

    For methods whose gradient pass is exactly one forward of the clean batch (gradient, Grad-CAM)
    those outputs are the clean outputs, so no separate clean forward is needed: ``"predicted"``
    takes each row's argmax; explicit class indices are checked against the outputs' width on the
    first chunk. Records every image's class, full outputs and score. Once every image has been
    seen, later rows (a method's noisy passes after its clean one) use the recorded classes.
    """

    layers: tuple = ()

    def __init__(self, target: Any, n: int, space: str = "logit"):
        self.target = target
        self.n = n
        self.space = check_score_space(space)
        self.found: dict[int, tuple[int, torch.Tensor]] = {}
        # explicit indices are checked before the pass, their upper bound on its first chunk
        self.classes = None if isinstance(target, str) and target == "predicted" else explicit_classes(target, n)
        self.range_checked = False

    def rows(self, outputs: torch.Tensor, image_index: torch.Tensor, captures=None) -> torch.Tensor:
        out = outputs.detach()
        if len(self.found) == self.n:  # the clean pass is over: later (e.g. noisy) rows keep its classes
            cls = torch.tensor([self.found[i][0] for i in image_index.tolist()], device=out.device)
            return apply_space(outputs, self.space).gather(1, cls[:, None])[:, 0]
        if self.classes is None:
            cls = out.argmax(dim=1)
        else:
            if not self.range_checked:
                check_class_range(self.classes, out.shape[1])
                self.range_checked = True
            cls = self.classes.to(out.device)[image_index.to(out.device)]
        for r, i in enumerate(image_index.tolist()):
            self.found[i] = (int(cls[r]), out[r].float().clone())
        return apply_space(outputs, self.space).gather(1, cls[:, None])[:, 0]

    def resolved(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes per image, clean outputs B x K) after the pass."""
        if sorted(self.found) != list(range(self.n)):
            raise RuntimeError("internal: the clean pass did not score every image")
        classes = torch.tensor([self.found[i][0] for i in range(self.n)], dtype=torch.long)
        return classes, torch.stack([self.found[i][1] for i in range(self.n)])


class CustomScore:
    """Wraps a user callable ``f(outputs) -> (rows,)`` or a target object with ``score``."""

    def __init__(self, target: Callable | Any):
        self.target = target
        self.layers = tuple(getattr(target, "layers", ()) or ())

    def rows(self, outputs: torch.Tensor, image_index: torch.Tensor, captures=None) -> torch.Tensor:
        if hasattr(self.target, "score"):
            s = self.target.score(outputs, captures or {})
        else:
            s = self.target(outputs)
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.shape[0] != outputs.shape[0]:
            raise ValueError("target: a callable target must return one score per row "
                             f"(a 1-D tensor of length {outputs.shape[0]})")
        return s
class RecordingScore:
    """Wraps a score: the engine uses it like the score, and it keeps what each chunk produced: the
    selected scores (``values``, one tensor per chunk, rows in the engine's order) and, with ``site``
    and ``keep_activations``, the site layer's output per image (``activations[image]``)."""

    def __init__(self, score, site=None, keep_activations: bool = False):
        self.score = score
        self.site = site
        self.keep_activations = keep_activations
        extra = (site,) if site is not None else ()
        self.layers = tuple(dict.fromkeys(extra + tuple(getattr(score, "layers", ()) or ())))
        self.values: list[torch.Tensor] = []
        self.activations: dict[int, torch.Tensor] = {}

    def rows(self, outputs: torch.Tensor, image_index: torch.Tensor, captures=None) -> torch.Tensor:
        if self.keep_activations:
            a = (captures or {}).get(self.site)
            if a is None:
                raise RuntimeError("layer: the chosen layer was not executed in the forward pass")
            a = a.detach()
            for r, i in enumerate(image_index.tolist()):
                self.activations[i] = a[r].clone()
        r = self.score.rows(outputs, image_index, captures)
        self.values.append(r.detach())
        return r


