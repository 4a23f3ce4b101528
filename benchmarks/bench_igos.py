"""I-GOS time per image: all images optimised together (batched) vs one image at a time.

    python benchmarks/bench_igos.py --n 8 --iterations 15 --ig-steps 20 --batch-size 20

Prints one JSON line per mode. Both modes run the same computation (same seed, the same maps up
to the model's batch-size rounding); only the batching differs. On CPU, time grows linearly
with iterations x ig_steps, so reduced settings (--iterations / --ig-steps) give the same ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import saliencekit as sk
from saliencekit import data

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--mask-size", type=int, default=28)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--ig-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None, help="engine chunk (rows per forward/backward)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="batched,single")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = sk.load_model("efficientnet-lite0", device=args.device)
    if SAMPLE.is_dir():
        files = data.list_images(SAMPLE)[:args.n]
        x = sk.load_images(files, preprocessing=sk.get_preprocessing(model), device=args.device)
    else:
        x = torch.cat([sk.load_images(a, preprocessing=sk.get_preprocessing(model), device=args.device)
                       for _, a in sk.sample_images()])[:args.n]
    opts = {"mask_size": args.mask_size, "iterations": args.iterations, "ig_steps": args.ig_steps}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for mode in args.modes.split(","):
        sync()
        t0 = time.perf_counter()
        if mode == "batched":
            sk.explain(model, x, "igos", batch_size=args.batch_size, **opts)
        else:
            for i in range(x.shape[0]):
                sk.explain(model, x[i:i + 1], "igos", batch_size=args.batch_size, **opts)
        sync()
        dt = time.perf_counter() - t0
        print(json.dumps({"mode": mode, "n": x.shape[0], "device": args.device, "threads": args.threads,
                          "batch_size": args.batch_size, **opts, "s_per_image": round(dt / x.shape[0], 3)}),
              flush=True)


if __name__ == "__main__":
    main()
