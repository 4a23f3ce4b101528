"""Does each CPU speed mechanism earn its place? Each one switched off, side by side with the defaults.

    .venv/bin/python benchmarks/bench_mechanisms.py [--repeats 3] [--n 50]

EfficientNet-Lite0, the 2 bundled photos (224x224), one process, cases interleaved (harness.py):

* gradients (SmoothGrad-n and IG-n): the defaults (``channels_last="auto"``: the call's first
  chunks time both memory layouts, the faster is kept) vs **no channels_last** (contiguous) vs
  the **same settings again** (the fixed chunk and layout the defaults chose: the run's noise);
* metrics (deletion, RISE protocol, 225 scoring rows per image): the defaults (``channels_last=
  "auto"``: the scoring loop probes both layouts on its first chunks) vs contiguous.

Retained memory (``core.allocator``) is measured in fresh processes by ``bench_retain.py``: glibc's
state cannot be reset inside one process. Each row reports best and median seconds and the
slowdown without the mechanism (``without / with``, from medians and from minima); a mechanism is
kept when switching it off costs at least 5 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_gradients import photos  # noqa: E402

import saliencekit as sk  # noqa: E402
from saliencekit.core import chunking  # noqa: E402
from saliencekit.metrics import deletion  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=50, help="noise samples / path steps per image")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device("cpu")
    model = sk.load_model("efficientnet-lite0")
    x = photos(model)
    with torch.no_grad():
        target = model(x).argmax(1)
    rows = x.shape[0] * a.n
    opts = {"smoothgrad": {"n_samples": a.n}, "integrated_gradients": {"n_steps": a.n}}

    # let the defaults calibrate once (cached for the process), then read what they chose
    for method, o in opts.items():
        sk.explain(model, x, method, target=target, keep_inputs=False, **o)
    key = chunking.cache_key(x, sk.get_defaults())
    chosen = chunking.cached_chunk(model, key) or chunking.safe_rows(x, rows)
    layout = bool(chunking.cached_layout(model, key))
    print(f"chunk {chosen}, channels_last chosen: {layout}; threads {torch.get_num_threads()}; {harness.machine()}")

    cases = []
    for method, o in opts.items():
        def run(method=method, o=o, **kw):
            return lambda: sk.explain(model, x, method, target=target, keep_inputs=False, **o, **kw)
        cases += [harness.Case(f"{method}: defaults", run(), rows, method, "sk"),
                  harness.Case(f"{method}: same settings fixed (chunk {chosen}, channels_last {layout})",
                               run(batch_size=chosen, channels_last=layout), rows, method, "sk"),
                  harness.Case(f"{method}: no channels_last (chunk {chosen})",
                               run(batch_size=chosen, channels_last=False), rows, method, "sk")]
    sal = torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))

    def metric(channels_last):
        def fn():
            old = sk.set_defaults(channels_last=channels_last)
            try:
                deletion(model, x, sal, target=target)
            finally:
                sk.set_defaults(old)
        return fn
    n_del = x.shape[0] * (224 * 224 // 224 + 1)
    cases += [harness.Case("deletion: defaults (layout probe)", metric("auto"), n_del, "deletion", "sk"),
              harness.Case("deletion: contiguous", metric(False), n_del, "deletion", "sk")]
    harness.run_interleaved(cases, a.repeats, dev, memory=False, log=print)

    print("\n| case | best s | median s | without / with (median) | (best) |\n|---|---|---|---|---|")
    base = {}
    for c in cases:
        if c.name.endswith("defaults") or c.name.endswith("(layout probe)"):
            base[c.group] = c
        ref = base[c.group]
        ratio = "" if c is ref else f"{c.median / ref.median:.3f} | {c.best / ref.best:.3f}"
        print(f"| {c.name} | {c.best:.3f} | {c.median:.3f} | {ratio or '– | –'} |")


if __name__ == "__main__":
    main()
