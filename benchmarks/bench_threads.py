"""``saliencekit explain -m smoothgrad`` with another process keeping one core busy: the default
``--threads`` against explicit thread counts (docs/benchmarks.md, "Threads").

A Python spin loop pinned to core 0 stands for the other process. Each setting runs the real
command in a fresh process (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` removed, so the default is
saliencekit's own choice) on the two bundled photos; the time is SmoothGrad's own (``time_s`` in
``summary.json``), best of ``--repeats``, settings interleaved round by round. The goal: the
default within 1.5x of the best explicit count.

    python benchmarks/bench_threads.py                       # n_samples 20, threads 1 and 2, 1 round
    python benchmarks/bench_threads.py --repeats 3 --out /tmp/threads.md
    python benchmarks/bench_threads.py --no-busy             # the same without the busy process
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def run_explain(threads, n_samples: int, out: Path):
    """(smoothgrad seconds, process seconds, threads chosen) of one ``saliencekit explain`` run."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "saliencekit.cli", "explain", "-m", "smoothgrad", "-o", f"n_samples={n_samples}",
           "--out", str(out)] + ([] if threads is None else ["--threads", str(threads)])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    chosen = re.search(r"^torch threads: (\d+) \((.*)\)\s*$", done.stderr, re.M)
    summary = json.loads((out / "summary.json").read_text())
    return summary["methods"]["smoothgrad"]["time_s"], wall, (int(chosen.group(1)), chosen.group(2)) if chosen else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-samples", type=int, default=20)
    ap.add_argument("--threads", default="1,2", help="explicit thread counts to compare (comma-separated)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds; each setting runs once per round")
    ap.add_argument("--no-busy", action="store_true", help="without the busy process on core 0")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    explicit = [int(t) for t in args.threads.split(",") if t.strip()]
    settings = [None] + explicit
    spinner = None if args.no_busy else subprocess.Popen([sys.executable, "-c", SPIN])
    results = {s: [] for s in settings}
    chosen = {}
    try:
        time.sleep(1.0)          # the spinner is running before the first command starts
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for s in settings:
                    sg, wall, pick = run_explain(s, args.n_samples, Path(tmp) / f"out_{r}_{s}")
                    results[s].append((sg, wall))
                    if s is None:
                        chosen.setdefault("picks", []).append(pick)
                    print(f"round {r + 1}: threads {'default' if s is None else s}: smoothgrad {sg:.2f} s, "
                          f"process {wall:.1f} s" + (f", chose {pick[0]} ({pick[1]})" if s is None and pick else ""),
                          file=sys.stderr)
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.wait()
    best = {s: min(v[0] for v in results[s]) for s in settings}
    best_explicit = min(best[s] for s in explicit)
    load = os.getloadavg()
    picks = ", ".join(f"{p[0]}" for p in chosen.get("picks", []) if p)
    lines = [f"SmoothGrad (n_samples {args.n_samples}) on the 2 bundled photos, EfficientNet-Lite0, "
             f"{'a spin loop pinned to core 0' if spinner else 'no busy process'}; {os.cpu_count()} CPUs, best of "
             f"{args.repeats}, load average at the end {load[0]:.2f}", "",
             "| --threads | threads used | smoothgrad s (best) | process s (best) | vs best explicit |",
             "|---|---:|---:|---:|---:|"]
    for s in settings:
        used = picks if s is None else str(s)
        lines.append(f"| {'default' if s is None else s} | {used} | {best[s]:.2f} | "
                     f"{min(v[1] for v in results[s]):.1f} | {best[s] / best_explicit:.2f}x |")
    ratio = best[None] / best_explicit
    lines += ["", f"default / best explicit: {ratio:.2f}x (goal <= 1.5x: {'met' if ratio <= 1.5 else 'not met'})"]
    if chosen.get("picks") and chosen["picks"][0]:
        lines.append(f"the default's reason: {chosen['picks'][0][1]}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
