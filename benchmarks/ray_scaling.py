"""Wall time of ``evaluate`` on the local backend vs the Ray backend (1 and 2 CPU workers).

    .venv/bin/python benchmarks/ray_scaling.py --n 20 --block-size 2

Images: the first N of ../shared/data/imagenet-sample (or the bundled samples, repeated under other
names, when that folder is absent). A cheap method / metric set (gradient, SmoothGrad with 8
samples, random; deletion and insertion with 17-point curves, AUTVC; all settable). Reported per configuration:
wall seconds of the evaluation call, images per second, and whether the rows equal the one-thread
local run bit for bit. Ray times are given cold (actors start and load the model inside the timed
call; ``ray.init`` is timed separately) and warm (actors kept from the cold call). Prints a markdown
table (docs/distributed.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def load(n: int, spec):
    from saliencekit import data

    if SAMPLE_DIR.is_dir():
        files = data.list_images(SAMPLE_DIR)[:n]
        return [(p.name, data.load_images(p, preprocessing=spec, normalize=False)[0]) for p in files]
    base = [(name, data.load_images(a, preprocessing=spec, normalize=False)[0]) for name, a in data.sample_images()]
    return [(f"{name}_{k}", x) for k in range((n + 1) // 2) for name, x in base][:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    ap.add_argument("--methods", default="gradient,smoothgrad,random")
    ap.add_argument("--metrics", default="deletion,insertion,autvc")
    ap.add_argument("--step", type=int, default=3136, help="pixels per deletion/insertion step (3136: 17 points)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time, comma-separated")
    ap.add_argument("--local-threads", default="1,default",
                    help="torch thread counts of the local runs ('default' = torch's default)")
    ap.add_argument("--no-warm", action="store_true", help="time only cold Ray calls")
    args = ap.parse_args()

    import ray

    from saliencekit.evaluation import ray as dist
    from saliencekit.evaluation import run as ev
    from saliencekit import load_model
    from saliencekit.models import get_preprocessing

    model = load_model("efficientnet-lite0")
    images = load(args.n, get_preprocessing(model))
    kw = dict(methods=args.methods.split(","), metrics=args.metrics.split(","), seed=0,
              method_options={"smoothgrad": {"n_samples": args.samples}},
              metric_options={"deletion": {"step": args.step}, "insertion": {"step": args.step}},
              block_size=args.block_size, batch_size=8)
    rows = []
    default_threads = torch.get_num_threads()
    ref = None
    wanted = {default_threads if t == "default" else int(t) for t in args.local_threads.split(",")}
    for threads in sorted(wanted):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        res = ev.evaluate_images(model, images, **kw)
        dt = time.perf_counter() - t0
        if threads == 1:
            ref = res.rows
        rows.append((f"local, {threads} torch thread(s)", dt, None))
    torch.set_num_threads(default_threads)

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    t_init = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    try:
        for w in [int(v) for v in args.workers.split(",")]:
            for phase in ("cold",) if args.no_warm else ("cold", "warm"):
                out = tmp / f"w{w}_{phase}"
                t0 = time.perf_counter()
                res = dist.evaluate_images_ray("efficientnet-lite0", images, out_dir=out, workers=w,
                                               keep_workers=True, **kw)
                dt = time.perf_counter() - t0
                rows.append((f"ray, {w} worker(s) x 1 CPU, {phase}", dt, None if ref is None else res.rows == ref))
            dist.shutdown_workers()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()

    print(f"{len(images)} images, block size {args.block_size}, methods {kw['methods']} (smoothgrad "
          f"{args.samples} samples), metrics {kw['metrics']} (step {args.step}); {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}; ray.init {t_init:.1f} s (not included below)\n")
    print("| configuration | wall s | images/s | rows == local 1-thread run |")
    print("|---|---|---|---|")
    for name, dt, same in rows:
        print(f"| {name} | {dt:.1f} | {len(images) / dt:.2f} | {'' if same is None else ('yes' if same else 'NO')} |")


if __name__ == "__main__":
    main()
