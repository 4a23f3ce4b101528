"""Integrated Gradients completeness error ("delta") on skimage's chelsea with EfficientNet-Lite0.

delta = sum(attributions) - (f(x) - f(baseline)) for the predicted class (logit), black baseline,
at 50 and 300 steps for each integration rule. Run:

    .venv/bin/python benchmarks/ig_delta_chelsea.py [--rules riemann_right gausslegendre] [--steps 50 300]

Prints one line per (rule, steps) and, at the end, a JSON list of the results.
"""

from __future__ import annotations

import argparse
import json
import time

import skimage.data
import torch

import saliencekit as sk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", nargs="+", default=["riemann_right", "gausslegendre"])
    ap.add_argument("--steps", nargs="+", type=int, default=[50, 300])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = sk.load_model("efficientnet-lite0", device=args.device)
    x = sk.load_images(skimage.data.chelsea(), device=args.device)
    results = []
    for rule in args.rules:
        for n in args.steps:
            t0 = time.perf_counter()
            e = sk.explain(model, x, "integrated_gradients", n_steps=n, rule=rule, batch_size=args.batch_size)
            dt = time.perf_counter() - t0
            fx = float(e.scores[0])
            d = float(e.delta[0])
            row = {"rule": rule, "n_steps": n, "delta": d, "f_x": fx, "target": int(e.targets[0]),
                   "class": e.target_names()[0], "relative": d / abs(fx), "seconds": round(dt, 2),
                   "device": args.device, "torch": torch.__version__}
            results.append(row)
            print(f"{rule:18s} n_steps={n:4d} delta={d:+.5f} (f(x)={fx:.3f}, {e.target_names()[0]}) {dt:.1f}s",
                  flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
