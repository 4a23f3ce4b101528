"""Quantus 0.6 side by side (issue #15): agreement and speed at equal work, in one process.

    .venv/bin/python benchmarks/bench_quantus.py [--images 4] [--threads 2] [--out benchmarks/results/quantus]
        [--parts pf,rp,mprt] [--repeats 1] [--method gradcam] [--regions 30] [--patch 16]
        [--mprt-method gradient] [--profile]

Needs ``pip install quantus==0.6.*`` (it pulls pandas, scikit-learn, opencv-python, cachetools; not torch).
Same model object (EfficientNet-Lite0), photos (the first ``--images`` of --data), classes (the
model's top-1) and maps (``explain(model, x, --method).heatmap()``) for both libraries.

pf   Pixel flipping: ``metrics.deletion`` (RISE: zero substrate in model space, softmax, ``step``
     pixels per step, y_0..y_n) vs ``quantus.PixelFlipping`` (``perturb_baseline=0.0``,
     ``softmax=True``, ``normalise=False``, ``abs=False``). Quantus broadcasts the map over the channels
     and flips *channel values*, requires ``features_in_step`` to divide H*W, and has no y_0. Two
     configurations: (a) the images as a flattened 1 x (3*H*W) input (a wrapper reshapes them back
     for the model) with ``features_in_step=3*step``: the same ``n = H*W/step`` forwards per image
     and, point for point, our curve; (b) the RGB images with ``features_in_step=step``: 3n forwards,
     every third point is ours. Both sides get the same tie-free map (our stable order encoded as
     distinct values); Quantus on the raw map is run once to show what ties do (numpy quicksort).
rp   Region perturbation: ``metrics.aupc.aupc`` (windows ranked by mean |map|, uniform noise in pixel
     space, logits / |f(x)|, Simpson) vs ``quantus.RegionPerturbation`` (grid patches ranked by the
     sum of the map, baseline replacement, y(x) - y(x_r), trapezoid). Made equal: a map constant on
     the ``--patch`` grid (tile means of |map|, ties broken), ``draws=1``, ``softmax=False``, and a
     Quantus ``perturb_func`` that writes our noise patch (saliencekit.core.noise, the same stream)
     into each region. Also timed: Quantus with its own baseline replacement (no callback).
mprt Model parameter randomisation: ``evaluation.sanity.sanity_check`` vs ``quantus.MPRT``, both
     cascading top-down over the same 99 layers, Spearman per image, maps from the same ``explain``.
     With Quantus's ``reset_parameters`` swapped for our rule (Gaussian of the tensor's std, one
     seeded generator) the per-layer correlations agree; Quantus as shipped (PyTorch's default
     init, BatchNorm statistics reset, ``abs``/``normalise``) is reported next to it.

Timing: one untimed warm-up of every case (its results are the agreement numbers), then
``--repeats`` interleaved rounds, the minimum kept. A forward hook on the model counts the rows
and the seconds spent in the model's forward for each case; the floor is the bare model forward of
the same rows in chunks of ``--images``. Writes ``quantus.md`` and ``quantus.json`` to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import platform
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import saliencekit as sk
from saliencekit.core import noise
from saliencekit.evaluation import sanity
from saliencekit.metrics import aupc as aupc_mod
from saliencekit.metrics import deletion
from saliencekit.metrics.scoring import ranks

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 / >= 2.4
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"


# ---- measuring ---------------------------------------------------------------------------------

class ForwardMeter:
    """Rows and seconds spent in ``model.forward`` (hooks on the top module; wrappers and deep
    copies of the model call them too)."""

    def __init__(self, model: nn.Module):
        self.rows = 0
        self.seconds = 0.0
        self._t = []
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._t.append(time.perf_counter())

    def _post(self, module, args, out):
        self.seconds += time.perf_counter() - self._t.pop()
        self.rows += int(args[0].shape[0])

    def reset(self):
        self.rows, self.seconds = 0, 0.0

    def remove(self):
        for h in self._handles:
            h.remove()


class Case:
    def __init__(self, part, name, fn, note=""):
        self.part, self.name, self.fn, self.note = part, name, fn, note
        self.times, self.rows, self.forward_s, self.result = [], None, [], None


def run_cases(cases, repeats, meter, log, profile=False):
    """Warm-up (kept as the result), then ``repeats`` interleaved timed rounds."""
    for c in cases:
        meter.reset()
        t0 = time.perf_counter()
        c.result = c.fn()
        c.warmup_s = time.perf_counter() - t0
        c.rows, c.warmup_forward_s = meter.rows, meter.seconds
        log(f"  warm-up {c.name}: {c.warmup_s:.2f} s, {c.rows} rows forwarded")
    for r in range(repeats):
        for c in cases:
            meter.reset()
            prof = cProfile.Profile() if profile and r == 0 else None
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            c.fn()
            if prof:
                prof.disable()
            c.times.append(time.perf_counter() - t0)
            c.forward_s.append(meter.seconds)
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
                c.profile = s.getvalue()
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))
    for c in cases:
        if not c.times:  # --repeats 0: the warm-up is the measurement
            c.times, c.forward_s = [c.warmup_s], [c.warmup_forward_s]


def floor_rate(model, x, chunk, rows=200, repeats=2, channels_last=False):
    """Seconds per row of the bare model forward in chunks of ``chunk`` (inference mode), best of
    ``repeats`` passes over ``rows`` rows; with ``channels_last`` weights and input in that layout
    (what saliencekit's metrics run when the "auto" calibration picks it)."""
    from harness import channels_last_weights

    xb = x[torch.arange(chunk) % x.shape[0]].contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    n = max(1, math.ceil(rows / chunk))
    best = float("inf")
    with channels_last_weights(model, channels_last), torch.inference_mode():
        model(xb)
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            for _ in range(n):
                model(xb)
            best = min(best, time.perf_counter() - t0)
    return best / (n * chunk)


# ---- the pieces both sides are given -----------------------------------------------------------

def tie_free(saliency: torch.Tensor) -> torch.Tensor:
    """Distinct values in our stable descending order (ties by position): same order for both."""
    b, h, w = saliency.shape
    r = ranks(saliency.reshape(b, -1))
    return ((h * w - r).float() / (h * w)).reshape(b, h, w)


def tile_map(saliency: torch.Tensor, patch: int) -> torch.Tensor:
    """Tile means of |map| on the patch grid, ties broken by tile position, constant per tile."""
    t = F.avg_pool2d(saliency.abs()[:, None], patch)[:, 0]
    return tie_free(t).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


class Unflatten(nn.Module):
    """The model on a 1 x (C*H*W) view of the images (Quantus then counts whole pixels per step)."""

    def __init__(self, inner: nn.Module, shape):
        super().__init__()
        self.inner, self.shape = inner, tuple(shape)

    def forward(self, z):
        return self.inner(z.reshape(z.shape[0], *self.shape))


def our_noise_patches(spec, seed: int, window: int, channels: int):
    """A Quantus perturb_func writing aupc's draw (draws=1) of region r into the r-th region."""
    state = {"r": 0}

    def perturb(arr, indices, **_):
        r = state["r"]
        state["r"] += 1
        out = arr.copy()
        for i in range(arr.shape[0]):
            p = spec.normalize(noise.uniform((1, channels, window, window), seed, i, r, stream=noise.STREAM_METRIC))
            out[i, indices[i]] = p[0].reshape(-1).numpy()   # Quantus's block indices run C, h, w
        return out
    return perturb


@contextlib.contextmanager
def our_randomisation(model: nn.Module, seed: int):
    """Quantus's MPRT calls ``module.reset_parameters()`` top-down; for the block that call applies
    saliencekit's rule (``sanity._randomise`` with one generator seeded with ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    owners = {next(k for k in type(m).__mro__ if "reset_parameters" in vars(k))
              for n, m in model.named_modules() if n in set(sanity.parameter_layers(model))}
    saved = {k: vars(k)["reset_parameters"] for k in owners}
    try:
        for k in owners:
            k.reset_parameters = lambda self: sanity._randomise(self, gen)
        yield
    finally:
        for k, f in saved.items():
            k.reset_parameters = f


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ---- the three parts ---------------------------------------------------------------------------

def part_pf(model, x, cls, heat, step, repeats, meter, log, profile):
    import quantus

    b, c, h, w = x.shape
    n = math.ceil(h * w / step)
    if (h * w) % step:
        raise SystemExit(f"--step must divide H*W = {h * w} (Quantus asserts it)")
    tb = tie_free(heat)
    assert torch.equal(ranks(tb.reshape(b, -1)), ranks(heat.reshape(b, -1)))  # ours: same curve for both maps
    xn, yn = x.numpy(), cls.numpy()
    flat_model = Unflatten(model, x.shape[1:]).eval()
    x_flat = xn.reshape(b, 1, -1)

    def a_flat(m):
        return np.tile(m.reshape(b, 1, -1).numpy(), (1, 1, c))  # C copies, channel-major like x

    def quantus_pf(fis, auc=False):
        return quantus.PixelFlipping(features_in_step=fis, perturb_baseline=0.0, normalise=False, abs=False,
                                     return_auc_per_sample=auc, disable_warnings=True)

    ours = Case("pf", "saliencekit deletion", lambda: deletion(model, x, tb, target=cls, step=step,
                                                               return_curves=True),
                f"step={step}: {n} steps + y_0")
    flat = Case("pf", "Quantus PixelFlipping, flat view", lambda: np.asarray(quantus_pf(c * step)(
        flat_model, x_flat, yn, a_batch=a_flat(tb), softmax=True, batch_size=b, channel_first=True)),
        f"1 x {c * h * w} input, features_in_step={c * step}: {n} steps")
    cases = [ours, flat]
    rgb = Case("pf", "Quantus PixelFlipping, RGB", lambda: np.asarray(quantus_pf(step)(
        model, xn, yn, a_batch=tb[:, None].numpy(), softmax=True, batch_size=b, channel_first=True)),
        f"{c} x {h} x {w} input, features_in_step={step}: {c * n} steps (3x the forwards)")
    run_cases(cases, repeats, meter, log, profile)
    run_cases([rgb], 0, meter, log)  # 3x the work: once, for the agreement and the per-row cost

    y = ours.result.curves.double().numpy()
    q, q3 = flat.result, rgb.result
    # Quantus's AUC rule: utils.calculate_auc = np.trapz(dx=1) over the curve (np.trapz is gone in numpy 2.4)
    q_auc = trapezoid(q, dx=1, axis=1)
    ag = {
        "curve_points": int(q.shape[1]),
        "flat_curve_max_abs": max_abs(q, y[:, 1:]),
        "rgb_every_third_max_abs": max_abs(q3[:, c - 1::c], y[:, 1:]),
        "auc_ours": ours.result.auc.double().tolist(),
        "auc_quantus_trapz": q_auc.tolist(),
        "auc_quantus_to_ours_max_abs": max_abs((q_auc + (y[:, 0] + y[:, 1]) / 2) / n, ours.result.auc.double()),
        "auc_ours_to_quantus_max_abs": max_abs(trapezoid(y[:, 1:], dx=1, axis=1), q_auc),
        "auc_rgb_normalised_max_abs": max_abs((trapezoid(q3, dx=1, axis=1) + (y[:, 0] + q3[:, 0]) / 2) / (c * n),
                                              ours.result.auc.double()),
    }
    # what ties do: Quantus on the raw map (numpy's unstable argsort) against our position order
    meter.reset()
    q_raw = np.asarray(quantus_pf(c * step)(flat_model, x_flat, yn, a_batch=a_flat(heat), softmax=True,
                                            batch_size=b, channel_first=True))
    flat_h = heat.reshape(b, -1)
    tied = []
    for v in flat_h:
        counts = torch.unique(v, return_counts=True)[1]
        tied.append(float(counts[counts > 1].sum() / v.numel()))
    diff = np.abs(q_raw - y[:, 1:])
    first = [int(np.argmax(d > 1e-5)) + 1 if (d > 1e-5).any() else None for d in diff]
    ag.update({
        "raw_map_tied_fraction": tied,
        "raw_map_zero_fraction": (flat_h == 0).float().mean(1).tolist(),
        "raw_map_at_max_fraction": (flat_h == flat_h.amax(1, keepdim=True)).float().mean(1).tolist(),
        "raw_map_curve_max_abs": float(diff.max()),
        "raw_map_first_differing_step": first,
        "raw_map_auc_max_abs": max_abs((trapezoid(q_raw, dx=1, axis=1) + (y[:, 0] + q_raw[:, 0]) / 2) / n,
                                       ours.result.auc.double()),
    })
    return [ours, flat, rgb], ag


def part_rp(model, x, cls, heat, patch, regions, repeats, meter, log, profile):
    import quantus
    from scipy.integrate import simpson

    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise SystemExit(f"--patch must divide {h} and {w} (no padding)")
    tmap = tile_map(heat, patch)
    spec = sk.get_preprocessing(model)
    xn, yn = x.numpy(), cls.numpy()
    a = tmap[:, None].numpy()

    def quantus_rp(perturb_func=None):
        kw = {"perturb_func": perturb_func} if perturb_func else {"perturb_baseline": 0.0}
        m = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, order="morf", abs=True,
                                       normalise=False, disable_warnings=True, **kw)
        return np.asarray(m(model, xn, yn, a_batch=a, softmax=False, batch_size=b, channel_first=True))

    ours = Case("rp", "saliencekit aupc (draws=1)", lambda: aupc_mod.aupc(
        model, x, tmap, target=cls, window=patch, regions=regions, draws=1, seed=0, return_curves=True),
        f"window={patch}, regions={regions}, draws=1")
    q_noise = Case("rp", "Quantus RegionPerturbation, our noise", lambda: quantus_rp(
        our_noise_patches(spec, 0, patch, c)), f"patch_size={patch}, regions_evaluation={regions}, perturb_func")
    q_base = Case("rp", "Quantus RegionPerturbation, baseline 0", lambda: quantus_rp(),
                  f"patch_size={patch}, regions_evaluation={regions}, perturb_baseline=0.0")
    cases = [ours, q_noise, q_base]
    run_cases(cases, repeats, meter, log, profile)

    with torch.inference_mode():
        y0 = model(x).double().gather(1, cls.view(-1, 1))[:, 0].numpy()
    y = ours.result["curves"].double().numpy()
    conv = (y0[:, None] - q_noise.result) / np.abs(y0)[:, None]   # y(x) - y(x_r) -> y(x_r) / |y(x)|
    full = np.concatenate([np.sign(y0)[:, None], conv], 1)
    ag = {
        "curve_points": int(q_noise.result.shape[1]),
        "curve_max_abs": max_abs(conv, y[:, 1:]),
        "auc_ours_simpson": ours.result["auc"].double().tolist(),
        "auc_quantus_trapz": trapezoid(q_noise.result, dx=1, axis=1).tolist(),
        "auc_quantus_to_ours_max_abs": max_abs(simpson(full, dx=1, axis=1), ours.result["auc"].double()),
    }
    return cases, ag


def part_mprt(model, x, cls, method, seed, log):
    import quantus

    def explain_func(model, inputs, targets, **_):
        e = sk.explain(model, torch.as_tensor(inputs), method, target=torch.as_tensor(targets), seed=seed,
                       keep_inputs=False)
        return e.heatmap().detach().float().numpy()[:, None]

    ref = explain_func(model, x.numpy(), cls.numpy())
    b = x.shape[0]

    def q_call(patched: bool):
        kw = {"abs": False, "normalise": False, "seed": seed} if patched else {}
        m = quantus.MPRT(layer_order="top_down", disable_warnings=True, **kw)
        with our_randomisation(model, seed) if patched else contextlib.nullcontext():
            return m(model, x.numpy(), cls.numpy(), a_batch=ref, explain_func=explain_func, batch_size=b,
                     channel_first=True)

    cases = [Case("mprt", "saliencekit sanity_check", lambda: sanity.sanity_check(
                 model, x, method, target=cls, seed=seed), "Spearman + SSIM per layer"),
             Case("mprt", "Quantus MPRT, our randomisation", lambda: q_call(True),
                  "reset_parameters -> our rule, abs/normalise off"),
             Case("mprt", "Quantus MPRT, as shipped", lambda: q_call(False),
                  "PyTorch default init, seed 42, abs + normalise")]
    for c in cases:  # each once: ~100 explain calls
        t0 = time.perf_counter()
        c.result = c.fn()
        c.times = [time.perf_counter() - t0]
        c.forward_s = [float("nan")]
        log(f"  {c.name}: {c.times[0]:.2f} s")
    ours = cases[0].result
    layers = ours["layers"]
    rho = ours["spearman"].double().numpy()
    qp, qd = cases[1].result, cases[2].result
    qp_rho = np.array([qp[n] for n in layers])
    qd_rho = np.array([qd[n] for n in layers])
    pick = sorted({0, 1, len(layers) // 4, len(layers) // 2, len(layers) - 1})
    ag = {
        "layers": len(layers),
        "same_layer_order": list(qp)[1:] == layers,
        "quantus_original_vs_given_map": qp["original"],
        "patched_max_abs": max_abs(qp_rho, rho),
        "as_shipped_mean_abs": float(np.nanmean(np.abs(qd_rho - rho))),
        "per_layer": [{"k": k + 1, "layer": layers[k], "ours": float(np.nanmean(rho[k])),
                       "quantus_ours_rule": float(np.nanmean(qp_rho[k])),
                       "quantus_as_shipped": float(np.nanmean(qd_rho[k]))} for k in pick],
    }
    return cases, ag


# ---- main --------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=str(DATA), help="folder of photos (the bundled samples if missing)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantus"))
    ap.add_argument("--parts", default="pf,rp,mprt")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--method", default="gradcam", help="the maps judged by pf and rp")
    ap.add_argument("--step", type=int, default=224, help="pixels per deletion step")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--regions", type=int, default=30)
    ap.add_argument("--mprt-method", default="gradient")
    ap.add_argument("--profile", action="store_true", help="cProfile the first timed round (pf, rp)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import quantus

    def log(s):
        print(s, flush=True)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    model = sk.load_model("efficientnet-lite0")
    spec = sk.get_preprocessing(model)
    folder = Path(args.data)
    items = sorted(sk.data.list_images(folder))[:args.images] if folder.is_dir() else \
        [a for _, a in sk.sample_images()]
    items = [items[i % len(items)] for i in range(args.images)]
    x = sk.load_images(items, preprocessing=spec)
    with torch.inference_mode():
        cls = model(x).argmax(1)
    names = [Path(str(p)).stem if isinstance(p, (str, Path)) else f"sample{i}" for i, p in enumerate(items)]
    log(f"{len(names)} images: {', '.join(names)}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"quantus {quantus.__version__}")
    heat = sk.explain(model, x, args.method, target=cls).heatmap().detach().float() if {"pf", "rp"} & set(parts) \
        else None

    meter = ForwardMeter(model)
    cases, agree = [], {}
    try:
        if "pf" in parts:
            log("pixel flipping / deletion")
            cs, agree["pf"] = part_pf(model, x, cls, heat, args.step, args.repeats, meter, log, args.profile)
            cases += cs
        if "rp" in parts:
            log("region perturbation / AUPC")
            cs, agree["rp"] = part_rp(model, x, cls, heat, args.patch, args.regions, args.repeats, meter, log,
                                      args.profile)
            cases += cs
    finally:
        meter.remove()
    if "mprt" in parts:
        log("model parameter randomisation")
        cs, agree["mprt"] = part_mprt(model, x, cls, args.mprt_method, 0, log)
        cases += cs

    per_row = per_row_cl = None
    if any(c.rows for c in cases):
        per_row = floor_rate(model, x, x.shape[0])
        per_row_cl = floor_rate(model, x, x.shape[0], channels_last=True)
        log(f"bare forward, chunks of {x.shape[0]}: {1 / per_row:.1f} rows/s contiguous, "
            f"{1 / per_row_cl:.1f} rows/s channels_last")
    floors = {c.name: c.rows * per_row for c in cases if c.rows}
    rows = []
    for c in cases:
        ref = next(o for o in cases if o.part == c.part)  # the saliencekit case of the part
        k = int(np.argmin(c.times))
        t = c.times[k]
        fwd = None if math.isnan(c.forward_s[k]) else c.forward_s[k]   # of the same (fastest) round
        rows.append({"part": c.part, "case": c.name, "config": c.note, "rows": c.rows, "seconds": t,
                     "forward_seconds": fwd, "outside_forward_seconds": None if fwd is None else t - fwd,
                     "floor_seconds": floors.get(c.name),
                     "speedup_vs_this": t / min(ref.times),
                     "speedup_per_row": (t / c.rows) / (min(ref.times) / ref.rows) if c.rows and ref.rows else None,
                     "seconds_per_1000_rows": 1000 * t / c.rows if c.rows else None})
        log(f"{c.part:5s} {c.name:42s} {t:8.2f} s  rows {c.rows}  in forward {fwd if fwd is None else round(fwd, 2)}"
            f"  floor {floors.get(c.name) and round(floors[c.name], 2)}  saliencekit speed-up {t / min(ref.times):.2f}x")
        if getattr(c, "profile", None):
            log(c.profile)

    cmd = "python benchmarks/bench_quantus.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": cmd.strip(), "machine": f"{platform.machine()} CPU", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "quantus": quantus.__version__, "images": names,
            "classes": cls.tolist(), "method": args.method, "mprt_method": args.mprt_method,
            "step": args.step, "patch": args.patch, "regions": args.regions, "repeats": args.repeats,
            "floor_rows_per_s": None if per_row is None else 1 / per_row,
            "floor_rows_per_s_channels_last": None if per_row_cl is None else 1 / per_row_cl,
            "defaults": {k: str(v) for k, v in vars(sk.get_defaults()).items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantus.json").write_text(json.dumps({"meta": meta, "timings": rows, "agreement": agree}, indent=1))
    (out / "quantus.md").write_text(markdown(meta, rows, agree))
    log(f"wrote {out / 'quantus.md'} and {out / 'quantus.json'}")


def _f(v, fmt=".2f"):
    return "" if v is None else format(v, fmt)


def markdown(meta, rows, agree):
    L = [f"Command: `{meta['command']}` (one process; warm-up then {meta['repeats']} interleaved round(s), "
         f"minimum kept; MPRT and the RGB pixel flipping once).",
         f"Machine: {meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, Quantus "
         f"{meta['quantus']}; EfficientNet-Lite0, {len(meta['images'])} images of 224x224 "
         f"({', '.join(meta['images'])}), maps: {meta['method']} (pf, rp), {meta['mprt_method']} (mprt).", "",
         "| part | case | configuration | rows forwarded | s | s in model forward | s outside | "
         "bare forward (contiguous), s | s / 1000 rows | saliencekit speed-up | per row |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['part']} | {r['case']} | {r['config']} | {r['rows'] or ''} | {r['seconds']:.2f} | "
                 f"{_f(r['forward_seconds'])} | {_f(r['outside_forward_seconds'])} | {_f(r['floor_seconds'])} | {_f(r['seconds_per_1000_rows'])} | "
                 f"{r['speedup_vs_this']:.2f}x | {_f(r['speedup_per_row'])}{'x' if r['speedup_per_row'] else ''} |")
    if meta.get("floor_rows_per_s"):
        L += ["", f"Bare model forward in chunks of {len(meta['images'])} (the 'bare forward' column): "
              f"{meta['floor_rows_per_s']:.1f} rows/s contiguous, {meta['floor_rows_per_s_channels_last']:.1f} "
              f"rows/s channels_last (saliencekit's metrics follow `channels_last={meta['defaults']['channels_last']}`; "
              f"Quantus runs the model as given, contiguous)."]
    L += ["", "Agreement (max over images):", ""]
    if "pf" in agree:
        a = agree["pf"]
        L += [f"- pixel flipping, tie-free map: curve (flat view, {a['curve_points']} points) max |diff| "
              f"{a['flat_curve_max_abs']:.2e}; RGB every third point {a['rgb_every_third_max_abs']:.2e}; "
              f"AUC, Quantus trapz -> ours {a['auc_quantus_to_ours_max_abs']:.2e}, ours -> Quantus trapz "
              f"{a['auc_ours_to_quantus_max_abs']:.2e}; RGB (3x finer sampling) normalised AUC "
              f"{a['auc_rgb_normalised_max_abs']:.2e}.",
              f"- pixel flipping, raw map (ties; tied fraction of pixels "
              f"{', '.join(f'{t:.2f}' for t in a['raw_map_tied_fraction'])}; at 0: "
              f"{', '.join(f'{t:.3f}' for t in a['raw_map_zero_fraction'])}; at the maximum: "
              f"{', '.join(f'{t:.3f}' for t in a['raw_map_at_max_fraction'])}): curve max |diff| "
              f"{a['raw_map_curve_max_abs']:.3f}, first differing step {a['raw_map_first_differing_step']}, "
              f"AUC {a['raw_map_auc_max_abs']:.2e}."]
    if "rp" in agree:
        a = agree["rp"]
        L += [f"- region perturbation (tile map, our noise, draws=1): curve ({a['curve_points']} regions) max |diff| "
              f"{a['curve_max_abs']:.2e}; AUC (Quantus curve converted, Simpson) {a['auc_quantus_to_ours_max_abs']:.2e}."]
    if "mprt" in agree:
        a = agree["mprt"]
        L += [f"- MPRT ({a['layers']} layers, same order: {a['same_layer_order']}): Spearman with our "
              f"randomisation max |diff| {a['patched_max_abs']:.2e}; Quantus as shipped mean |diff| "
              f"{a['as_shipped_mean_abs']:.3f}.", "",
              "| k (top first) | layer | saliencekit | Quantus, our rule | Quantus, as shipped |",
              "|---:|---|---:|---:|---:|"]
        L += [f"| {p['k']} | `{p['layer']}` | {p['ours']:.3f} | {p['quantus_ours_rule']:.3f} | "
              f"{p['quantus_as_shipped']:.3f} |" for p in a["per_layer"]]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
