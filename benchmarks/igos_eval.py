"""I-GOS evaluation on the ImageNet sample: compute maps (saved to disk), then deletion / insertion.

Phase 1 (expensive, resumable): ``maps`` computes I-GOS maps for images [start, stop) in groups
and saves each group to ``--out`` (``igos{size}_{first}_{last}.pt``); already-present groups are
skipped. Phase 2 (cheap): ``metrics`` loads the maps and scores them with
``saliencekit.metrics.deletion`` / ``insertion`` (RISE protocol: softmax of the predicted class,
224 pixels per step, zero substrate for deletion, 11x11 sigma=5 blur start for insertion).

    python benchmarks/igos_eval.py maps --n 32 --mask-size 28 --out /tmp/igos_maps
    python benchmarks/igos_eval.py metrics --n 32 --mask-size 28 --out /tmp/igos_maps
    python benchmarks/igos_eval.py compare --n 50 --methods gradient,integrated_gradients,smoothgrad,gradcam \
        --igos-sizes 28,14 --protocols rise,igos --out /tmp/igos_maps

``compare`` scores other methods' default heatmaps (computed here, seed 0) next to the I-GOS maps
already saved by ``maps`` (for each size in ``--igos-sizes``; only the contiguous images present).
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


def load(n: int, model):
    files = data.list_images(SAMPLE)[:n]
    return files, sk.load_images(files, preprocessing=sk.get_preprocessing(model))


def group_path(out: Path, size, a: int, b: int, tag: str = "") -> Path:
    return out / f"igos{size}{tag}_{a:03d}_{b:03d}.pt"


def compute_maps(args):
    torch.set_num_threads(args.threads)
    model = sk.load_model("efficientnet-lite0")
    _, x = load(args.n, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = json.loads(args.options) if args.options else {}
    for a in range(args.start, args.n, args.group):
        b = min(args.n, a + args.group)
        p = group_path(out, args.mask_size, a, b, args.tag)
        if p.exists():
            continue
        t0 = time.perf_counter()
        e = sk.explain(model, x[a:b], "igos", mask_size=args.mask_size, batch_size=args.batch_size, seed=0,
                       image_ids=list(range(a, b)), **opts)
        dt = time.perf_counter() - t0
        torch.save({"heatmap": e.heatmap(), "mask": e.extras["mask"], "objective": e.extras["objective"],
                    "targets": e.targets, "time_s": dt, "images": (a, b), "options": opts}, p)
        print(f"images {a}..{b - 1}: {dt:.1f} s ({dt / (b - a):.1f} s/image)", flush=True)


def gather(out: Path, n: int, size, tag: str = ""):
    """Maps of images 0.. (contiguous groups present in ``out``, at most ``n``)."""
    parts = {}
    for f in sorted(out.glob(f"igos{size}{tag}_*.pt")):
        d = torch.load(f)
        parts[d["images"][0]] = d
    heat, tgt, times, a = [], [], 0.0, 0
    while a < n and a in parts:
        d = parts[a]
        heat.append(d["heatmap"])
        tgt.append(d["targets"])
        times += d["time_s"]
        a = d["images"][1]
    if not heat:
        raise SystemExit(f"no maps starting at image 0 in {out}")
    return torch.cat(heat)[:n], torch.cat(tgt)[:n], times


def metrics(args):
    from saliencekit import metrics as M

    torch.set_num_threads(args.threads)
    if args.channels_last:
        sk.set_defaults(channels_last=True)
    model = sk.load_model("efficientnet-lite0")
    heat, tgt, t = gather(Path(args.out), args.n, args.mask_size, args.tag)
    n = heat.shape[0]
    _, x = load(n, model)
    res = {}
    for proto in args.protocols.split(","):
        dele = _auc(M.deletion(model, x, heat, target=tgt, step=224, protocol=proto))
        ins = _auc(M.insertion(model, x, heat, target=tgt, step=224, protocol=proto))
        res[proto] = {"deletion": round(float(dele.mean()), 4), "insertion": round(float(ins.mean()), 4),
                      "deletion_per_image": [round(v, 4) for v in dele.tolist()],
                      "insertion_per_image": [round(v, 4) for v in ins.tolist()]}
    print(json.dumps({"n": n, "mask_size": args.mask_size, "tag": args.tag,
                      "igos_time_s_per_image": round(t / n, 1), **res}))


def _auc(r):
    return r.auc if hasattr(r, "auc") else r  # deletion / insertion return the AUC tensor (or a CurveResult)


def score(model, x, heat, tgt, protocols, igos_step=224):
    from saliencekit import metrics as M

    out = {}
    for proto in protocols:
        step = igos_step if proto == "igos" else 224
        dele = _auc(M.deletion(model, x, heat, target=tgt, step=step, protocol=proto))
        ins = _auc(M.insertion(model, x, heat, target=tgt, step=step, protocol=proto))
        out[proto] = {"deletion": round(float(dele.mean()), 4), "insertion": round(float(ins.mean()), 4),
                      "deletion_per_image": [round(v, 5) for v in dele.tolist()],
                      "insertion_per_image": [round(v, 5) for v in ins.tolist()]}
    return out


def _emit(args, row):
    """Print the means; append the full row (with per-image AUCs) to ``--save`` when given."""
    short = {k: ({kk: vv for kk, vv in v.items() if not kk.endswith("_per_image")} if isinstance(v, dict) else v)
             for k, v in row.items()}
    print(json.dumps(short), flush=True)
    if args.save:
        with open(args.save, "a") as f:
            f.write(json.dumps(row) + "\n")


def compare(args):
    torch.set_num_threads(args.threads)
    if args.channels_last:
        sk.set_defaults(channels_last=True)
    model = sk.load_model("efficientnet-lite0")
    _, x = load(args.n, model)
    protocols = args.protocols.split(",")
    for size in [s for s in args.igos_sizes.split(",") if s]:
        heat, tgt, _ = gather(Path(args.out), args.n, int(size), args.tag)
        n = heat.shape[0]
        _emit(args, {"method": f"igos{size}", "n": n, **score(model, x[:n], heat, tgt, protocols, args.igos_step)})
    for name in [m for m in args.methods.split(",") if m]:
        if name not in sk.list_methods():
            print(json.dumps({"method": name, "skipped": "not registered"}), flush=True)
            continue
        heats, tgts = [], []
        for a in range(0, args.n, args.group):
            e = sk.explain(model, x[a:a + args.group], name, seed=0, image_ids=list(range(a, min(args.n, a + args.group))))
            heats.append(e.heatmap())
            tgts.append(e.targets)
        heat, tgt = torch.cat(heats), torch.cat(tgts)
        _emit(args, {"method": name, "n": args.n, **score(model, x, heat, tgt, protocols, args.igos_step)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["maps", "metrics", "compare"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--mask-size", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--options", default="", help="extra igos options as JSON")
    ap.add_argument("--tag", default="")
    ap.add_argument("--channels-last", action="store_true",
                    help="metrics / compare: maps and metrics in channels_last layout (faster on CPU)")
    ap.add_argument("--igos-step", type=int, default=224,
                    help="compare: input pixels per step of the I-GOS protocol (rounded to whole mask cells; "
                         "RISE always moves 224 pixels per step)")
    ap.add_argument("--save", default="", help="compare: append rows with per-image AUCs to this JSON-lines file")
    ap.add_argument("--out", default="/tmp/igos_maps")
    ap.add_argument("--protocols", default="rise")
    ap.add_argument("--methods", default="gradient,integrated_gradients,smoothgrad,gradcam")
    ap.add_argument("--igos-sizes", default="28")
    args = ap.parse_args()
    {"maps": compute_maps, "metrics": metrics, "compare": compare}[args.phase](args)


if __name__ == "__main__":
    main()
