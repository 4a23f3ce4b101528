"""saliencekit vs Captum (SmoothGrad, SmoothGrad^2, VarGrad, Integrated Gradients) vs the raw floor.

    .venv/bin/python benchmarks/bench_gradients.py --part effnet  [--repeats 3]   # EfficientNet-Lite0, 2 photos
    .venv/bin/python benchmarks/bench_gradients.py --part resnet  [--repeats 2]   # ResNet-50 (random weights)
    .venv/bin/python benchmarks/bench_gradients.py --part drift                   # bf16 / fp16 / channels_last vs fp32
    .venv/bin/python benchmarks/bench_gradients.py --part memory                  # SmoothGrad n=50 vs n=1000 at 448x448
    add --device cuda to run the timing parts on a GPU (with --variants bf16+channels_last+compile there)

Every case computes the same gradients on the same model object, images (the two bundled sample
photos) and predicted classes, in one process, interleaved over rounds (best of --repeats kept);
see ``harness.py`` beside this script. Results are printed and written as markdown to
benchmarks/results/<part>.md (pasted into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import saliencekit as sk  # noqa: E402
from saliencekit import data  # noqa: E402

RESULTS = HERE / "results"


def photos(model, n_images: int = 2, size=None, device="cpu") -> torch.Tensor:
    spec = sk.get_preprocessing(model)
    x = data.load_images([a for _, a in data.sample_images()], preprocessing=spec, size=size, device=device)
    return torch.cat([x] * ((n_images + 1) // 2))[:n_images]


def log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def write(part: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    head = f"machine: {harness.machine()}\ncommand: {' '.join([Path(sys.executable).name] + sys.argv)}\n\n"
    (RESULTS / f"{part}.md").write_text(head + text + "\n")
    print(head + text)


def variants_for(args) -> dict:
    out = {}
    for v in filter(None, args.variants.split(",")):
        speed = {}
        for flag in v.split("+"):
            if flag in ("bf16", "fp16"):
                speed["precision"] = flag
            elif flag == "channels_last":
                speed["channels_last"] = True
            elif flag == "compile":
                speed["compile"] = True
            else:
                raise SystemExit(f"--variants: unknown flag {flag!r}")
        out[v] = speed
    return out


def part_timing(args, which: str) -> None:
    dev = torch.device(args.device)
    if which == "effnet":
        model = sk.load_model("efficientnet-lite0", device=dev)
        title = "EfficientNet-Lite0 (pretrained)"
        n, methods = args.n or 50, args.methods.split(",")
    else:
        from resnet50 import resnet50

        model = resnet50().to(dev)
        title = "ResNet-50 architecture (random weights)"
        n, methods = args.n or 10, ["smoothgrad"]
    x = photos(model, args.images, device=dev)
    res = harness.compare(model, x, methods, n=n, repeats=args.repeats,
                            captum_chunks=tuple([None] + [int(c) for c in args.captum_chunks.split(",")]),
                            floor_chunks=tuple(int(c) for c in args.floor_chunks.split(",")),
                            variants=variants_for(args), log=log, warmup=not args.no_warmup)
    write(f"{which}_{args.device}", harness.markdown(res, f"{title}, {args.device}"))


def _heat(a: torch.Tensor) -> torch.Tensor:
    return a.abs().sum(1).flatten(1)


def part_drift(args) -> None:
    """Rank correlation of bf16 / fp16 / channels_last maps with fp32 maps, and the IG completeness delta."""
    from scipy.stats import spearmanr

    model = sk.load_model("efficientnet-lite0")
    folder = Path(args.sample_dir)
    if folder.is_dir():
        files = data.list_images(folder)[:: max(1, len(data.list_images(folder)) // args.drift_images)]
        x = sk.load_images(files[: args.drift_images])
        src = f"{x.shape[0]} photos of {folder}"
    else:
        x = photos(model, 2)
        src = "the 2 bundled sample photos"
    rows = []
    all_opts = {"smoothgrad": {"n_samples": 50}, "integrated_gradients": {"n_steps": 50}}
    for method in args.drift_methods.split(","):
        opts = all_opts[method]
        # the reference and every setting: contiguous fp32 unless changed, one fixed chunk of 4 rows,
        # so only the setting differs (the default channels_last="auto" could pick either layout)
        fixed = {"batch_size": 4, "channels_last": False}
        ref = sk.explain(model, x, method, **fixed, **opts)
        for name in args.drift_settings.split(","):
            speed = {**fixed, **({"channels_last": True} if name == "channels_last" else
                                 {"seed": 1} if name == "seed1" else {"precision": name})}
            t0 = time.perf_counter()
            e = sk.explain(model, x, method, **speed, **opts)
            dt = time.perf_counter() - t0
            rho = [spearmanr(a.numpy(), b.numpy())[0] for a, b in zip(_heat(ref.attributions), _heat(e.attributions))]
            rel = ((e.attributions - ref.attributions).abs().max() / ref.attributions.abs().max()).item()
            row = {"method": method, "setting": name, "spearman_mean": float(sum(rho) / len(rho)),
                   "spearman_min": float(min(rho)), "max_rel_diff": rel, "time_s": dt}
            if e.delta is not None:
                gap = (ref.attributions.flatten(1).sum(1) - ref.delta).abs()   # |f(x) - f(baseline)|
                row["ig_delta_fp32"] = float((ref.delta.abs() / gap).mean())
                row["ig_delta"] = float((e.delta.abs() / gap).mean())
            rows.append(row)
            log(json.dumps(row))
    lines = [f"### Precision drift, EfficientNet-Lite0, {src}", "",
             "| method | setting | Spearman vs fp32 (mean / min over images) | max abs diff / max abs (fp32) | "
             "IG mean abs delta / abs(f(x) - f(baseline)): fp32 -> setting |",
             "|---|---|---|---:|---|"]
    for r in rows:
        d = f"{r['ig_delta_fp32']:.4f} -> {r['ig_delta']:.4f}" if "ig_delta" in r else "-"
        lines.append(f"| {r['method']} | {r['setting']} | {r['spearman_mean']:.4f} / {r['spearman_min']:.4f} | "
                     f"{r['max_rel_diff']:.2e} | {d} |")
    write("drift_" + "_".join(args.drift_settings.replace(",", " ").split()), "\n".join(lines))


def small_cnn() -> torch.nn.Module:
    """A small full-resolution CNN (cheap enough for n = 1000 at 448x448 on a busy CPU), seeded weights."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000)).eval()


def _memory_child(n: int, size: int, batch_size: int, model_name: str) -> None:
    model = small_cnn() if model_name == "small" else sk.load_model(model_name)
    x = photos(model, 1, size=size)
    sk.explain(model, x, "smoothgrad", n_samples=2, batch_size=batch_size)   # warm-up (allocator, kernels)
    with harness.peak_memory(torch.device("cpu")) as box:
        t0 = time.perf_counter()
        sk.explain(model, x, "smoothgrad", n_samples=n, batch_size=batch_size)
        dt = time.perf_counter() - t0
    import resource

    print(json.dumps({"model": model_name, "n": n, "size": size, "batch_size": batch_size,
                      "peak_extra_mib": box["bytes"] / 2**20,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "time_s": dt}))


def part_memory(args) -> None:
    rows = []
    for n in (int(v) for v in args.memory_n.split(",")):
        cmd = [sys.executable, __file__, "--part", "memory-child", "--n", str(n), "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--memory-model", args.memory_model]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        log(" ".join(cmd))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        log(out)
    label = "a small 2-conv CNN (benchmarks/bench_gradients.py:small_cnn)" if args.memory_model == "small" \
        else args.memory_model
    lines = [f"### Memory: SmoothGrad on one {args.size}x{args.size} image, {label}, chunk "
             f"{args.batch_size}, each n in a fresh process", "",
             "| n_samples | peak extra RSS during explain, MiB | process peak RSS (ru_maxrss), MiB | time s |",
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['peak_extra_mib']:.0f} | {r['ru_maxrss_mib']:.0f} | {r['time_s']:.1f} |")
    write(f"memory_{args.memory_model}", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", required=True, choices=["effnet", "resnet", "drift", "memory", "memory-child"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--captum-chunks", default="1,2,4,8")
    ap.add_argument("--floor-chunks", default="1,2,4,8,16")
    ap.add_argument("--methods", default="smoothgrad,smoothgrad_sq,vargrad,ig", help="EfficientNet part")
    ap.add_argument("--no-warmup", action="store_true", help="no untimed warm-up round (memory sampled in round 1)")
    ap.add_argument("--variants", default="", help="comma-separated, e.g. bf16,channels_last,bf16+channels_last")
    ap.add_argument("--sample-dir", default=str(HERE.parents[1] / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--drift-images", type=int, default=4)
    ap.add_argument("--drift-settings", default="bf16,channels_last",
                    help="bf16, fp16, channels_last, seed1 (fp32 with another seed: Monte-Carlo noise, for comparison)")
    ap.add_argument("--drift-methods", default="smoothgrad,integrated_gradients")
    ap.add_argument("--memory-n", default="50,1000")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--memory-model", default="efficientnet-lite0", help="a load_model name, or 'small'")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 on an oversubscribed CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("effnet", "resnet"):
        part_timing(args, args.part)
    elif args.part == "drift":
        part_drift(args)
    elif args.part == "memory":
        part_memory(args)
    else:
        _memory_child(args.n, args.size, args.batch_size, args.memory_model)


if __name__ == "__main__":
    main()
