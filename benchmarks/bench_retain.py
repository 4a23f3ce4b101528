"""Retained memory on vs off: SmoothGrad-50 on the 2 sample photos, EfficientNet-Lite0, CPU.

    .venv/bin/python benchmarks/bench_retain.py [--processes 2] [--calls 3]

Each setting runs in fresh processes (glibc's state is per process and cannot be reset), the
settings alternating process by process (on, off, on, off, ...) so a drifting host slows both
alike. In each process: ``--calls`` explain calls at a fixed chunk of 4 in channels_last (so only
the allocator differs), timed one by one, and the resident set size after each call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(retain: bool, calls: int) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import harness
    import saliencekit as sk
    from bench_gradients import photos

    model = sk.load_model("efficientnet-lite0")
    x = photos(model)
    with torch.no_grad():
        target = model(x).argmax(1)
    sk.set_defaults(retain_memory=retain)
    times, rss = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        sk.explain(model, x, "smoothgrad", target=target, n_samples=50, batch_size=4, channels_last=True,
                   keep_inputs=False)
        times.append(time.perf_counter() - t0)
        rss.append(harness.rss() / 2**20)
    print(json.dumps({"retain": retain, "times": times, "rss_mib": rss}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2, help="processes per setting")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--child", choices=["on", "off"])
    a = ap.parse_args()
    if a.child:
        child(a.child == "on", a.calls)
        return
    runs = {True: [], False: []}
    for _ in range(a.processes):
        for retain in (True, False):
            out = subprocess.run([sys.executable, __file__, "--child", "on" if retain else "off", "--calls",
                                  str(a.calls)], capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[retain].append(r)
            print(json.dumps(r), file=sys.stderr)
    print(f"SmoothGrad-50, EfficientNet-Lite0, 2 photos, chunk 4 channels_last; {a.processes} fresh processes "
          f"per setting, alternating, {a.calls} calls each\n")
    print("| retain_memory | first call s (median) | later calls s (median) | RSS after the calls MiB (median) |")
    print("|---|---:|---:|---:|")
    for retain in (True, False):
        first = statistics.median(r["times"][0] for r in runs[retain])
        later = statistics.median(t for r in runs[retain] for t in r["times"][1:]) if a.calls > 1 else float("nan")
        rss = statistics.median(m for r in runs[retain] for m in r["rss_mib"])
        print(f"| {retain} | {first:.2f} | {later:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
