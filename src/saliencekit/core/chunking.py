"""Chunk policies: how many rows each forward (and backward) chunk of a loop gets.

A loop hands its rows to :func:`drive` with a :class:`ChunkPolicy`; the policy sizes every chunk
and may time it or shrink it:

* :class:`Fixed`: an explicit ``batch_size``, never changed (bit-exact reproducibility);
* :class:`Automatic`: a chosen size that halves and retries the same rows on out-of-memory (the
  halved size is cached for later calls). On CUDA it comes from the free memory and the measured
  memory of one row; on CPU from the fixed rule (about four 224x224 images) or the cache;
* :class:`Calibrating`: online CPU calibration (:class:`Calibrator`): the call's own first chunks
  are the timing probes, so nothing is computed twice. It runs when the call has at least 8
  chunks of the start size, and caches the fastest size (and, with ``channels_last="auto"``, the
  layout) per (model, per-row shape, dtype, device, precision, layout, compile).

:func:`for_gradients` picks the policy of a gradient loop (``engine.run``), :func:`for_inference`
the policy of an inference-only scoring loop (the metrics: fixed size, layout probe only).
Rows are folded in a fixed order, so the chunk size never changes which samples are drawn or the
order of the sums; kernels may round differently for different batch sizes and layouts, so a call
that calibrates agrees with later calls to float rounding and a fixed ``batch_size`` is the way to
bit-exact maps across runs.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import replace
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from .guard import as_output
from .speed import CallState, Settings, active, autocast, clear_compiled, prepare_points, set_layout

PROBE_ROOM = 4                 # a size s is probed only while >= PROBE_ROOM * s rows of the call remain
MIN_CALIBRATION_CHUNKS = 8     # a call is calibrated only if it has >= 8 chunks of the start size
MAX_PROBE_FACTOR = 2           # the calibration tries sizes up to twice the start size
LAYOUT_MARGIN = 0.95           # channels_last must be at least 5% faster per row to be chosen
CONFIRM_FACTOR = 1.5           # sizes within this factor of the best per-row time are timed again
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


class Fixed(ChunkPolicy):
    """A size the user chose: never changed."""


class Automatic(ChunkPolicy):
    """A size chosen for the user: halved on out-of-memory, the halved size cached under ``key``."""

    def __init__(self, rows: int, model: Optional[nn.Module] = None, key: Optional[tuple] = None):
        super().__init__(rows)
        self._model = weakref.ref(model) if model is not None else None
        self.key = key

    def shrink(self) -> bool:
        if self.rows <= 1:
            return False
        self.rows //= 2
        model = self._model() if self._model is not None else None
        if model is not None and self.key is not None:
            store_chunk(model, self.key, self.rows)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True


class Calibrating(Automatic):
    """Online calibration: a :class:`Calibrator` sizes (and lays out) the chunks until it has decided."""

    timed = True

    def __init__(self, calibrator: "Calibrator", model: nn.Module, key: tuple):
        super().__init__(calibrator.start, model, key)
        self.calibrator = calibrator

    def next(self, rows_left: int) -> int:
        n = self.calibrator.next(rows_left)
        self.rows = self.calibrator.rows if self.calibrator.finished else n
        return n

    def report(self, seconds: float) -> None:
        if not self.calibrator.finished:
            self.calibrator.report(seconds)

    def clock(self) -> float:
        return self.calibrator.timer()

    def shrink(self) -> bool:
        self.calibrator.finish()   # stop calibrating; back off from the size that failed
        return super().shrink()

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

    Inside a call scope: on CPU a cached size, or a :class:`Calibrating` policy when the call is
    large enough to amortise it; on CUDA the size from free memory; otherwise the fixed rule.
    """
    if batch_size is not None:
        return Fixed(batch_size)
    total_rows = max(1, int(total_rows))
    st = active()
    if st is None:
        return Automatic(safe_rows(x, total_rows))
    model, s = st.model, st.settings
    undecided = s.channels_last == "auto"
    key = cache_key(x, replace(s, channels_last=st.requested))
    cached = cached_chunk(model, key)
    if cached is not None:
        if undecided:
            set_layout(st, _LAYOUT.get(model, {}).get(key, False))
        return Automatic(min(cached, total_rows), model, key)
    if x.device.type == "cuda":
        rows = _cuda_rows(model, x, st)
        store_chunk(model, key, rows)
        return Automatic(min(rows, total_rows), model, key)
    if s.compile:  # timing candidate sizes would compile each of them
        return Automatic(safe_rows(x, total_rows), model, key)
    start = calibration_start(x, total_rows) if s.calibrate and x.device.type == "cpu" else None
    if start is None:
        return Automatic(safe_rows(x, total_rows), model, key)
    layouts = (False, True) if undecided and _layout_matters(model, x) else None
    return Calibrating(Calibrator(model, key, st, start, layouts), model, key)


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
    return Calibrating(Calibrator(model, key, st, rows, layouts=(False, True), sizes=False), model, key)


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

    :func:`drive` asks :meth:`next` for each chunk's size (the calibrator also sets the layout)
    and reports each chunk's wall time with :meth:`report`. A *probe* of size ``s`` is one
    warm-up chunk and one timed chunk of ``s`` rows (real work of the call); it runs only while
    at least ``PROBE_ROOM * s`` rows remain. The probes:

    1. with ``layouts=(False, True)`` (``channels_last="auto"``, 4-D input, 4-D weights): the
       start size in the contiguous layout, then in channels_last; channels_last is kept when it
       is at least 5 % faster per row;
    2. in the kept layout: twice the start size (no larger: a wrong choice is cached for the
       process, and one timed chunk taken while another program loads the machine can make a
       large size look best)
       if it is faster per row; otherwise half the start, a quarter, ... while each is faster;
    3. every size within ``CONFIRM_FACTOR`` of the best is timed once more (the first chunks of a
       process run cold) and the fastest per row, over both timings, is kept.

    Then the fastest size (and layout) is cached for the model and key; the rest of the call and
    later calls run with it. If the call ends first, what was measured so far is cached.
    """

    timer = staticmethod(time.perf_counter)  # :func:`drive` times chunks with this (tests script it)

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
        set_layout(self.st, layout)
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
        set_layout(self.st, self.layout)
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


def clear_cache() -> None:
    """Forget calibrated chunk sizes and layouts, and compiled models (e.g. after the machine's load changed)."""
    _CHUNKS.clear()
    _LAYOUT.clear()
    clear_compiled()


def cached_layout(model: nn.Module, key: tuple) -> Optional[bool]:
    return _LAYOUT.get(model, {}).get(key)


__all__ = ["ChunkPolicy", "Fixed", "Automatic", "Calibrating", "Calibrator", "drive", "for_gradients", "for_inference",
           "inference_rows", "safe_rows", "cuda_rows_from_memory", "calibration_start", "cache_key", "cached_chunk",
           "cached_layout", "clear_cache"]
