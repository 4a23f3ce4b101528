"""Speed settings of a call: precision (autocast), channels_last and ``torch.compile``.

* **precision**: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward runs under
  ``torch.autocast`` (the backward follows the dtypes autocast chose); scores and every reduction
  are float32; fp16 uses a static loss scale (256, redone unscaled on overflow).
* **channels_last**: points are fed in channels_last memory format and 4-D weights are viewed in
  channels_last for the call only (the model's own tensors are put back afterwards). ``"auto"``
  (the default) leaves the choice to the chunk policy (``core.chunking``): a large CPU call
  times both layouts on its first chunks and keeps channels_last when it is at least 5 % faster per row. The layouts
  differ only in float rounding.
* **compile**: the forward is ``torch.compile``-d once per model and setting (cached); the engine
  pads chunks to a fixed size so no shape change recompiles. If the compiler fails the call falls
  back to eager mode with a warning.
* **retain_memory** (default ``True``): during a CPU call glibc keeps freed memory for reuse
  (``core.allocator``). No effect on values.

Settings are chosen per call (``explain(..., precision=, channels_last=, compile=)``) or for the
process with :func:`set_defaults`. :func:`call_scope` makes them active for the engine.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

import torch
from torch import nn

from .allocator import retained_memory
from .checks import boolean

PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}

FP16_LOSS_SCALE = 256.0


# ---- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Speed settings of one call (or the process defaults)."""

    precision: str = "fp32"
    channels_last: Any = "auto"  # True | False | "auto"
    compile: bool = False
    calibrate: bool = True
    compile_backend: Any = "inductor"
    retain_memory: bool = True   # glibc keeps freed memory for reuse during a CPU call (see below)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return PRECISIONS[self.precision]


_DEFAULTS = Settings()


def check_precision(precision) -> str:
    if isinstance(precision, torch.dtype):
        for k, v in PRECISIONS.items():
            if v == precision or (v is None and precision == torch.float32):
                return k
        raise ValueError(f"precision: expected fp32, bf16 or fp16, got {precision}")
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected 'fp32', 'bf16' or 'fp16', got {type(precision).__name__}")
    p = _ALIASES.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise ValueError(f"precision: expected 'fp32', 'bf16' or 'fp16', got {precision!r}")
    return p


def check_layout(v):
    if v == "auto" and isinstance(v, str):
        return v
    if not isinstance(v, bool):
        raise TypeError(f"channels_last: expected True, False or 'auto', got {v!r}")
    return v


def set_defaults(precision=None, channels_last=None, compile=None, calibrate=None,
                 compile_backend=None, retain_memory=None) -> Settings:
    """Set process-wide defaults for ``explain``; returns the previous defaults.

    ``precision``: ``"fp32" | "bf16" | "fp16"``; ``channels_last``: bool or ``"auto"``; ``compile``: bool;
    ``calibrate``: whether ``channels_last="auto"`` may time both memory layouts on a CPU call's
    first chunks (``False``: contiguous, deterministic); ``compile_backend``: the ``torch.compile`` backend (default
    ``"inductor"``; ``"aot_eager"`` traces without generating code); ``retain_memory``: whether
    glibc keeps freed memory for reuse while a CPU call runs (see :func:`retained_memory`).
    Arguments left at ``None``
    keep their current value. Pass a ``Settings`` object back to restore it exactly.
    """
    global _DEFAULTS
    old = _DEFAULTS
    if isinstance(precision, Settings):
        _DEFAULTS = precision
        return old
    new = resolve(precision, channels_last, compile, calibrate)
    if compile_backend is not None:
        if not (isinstance(compile_backend, str) or callable(compile_backend)):
            raise TypeError(f"compile_backend: expected a backend name or callable, "
                            f"got {type(compile_backend).__name__}")
        new = replace(new, compile_backend=compile_backend)
    if retain_memory is not None:
        new = replace(new, retain_memory=boolean("retain_memory", retain_memory))
    _DEFAULTS = new
    return old


def get_defaults() -> Settings:
    return _DEFAULTS


def resolve(precision=None, channels_last=None, compile=None, calibrate=None) -> Settings:
    """Per-call settings: given values validated, the rest from the process defaults."""
    s = _DEFAULTS
    kw = {}
    if precision is not None:
        kw["precision"] = check_precision(precision)
    if channels_last is not None:
        kw["channels_last"] = check_layout(channels_last)
    if compile is not None:
        kw["compile"] = boolean("compile", compile)
    if calibrate is not None:
        kw["calibrate"] = boolean("calibrate", calibrate)
    return replace(s, **kw)


# ---- the active call --------------------------------------------------------------------------

@dataclass
class CallState:
    model: nn.Module
    settings: Settings
    swapped: list = field(default_factory=list)   # (parameter, original data) while channels_last
    requested: Any = None                         # the layout asked for (True | False | "auto"); the
    # settings' channels_last stays "auto" until the layout probe (or its cache) decides the layout

    def __post_init__(self):
        if self.requested is None:
            self.requested = self.settings.channels_last

    @property
    def channels_last(self) -> bool:
        """The layout in effect now (``"auto"`` is contiguous until the layout probe picks channels_last)."""
        return self.settings.channels_last is True


def _to_channels_last(st: CallState) -> None:
    for p in list(st.model.parameters()) + list(st.model.buffers()):
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            orig = p.data
            p.data = orig.contiguous(memory_format=torch.channels_last)
            st.swapped.append((p, orig))


def _restore_layout(st: CallState) -> None:
    for p, orig in reversed(st.swapped):
        p.data = orig
    st.swapped.clear()


def set_layout(st: CallState, channels_last: bool) -> None:
    """Switch the active call's layout (weights viewed accordingly; restored at the scope's end)."""
    if channels_last and not st.swapped:
        _to_channels_last(st)
    elif not channels_last:
        _restore_layout(st)
    st.settings = replace(st.settings, channels_last=channels_last)


_ACTIVE: contextvars.ContextVar[Optional[CallState]] = contextvars.ContextVar("saliencekit_perf", default=None)


def active() -> Optional[CallState]:
    """The settings of the ``explain`` call in progress (``None`` outside one)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def call_scope(model: nn.Module, settings: Settings):
    """Make ``settings`` active for engine calls on ``model``; channels_last weights for the call
    only; on CPU (``retain_memory``) freed memory is kept for reuse until the call ends."""
    st = CallState(model, settings)
    token = _ACTIVE.set(st)
    first = next(model.parameters(), None)
    on_cpu = first is None or first.device.type == "cpu"
    try:
        with retained_memory(settings.retain_memory and on_cpu):
            if settings.channels_last is True:
                _to_channels_last(st)
            yield
    finally:
        _restore_layout(st)
        _ACTIVE.reset(token)


def prepare_points(pts: torch.Tensor, st: Optional[CallState]) -> torch.Tensor:
    if st is not None and st.channels_last and pts.dim() == 4:
        return pts.contiguous(memory_format=torch.channels_last)
    return pts


def autocast(device: torch.device, st: Optional[CallState]):
    """Autocast context for the forward (a no-op in fp32)."""
    dtype = st.settings.autocast_dtype if st is not None else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def loss_scale(st: Optional[CallState]) -> float:
    return FP16_LOSS_SCALE if st is not None and st.settings.precision == "fp16" else 1.0


# ---- torch.compile ----------------------------------------------------------------------------

_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_COMPILE_FAILED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def forward_module(model: nn.Module, st: Optional[CallState], layers=()) -> nn.Module:
    """The callable to run the forward with: ``model`` itself, or its cached compiled version.

    Runs that capture layers (CAM gradients, unit targets) stay eager: a compiled graph is one
    autograd node, so its intermediate tensors cannot be differentiated to.
    """
    if st is None or not st.settings.compile or model in _COMPILE_FAILED or layers:
        return model
    key = (st.settings.precision, st.settings.channels_last, st.settings.compile_backend)
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        try:
            per_model[key] = torch.compile(model, dynamic=False, backend=st.settings.compile_backend)
        except Exception as err:  # e.g. an unknown backend or a platform without dynamo
            compile_failed(model, err)
            return model
    return per_model[key]


def compile_failed(model: nn.Module, err: BaseException) -> None:
    """Remember that compiling ``model`` failed; later calls run eager."""
    _COMPILE_FAILED[model] = f"{type(err).__name__}: {err}"
    _COMPILED.pop(model, None)
    warnings.warn(f"compile=True: torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                  f"running the model eagerly", RuntimeWarning, stacklevel=3)


def clear_compiled() -> None:
    """Forget compiled models and compile failures."""
    _COMPILED.clear()
    _COMPILE_FAILED.clear()


__all__ = ["PRECISIONS", "Settings", "CallState", "set_defaults", "get_defaults", "resolve", "call_scope", "active",
           "set_layout", "prepare_points", "autocast", "loss_scale", "forward_module", "compile_failed",
           "clear_compiled"]
