"""Deletion / insertion: saliencekit.metrics vs TorchCAM's DeletionInsertionMetric, side by side in one process.

    .venv/bin/python benchmarks/bench_metrics.py [--images 4] [--steps 20,224] [--repeats 3] [--threads N]

Equal work: the same model object, images, Grad-CAM of the softmax score (TorchCAM's metric
differentiates the ``logits_fn`` output) at the same layer for the predicted class, the
same number of steps (``step = ceil(H*W / steps)`` pixels per step), a zero baseline for both
curves (TorchCAM's default; ``substrate=0`` for our insertion), softmax scores. TorchCAM's timed
call is ``metric.update(x)`` (its Grad-CAM, then both curves, sharing the all-baseline point); ours
is ``explain(model, x, "gradcam")`` then ``deletion`` and ``insertion`` (each also re-scores the clean
image). TorchCAM runs at its default ``batch_size=32`` and at a hand-tuned 4; calls alternate and
the median of ``--repeats`` is kept. Also reported: inference throughput of the raw model at
chunks of 4 and 16, to show where the difference comes from. Writes the first section of
docs/benchmarks_metrics.md (the sections after it are kept).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

import saliencekit as sk
from saliencekit import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", default="20,224")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_metrics.md"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchcam.methods import GradCAM
    from torchcam.metrics import DeletionInsertionMetric

    model = sk.load_model("efficientnet-lite0", device=args.device)
    layer = "_swish"
    photos = [a for _, a in sk.sample_images()]
    x = sk.load_images([photos[i % len(photos)] for i in range(args.images)],
                       preprocessing=sk.get_preprocessing(model), device=args.device)
    hw = x.shape[-2] * x.shape[-1]
    rows, notes = [], []
    for steps in [int(s) for s in args.steps.split(",")]:
        step = math.ceil(hw / steps)

        def ours():
            e = sk.explain(model, x, "gradcam", layer=layer, score="softmax")
            h = e.heatmap()
            d = M.deletion(model, x, h, target=e.targets, step=step)
            i = M.insertion(model, x, h, target=e.targets, step=step, substrate=0.0)
            return float(d.mean()), float(i.mean())

        cases = {"saliencekit (defaults)": ours}
        for bs in (32, 4):
            def theirs(bs=bs):
                ext = GradCAM(model, target_layer=layer)
                try:
                    m = DeletionInsertionMetric(ext, partial(torch.softmax, dim=-1), steps=steps, batch_size=bs)
                    m.update(x)
                    s = m.summary()
                finally:
                    ext.remove_hooks()
                model.zero_grad(set_to_none=True)
                return s["deletion_auc"], s["insertion_auc"]
            cases[f"TorchCAM (batch_size={bs}{', default' if bs == 32 else ''})"] = theirs
        times = {k: [] for k in cases}
        aucs = {}
        for k, fn in cases.items():  # warm-up
            _, aucs[k] = timed(fn)
        for _ in range(args.repeats):
            for k, fn in cases.items():
                t, _ = timed(fn)
                times[k].append(t)
        ours_t = statistics.median(times["saliencekit (defaults)"])
        for k in cases:
            t = statistics.median(times[k])
            d, i = aucs[k]
            rows.append((steps, step, k, t, args.images / t, t / ours_t, d, i))
            print(f"steps {steps:4d}  {k:34s} {t:7.2f} s  {args.images / t:6.2f} img/s  "
                  f"saliencekit speed-up {t / ours_t:5.2f}x  deletion {d:.4f}  insertion {i:.4f}", flush=True)

    # raw inference throughput at two chunk sizes (where the difference comes from on CPU)
    for bs in (4, 16, 32):
        xb = x[:1].expand(bs, -1, -1, -1).contiguous()
        with torch.inference_mode():
            model(xb)
            t0 = time.perf_counter()
            for _ in range(3):
                model(xb)
            notes.append(f"raw inference, chunk {bs}: {3 * bs / (time.perf_counter() - t0):.1f} images/s")
    print("\n".join(notes))

    cmd = "python benchmarks/bench_metrics.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Deletion / insertion: saliencekit vs TorchCAM's metric",
        "",
        f"Command: `{cmd.strip()}` (one process, calls alternated, median of {args.repeats}).",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"EfficientNet-Lite0, {args.images} images of 224x224, Grad-CAM at `{layer}`, zero baseline, softmax.",
        "",
        "| steps | pixels per step | case | s per call | images/s | saliencekit speed-up | deletion AUC | "
        "insertion AUC |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for steps, step, k, t, rate, ratio, d, i in rows:
        lines.append(f"| {steps} | {step} | {k} | {t:.2f} | {rate:.2f} | {ratio:.2f}x | {d:.4f} | {i:.4f} |")
    lines += ["", "Raw model inference on this machine: " + "; ".join(notes) + ".", "",
              "Both compute Grad-CAM of the softmax score (TorchCAM's metric backpropagates from its",
              "`logits_fn` output). TorchCAM integrates against the perturbed fraction with `torch.trapezoid`,",
              "ours with RISE's equal-spacing rule; when the last step is partial the AUCs differ in the",
              "4th decimal. Given the same map the curves are identical (checked while writing this script).",
              "The work (forwards per image) is the same up to 2 extra clean forwards on our side."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    text = "\n".join(lines) + "\n"
    # the page's other sections (Quantus side by side, written by hand) are kept: only the part
    # before the first later top-level heading is this script's
    old = out.read_text() if out.exists() else ""
    keep = old.find("\n# ", 1)
    out.write_text(text + (old[keep:] if keep >= 0 else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
