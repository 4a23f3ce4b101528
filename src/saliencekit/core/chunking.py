"""Chunk policies: how many rows each forward (and backward) chunk of a loop gets.

A loop hands its rows to :func:`drive` with a :class:`ChunkPolicy`; the policy sizes every chunk
and may time it or shrink it:

* :class:`Fixed`: a size never changed (the metrics' inference loops: an out-of-memory error is raised);
* :class:`Requested`: a gradient loop's explicit ``batch_size``: kept (bit-exact reproducibility)
  unless it runs out of memory; then it is halved for this call, with a warning naming the new
  size (the same rows are retried, so the map is the same up to float rounding), and not cached;
* :class:`Automatic`: a chosen size that halves and retries the same rows on out-of-memory (the
  halved size is cached for later calls). On CUDA it comes from the free memory and the measured
  memory of one row; on CPU from the fixed rule (about four 224x224 images) or the cache;
* :class:`Calibrating`: the online layout probe (:class:`Calibrator`, ``channels_last="auto"`` on
  CPU): the loop's own first chunks are timed in both memory layouts, so nothing is computed
  twice, and the faster layout is cached per (model, per-row shape, dtype, device, precision,
  requested layout, compile). It runs when the loop has at least 8 chunks.

:func:`for_gradients` picks the policy of a gradient loop (``engine.run``), :func:`for_inference`
the policy of an inference-only scoring loop (the metrics). Rows are folded in a fixed order, so
the chunk size never changes which samples are drawn or the order of the sums; kernels may round
differently for different batch sizes and layouts, so a call that probes the layouts agrees with
later calls to float rounding, and a fixed ``batch_size`` (with a fixed ``channels_last``) is the
way to bit-exact maps across runs.
"""

from __future__ import annotations

import time
import warnings
import weakref
from dataclasses import replace
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .guard import as_output
from .speed import CallState, Settings, active, autocast, clear_compiled, prepare_points, set_layout

PROBE_ROOM = 4                 # a layout is probed only while >= PROBE_ROOM chunks of the loop remain
MIN_CALIBRATION_CHUNKS = 8     # a loop probes the layouts only if it has >= 8 chunks
LAYOUT_MARGIN = 0.95           # channels_last must be at least 5% faster per row to be chosen
CUDA_MEMORY_FRACTION = 0.8     # share of free memory a chunk may use
CUDA_MAX_ROWS = 1024
# rows per chunk on CPU when not calibrating: 4 images of 3x224x224 (docs/benchmarks.md)
_CPU_ELEMENTS_PER_CHUNK = 4 * 3 * 224 * 224
_CPU_MAX_ROWS = 64
_CUDA_INFERENCE_ROWS = 128


# ---- the policies --------------------------------------------------------------------------------

class ChunkPolicy:
    """Sizes the chunks of one loop. ``rows`` is the current size (a compiled forward pads to it)."""

    timed = False

    def __init__(self, rows: int):
        self.rows = max(1, int(rows))

    def next(self, rows_left: int) -> int:
        """Rows of the next chunk (at most ``rows_left``)."""
        return min(self.rows, rows_left)

    def report(self, seconds: float) -> None:
        """Wall time of the chunk :meth:`next` just sized (only called when ``timed``)."""

    def shrink(self) -> bool:
        """After an out-of-memory error: make chunks smaller and return True, or False to give up."""
        return False

    def finish(self) -> None:
        """The loop is done."""

    def clock(self) -> float:
        return time.perf_counter()

    def _halve(self) -> bool:
        """Half the rows (False at one row) and the CUDA cache emptied: the shrinking policies' step."""
        if self.rows <= 1:
            return False
        self.rows //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True


class Fixed(ChunkPolicy):
    """A size never changed."""


class Requested(ChunkPolicy):
    """A gradient loop's explicit ``batch_size``: halved on out-of-memory (with a warning), never cached."""

    def __init__(self, rows: int):
        super().__init__(rows)
        self.asked = self.rows

    def shrink(self) -> bool:
        if not self._halve():
            return False
        warnings.warn(f"batch_size={self.asked} ran out of memory: this call continues with {self.rows} rows per "
                      f"chunk (the same rows and noise; the map agrees to float rounding)", ResourceWarning,
                      stacklevel=2)
        return True


class Automatic(ChunkPolicy):
    """A size chosen for the user: halved on out-of-memory, the halved size cached under ``key``."""

    def __init__(self, rows: int, model: Optional[nn.Module] = None, key: Optional[tuple] = None):
        super().__init__(rows)
        self._model = weakref.ref(model) if model is not None else None
        self.key = key

    def shrink(self) -> bool:
        if not self._halve():
            return False
        model = self._model() if self._model is not None else None
        if model is not None and self.key is not None:
            store_chunk(model, self.key, self.rows)
        return True


class Calibrating(Automatic):
    """A :class:`Calibrator` times the loop's first chunks in both memory layouts and keeps the faster."""

    timed = True

    def __init__(self, calibrator: "Calibrator", model: nn.Module, key: tuple, shrinkable: bool = True):
        super().__init__(calibrator.rows, model, key)
        self.calibrator = calibrator
        self.shrinkable = shrinkable   # False: the caller's size is fixed (the metrics' scoring loops)

    def next(self, rows_left: int) -> int:
        return self.calibrator.next(rows_left)

    def report(self, seconds: float) -> None:
        if not self.calibrator.finished:
            self.calibrator.report(seconds)

    def clock(self) -> float:
        return self.calibrator.timer()

    def shrink(self) -> bool:
        self.calibrator.finish()   # stop probing; back off from the size that failed
        if not self.shrinkable or not super().shrink():
            return False
        self.calibrator.rows = self.rows
        return True

    def finish(self) -> None:
        self.calibrator.finish()


def drive(policy: ChunkPolicy, total: int, step: Callable[[int, int], None]) -> None:
    """Run ``step(start, stop)`` over ``total`` rows in the chunks ``policy`` chooses.

    An out-of-memory error retries the same rows in smaller chunks when the policy allows it."""
    start = 0
    while start < total:
        rows = policy.next(total - start)
        stop = min(total, start + rows)
        t0 = policy.clock() if policy.timed else 0.0
        try:
            step(start, stop)
        except torch.OutOfMemoryError:
            if policy.shrink():
                continue
            raise
        if policy.timed:
            policy.report(policy.clock() - t0)
        start = stop
    policy.finish()


# ---- choosing a policy ---------------------------------------------------------------------------

def for_gradients(x: torch.Tensor, total_rows: int, batch_size: Optional[int] = None) -> ChunkPolicy:
    """The policy of a gradient loop of ``total_rows`` rows shaped like ``x[0]`` (see the module doc).

    ``batch_size`` given: :class:`Requested`. Otherwise, inside a call scope: a size cached for the
    model (CUDA, or halved after an out-of-memory error), on CUDA the size from free memory, else
    the fixed rule; with ``channels_last="auto"`` on CPU a cached layout, or a :class:`Calibrating`
    policy whose first chunks probe both layouts when the loop has at least
    ``MIN_CALIBRATION_CHUNKS`` chunks.
    """
    if batch_size is not None:
        return Requested(batch_size)
    total_rows = max(1, int(total_rows))
    st = active()
    if st is None:
        return Automatic(safe_rows(x, total_rows))
    model, s = st.model, st.settings
    key = cache_key(x, replace(s, channels_last=st.requested))
    undecided = s.channels_last == "auto"
    known = cached_layout(model, key)
    if undecided and known is not None:
        set_layout(st, known)
    cached = cached_chunk(model, key)
    if cached is not None:
        return Automatic(min(cached, total_rows), model, key)
    if x.device.type == "cuda":
        rows = _cuda_rows(model, x, st)
        store_chunk(model, key, rows)
        return Automatic(min(rows, total_rows), model, key)
    rows = safe_rows(x, total_rows)
    if (undecided and known is None and s.calibrate and not s.compile and x.device.type == "cpu"
            and total_rows >= MIN_CALIBRATION_CHUNKS * rows and _layout_matters(model, x)):
        return Calibrating(Calibrator(model, key, st, rows), model, key)
    return Automatic(rows, model, key)


def inference_rows(x: torch.Tensor, total: int, batch_size: Optional[int] = None) -> int:
    """Rows per forward of an inference-only loop: ``batch_size``, else about four 224x224 images on
    CPU (small chunks stay in cache) and 128 on CUDA."""
    if batch_size is not None:
        return batch_size
    if x.device.type == "cuda":
        rows = _CUDA_INFERENCE_ROWS
    else:
        rows = max(1, _CPU_ELEMENTS_PER_CHUNK // max(1, x[0].numel()))
    return max(1, min(rows, total))


def for_inference(model: nn.Module, row: torch.Tensor, total_rows: int, rows: int) -> ChunkPolicy:
    """The policy of an inference-only loop of ``total_rows`` rows shaped like ``row`` in chunks of
    ``rows``: always that size; with ``channels_last="auto"`` a cached layout is applied, or, when
    the loop has at least ``MIN_CALIBRATION_CHUNKS`` chunks, its first four chunks probe the two
    layouts and the faster is kept (cached per model and row shape). Call inside a call scope."""
    st = active()
    if st is None or st.model is not model or st.settings.channels_last != "auto":
        return Fixed(rows)
    key = ("inference",) + cache_key(row[None], replace(st.settings, channels_last=st.requested))
    known = _LAYOUT.get(model, {}).get(key)
    if known is not None:
        set_layout(st, known)
        return Fixed(rows)
    if row.device.type != "cpu" or total_rows < MIN_CALIBRATION_CHUNKS * rows or \
            not _layout_matters(model, row[None]):
        return Fixed(rows)
    return Calibrating(Calibrator(model, key, st, rows), model, key, shrinkable=False)


# ---- sizes and caches ----------------------------------------------------------------------------

_CHUNKS: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, int]]" = weakref.WeakKeyDictionary()
_LAYOUT: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, bool]]" = weakref.WeakKeyDictionary()


def cache_key(x: torch.Tensor, settings: Settings) -> tuple:
    return (tuple(x.shape[1:]), x.dtype, str(x.device), settings.precision, settings.channels_last,
            settings.compile)


def cached_chunk(model: nn.Module, key: tuple) -> Optional[int]:
    return _CHUNKS.get(model, {}).get(key)


def store_chunk(model: nn.Module, key: tuple, rows: int) -> None:
    _CHUNKS.setdefault(model, {})[key] = int(rows)


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
        out = as_output(out)
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


def _layout_matters(model: nn.Module, x: torch.Tensor) -> bool:
    return x.dim() == 4 and any(p.dim() == 4 for p in model.parameters())


class Calibrator:
    """Online layout probe (``channels_last="auto"`` on CPU): the loop's own chunks are the probes.

    :func:`drive` asks :meth:`next` for each chunk's size (always ``rows``; the probe sets the
    layout) and reports each chunk's wall time with :meth:`report`. The first four chunks are one
    warm-up and one timed chunk in the contiguous layout, then the same in channels_last (real work
    of the loop, so nothing is computed twice); channels_last is kept when it is at least 5 %
    faster per row, and the decision is cached for the model and key. A loop with fewer than
    ``PROBE_ROOM`` chunks left when a probe would start keeps the contiguous layout.

    The chunk size itself is not searched: on the benchmark machine the best size found by a
    search was the fixed rule's (docs/benchmarks.md, "Speed mechanisms").
    """

    timer = staticmethod(time.perf_counter)  # :func:`drive` times chunks with this (tests script it)

    def __init__(self, model: nn.Module, key: tuple, st: CallState, rows: int):
        self.model_ref = weakref.ref(model)
        self.key, self.st, self.rows = key, st, int(rows)
        self.per_row: Dict[bool, float] = {}   # channels_last -> seconds per row
        self.layout = False
        self.finished = False
        self._left = 0
        self._time: Optional[float] = None
        self._gen = self._steps()
        self._begun = False

    # -- the loop's side --
    def next(self, rows_left: int) -> int:
        """Size of the next chunk (at most ``rows_left``); switches the call's layout as needed."""
        if self.finished:
            return min(self.rows, rows_left)
        self._left = rows_left
        try:
            layout = self._gen.send(self._time) if self._begun else next(self._gen)
            self._begun = True
        except StopIteration:
            self.finish()
            return min(self.rows, rows_left)
        self._time = None
        set_layout(self.st, layout)
        return min(self.rows, rows_left)

    def report(self, seconds: float) -> None:
        """Wall time of the chunk :meth:`next` just sized."""
        self._time = float(seconds)

    def finish(self) -> None:
        """Cache the decision (when both layouts were timed) and keep the chosen layout."""
        if self.finished:
            return
        self.finished = True
        self._gen.close()
        set_layout(self.st, self.layout)
        model = self.model_ref()
        if model is not None and len(self.per_row) == 2:
            _LAYOUT.setdefault(model, {})[self.key] = bool(self.layout)

    # -- the plan --
    def _probe(self, layout: bool):
        """Warm-up + timed chunk in ``layout``; seconds per row, or ``None`` when too few rows are left."""
        if self._left < PROBE_ROOM * self.rows:
            return None
        yield layout                      # a new layout: allocations, kernel choice
        t = yield layout
        if t is None:
            return None
        self.per_row[layout] = t / self.rows
        return self.per_row[layout]

    def _steps(self):
        for layout in (False, True):
            if (yield from self._probe(layout)) is None:
                return                    # too few rows: keep the contiguous layout
        self.layout = self.per_row[True] < LAYOUT_MARGIN * self.per_row[False]


def clear_cache() -> None:
    """Forget calibrated chunk sizes and layouts, and compiled models (e.g. after the machine's load changed)."""
    _CHUNKS.clear()
    _LAYOUT.clear()
    clear_compiled()


def cached_layout(model: nn.Module, key: tuple) -> Optional[bool]:
    return _LAYOUT.get(model, {}).get(key)


__all__ = ["ChunkPolicy", "Fixed", "Requested", "Automatic", "Calibrating", "Calibrator", "drive", "for_gradients", "for_inference",
           "inference_rows", "safe_rows", "cuda_rows_from_memory", "cache_key", "cached_chunk",
           "cached_layout", "clear_cache"]
