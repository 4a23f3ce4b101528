"""``saliencekit bench``: how fast saliencekit explains *your* model on *this* machine.

For each requested method (and each extra speed setting asked for) the command reports the time of
the first call (it includes the chunk calibration, or the compilation), the best and median of
``--repeats`` later calls, milliseconds per image, gradient rows per second, the chunk size and
memory layout the automatic policy chose, and the same rate for the **raw floor**: the model's
forward plus ``autograd.grad`` with respect to the input for the same number of rows, at that
chunk, layout and precision, with nothing else (no noise, no reduction; eager, parameters frozen
as saliencekit freezes them). Each later call alternates with a floor call, so a busy machine
slows both alike.

The side-by-side comparisons with Captum live in ``benchmarks/`` (docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from .options import (apply_threads, check_option_keys, cpu_snapshot, for_method, load_model, model_label,
                      model_options, model_spec, parse_options, resolve_device, threads_option)

POSITIVE = click.IntRange(min=1)


def register(main: click.Group) -> None:
    main.add_command(bench_cmd)


def _resolve_method(name: str) -> Tuple[str, Dict[str, Any]]:
    """(registered method, fixed options) for a method name or an evaluation variant name."""
    from ..evaluation import variants
    from ..methods import REGISTRY

    if name in REGISTRY:
        return name, {}
    if name != variants.RANDOM and variants.is_available(name):
        method, options, _, _ = variants.resolve(name)
        return method, options
    raise click.BadParameter(f"unknown method {name!r}; expected a method of `saliencekit methods` or an "
                             f"evaluation name of `saliencekit evaluate --list`", param_hint="--method")


def _timed(fn: Callable[[], Any], device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def raw_floor(model, x, target, rows: int, chunk: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """Forward + ``autograd.grad`` w.r.t. the input of ``rows`` rows (each image's rows together, as
    saliencekit orders them), ``chunk`` rows at a time, at ``precision`` (autocast) and in
    ``channels_last`` or contiguous layout, under the same model guard and call scope (weights'
    layout, allocator setting) as an ``explain`` call."""
    from dataclasses import replace

    import torch

    from ..core import speed
    from ..core.guard import forward_scores, model_guard

    dtype = speed.PRECISIONS[speed.check_precision(precision)]
    img = torch.arange(rows, device=x.device) * x.shape[0] // rows
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scope = replace(speed.get_defaults(), precision=precision, channels_last=channels_last, compile=False)

    def run() -> None:
        with model_guard(model), speed.call_scope(model, scope), torch.enable_grad():
            for s in range(0, rows, chunk):
                i = img[s:s + chunk]
                pts = x[i].contiguous(memory_format=fmt).requires_grad_(True)
                with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                    out = forward_scores(model, pts)
                torch.autograd.grad(out.float().gather(1, target[i].view(-1, 1)).sum(), pts)
    return run


def _chosen_layout(model, x, settings) -> bool:
    """The layout the call ran in: the one asked for, or the one calibration cached for ``"auto"``
    (contiguous when the call did not calibrate)."""
    from ..core import chunking

    if isinstance(settings.channels_last, bool):
        return settings.channels_last
    return bool(chunking.cached_layout(model, chunking.cache_key(x, settings)))


def measure(model, x, target, method: str, options: Dict[str, Any], settings: Dict[str, Any], repeats: int,
            batch_size: Optional[int] = None) -> Dict[str, Any]:
    """Time ``explain(model, x, method, **options, **settings)`` and its raw floor (see the module doc)."""
    from ..api import explain
    from ..core import chunking, speed

    dev = x.device
    seen: List[int] = []

    def call() -> None:
        explain(model, x, method, target=target, batch_size=batch_size, keep_inputs=False,
                progress=seen.append, **settings, **options)

    chunking.clear_cache()            # the first call calibrates (or compiles) as in a fresh process
    first = _timed(call, dev)
    seen.clear()
    call()                            # warm: the chunk and layout every later call uses
    rows, chunk = sum(seen), max(seen, default=0)
    resolved = speed.resolve(settings.get("precision"), settings.get("channels_last"), settings.get("compile"))
    layout = _chosen_layout(model, x, resolved)
    floor = raw_floor(model, x, target, rows, chunk, resolved.precision, layout) if rows else None
    if floor is not None:
        floor()                       # warm-up
    times, floor_times = [], []
    for _ in range(repeats):
        times.append(_timed(call, dev))
        if floor is not None:
            floor_times.append(_timed(floor, dev))
    best = min(times)
    out = {"method": method, "rows": rows, "chunk": chunk if rows else None, "channels_last": layout,
           "first_s": first, "best_s": best, "median_s": statistics.median(times),
           "ms_per_image": 1000 * best / x.shape[0], "rows_per_s": rows / best if rows else None,
           "floor_rows_per_s": None, "share_of_floor": None}
    if floor_times:
        out["floor_rows_per_s"] = rows / min(floor_times)
        out["share_of_floor"] = min(floor_times) / best
    return out


def markdown(results: List[Tuple[str, str, Dict[str, Any]]], title: str) -> str:
    """A markdown table of ``(name, setting, measure(...))`` rows."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"### {title}", "",
             "| method | setting | rows | chunk | layout | first call s | best s | median s | ms/image | rows/s | "
             "floor rows/s | share of floor |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, setting, r in results:
        layout = "channels_last" if r["channels_last"] else "contiguous"
        lines.append(f"| {name} | {setting} | {r['rows']} | {num(r['chunk'], 'd')} | {layout} | {r['first_s']:.2f} | "
                     f"{r['best_s']:.3f} | {r['median_s']:.3f} | {r['ms_per_image']:.1f} | "
                     f"{num(r['rows_per_s'], '.1f')} | {num(r['floor_rows_per_s'], '.1f')} | "
                     f"{num(r['share_of_floor'], '.0%')} |")
    lines += ["", "rows: forward/backward rows of one call (images x samples x path steps). first call: includes "
              "the chunk calibration (or compilation). share of floor: saliencekit's rows/s over the bare "
              "forward + autograd.grad at the same chunk, layout and precision (eager)."]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the CPU, torch and its threads, and the GPU if any."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


@click.command("bench")
@model_options
@click.option("--method", "-m", "method_names", multiple=True,
              help="Method or evaluation name (e.g. smoothgrad_square) to time, repeatable. Default: smoothgrad.")
@click.option("--option", "-o", "extra", multiple=True,
              help="Method option KEY=VALUE (JSON value), repeatable, e.g. -o n_samples=20.")
@click.option("--images", default=2, show_default=True, type=POSITIVE, help="How many copies of the sample photos.")
@click.option("--size", default=None, type=POSITIVE, help="Input size (default: the model's).")
@click.option("--repeats", default=3, show_default=True, type=POSITIVE, help="Timed calls (best and median kept).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs.")
@click.option("--batch-size", default=None, type=POSITIVE, help="Rows per chunk (default: automatic).")
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Also time each method at this precision (the default row stays fp32).")
@click.option("--channels-last", is_flag=True, help="Also time each method with channels_last.")
@click.option("--compile", "compile_", is_flag=True, help="Also time each method with torch.compile.")
@threads_option
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the table as markdown.")
def bench_cmd(model_args, method_names, extra, images, size, repeats, device, batch_size, precision, channels_last,
              compile_, threads, out):
    """Time methods on the model here: ms/image, rows/s, the automatic chunk and layout, and the raw floor."""
    load = cpu_snapshot()     # how busy the CPUs are while this command starts (the default --threads)
    import torch

    from .. import data
    from ..core.guard import forward_scores
    from ..methods import REGISTRY
    from ..models import get_preprocessing

    opts = parse_options(extra)
    cases = [(name, *_resolve_method(name)) for name in (method_names or ("smoothgrad",))]
    check_option_keys(opts, list(dict.fromkeys(method for _, method, _ in cases)))
    device = resolve_device(device)
    spec = model_spec(model_args)
    model = model_label(spec)
    n_threads, why = apply_threads(threads, load)
    click.echo(f"torch threads: {n_threads} ({why})", err=True)
    net = load_model(spec, device)
    photos = [a for _, a in data.sample_images()]
    x = data.load_images(photos, preprocessing=get_preprocessing(net), device=device, size=size)
    x = torch.cat([x] * ((images + x.shape[0] - 1) // x.shape[0]))[:images]
    with torch.no_grad():
        target = forward_scores(net, x).argmax(1)
    settings = [("default", {})]
    if precision and precision != "fp32":
        settings.append((precision, {"precision": precision}))
    if channels_last:
        settings.append(("channels_last", {"channels_last": True}))
    if compile_:
        settings.append(("compile", {"compile": True}))

    click.echo(f"machine: {machine()}")
    results = []
    for name, method, fixed in cases:
        options = {**fixed, **for_method(opts, REGISTRY[method].defaults)}
        for label, speed_kwargs in settings:
            click.echo(f"timing {name} ({label}) ...", err=True)
            try:
                r = measure(net, x, target, method, options, speed_kwargs, repeats, batch_size)
            except (ValueError, TypeError) as err:
                raise click.ClickException(f"{name}: {err}") from None
            results.append((name, label, r))
    shape = "x".join(map(str, x.shape[1:]))
    text = markdown(results, f"{model} on {device}, {images} image(s) of {shape}, best of {repeats}")
    click.echo(text)
    if out:
        with open(out, "w") as f:
            f.write(f"machine: {machine()}\n\n{text}\n")
        click.echo(f"wrote {out}")
