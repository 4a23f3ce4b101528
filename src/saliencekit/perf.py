"""Speed settings: automatic chunk size, mixed precision, channels_last and ``torch.compile``.

Every gradient method costs forward+backward passes, evaluated by the engine in chunks of rows.

* **Chunk size** (``batch_size=None``, the default): on CPU small chunks are usually fastest, but
  the best size depends on the model, the machine and even the memory allocator's state, so the
  call calibrates *online*: its own first chunks are the timing probes (one warm-up and one timed
  chunk per size, real work of the call, so nothing is computed twice). It starts from the fixed
  rule's size (about four 224x224 images), tries the layouts (below), then twice that size (or
  halves while that is faster per row), and times the closest sizes once more, warm, before keeping the
  fastest (:class:`Calibrator`). It runs when the call has at least 8 chunks of the start size;
  the choice is cached for the process per (model, per-row input shape, dtype, device, precision,
  channels_last). Smaller calls use the fixed rule. On CUDA the size comes from the free memory
  and the measured memory of one row; an out-of-memory error halves the chunk and retries the
  same rows (the halved size is cached). ``batch_size=`` overrides all of it.
  Rows are folded in a fixed order, so the chunk size never changes which samples are drawn or
  the order of the sums; kernels (oneDNN convolutions, cuDNN) may round differently for different
  batch sizes (and layouts), so a call that calibrates agrees with later calls to float rounding,
  and a fixed ``batch_size`` is the way to get bit-exact maps across runs.
* **Precision**: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward runs under
  ``torch.autocast`` (the backward follows the dtypes autocast chose), scores and every
  reduction are float32; fp16 uses a static loss scale (256, retried unscaled on overflow).
* **channels_last**: points are fed in channels_last memory format and 4-D weights are viewed in
  channels_last for the call only (the model's own tensors are put back untouched afterwards).
  ``"auto"`` (the default): a calibrated CPU call times its start size in both layouts and
  keeps channels_last when it is at least 5 % faster per row (cached with the chunk size). On
  EfficientNet-Lite0 with 2 cores channels_last is 1.3-2.5x faster (depthwise convolutions);
  other calls (CUDA, uncalibrated, a fixed ``batch_size``) run in the contiguous layout. The
  layouts differ only in float rounding.
* **compile**: the forward is ``torch.compile``-d once per model and setting (cached); layer
  capture still works (hooks are traced). Chunks are padded to a fixed size so no shape change
  triggers a recompilation. If the compiler is unavailable the call falls back to eager mode
  with a warning.

* **retain_memory** (default ``True``, :func:`set_defaults` only): during a CPU call glibc keeps
  freed memory for reuse instead of page-faulting every chunk's activations afresh; the memory
  is given back to glibc's normal trimming when the call ends (:func:`retained_memory`). No
  effect on values.

Settings are chosen per call (``explain(..., precision=, channels_last=, compile=)``) or for the
process with :func:`set_defaults`.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import platform
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}

FP16_LOSS_SCALE = 256.0
PROBE_ROOM = 4                 # a size s is probed only while >= PROBE_ROOM * s rows of the call remain
MIN_CALIBRATION_CHUNKS = 8     # a call is calibrated only if it has >= 8 chunks of the start size
MAX_PROBE_FACTOR = 2           # the calibration tries sizes up to twice the start size
LAYOUT_MARGIN = 0.95           # channels_last must be at least 5% faster per row to be chosen
CONFIRM_FACTOR = 1.5           # sizes within this factor of the best per-row time are timed again
CUDA_MEMORY_FRACTION = 0.8     # share of free memory a chunk may use
CUDA_MAX_ROWS = 1024
# Rows per chunk on CPU when not calibrating: 4 images of 3x224x224. Measured on 2 cores (forward+
# backward, images/s at chunks 1 / 2 / 4 / 8): EfficientNet-Lite0 channels_last 4 rows best, contiguous
# 2-8 about even; ResNet-50 4-8 rows best, 1 row slowest (benchmarks/results/*_cpu.md).
_CPU_ELEMENTS_PER_CHUNK = 4 * 3 * 224 * 224
_CPU_MAX_ROWS = 64


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


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {type(v).__name__}")
    return v


def set_defaults(precision=None, channels_last=None, compile=None, calibrate=None,
                 compile_backend=None, retain_memory=None) -> Settings:
    """Set process-wide defaults for ``explain``; returns the previous defaults.

    ``precision``: ``"fp32" | "bf16" | "fp16"``; ``channels_last``: bool or ``"auto"``; ``compile``: bool;
    ``calibrate``: whether automatic chunking may time candidate sizes on CPU (``False``: the
    fixed rule, deterministic); ``compile_backend``: the ``torch.compile`` backend (default
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
        new = replace(new, retain_memory=_check_bool("retain_memory", retain_memory))
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
        kw["compile"] = _check_bool("compile", compile)
    if calibrate is not None:
        kw["calibrate"] = _check_bool("calibrate", calibrate)
    return replace(s, **kw)


# ---- the active call --------------------------------------------------------------------------

@dataclass
class CallState:
    model: nn.Module
    settings: Settings
    swapped: list = field(default_factory=list)   # (parameter, original data) while channels_last
    requested: Any = None                         # the layout asked for (True | False | "auto"); the
    # settings' channels_last stays "auto" until calibration (or its cache) decides the layout

    def __post_init__(self):
        if self.requested is None:
            self.requested = self.settings.channels_last

    @property
    def channels_last(self) -> bool:
        """The layout in effect now (``"auto"`` is contiguous until calibration picks channels_last)."""
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


def _set_layout(st: CallState, channels_last: bool) -> None:
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


# ---- the memory allocator ------------------------------------------------------------------------

# glibc malloc serves blocks above its mmap threshold with fresh mmap'd pages and returns the top
# of the heap to the OS once more than the trim threshold is free there. Its threshold starts at
# 128 KiB and rises with the blocks freed (to at most 32 MiB, the trim threshold to twice that),
# so a process's first forward+backward passes, and every new chunk size, page-fault their
# activations afresh: on EfficientNet-Lite0 (2 cores) the first chunks of 4 rows ran at 19-24
# ms/row and chunks of 8 at 22-32 ms/row for six chunks, vs 16-17 ms/row once warm. During a
# call the threshold is set to its maximum and nothing is trimmed (every size is warm from its
# second chunk); at the end the trim threshold goes back to glibc's own steady value, and glibc
# returns the free top of the heap to the OS at its next large free, as it normally does
# (``malloc_trim(0)``, which also walks the holes, took 70-85 ms here: not worth it per call).
# PyTorch's CPU launcher goes further: jemalloc with decay times of months.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * 8     # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_RETAIN_TRIM = (1 << 31) - 1
_libc: Any = None
_retain_depth = 0
_retain_lock = threading.Lock()


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(None)
                if hasattr(lib, "mallopt"):
                    _libc = lib
            except OSError:
                pass
    return _libc


@contextlib.contextmanager
def retained_memory(enabled: bool = True):
    """Keep freed heap memory for reuse inside the block (glibc only; nested blocks share one)."""
    global _retain_depth
    lib = _glibc() if enabled else False
    if not lib:
        yield
        return
    with _retain_lock:
        _retain_depth += 1
        if _retain_depth == 1:
            lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            lib.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM)
    try:
        yield
    finally:
        with _retain_lock:
            _retain_depth -= 1
            if _retain_depth == 0:  # glibc returns the free top of the heap at its next large free
                lib.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)


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


def compiling(model: nn.Module, st: Optional[CallState]) -> bool:
    return st is not None and st.settings.compile and model not in _COMPILE_FAILED


# ---- chunk size -------------------------------------------------------------------------------

class AutoBatch(int):
    """A chunk size chosen automatically: the engine may halve it on out-of-memory; with a
    ``calibrator`` the engine lets it size the chunks (the int is then the first size)."""

    key: Optional[tuple] = None
    model_ref = None
    calibrator: Optional["Calibrator"] = None


_CHUNKS: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, int]]" = weakref.WeakKeyDictionary()
_LAYOUT: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, bool]]" = weakref.WeakKeyDictionary()


def cache_key(x: torch.Tensor, settings: Settings) -> tuple:
    return (tuple(x.shape[1:]), x.dtype, str(x.device), settings.precision, settings.channels_last,
            settings.compile)


def cached_chunk(model: nn.Module, key: tuple) -> Optional[int]:
    return _CHUNKS.get(model, {}).get(key)


def store_chunk(model: nn.Module, key: tuple, rows: int) -> None:
    _CHUNKS.setdefault(model, {})[key] = int(rows)


def clear_cache() -> None:
    """Forget calibrated chunk sizes and compiled models (e.g. after changing the machine's load)."""
    _CHUNKS.clear()
    _LAYOUT.clear()
    _COMPILED.clear()
    _COMPILE_FAILED.clear()


def safe_rows(x: torch.Tensor, total_rows: int) -> int:
    """Fixed rule without timing: about four 224x224 RGB images per chunk on CPU, 64 rows on CUDA."""
    per_row = max(1, x[0].numel())
    if x.device.type == "cuda":
        rows = 64
    else:
        rows = min(_CPU_MAX_ROWS, max(1, _CPU_ELEMENTS_PER_CHUNK // per_row))
    return max(1, min(rows, total_rows))


def cuda_rows_from_memory(free_bytes: int, per_row_bytes: int, total_rows: int,
                          fraction: float = CUDA_MEMORY_FRACTION, cap: int = CUDA_MAX_ROWS) -> int:
    """Largest power of two of rows whose activations fit in ``fraction`` of the free memory."""
    if per_row_bytes <= 0:
        rows = cap
    else:
        rows = int(fraction * free_bytes // per_row_bytes)
    rows = max(1, min(rows, cap, total_rows))
    p = 1
    while p * 2 <= rows:
        p *= 2
    return p if rows < total_rows else rows


def _probe(model: nn.Module, x: torch.Tensor, rows: int, st: CallState) -> None:
    """One forward+backward of ``rows`` copies of the first image, as the engine runs it."""
    pts = x[:1].detach().expand(rows, *x.shape[1:]).clone()
    pts = prepare_points(pts, st).requires_grad_(True)
    fwd = model  # compiled models are not calibrated (each new size would recompile)
    with torch.enable_grad():
        with autocast(pts.device, st):
            out = fwd(pts)
        if not isinstance(out, torch.Tensor):
            from .engine import _as_output
            out = _as_output(out)
        torch.autograd.grad(out.float().sum(), pts)


def _cuda_rows(model: nn.Module, x: torch.Tensor, st: CallState) -> int:
    """Rows per chunk from the free memory and the measured peak of a one-row forward+backward
    (an over-estimate per row: it includes fixed workspaces), not capped by any call's size."""
    dev = x.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        _probe(model, x, 1, st)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    torch.cuda.synchronize(dev)
    per_row = torch.cuda.max_memory_allocated(dev) - base
    free, _ = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return cuda_rows_from_memory(free, per_row, CUDA_MAX_ROWS)


def auto_rows(x: torch.Tensor, total_rows: int) -> int:
    """Chunk size for ``total_rows`` rows shaped like ``x[0]`` in the active call (see module doc).

    An uncached CPU call with enough rows gets an ``AutoBatch`` carrying a :class:`Calibrator`:
    ``engine.run`` then lets it choose each chunk's size and layout until it has decided.
    """
    total_rows = max(1, int(total_rows))
    st = active()
    if st is None:
        return AutoBatch(safe_rows(x, total_rows))
    model, s = st.model, st.settings
    undecided = s.channels_last == "auto"
    key = cache_key(x, replace(s, channels_last=st.requested))
    cached = cached_chunk(model, key)
    if cached is not None:
        if undecided:
            _set_layout(st, _LAYOUT.get(model, {}).get(key, False))
        return _auto(min(cached, total_rows), model, key)
    if x.device.type == "cuda":
        rows = _cuda_rows(model, x, st)
        store_chunk(model, key, rows)
        return _auto(min(rows, total_rows), model, key)
    if s.compile:  # timing candidate sizes would compile each of them
        return _auto(safe_rows(x, total_rows), model, key)
    start = calibration_start(x, total_rows) if s.calibrate and x.device.type == "cpu" else None
    if start is None:
        return _auto(safe_rows(x, total_rows), model, key)
    layouts = (False, True) if undecided and _layout_matters(model, x) else None
    a = _auto(start, model, key)
    a.calibrator = Calibrator(model, key, st, start, layouts)
    return a


def inference_layout(model: nn.Module, row: torch.Tensor, total_rows: int, rows: int) -> Optional["Calibrator"]:
    """``channels_last="auto"`` for an inference-only loop of ``total_rows`` rows shaped like
    ``row`` in chunks of ``rows`` (the metrics): a cached decision is applied and ``None``
    returned; otherwise, when the loop has at least ``MIN_CALIBRATION_CHUNKS`` chunks, a
    :class:`Calibrator` that probes the two layouts on the loop's own first four chunks (the chunk
    size stays the caller's). Call inside :func:`call_scope`."""
    st = active()
    if st is None or st.model is not model or st.settings.channels_last != "auto":
        return None
    key = ("inference",) + cache_key(row[None], replace(st.settings, channels_last=st.requested))
    known = _LAYOUT.get(model, {}).get(key)
    if known is not None:
        _set_layout(st, known)
        return None
    if row.device.type != "cpu" or total_rows < MIN_CALIBRATION_CHUNKS * rows or \
            not _layout_matters(model, row[None]):
        return None
    return Calibrator(model, key, st, rows, layouts=(False, True), sizes=False)


def _pow2_floor(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def calibration_start(x: torch.Tensor, total_rows: int) -> Optional[int]:
    """The first size the calibration times: the fixed rule's size rounded down to a power of two;
    ``None`` when the call has fewer than ``MIN_CALIBRATION_CHUNKS`` chunks of it (too small to
    decide anything that later, larger calls should inherit)."""
    start = _pow2_floor(safe_rows(x, 1 << 30))
    return start if total_rows >= MIN_CALIBRATION_CHUNKS * start else None


def _layout_matters(model: nn.Module, x: torch.Tensor) -> bool:
    return x.dim() == 4 and any(p.dim() == 4 for p in model.parameters())


class Calibrator:
    """Online CPU calibration: the call's own chunks are the probes, so nothing is computed twice.

    ``engine.run`` asks :meth:`next` for each chunk's size (the calibrator also sets the layout)
    and reports each chunk's wall time with :meth:`report`. A *probe* of size ``s`` is one
    warm-up chunk and one timed chunk of ``s`` rows (real work of the call); it runs only while
    at least ``PROBE_ROOM * s`` rows remain. The probes:

    1. with ``layouts=(False, True)`` (``channels_last="auto"``, 4-D input, 4-D weights): the
       start size in the contiguous layout, then in channels_last; channels_last is kept when it
       is at least 5 % faster per row;
    2. in the kept layout: twice the start size (no larger: a wrong choice is cached for the
       process, and one timed chunk taken while another program loads the machine can make a
       large size look best; at 4x the start EfficientNet-Lite0 ran 1.2-1.7x slower per row)
       if it is faster per row; otherwise half the start, a quarter, ... while each is faster;
    3. every size within ``CONFIRM_FACTOR`` of the best is timed once more (the first chunks of a
       process run cold) and the fastest per row, over both timings, is kept.

    Then the fastest size (and layout) is cached for the model and key; the rest of the call and
    later calls run with it. If the call ends first, what was measured so far is cached.
    """

    timer = staticmethod(time.perf_counter)  # the engine times chunks with this (tests script it)

    def __init__(self, model: nn.Module, key: tuple, st: CallState, start: int, layouts=None,
                 sizes: bool = True):
        self.model_ref = weakref.ref(model)
        self.key, self.st, self.start, self.sizes = key, st, int(start), sizes
        self.layouts = tuple(layouts) if layouts else None
        self.per_row: Dict[Tuple[bool, int], float] = {}   # (channels_last, size) -> seconds per row
        self.rows, self.layout = int(start), st.channels_last
        self.finished = False
        self._left = 0
        self._time: Optional[float] = None
        self._gen = self._steps()
        self._begun = False

    # -- the engine's side --
    def next(self, rows_left: int) -> int:
        """Size of the next chunk (at most ``rows_left``); switches the call's layout as needed."""
        if self.finished:
            return min(self.rows, rows_left)
        self._left = rows_left
        try:
            if self._begun:
                size, layout = self._gen.send(self._time)
            else:
                self._begun = True
                size, layout = next(self._gen)
        except StopIteration:
            self.finish()
            return min(self.rows, rows_left)
        self._time = None
        _set_layout(self.st, layout)
        return min(size, rows_left)

    def report(self, seconds: float) -> None:
        """Wall time of the chunk :meth:`next` just sized."""
        self._time = float(seconds)

    def finish(self) -> None:
        """Cache the decision (also when the call ended before the probes did)."""
        if self.finished:
            return
        self.finished = True
        self._gen.close()
        _set_layout(self.st, self.layout)
        model = self.model_ref()
        if model is not None:
            if self.sizes:  # a layout-only probe (the metrics) keeps its caller's chunk size
                store_chunk(model, self.key, self.rows)
            if self.layouts is not None:
                _LAYOUT.setdefault(model, {})[self.key] = bool(self.layout)

    # -- the plan --
    def _probe(self, layout: bool, size: int, warm_up: bool = True):
        """(Warm-up +) timed chunk; returns the best seconds per row seen for (layout, size), or
        ``None`` when fewer than ``PROBE_ROOM * size`` rows are left."""
        if self._left < PROBE_ROOM * size:
            return None
        if warm_up:
            yield size, layout             # a new shape or layout: allocations, kernel choice
        t = yield size, layout
        if t is None:
            return None
        key = (layout, size)
        self.per_row[key] = min(self.per_row.get(key, float("inf")), t / size)
        return self.per_row[key]

    def _steps(self):
        s0 = self.start
        layout = self.st.channels_last
        if self.layouts is not None:
            t = {}
            for cand in self.layouts:
                t[cand] = yield from self._probe(cand, s0)
                if t[cand] is None:
                    return  # too few rows: keep the contiguous layout and the start size
            layout = t[True] < LAYOUT_MARGIN * t[False]
            best_t = t[layout]
        else:
            best_t = yield from self._probe(layout, s0)
            if best_t is None:
                return
        self.rows, self.layout = s0, layout
        if not self.sizes:
            return
        for grow in (True, False):
            size, improved = (s0 * 2 if grow else s0 // 2), False
            while 1 <= size <= MAX_PROBE_FACTOR * s0:
                t = yield from self._probe(layout, size)
                if t is None or t >= best_t:
                    break
                self.rows, best_t, improved = size, t, True
                size = size * 2 if grow else size // 2
            if improved:
                break
        # the first chunks of a process run colder (fresh memory) than later ones: time every
        # size within CONFIRM_FACTOR of the best once more, now warm, and keep each one's best
        close = sorted(sz for (lay, sz), v in self.per_row.items()
                       if lay == layout and v <= CONFIRM_FACTOR * best_t)
        if len(close) > 1:
            for size in close:
                if (yield from self._probe(layout, size, warm_up=False)) is None:
                    break
            self.rows = min(close, key=lambda sz: self.per_row[(layout, sz)])


def _auto(rows: int, model: nn.Module, key: tuple) -> AutoBatch:
    a = AutoBatch(rows)
    a.key = key
    a.model_ref = weakref.ref(model)
    return a


def with_size(batch: int, rows: int) -> int:
    """``rows`` as an automatic size with ``batch``'s cache key (for backing off from it)."""
    if not isinstance(batch, AutoBatch):
        return batch
    a = AutoBatch(rows)
    a.key, a.model_ref = batch.key, batch.model_ref
    return a


def back_off(batch: int) -> Optional[int]:
    """After an out-of-memory error at ``batch`` rows: the next size to try, or ``None`` to give up.

    Only automatic sizes back off (an explicit ``batch_size`` is the user's choice); the halved
    size is cached so later calls start from it.
    """
    if not isinstance(batch, AutoBatch) or int(batch) <= 1:
        return None
    rows = int(batch) // 2
    model = batch.model_ref() if batch.model_ref is not None else None
    if model is not None and batch.key is not None:
        store_chunk(model, batch.key, rows)
        new = _auto(rows, model, batch.key)
    else:
        new = AutoBatch(rows)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return new


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError)


__all__ = ["Settings", "set_defaults", "get_defaults", "resolve", "call_scope", "active", "auto_rows",
           "Calibrator", "calibration_start", "cuda_rows_from_memory", "back_off", "clear_cache", "AutoBatch", "PRECISIONS"]
