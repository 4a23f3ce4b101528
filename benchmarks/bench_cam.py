"""Throughput of saliencekit's Grad-CAM / Grad-CAM++ / Smooth Grad-CAM++ vs TorchCAM and pytorch-grad-cam,
side by side in one process.

    .venv/bin/python benchmarks/bench_cam.py [--images 2] [--samples 8] [--repeats 3] \
        [--models efficientnet-lite0,resnet50]

pytorch-grad-cam (``pip install --no-deps grad-cam opencv-python-headless ttach``) imports
torchvision when its package is imported, and torchvision from PyPI does not import with the CPU
torch build used here; the script then registers an empty stand-in ``torchvision`` module (only
``transforms`` / ``ops`` names, which GradCAM and GradCAMPlusPlus never call) so the CAM classes
can be timed, and says so in the table. Without grad-cam installed its rows are skipped.

Equal settings: the same model object, images, target classes (the predicted ones), layer and
number of noisy samples with the same absolute noise std (TorchCAM's ``std``; ours ``stdev``).
TorchCAM is used as documented: an extractor is built once (its hooks stay on the model), then
each timed call is ``model(x)`` followed by ``extractor(class_idx, scores)``; saliencekit's timed
call is one ``explain(...)`` (which also resolves the target, captures and removes its hooks).
Calls alternate between the two libraries and the median of ``--repeats`` is reported, so load
from other processes affects both alike. ResNet-50 is benchmarks/resnet50.py (torchvision-free,
seeded random weights). Writes a markdown table to docs/benchmarks_cam.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import saliencekit as sk  # noqa: E402
from resnet50 import resnet50  # noqa: E402

ROOT = HERE.parent


def build(name):
    if name == "efficientnet-lite0":
        return sk.load_model(name), "_swish"
    if name == "resnet50":
        return resnet50(), "layers"   # the output of the last bottleneck block
    raise SystemExit(f"unknown model {name!r}")


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def import_pytorch_grad_cam():
    """(module, note) or (None, reason)."""
    import importlib.util
    import types

    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None, "grad-cam not installed"
    note = ""
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        tv.__path__ = []
        tr = types.ModuleType("torchvision.transforms")
        tr.__path__ = []
        trf = types.ModuleType("torchvision.transforms.functional")
        ops = types.ModuleType("torchvision.ops")

        def unavailable(*a, **k):
            raise RuntimeError("torchvision stand-in: not available in this benchmark")
        for name in ("Compose", "Normalize", "ToTensor"):
            setattr(tr, name, unavailable)
        trf.resize = unavailable
        ops.box_iou = unavailable
        tv.transforms, tr.functional, tv.ops = tr, trf, ops
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                            "torchvision.transforms.functional": trf, "torchvision.ops": ops})
        note = "torchvision stand-in"
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pytorch_grad_cam.ClassifierOutputTarget = ClassifierOutputTarget
    return pytorch_grad_cam, note


def bench_case(model, x, cls, ours_name, opts, theirs, batch_size, repeats):
    """Median seconds of saliencekit (auto chunk), saliencekit (batch_size) and the other library, alternated."""

    def ours(bs=None):
        sk.explain(model, x, ours_name, target=cls, batch_size=bs, **opts)

    ours()  # warm-up (auto chunk calibration, layer lookup)
    ours(batch_size)
    theirs()
    t_auto, t_bs, t_tc = [], [], []
    for _ in range(repeats):
        t_auto.append(timed(ours))
        t_tc.append(timed(theirs))
        t_bs.append(timed(lambda: ours(batch_size)))
    return statistics.median(t_auto), statistics.median(t_bs), statistics.median(t_tc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="noisy samples for the smooth variants")
    ap.add_argument("--std", type=float, default=0.3, help="absolute noise std (TorchCAM's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16,
                    help="saliencekit rows per chunk for the second saliencekit column (the first is automatic)")
    ap.add_argument("--models", default="efficientnet-lite0,resnet50")
    ap.add_argument("--methods", default="gradcam,gradcampp,smoothgradcampp")
    ap.add_argument("--libraries", default="torchcam,pytorch-grad-cam")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_cam.md"))
    args = ap.parse_args(argv)
    from torchcam.methods import GradCAM, GradCAMpp, SmoothGradCAMpp

    libs = args.libraries.split(",")
    pgc, pgc_note = import_pytorch_grad_cam() if "pytorch-grad-cam" in libs else (None, "not requested")
    if "pytorch-grad-cam" in libs and pgc is None:
        print(f"pytorch-grad-cam skipped: {pgc_note}", flush=True)
    torch.manual_seed(0)
    rows = []
    for mname in args.models.split(","):
        model, layer = build(mname)
        model = model.to(args.device)
        pre = sk.get_preprocessing(model)
        samples = [a for _, a in sk.sample_images()]
        x = sk.load_images([samples[i % len(samples)] for i in range(args.images)], preprocessing=pre,
                           device=args.device)
        with torch.no_grad():
            cls = model(x).argmax(1).tolist()
        module = dict(model.named_modules())[layer]
        for ours_name in args.methods.split(","):
            opts = {"layer": layer}
            if ours_name == "smoothgradcampp":
                opts.update(n_samples=args.samples, stdev=args.std)
            others = []
            if "torchcam" in libs:
                tc_cls = {"gradcam": GradCAM, "gradcampp": GradCAMpp, "smoothgradcampp": SmoothGradCAMpp}[ours_name]
                kw = {"num_samples": args.samples, "std": args.std} if ours_name == "smoothgradcampp" else {}
                others.append(("torchcam", tc_cls.__name__, lambda c=tc_cls, kw=kw: c(model, target_layer=layer, **kw)))
            if pgc is not None and ours_name in ("gradcam", "gradcampp"):
                pg_cls = pgc.GradCAM if ours_name == "gradcam" else pgc.GradCAMPlusPlus
                others.append(("pytorch-grad-cam", pg_cls.__name__ + (f" ({pgc_note})" if pgc_note else ""),
                               lambda c=pg_cls: c(model=model, target_layers=[module])))
            for lib, other_name, make in others:
                extractor = make()
                if lib == "torchcam":
                    def theirs(e=extractor):
                        e(class_idx=cls, scores=model(x))
                        model.zero_grad(set_to_none=True)
                    close = extractor.remove_hooks
                else:
                    targets = [pgc.ClassifierOutputTarget(c) for c in cls]

                    def theirs(e=extractor, t=targets):
                        e(input_tensor=x, targets=t)
                        model.zero_grad(set_to_none=True)
                    close = extractor.activations_and_grads.release
                try:
                    mo, mb, mt = bench_case(model, x, cls, ours_name, opts, theirs, args.batch_size, args.repeats)
                finally:
                    close()
                n = args.images
                rows.append((mname, ours_name, f"{lib}: {other_name}", opts.get("n_samples", 1), n, n / mo, n / mb,
                             n / mt, mt / mo, mt / mb))
                print(f"{mname:18s} {ours_name:16s} ours(auto) {n / mo:7.3f} img/s  ours(bs={args.batch_size}) "
                      f"{n / mb:7.3f} img/s  {lib} {other_name:16s} {n / mt:7.3f} img/s  ratios {mt / mo:5.2f}x "
                      f"{mt / mb:5.2f}x", flush=True)

    cmd = "python benchmarks/bench_cam.py " + " ".join(sys.argv[1:] if argv is None else argv)
    bs = args.batch_size
    lines = [
        "# CAM throughput: saliencekit vs TorchCAM and pytorch-grad-cam",
        "",
        f"Command: `{cmd.strip()}` (one process, calls alternated, median of {args.repeats}).",
        (f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
         f"{args.images} images of 224x224, noise std {args.std} (absolute) for the smooth variants."),
        "",
        (f"| model | saliencekit | other library | samples | images | saliencekit img/s (auto chunk) | "
         f"saliencekit img/s (batch_size={bs}) | other img/s | speed-up (auto) | speed-up (batch_size={bs}) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, o, t, s, n, a, a2, b, r, r2 in rows:
        lines.append(f"| {m} | `{o}` | `{t}` | {s} | {n} | {a:.3f} | {a2:.3f} | {b:.3f} | {r:.2f}x | {r2:.2f}x |")
    lines += [
        "",
        "Speed-up = TorchCAM time / saliencekit time for the same images. The maps are not the same:",
        "saliencekit follows docs/cams.md (closed-form alpha with (sum A) g^3; Smooth Grad-CAM++",
        "from the means of g, g^2, g^3 over the samples); TorchCAM 0.5's GradCAMpp leaves alpha = g^2",
        "(its masked in-place division acts on a copy) and its SmoothGradCAMpp is its own variant.",
        "ResNet-50 has seeded random weights (torchvision-free, benchmarks/resnet50.py). saliencekit takes",
        "gradients only to the captured layer (`autograd.grad`: no weight gradients, no backward below",
        "the layer) and runs the noisy copies of all images in chunks of `batch_size` rows. Grad-CAM and",
        "Grad-CAM++ resolve the class in their single gradient pass, Smooth Grad-CAM++ in its clean",
        "activation pass (no separate forward). TorchCAM is timed as its docs use it (hooks installed once,",
        "then `model(x)` and the extractor); pytorch-grad-cam as its docs use it (`cam(input_tensor,",
        "targets)`, which also backpropagates to the weights and resizes with OpenCV).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
