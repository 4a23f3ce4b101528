"""The timing harness of the side-by-side benchmarks: saliencekit vs Captum vs the raw
forward+backward floor (``bench_gradients.py`` and ``bench_retain.py`` import it).

* every case computes the same gradients (``rows`` = images x samples or path steps) on the same
  model object, images and target classes;
* cases run **interleaved** (case 1, case 2, ..., then again), ``repeats`` rounds, and the best
  (minimum) time is reported with the median, so a busy machine slows all cases alike;
* the **raw floor** is the model's forward plus ``autograd.grad`` w.r.t. the input of the same
  number of rows, with nothing else (no noise, no reduction), at the same precision and memory
  format, at the best chunk size of a sweep, under saliencekit's allocator setting
  (``retain_memory``; Captum runs with the allocator as a user has it);
* peak memory comes from the untimed warm-up run of each case: on CUDA ``max_memory_allocated``;
  on CPU the resident set size sampled every 10 ms by a thread, minus the size just before the run.

``GOALS`` are the project's speed targets that ``markdown`` marks as met or missed
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

import saliencekit as sk
from saliencekit.cli.bench import machine, raw_floor
from saliencekit.core import chunking, speed
from saliencekit.core.guard import forward_scores
from saliencekit.models import get_preprocessing

SK_METHODS = {  # name -> (saliencekit method, options, Captum NoiseTunnel nt_type or "ig")
    "smoothgrad": ("smoothgrad", {"estimator": "mean"}, "smoothgrad"),
    "smoothgrad_sq": ("smoothgrad", {"estimator": "square"}, "smoothgrad_sq"),
    "vargrad": ("smoothgrad", {"estimator": "var"}, "vargrad"),
    "ig": ("integrated_gradients", {"baseline": "black", "rule": "riemann_right"}, "ig"),
}


# ---- measuring --------------------------------------------------------------------------------

def rss() -> int:
    """The resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not Linux: the peak so far (cannot be reset)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose ``bytes`` is the peak extra memory of the block (see module doc)."""
    box = {"bytes": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        torch.cuda.synchronize(device)
        box["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    base = rss()
    peak = [base]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            stop.wait(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield box
    finally:
        stop.set()
        t.join()
        peak[0] = max(peak[0], rss())
        box["bytes"] = peak[0] - base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    name: str
    fn: Callable[[], object]
    rows: int
    group: str = ""
    kind: str = ""          # "sk", "captum", "floor"
    times: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        return self.rows / self.best


def run_interleaved(cases: Sequence[Case], repeats: int, device: torch.device, memory: bool = True,
                    log: Optional[Callable[[str], None]] = None, warmup: bool = True) -> None:
    """One untimed warm-up run per case (its peak memory is recorded), then ``repeats`` interleaved
    timed rounds. Without ``warmup`` the memory is sampled during the first timed round."""
    if warmup:
        for c in cases:
            if memory:
                with peak_memory(device) as box:
                    c.fn()
                c.peak_bytes = box["bytes"]
            else:
                c.fn()
    for r in range(repeats):
        for c in cases:
            sample = memory and not warmup and r == 0
            with (peak_memory(device) if sample else contextlib.nullcontext({})) as box:
                _sync(device)
                t0 = time.perf_counter()
                c.fn()
                _sync(device)
                c.times.append(time.perf_counter() - t0)
            if sample:
                c.peak_bytes = box["bytes"]
        if log:
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))


# ---- the cases --------------------------------------------------------------------------------

def floor_case(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rows_per_image: int, chunk: int,
               channels_last: bool = False) -> Callable[[], None]:
    """The raw floor of ``len(x) * rows_per_image`` rows at fp32, ``chunk`` rows at a time: the
    same function ``saliencekit bench`` times (forward + ``autograd.grad`` w.r.t. the input, the
    parameters frozen, 4-D weights in channels_last with ``channels_last``, under saliencekit's
    allocator setting)."""
    return raw_floor(model, x, target, x.shape[0] * rows_per_image, chunk, "fp32", channels_last)


def channels_last_weights(model: nn.Module, on: bool = True, retain_memory: bool = False):
    """The model's 4-D weights in channels_last for the block (a user's ``model.to(memory_format=
    torch.channels_last)``), put back afterwards: ``core.speed.call_scope``'s weight swap. The memory
    allocator is left as a user has it unless ``retain_memory``."""
    if not on and not retain_memory:
        return contextlib.nullcontext()
    return speed.call_scope(model, speed.Settings(channels_last=on, retain_memory=retain_memory))


def sk_case(model, x, target, name: str, n: int, **settings) -> Callable[[], object]:
    """saliencekit's ``explain`` for ``SK_METHODS[name]`` with ``n`` samples or path steps."""
    method, opts, _ = SK_METHODS[name]
    opts = dict(opts)
    opts["n_steps" if method == "integrated_gradients" else "n_samples"] = n
    return lambda: sk.explain(model, x, method, target=target, keep_inputs=False, **settings, **opts)


def captum_case(model, x, target, name: str, n: int, chunk: Optional[int],
                noise_level: float = 0.15, channels_last: bool = False) -> Callable[[], object]:
    """Captum on the model as a user has it. ``chunk``: ``nt_samples_batch_size`` (samples per
    input per chunk; rows = images x chunk) or IG's ``internal_batch_size`` (rows per chunk).
    ``channels_last``: a user who also converted the model and the input to channels_last."""
    if channels_last:
        inner = captum_case(model, x.contiguous(memory_format=torch.channels_last), target, name, n, chunk,
                            noise_level)

        def fn():
            with channels_last_weights(model):
                return inner()
        return fn
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    _, _, nt_type = SK_METHODS[name]
    tgt = target.tolist()
    if nt_type == "ig":
        ig = IntegratedGradients(model)
        black = get_preprocessing(model).normalize(torch.zeros_like(x))
        return lambda: ig.attribute(x, baselines=black, target=tgt, n_steps=n, method="riemann_right",
                                    internal_batch_size=chunk)
    nt = NoiseTunnel(Saliency(model))
    flat = x.reshape(x.shape[0], -1)
    sigma = float(noise_level * (flat.amax(1) - flat.amin(1)).mean())
    return lambda: nt.attribute(x, nt_type=nt_type, nt_samples=n, nt_samples_batch_size=chunk, stdevs=sigma,
                                target=tgt, abs=False)


def captum_available() -> bool:
    try:
        import captum.attr  # noqa: F401
    except Exception:
        return False
    return True


# ---- one comparison ---------------------------------------------------------------------------

def compare(model: nn.Module, x: torch.Tensor, methods: Sequence[str] = ("smoothgrad",), n: int = 50,
            repeats: int = 3, captum: bool = True, captum_chunks: Sequence[Optional[int]] = (None, 1, 2, 4, 8),
            floor_chunks: Sequence[int] = (1, 2, 4, 8, 16), variants: Optional[Dict[str, dict]] = None,
            memory: bool = True, log: Optional[Callable[[str], None]] = None, warmup: bool = True,
            layouts: Optional[Sequence[bool]] = None) -> dict:
    """Time ``methods`` (keys of ``SK_METHODS``) with saliencekit (defaults and ``variants``), Captum
    (its default and hand-tuned chunks) and the raw floor. The chunk sweeps and the ``variants``
    (name -> explain speed kwargs) run on the first method; the others use the best chunks found
    there. ``layouts``: memory layouts for the hand-tuned Captum chunks and the floor (default on
    CPU: contiguous and channels_last, since saliencekit's "auto" may pick either; on CUDA:
    contiguous). Returns a dict with the cases and a summary."""
    dev = x.device
    with torch.no_grad():
        target = forward_scores(model, x).argmax(1)
    first = methods[0]
    variants = variants or {}
    log = log or (lambda s: None)

    # a cold first call: includes the chunk calibration (cached afterwards for the process)
    chunking.clear_cache()
    _sync(dev)
    t0 = time.perf_counter()
    sk_case(model, x, target, first, n)()
    _sync(dev)
    cold = time.perf_counter() - t0
    log(f"first saliencekit call (with calibration): {cold:.2f}s")

    if layouts is None:
        layouts = (False, True) if dev.type == "cpu" and any(p.dim() == 4 for p in model.parameters()) else (False,)
    groups: Dict[str, List[Case]] = {}
    best_captum = best_floor = None
    for mi, name in enumerate(methods):
        rows = x.shape[0] * n
        cases = [Case("saliencekit (default)", sk_case(model, x, target, name, n), rows, name, "sk")]
        for vname, settings in (variants.items() if mi == 0 else ()):
            cases.append(Case(f"saliencekit {vname}", sk_case(model, x, target, name, n, **settings), rows, name,
                              "sk"))
        if captum:
            chunks = [(None, False)] + ([(c, cl) for cl in layouts for c in captum_chunks if c is not None]
                                        if mi == 0 else ([best_captum] if best_captum else []))
            for c, cl in chunks:
                label = "Captum (default: all at once)" if c is None else \
                    f"Captum{' channels_last' if cl else ''} chunk {c}"
                cases.append(Case(label, captum_case(model, x, target, name, n, c, channels_last=cl), rows, name,
                                  "captum"))
        fchunks = [(c, cl) for cl in layouts for c in floor_chunks] if mi == 0 else [best_floor]
        for c, cl in fchunks:
            cases.append(Case(f"raw floor{' channels_last' if cl else ''}, chunk {c}",
                              floor_case(model, x, target, n, c, channels_last=cl), rows, name, "floor"))
        log(f"{name}: {len(cases)} cases x {repeats} rounds")
        run_interleaved(cases, repeats, dev, memory=memory, log=log, warmup=warmup)
        groups[name] = cases
        if mi == 0:
            tuned = [c for c in cases if c.kind == "captum" and c.name != "Captum (default: all at once)"]
            if tuned:
                best = min(tuned, key=lambda c: c.best)
                best_captum = (int(best.name.rsplit(" ", 1)[1]), "channels_last" in best.name)
            fl = min((c for c in cases if c.kind == "floor"), key=lambda c: c.best)
            best_floor = (int(fl.name.rsplit(" ", 1)[1]), "channels_last" in fl.name)
    key = chunking.cache_key(x, speed.get_defaults())
    chosen = chunking.cached_chunk(model, key) or chunking.safe_rows(x, x.shape[0] * n)
    layout = chunking.cached_layout(model, key)
    return {"groups": groups, "cold_first_call_s": cold, "auto_chunk": chosen, "auto_layout": layout, "n": n,
            "images": x.shape[0], "input": tuple(x.shape[1:]), "repeats": repeats, "warmup": warmup}


def summary_rows(cases: Sequence[Case], stat: str = "best") -> Dict[str, float]:
    """saliencekit's speed relative to Captum's default, Captum's best chunk and the best raw floor,
    from each case's ``best`` (minimum) or ``median`` time. The best of a sweep of minima favours
    the competitor (it keeps whichever case had the luckiest round); medians are steadier."""
    t = (lambda c: c.best) if stat == "best" else (lambda c: c.median)
    sk = next(c for c in cases if c.name == "saliencekit (default)")
    out = {}
    default = [c for c in cases if c.name == "Captum (default: all at once)"]
    tuned = [c for c in cases if c.kind == "captum" and c.name != "Captum (default: all at once)"]
    floors = [c for c in cases if c.kind == "floor"]
    if default:
        out["vs Captum default"] = t(default[0]) / t(sk)
    if tuned:
        out["vs Captum best chunk"] = min(t(c) for c in tuned) / t(sk)
    if floors:
        out["vs raw floor"] = min(t(c) for c in floors) / t(sk)
    return out


GOALS = {"vs Captum default": 3.0, "vs Captum best chunk": 0.95, "vs raw floor": 0.9}


def markdown(result: dict, title: str, goals: bool = True) -> str:
    lines = [f"### {title}", ""]
    lines.append(f"{result['images']} image(s) of {'x'.join(map(str, result['input']))}, n = {result['n']}, "
                 f"best of {result['repeats']} interleaved rounds"
                 f"{'' if result.get('warmup', True) else ' (no separate warm-up round)'}; "
                 f"first saliencekit call including chunk "
                 f"calibration: {result['cold_first_call_s']:.2f} s; automatic chunk chosen: "
                 f"{result['auto_chunk'] if result['auto_chunk'] is not None else 'fixed rule (no calibration)'}"
                 + {True: " in channels_last", False: " contiguous"}.get(result.get("auto_layout"), "") + ".")
    lines.append("")
    lines.append("| method | case | gradients | best s | median s | gradients/s | relative to saliencekit | "
                 "peak extra memory MiB |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, cases in result["groups"].items():
        sk = next(c for c in cases if c.name == "saliencekit (default)")
        for c in cases:
            mem = f"{c.peak_bytes / 2**20:.0f}" if c.peak_bytes is not None else "-"
            lines.append(f"| {name} | {c.name} | {c.rows} | {c.best:.2f} | {c.median:.2f} | {c.rate:.1f} | "
                         f"{sk.best / c.best:.2f}x | {mem} |")
    lines.append("")
    lines.append("| method | " + " | ".join(GOALS) + " |")
    lines.append("|---|" + "---:|" * len(GOALS))
    for name, cases in result["groups"].items():
        s = summary_rows(cases)
        med = summary_rows(cases, "median") if result["repeats"] > 1 else {}
        cells = []
        for k, goal in GOALS.items():
            if k not in s:
                cells.append("-")
                continue
            mark = ("met" if s[k] >= goal else "MISSED") if goals else ""
            m = f"; medians {med[k]:.2f}x" if k in med else ""
            cells.append(f"{s[k]:.2f}x (goal >= {goal}x: {mark}{m})" if goals else f"{s[k]:.2f}x{m}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios are saliencekit's speed over the other's (> 1: saliencekit is faster); 'vs raw floor' "
                 "is saliencekit's throughput as a share of the bare forward+backward at its best chunk. "
                 "Verdicts use the best (minimum) times; the same ratios from the median times follow them "
                 "(a best-of-sweep of minima keeps whichever competitor case had the luckiest round).")
    return "\n".join(lines)


__all__ = ["Case", "GOALS", "SK_METHODS", "captum_available", "captum_case", "channels_last_weights", "compare",
           "floor_case", "machine", "markdown", "peak_memory", "rss", "run_interleaved", "sk_case", "summary_rows"]
