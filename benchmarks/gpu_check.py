"""The GPU check of saliencekit: correctness of the CUDA path, then the speed goals, in one run.

    python benchmarks/gpu_check.py PART --out DIR [--device cuda] [--quick]

PART is one of ``env``, ``correctness``, ``oom``, ``gradients``, ``cam``, ``igos`` (``benchmarks/gpu_check.sh``
runs them all, each in its own process with its own time limit, so one hang or crash costs one
part). Every part appends one JSON object per line to ``DIR/results.jsonl``; ``report`` turns that
file into ``DIR/results.md``.

Correctness (fp32 with TF32 off, noise drawn on the CPU, so CUDA and CPU compute the same thing):
every method's CUDA map against its CPU map (max |difference| / max |CPU map|); the same with
PyTorch's default TF32 convolutions; bf16 autocast against fp32 (Spearman rank correlation of the
heatmaps and relative L2 error); ``compile=True`` against eager with a padded last chunk; an
out-of-memory error forced by a memory cap, with the automatic chunk and with a huge explicit
``batch_size``: both must halve, finish, and give the map of a small fixed chunk.

Speed (best of ``--repeats`` interleaved rounds, one process): SmoothGrad-50 and IG-50 on
EfficientNet-Lite0 (pretrained) and ResNet-50 (random weights) against Captum (default and a tuned
chunk) and the raw forward+backward floor, eager and compiled; Smooth Grad-CAM++ against TorchCAM
at batch 64; I-GOS 28x28 at batch 32 against the authors' loop structure (one image at a time, one
batch-1 forward per path point kept in one graph, one backward, batch-1 line-search forwards: the
AAAI code's structure, written here, not their code), fp32, bf16 and compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import saliencekit as sk  # noqa: E402
from saliencekit import data  # noqa: E402
from saliencekit.core import chunking, noise, speed  # noqa: E402
from saliencekit.core.guard import forward_scores, model_guard  # noqa: E402

PHOTOS = [HERE.parent / ".gpu" / "photos", HERE.parents[1] / "shared" / "data" / "imagenet-sample"]

# cheap options for the correctness maps (same computation on both devices)
CHECK_METHODS = {
    "gradient": {},
    "smoothgrad": {"n_samples": 8},
    "integrated_gradients": {"n_steps": 16},
    "smoothtaylor": {"n_samples": 8},
    "igos": {"iterations": 3, "ig_steps": 4},
    "gradcam": {},
    "gradcampp": {},
    "smoothgradcampp": {"n_samples": 4},
    "positive": {},
    "active": {"top_k": 10},
}


# ---- helpers -------------------------------------------------------------------------------------

def emit(out: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def photos(model, n: int, device) -> torch.Tensor:
    pre = sk.get_preprocessing(model)
    for folder in PHOTOS:
        if folder.is_dir():
            files = data.list_images(folder)
            if files:
                files = [files[i % len(files)] for i in range(n)]
                return sk.load_images(files, preprocessing=pre, device=device)
    samples = [a for _, a in sk.sample_images()]
    return sk.load_images([samples[i % len(samples)] for i in range(n)], preprocessing=pre, device=device)


def fp32_exact(on: bool) -> None:
    """TF32 off (``on``) or PyTorch's defaults (cuDNN convolutions in TF32, matmuls in fp32)."""
    torch.backends.cudnn.allow_tf32 = not on
    torch.backends.cuda.matmul.allow_tf32 = False


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the rank correlation of two B x H x W heatmaps."""
    rs = []
    for u, v in zip(a.double().cpu(), b.double().cpu()):
        ru = u.flatten().argsort().argsort().double()
        rv = v.flatten().argsort().argsort().double()
        ru, rv = ru - ru.mean(), rv - rv.mean()
        rs.append(float((ru * rv).sum() / (ru.norm() * rv.norm()).clamp_min(1e-30)))
    return statistics.mean(rs)


def load_model(name: str, dev):
    if name == "efficientnet-lite0":
        return sk.load_model(name, device=dev)
    from resnet50 import resnet50

    return resnet50().to(dev).eval()


# ---- parts ---------------------------------------------------------------------------------------

def part_env(args, out: Path) -> None:
    rec = {"part": "env", "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm=f"{p.major}.{p.minor}",
                   multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32_default=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32_default=torch.backends.cuda.matmul.allow_tf32)
    try:
        import captum
        import torchcam
        rec.update(captum=captum.__version__, torchcam=torchcam.__version__)
    except Exception as err:  # noqa: BLE001
        rec["import_error"] = repr(err)
    emit(out, rec)


def part_correctness(args, out: Path) -> None:
    dev = torch.device(args.device)
    cpu_model = sk.load_model("efficientnet-lite0")
    model = sk.load_model("efficientnet-lite0", device=dev)
    n_img = 2 if args.quick else 3
    x_cpu = photos(cpu_model, n_img, "cpu")
    x = x_cpu.to(dev)
    with torch.no_grad():
        cls = cpu_model(x_cpu).argmax(1)
    methods = dict(CHECK_METHODS)
    if args.quick:
        methods = {k: methods[k] for k in ("gradient", "smoothgrad", "igos", "gradcam")}
    for method, opts in methods.items():
        rec = {"part": "correctness", "method": method, "options": opts}
        try:
            ref = sk.explain(cpu_model, x_cpu, method, target=cls, seed=0, batch_size=8, **opts)
            with noise.drawn_on("cpu"):
                fp32_exact(True)
                e32 = sk.explain(model, x, method, target=cls.to(dev), seed=0, batch_size=8, **opts)
                fp32_exact(False)
                etf = sk.explain(model, x, method, target=cls.to(dev), seed=0, batch_size=8, **opts)
                ebf = sk.explain(model, x, method, target=cls.to(dev), seed=0, batch_size=8, precision="bf16",
                                 **opts)
            fp32_exact(True)
            rec["fp32_vs_cpu_rel_max_err"] = rel_err(ref.attributions, e32.attributions)
            rec["fp32_vs_cpu_heat_spearman"] = spearman(ref.heatmap(), e32.heatmap())
            rec["tf32_default_vs_cpu_rel_max_err"] = rel_err(ref.attributions, etf.attributions)
            rec["bf16_vs_fp32_heat_spearman"] = spearman(e32.heatmap(), ebf.heatmap())
            a, b = e32.attributions.double().cpu(), ebf.attributions.double().cpu()
            rec["bf16_vs_fp32_rel_l2"] = float((a - b).norm() / a.norm().clamp_min(1e-30))
            if method == "igos":
                rec["igos_mask_fp32_vs_cpu_max_abs"] = float((ref.extras["mask"].cpu() - e32.extras["mask"].cpu())
                                                             .abs().max())
        except Exception as err:  # noqa: BLE001
            rec["error"] = f"{type(err).__name__}: {err}"[:500]
        emit(out, rec)
    # compile vs eager, padded last chunk: 3 images x 10 samples = 30 rows in chunks of 8 (8, 8, 8, 6->8)
    fp32_exact(True)
    for method, opts in (("smoothgrad", {"n_samples": 10}), ("integrated_gradients", {"n_steps": 10})):
        rec = {"part": "compile", "method": method, "rows": n_img * 10, "batch_size": 8}
        try:
            eager = sk.explain(model, x, method, target=cls.to(dev), seed=0, batch_size=8, **opts)
            t = time.perf_counter()
            comp = sk.explain(model, x, method, target=cls.to(dev), seed=0, batch_size=8, compile=True, **opts)
            rec["first_compiled_call_s"] = round(time.perf_counter() - t, 2)
            rec["compile_vs_eager_rel_max_err"] = rel_err(eager.attributions, comp.attributions)
            rec["compile_vs_eager_heat_spearman"] = spearman(eager.heatmap(), comp.heatmap())
        except Exception as err:  # noqa: BLE001
            rec["error"] = f"{type(err).__name__}: {err}"[:500]
        emit(out, rec)


def part_oom(args, out: Path) -> None:
    """A memory cap forces out-of-memory errors: the automatic chunk (sized from the free memory,
    which the cap does not lower) and a huge explicit batch_size must both halve and finish."""
    import warnings

    dev = torch.device(args.device)
    model = sk.load_model("efficientnet-lite0", device=dev)
    x = photos(model, 1, dev)
    n = 256 if args.quick else 1024
    fp32_exact(True)
    ref = sk.explain(model, x, "smoothgrad", n_samples=n, seed=0, batch_size=32)
    torch.cuda.empty_cache()
    cap_gib = args.oom_cap_gib
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    for label, bs in (("automatic", None), ("explicit", n)):
        rec = {"part": "oom", "chunk": label, "rows": n, "cap_gib": cap_gib}
        chunking.clear_cache()
        torch.cuda.empty_cache()
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                t = time.perf_counter()
                e = sk.explain(model, x, "smoothgrad", n_samples=n, seed=0, batch_size=bs)
                rec["seconds"] = round(time.perf_counter() - t, 2)
            rec["warnings"] = [str(m.message)[:160] for m in w if issubclass(m.category, ResourceWarning)]
            key = chunking.cache_key(x, speed.get_defaults())
            rec["cached_chunk_after"] = chunking.cached_chunk(model, key)
            rec["vs_batch32_rel_max_err"] = rel_err(ref.attributions, e.attributions)
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except Exception as err:  # noqa: BLE001
            rec["error"] = f"{type(err).__name__}: {err}"[:500]
        emit(out, rec)
    torch.cuda.set_per_process_memory_fraction(1.0)


def _interleave(cases: dict, repeats: int, dev) -> dict:
    for fn in cases.values():        # warm-up (compilation, calibration)
        fn()
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k].append(timed(fn, dev))
    return {k: {"best_s": round(min(v), 4), "median_s": round(statistics.median(v), 4)} for k, v in times.items()}


def _floor(model, fwd, x, target, rows: int, chunk: int, bf16: bool, cl: bool):
    """Forward + autograd.grad w.r.t. the input only, ``chunk`` rows at a time (``fwd``: the model or
    its compiled wrapper), weights frozen and in the asked layout, as saliencekit's calls run."""
    img = torch.arange(rows, device=x.device) * x.shape[0] // rows
    fmt = torch.channels_last if cl else torch.contiguous_format
    scope = speed.Settings(channels_last=cl)

    def run():
        with model_guard(model), speed.call_scope(model, scope), torch.enable_grad():
            for s in range(0, rows, chunk):
                i = img[s:s + chunk]
                pts = x[i].contiguous(memory_format=fmt).requires_grad_(True)
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = fwd(pts)
                torch.autograd.grad(out.float().gather(1, target[i].view(-1, 1)).sum(), pts)
    return run


def part_gradients(args, out: Path) -> None:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    dev = torch.device(args.device)
    n = 10 if args.quick else 50
    for mname in args.models.split(","):
        model = load_model(mname, dev)
        x = photos(model, args.images, dev)
        with torch.no_grad():
            target = forward_scores(model, x).argmax(1)
        rows = x.shape[0] * n
        tgt = target.tolist()
        black = sk.get_preprocessing(model).normalize(torch.zeros_like(x))
        flat = x.reshape(x.shape[0], -1)
        sigma = float(0.15 * (flat.amax(1) - flat.amin(1)).mean())
        # compiled cases on the first model only (each compilation costs tens of seconds)
        compiled = torch.compile(model) if args.compile and mname == args.models.split(",")[0] else None
        for method in ("smoothgrad", "ig"):
            skm, opts = (("smoothgrad", {"n_samples": n}) if method == "smoothgrad" else
                         ("integrated_gradients", {"n_steps": n, "baseline": "black", "rule": "riemann_right"}))
            fp32_exact(False)   # PyTorch's defaults for everyone (TF32 convolutions on)

            def ours(**kw):
                return lambda: sk.explain(model, x, skm, target=target, keep_inputs=False, **opts, **kw)
            cases = {"saliencekit fp32": ours(),
                     "saliencekit bf16+channels_last": ours(precision="bf16", channels_last=True)}
            if method == "smoothgrad":
                nt = NoiseTunnel(Saliency(model))
                cases["Captum default"] = lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=sigma,
                                                               target=tgt, abs=False)
                cases["Captum chunk 10/image"] = lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=n,
                                                                      nt_samples_batch_size=10, stdevs=sigma,
                                                                      target=tgt, abs=False)
            else:
                ig = IntegratedGradients(model)
                cases["Captum default"] = lambda: ig.attribute(x, baselines=black, target=tgt, n_steps=n,
                                                               method="riemann_right")
                cases["Captum chunk 128"] = lambda: ig.attribute(x, baselines=black, target=tgt, n_steps=n,
                                                                 method="riemann_right", internal_batch_size=128)
            for chunk in (128, rows):
                cases[f"floor fp32 chunk {chunk}"] = _floor(model, model, x, target, rows, chunk, False, False)
            cases["floor bf16+channels_last chunk 128"] = _floor(model, model, x, target, rows, 128, True, True)
            if compiled is not None:
                cases["saliencekit fp32+compile"] = ours(compile=True)
                cases["floor compiled fp32 chunk 128"] = _floor(model, compiled, x, target, rows, 128, False, False)
            res = {}
            try:
                res = _interleave(cases, args.repeats, dev)
            except Exception as err:  # noqa: BLE001
                emit(out, {"part": "gradients", "model": mname, "method": method,
                           "error": f"{type(err).__name__}: {err}"[:500]})
                continue
            key = chunking.cache_key(x, speed.get_defaults())
            emit(out, {"part": "gradients", "model": mname, "method": method, "n": n, "images": x.shape[0],
                       "rows": rows, "auto_chunk_fp32": chunking.cached_chunk(model, key), "cases": res})


def part_cam(args, out: Path) -> None:
    from torchcam.methods import SmoothGradCAMpp

    dev = torch.device(args.device)
    for mname, layer in (("efficientnet-lite0", "_swish"), ("resnet50", "layers")):
        model = load_model(mname, dev)
        x = photos(model, args.cam_images, dev)
        with torch.no_grad():
            cls = model(x).argmax(1).tolist()
        samples, std = 8, 0.3
        fp32_exact(False)
        extractor = SmoothGradCAMpp(model, target_layer=layer, num_samples=samples, std=std)

        def theirs():
            extractor(class_idx=cls, scores=model(x))
            model.zero_grad(set_to_none=True)
        try:
            cases = {"torchcam SmoothGradCAMpp": theirs,
                     "saliencekit smoothgradcampp": lambda: sk.explain(model, x, "smoothgradcampp", target=cls,
                                                                       layer=layer, n_samples=samples, stdev=std),
                     "saliencekit smoothgradcampp bf16": lambda: sk.explain(
                         model, x, "smoothgradcampp", target=cls, layer=layer, n_samples=samples, stdev=std,
                         precision="bf16")}
            res = _interleave(cases, args.repeats, dev)
            emit(out, {"part": "cam", "model": mname, "images": x.shape[0], "samples": samples, "cases": res})
        except Exception as err:  # noqa: BLE001
            emit(out, {"part": "cam", "model": mname, "error": f"{type(err).__name__}: {err}"[:500]})
        finally:
            extractor.remove_hooks()


def _tv(m, beta=2.0):
    return ((m[:, :, 1:, :] - m[:, :, :-1, :]).abs().pow(beta).mean()
            + (m[:, :, :, 1:] - m[:, :, :, :-1]).abs().pow(beta).mean())


def authors_loop_igos(model, x1, base1, c: int, mask_size: int, iterations: int, steps: int,
                      l1: float = 1.0, tv: float = 20.0, sigma: float = 0.2) -> torch.Tensor:
    """One image, the AAAI code's structure: ``steps`` batch-1 forwards of the noisy path points
    summed into one graph, one backward to the mask, a batch-1 forward of the plain objective and
    Armijo backtracking with batch-1 forwards (x0.2 from 200 down to 1e-5)."""
    hw = x1.shape[-2:]
    mask = torch.ones(1, 1, mask_size, mask_size, device=x1.device, requires_grad=True)

    def plain(m):
        up = F.interpolate(m, size=hw, mode="bilinear", align_corners=True)
        p = torch.softmax(model(x1 * up + base1 * (1 - up)), 1)[0, c]
        return p + l1 * (1 - m).abs().mean() + tv * _tv(m)

    for _ in range(iterations):
        with torch.enable_grad():
            up = F.interpolate(mask, size=hw, mode="bilinear", align_corners=True)
            loss = l1 * (1 - mask).abs().mean() + tv * _tv(mask)
            for s in range(steps):
                m = (s + 1) / steps * up
                pt = x1 * m + base1 * (1 - m) + sigma * torch.randn_like(x1)
                loss = loss + torch.softmax(model(pt), 1)[0, c] / steps
            g, = torch.autograd.grad(loss, mask)
        with torch.no_grad():
            f0 = float(plain(mask))
            step, dn = 200.0, float(g.pow(2).sum())
            while True:
                cand = (mask - step * g).clamp(0, 1)
                if float(plain(cand)) <= f0 - 1e-4 * step * dn or step < 1e-5:
                    break
                step *= 0.2
            mask = cand.detach().requires_grad_(True)
    return mask.detach()


def part_igos(args, out: Path) -> None:
    from saliencekit.core.imageops import gaussian_blur

    dev = torch.device(args.device)
    model = sk.load_model("efficientnet-lite0", device=dev)
    n = 4 if args.quick else args.igos_images
    x = photos(model, n, dev)
    pre = sk.get_preprocessing(model)
    base = pre.normalize(gaussian_blur(pre.denormalize(x), 51, 50.0))
    with torch.no_grad():
        cls = model(x).argmax(1)
    its, steps = (3, 5) if args.quick else (15, 20)
    opts = {"mask_size": 28, "iterations": its, "ig_steps": steps}
    fp32_exact(False)
    guard = model_guard(model)
    rec = {"part": "igos", "images": n, **opts}
    try:
        with guard:
            k = min(n, args.authors_images)
            t = timed(lambda: [authors_loop_igos(model, x[i:i + 1], base[i:i + 1], int(cls[i]), 28, its, steps)
                               for i in range(k)], dev)
        rec["authors_loop_s_per_image"] = round(t / k, 4)
        rec["authors_loop_images_timed"] = k
        emit(out, dict(rec, stage="authors"))
        for label, kw in (("fp32", {}), ("bf16+channels_last", {"precision": "bf16", "channels_last": True}),
                          ("bf16+channels_last+compile", {"precision": "bf16", "channels_last": True,
                                                          "compile": True})):
            if "compile" in kw and not args.compile:
                continue
            times = [timed(lambda: sk.explain(model, x, "igos", target=cls, **opts, **kw), dev)
                     for _ in range(args.igos_repeats)]   # the first includes warm-up / compilation
            rec[f"saliencekit_{label}_s_per_image"] = round(min(times) / n, 4)
            rec[f"saliencekit_{label}_first_call_s"] = round(times[0], 2)
            rec[f"speedup_{label}"] = round(rec["authors_loop_s_per_image"] / (min(times) / n), 2)
            emit(out, dict(rec, stage=label))
    except Exception as err:  # noqa: BLE001
        rec["error"] = f"{type(err).__name__}: {err}"[:500]
        emit(out, rec)


def part_profile(args, out: Path) -> None:
    """Where an IG-50 / SmoothGrad-50 call on 8 images spends its time beyond the raw floor (cProfile)."""
    import cProfile
    import io
    import pstats

    dev = torch.device(args.device)
    model = sk.load_model("efficientnet-lite0", device=dev)
    x = photos(model, args.images, dev)
    with torch.no_grad():
        target = forward_scores(model, x).argmax(1)
    fp32_exact(False)
    for method, opts in (("integrated_gradients", {"n_steps": 50}), ("smoothgrad", {"n_samples": 50})):
        def call():
            sk.explain(model, x, method, target=target, keep_inputs=False, **opts)
        call()
        call()
        t = [timed(call, dev) for _ in range(3)]
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(3):
            call()
        sync(dev)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(30)
        (out / f"profile_{method}.txt").write_text(buf.getvalue())
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(45)
        with open(out / f"profile_{method}.txt", "a") as f:
            f.write("\n\n==== cumulative ====\n" + buf.getvalue())
        emit(out, {"part": "profile", "method": method, "times_s": [round(v, 4) for v in t]})


# ---- report ----------------------------------------------------------------------------------------

def report(out: Path) -> str:
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    lines = ["# saliencekit GPU check", ""]
    for r in recs:
        if r["part"] == "env":
            lines += [f"Machine: {r.get('gpu', 'no GPU')} ({r.get('gpu_memory_gib')} GiB, sm {r.get('sm')}), "
                      f"torch {r['torch']} (CUDA {r.get('cuda')}, cuDNN {r.get('cudnn')}), Python {r['python']}, "
                      f"Captum {r.get('captum')}, TorchCAM {r.get('torchcam')}; TorchCAM/cuDNN TF32 default: "
                      f"{r.get('cudnn_allow_tf32_default')}.", ""]
    corr = [r for r in recs if r["part"] == "correctness"]
    if corr:
        lines += ["## Correctness", "",
                  "| method | fp32 CUDA vs CPU (max rel. err.) | heat Spearman | TF32 default vs CPU | "
                  "bf16 vs fp32 Spearman | bf16 rel. L2 | note |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in corr:
            if "error" in r:
                lines.append(f"| {r['method']} | | | | | | error: {r['error'][:120]} |")
                continue
            note = f"I-GOS mask max abs diff {r['igos_mask_fp32_vs_cpu_max_abs']:.2e}" if "igos_mask_fp32_vs_cpu_max_abs" \
                in r else ""
            lines.append(f"| {r['method']} | {r['fp32_vs_cpu_rel_max_err']:.2e} | {r['fp32_vs_cpu_heat_spearman']:.4f} "
                         f"| {r['tf32_default_vs_cpu_rel_max_err']:.2e} | {r['bf16_vs_fp32_heat_spearman']:.4f} | "
                         f"{r['bf16_vs_fp32_rel_l2']:.3f} | {note} |")
        lines.append("")
    for r in recs:
        if r["part"] in ("compile", "oom"):
            lines.append(f"- {r['part']}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "part"))
    lines.append("")
    for r in recs:
        if r["part"] == "gradients" and "cases" in r:
            c = r["cases"]
            lines += [f"## {r['method']}-{r['n']}, {r['model']}, {r['images']} images ({r['rows']} rows)", "",
                      "| case | best s | median s | rows/s | vs saliencekit fp32 |", "|---|---:|---:|---:|---:|"]
            ref = c["saliencekit fp32"]["best_s"]
            for k, v in c.items():
                lines.append(f"| {k} | {v['best_s']:.3f} | {v['median_s']:.3f} | {r['rows'] / v['best_s']:.0f} | "
                             f"{ref / v['best_s']:.2f}x |")
            lines.append("")
        elif r["part"] == "gradients":
            lines.append(f"- gradients {r.get('model')} {r.get('method')}: error {r['error']}")
    for r in recs:
        if r["part"] == "cam":
            if "error" in r:
                lines.append(f"- cam {r['model']}: error {r['error']}")
                continue
            c = r["cases"]
            t = c["torchcam SmoothGradCAMpp"]["best_s"]
            lines += [f"## Smooth Grad-CAM++, {r['model']}, batch {r['images']}, {r['samples']} samples", "",
                      "| case | best s | speed-up vs TorchCAM |", "|---|---:|---:|"]
            lines += [f"| {k} | {v['best_s']:.3f} | {t / v['best_s']:.2f}x |" for k, v in c.items()]
            lines.append("")
        if r["part"] == "igos":
            lines += ["## I-GOS", "", "- " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "part"), ""]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["env", "correctness", "oom", "gradients", "cam", "igos", "profile", "report"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a dry run of the script on a CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--models", default="efficientnet-lite0,resnet50")
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--cam-images", type=int, default=64)
    ap.add_argument("--igos-images", type=int, default=32)
    ap.add_argument("--authors-images", type=int, default=1)
    ap.add_argument("--igos-repeats", type=int, default=2)
    ap.add_argument("--oom-cap-gib", type=float, default=6.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "report":
        print(report(out))
        return
    torch.manual_seed(0)
    {"env": part_env, "correctness": part_correctness, "oom": part_oom, "gradients": part_gradients,
     "cam": part_cam, "igos": part_igos, "profile": part_profile}[args.part](args, out)


if __name__ == "__main__":
    main()
