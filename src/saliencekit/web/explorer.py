"""The explorer's logic, independent of any web framework.

Everything here works on bytes and plain Python values, so it is tested without a server:

- ``decode_image`` turns uploaded bytes into an RGB picture (or a clear ``InputError``): EXIF
  orientation applied, grayscale / palette / CMYK / 16-bit converted, transparency flattened on
  white, huge pictures downscaled, decompression bombs refused before decoding;
- ``Explorer`` holds the model, the uploaded images (in memory, keyed by random ids), checks a
  request's options against the ranges in ``PARAMS`` and runs the methods and metrics, rendering
  PNGs and a ``.pt`` of raw tensors in memory. Nothing is ever written to disk, and no name that
  comes from a request is used as a file-system path.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import math
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .. import data, visualize
from ..api import explain, list_methods
from ..models import class_names, get_preprocessing

# ---- limits (all overridable through Explorer / create_app) -----------------------------------

MAX_UPLOAD_BYTES = 10_000_000             # raw upload size (10 MB)
MAX_PIXELS = 50_000_000                 # refuse before decoding above this (decompression bombs)
MAX_SIDE = 1024                         # longer side above this is downscaled, with a note
MAX_IMAGES = 64                         # uploaded images kept in memory (oldest dropped)
MAX_METHODS_PER_RUN = 8
METRIC_STEPS_RANGE = (4, 224)
DEFAULT_METRIC_STEPS = 28

ID_RE = re.compile(r"^[0-9a-f]{32}$")


class InputError(ValueError):
    """Bad input from the page; the message is shown to the user as is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---- the main parameters shown on the page ----------------------------------------------------

@dataclass(frozen=True)
class Param:
    kind: str                     # "int" | "float" | "choice" | "layer"
    label: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: Tuple[str, ...] = ()
    help: str = ""

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"kind": self.kind, "label": self.label, "help": self.help}
        if self.lo is not None:
            d["min"], d["max"] = self.lo, self.hi
        if self.choices:
            d["choices"] = list(self.choices)
        return d


# Only these options are exposed; a method shows the ones among its registered defaults, so a new
# method with e.g. ``n_samples`` gets that field automatically. Everything else keeps its default.
PARAMS: Dict[str, Param] = {
    "n_samples": Param("int", "samples", 1, 500, help="noisy copies averaged"),
    "noise_level": Param("float", "noise level", 0.0, 1.0, help="noise sigma as a fraction of the image's range"),
    "noise_scale": Param("float", "noise sigma", 0.0, 5.0, help="absolute noise sigma in model space"),
    "n_steps": Param("int", "steps", 1, 300, help="points on the integration path"),
    "estimator": Param("choice", "estimator", choices=("mean", "square", "var"),
                       help="mean = SmoothGrad, square = SmoothGrad², var = VarGrad"),
    "layer": Param("layer", "layer", help="feature layer for the CAM (empty = automatic)"),
    "mask_size": Param("int", "mask size", 7, 224, help="I-GOS mask resolution (s x s)"),
    "iterations": Param("int", "iterations", 1, 100, help="I-GOS optimisation steps"),
}

# Options that exist for a method but only matter with another option the page does not expose
# (SmoothGrad's ``n_steps`` is for ``base="integrated_gradients"``).
HIDDEN_PARAMS: Dict[str, Tuple[str, ...]] = {"smoothgrad": ("n_steps",)}


def _short_doc(doc: str, limit: int = 170) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    return para if len(para) <= limit else para[: limit - 1].rsplit(" ", 1)[0] + " …"


# Rough number of forward/backward rows a method needs, used only to scale its progress bar.
_ROW_ESTIMATES: Dict[str, Callable[[Dict[str, Any]], float]] = {
    "smoothgrad": lambda o: o.get("n_samples", 50) * (o.get("n_steps", 20) if o.get("base") == "integrated_gradients"
                                                        else 1),
    "smoothtaylor": lambda o: o.get("n_samples", 150),
    "integrated_gradients": lambda o: o.get("n_steps", 50) * (o.get("baseline_draws", 1)
                                                              if o.get("baseline") == "uniform" else 1),
    "smoothgradcampp": lambda o: o.get("n_samples", 25),
    "igos": lambda o: o.get("iterations", 15) * o.get("ig_steps", 20),
}


def _estimate_rows(method: str, opts: Dict[str, Any]) -> Optional[float]:
    f = _ROW_ESTIMATES.get(method)
    if f is None:
        if any(k in opts for k in ("n_samples", "n_steps")):
            return float(opts.get("n_samples", 1) or 1) * float(opts.get("n_steps", 1) or 1)
        return None
    try:
        return max(1.0, float(f(opts)))
    except (TypeError, ValueError):
        return None


# ---- images -------------------------------------------------------------------------------------

def decode_image(raw: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
                 ) -> Tuple[Image.Image, List[str]]:
    """Uploaded bytes -> (RGB image, notes for the user). Raises ``InputError`` with a readable message."""
    if not raw:
        raise InputError("The upload is empty: choose an image file (JPEG, PNG, WebP, BMP, GIF or TIFF).")
    notes: List[str] = []
    try:
        im = Image.open(io.BytesIO(raw))
        fmt = im.format or "image"
        w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise InputError("This file is not an image that can be read (expected JPEG, PNG, WebP, BMP, GIF or "
                         "TIFF).") from None
    if w < 1 or h < 1:
        raise InputError("The image has no pixels.")
    if w * h > max_pixels:
        raise InputError(f"The image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels. Please downscale it first.", status=413)
    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"The {fmt} has {im.n_frames} frames; the first one is used.")
        if fmt == "JPEG" and max(w, h) > max_side:
            im.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast and small
        im.load()
        im = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        raise InputError(f"The file looks like a {fmt} but could not be decoded (truncated or corrupt?).") from None
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
        notes.append(f"The {mode} image has transparency: it was flattened onto white and converted to RGB.")
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 0 else 1.0
        im = Image.fromarray((a / hi * 255).round().astype(np.uint8)).convert("RGB")
        notes.append(f"The {mode} (high bit depth) grayscale image was rescaled to 8 bits and converted to RGB.")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        im = Image.fromarray((a * 255).round().astype(np.uint8)).convert("RGB")
        notes.append("The floating-point image was rescaled to 8 bits and converted to RGB.")
    elif mode != "RGB":
        kind = {"L": "grayscale", "1": "black-and-white", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr",
                "LAB": "Lab", "HSV": "HSV"}.get(mode, mode)
        im = im.convert("RGB")
        notes.append(f"The {kind} image was converted to RGB.")
    if max(im.size) > max_side:
        before = (w, h)
        im.thumbnail((max_side, max_side), Image.LANCZOS)
        notes.append(f"The image is large ({before[0]}x{before[1]}): it was downscaled to "
                     f"{im.size[0]}x{im.size[1]} before processing.")
    return im, notes


@dataclass
class StoredImage:
    x: torch.Tensor                 # 1 x 3 x S x S, model space, on the model's device
    pixels: np.ndarray              # S x S x 3 in [0, 1] (what the model sees)
    preview_png: bytes
    top5: List[Dict[str, Any]]
    notes: List[str]
    name: str
    crop: str = ""


def png_bytes(array: np.ndarray) -> bytes:
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def colormap_stops(cmap: str, n: int = 11) -> List[str]:
    rgb = visualize.colorize(np.linspace(0, 1, n)[None, :], cmap)[0]
    return ["#%02x%02x%02x" % tuple(int(c) for c in px) for px in rgb]


# ---- metrics adapter ----------------------------------------------------------------------------

def load_metrics():
    """``(deletion, insertion)`` from ``saliencekit.metrics`` when that module is importable, else None."""
    try:
        m = importlib.import_module("saliencekit.metrics")
    except ImportError:
        return None
    dele, ins = getattr(m, "deletion", None), getattr(m, "insertion", None)
    if not callable(dele) or not callable(ins):
        return None
    return dele, ins


def _curve_result(fn, model, x, sal, target: int, step: int) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"target": target, "step": step}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "return_curves" in params:
        kwargs["return_curves"] = True
    res = fn(model, x, sal, **kwargs)
    get = (lambda k: res.get(k)) if isinstance(res, dict) else (lambda k: getattr(res, k, None))
    auc = res if isinstance(res, torch.Tensor) else get("auc")
    out: Dict[str, Any] = {"auc": float(torch.as_tensor(auc).reshape(-1)[0])}
    curves = None if isinstance(res, torch.Tensor) else get("curves")
    if curves is not None:
        y = torch.as_tensor(curves).float()
        y = y[0] if y.dim() == 2 else y.reshape(-1)
        fr = get("fractions")
        fr = torch.linspace(0, 1, y.numel()) if fr is None else torch.as_tensor(fr).reshape(-1)
        out["curve"] = [round(float(v), 5) for v in y.tolist()]
        out["fractions"] = [round(float(v), 5) for v in fr.tolist()]
    return out


# ---- the explorer -------------------------------------------------------------------------------

@dataclass
class Request:
    image_id: str
    target: int
    methods: List[Tuple[str, Dict[str, Any]]]
    metrics: bool
    metric_steps: int


@dataclass
class Result:
    """One finished run: JSON for the page plus the downloadable files, all in memory."""

    payload: Dict[str, Any]
    files: Dict[str, Tuple[bytes, str]] = field(default_factory=dict)   # name -> (bytes, media type)


def _has_parameters(m: torch.nn.Module) -> bool:
    """Layers worth offering for a CAM: with weights (convs, norms, blocks), not activations or padding."""
    return next(m.parameters(), None) is not None


class Explorer:
    """The model, the uploaded images and the code that answers the page's requests."""

    def __init__(self, model: torch.nn.Module, model_name: str = "model", *,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 max_images: int = MAX_IMAGES, samples: Optional[List[Tuple[str, np.ndarray]]] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model.eval()
        self.model_name = model_name
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.spec = get_preprocessing(model)
        self.names = class_names(model)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)
        self.max_images = int(max_images)
        # Predictions for uploads run on a private copy, so they never see the hooks a CAM places
        # on the explained model while a job runs in the worker thread.
        self._predictor = copy.deepcopy(model).eval()
        self._predict_lock = threading.Lock()
        self._images: "OrderedDict[str, StoredImage]" = OrderedDict()
        self._images_lock = threading.Lock()
        self.samples = OrderedDict((n, a) for n, a in (samples if samples is not None else data.sample_images()))
        self.layers, self.n_classes = self._model_facts()
        self.metrics_fns = load_metrics()

    # -- model facts --
    def _model_facts(self, max_depth: int = 2) -> Tuple[List[str], int]:
        """One forward of a blank image: the layers offered for CAMs (named modules up to ``max_depth``
        dots, with parameters, whose output is a B x C x H x W map with H, W > 1) and the class count."""
        found: List[str] = []
        handles = []
        s = self.spec.size or 224
        mods = [(n, m) for n, m in self._predictor.named_modules() if n and n.count(".") < max_depth
                and _has_parameters(m)]

        def hook_for(name):
            def hook(_m, _i, out):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] > 1 and out.shape[3] > 1:
                    found.append(name)
            return hook
        try:
            for n, m in mods:
                handles.append(m.register_forward_hook(hook_for(n)))
            with self._predict_lock, torch.no_grad():
                out = self._predictor(torch.zeros(1, 3, s, s, device=self.device))
        finally:
            for h in handles:
                h.remove()
        seen = set()
        return [n for n in found if not (n in seen or seen.add(n))], int(out.shape[1])

    def class_name(self, c: int) -> str:
        if self.names is not None and 0 <= c < len(self.names):
            return self.names[c]
        return f"class {c}"

    def info(self) -> Dict[str, Any]:
        methods = {}
        for name, meta in list_methods(details=True).items():
            params = {}
            for k, default in meta["defaults"].items():
                if k in PARAMS and k not in HIDDEN_PARAMS.get(name, ()):
                    d = PARAMS[k].describe()
                    d["default"] = default
                    if PARAMS[k].kind == "layer":
                        d["choices"] = self.layers
                    params[k] = d
            doc = _short_doc(meta["doc"])
            methods[name] = {"params": params, "doc": doc, "signed": meta["heatmap"].get("sign") == "signed",
                             "stochastic": meta["stochastic"]}
        return {
            "model": self.model_name, "device": str(self.device), "n_classes": self.n_classes,
            "input_size": self.spec.size,
            "samples": list(self.samples), "methods": methods,
            "default_methods": [m for m in ("smoothgrad", "gradcam") if m in methods] or list(methods)[:1],
            "metrics": self.metrics_fns is not None,
            "metric_steps": {"default": DEFAULT_METRIC_STEPS, "min": METRIC_STEPS_RANGE[0],
                             "max": METRIC_STEPS_RANGE[1]},
            "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                       "max_side": self.max_side, "max_methods": MAX_METHODS_PER_RUN},
            "colormaps": {"jet": colormap_stops("jet"), "bwr": colormap_stops("bwr")},
        }

    # -- images --
    def add_upload(self, raw: bytes, name: str = "upload") -> Tuple[str, StoredImage]:
        if len(raw) > self.max_upload_bytes:
            raise InputError(f"The file is {len(raw) / 1e6:.1f} MB; uploads are limited to "
                             f"{self.max_upload_bytes / 1e6:.1f} MB.", status=413)
        im, notes = decode_image(raw, max_pixels=self.max_pixels, max_side=self.max_side)
        return self._store(im, notes, name)

    def add_sample(self, name: str) -> Tuple[str, StoredImage]:
        if not isinstance(name, str) or name not in self.samples:
            raise InputError(f"Unknown sample {str(name)[:40]!r}; choose one of: {', '.join(self.samples)}.")
        im = data.to_pil(self.samples[name])
        return self._store(im, [], name)

    def _store(self, im: Image.Image, notes: List[str], name: str) -> Tuple[str, StoredImage]:
        s, r = self.spec.size or 224, self.spec.resize or None
        w, h = im.size
        crop = f"The model sees the centre {s}x{s} crop of the {w}x{h} image (short side resized to {r or s})."
        pix01 = data.pil_to_tensor01(data.resize_crop(im, r, s))[None]
        x = self.spec.normalize(pix01).to(self.device)
        with self._predict_lock, torch.no_grad():
            probs = torch.softmax(self._predictor(x).float(), dim=1)[0].cpu()
        k = min(5, probs.numel())
        top = probs.topk(k)
        top5 = [{"index": int(c), "name": self.class_name(int(c)), "probability": round(float(p), 5)}
                for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=False)]
        pixels = pix01[0].permute(1, 2, 0).numpy()
        stored = StoredImage(x=x, pixels=pixels, preview_png=png_bytes(pixels), top5=top5, notes=notes, name=name,
                             crop=crop)
        image_id = secrets.token_hex(16)
        with self._images_lock:
            self._images[image_id] = stored
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)
        return image_id, stored

    def get_image(self, image_id: Any) -> StoredImage:
        if not isinstance(image_id, str) or not ID_RE.match(image_id):
            raise InputError("Unknown image: upload a photo or pick a sample first.", status=404)
        with self._images_lock:
            im = self._images.get(image_id)
        if im is None:
            raise InputError("This image is no longer in memory (the server keeps the most recent ones): "
                             "upload it again.", status=404)
        return im

    def image_ids(self) -> List[str]:
        with self._images_lock:
            return list(self._images)

    # -- requests --
    def parse_request(self, body: Any) -> Request:
        """Validate the page's JSON; every problem becomes an ``InputError`` naming the field."""
        if not isinstance(body, dict):
            raise InputError("Expected a JSON object.")
        self.get_image(body.get("image_id"))
        target = body.get("target", "predicted")
        if target in (None, "", "predicted"):
            stored = self.get_image(body["image_id"])
            target = stored.top5[0]["index"]
        else:
            if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):
                target = int(target)
            if isinstance(target, bool) or not isinstance(target, int):
                raise InputError(f"class: expected 'predicted' or a class index, got {str(target)[:40]!r}.")
            if not 0 <= target < self.n_classes:
                raise InputError(f"class: {target} is out of range; this model has classes 0 to {self.n_classes - 1}.")
        raw_methods = body.get("methods")
        if not isinstance(raw_methods, list) or not raw_methods:
            raise InputError("methods: choose at least one method.")
        if len(raw_methods) > MAX_METHODS_PER_RUN:
            raise InputError(f"methods: at most {MAX_METHODS_PER_RUN} methods per run.")
        registry = list_methods(details=True)
        methods: List[Tuple[str, Dict[str, Any]]] = []
        for item in raw_methods:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError("methods: each entry needs a method name.")
            name = item["name"]
            if name not in registry:
                raise InputError(f"methods: unknown method {name[:40]!r}; available: {', '.join(registry)}.")
            if name in (m for m, _ in methods):
                raise InputError(f"methods: {name} is listed twice.")
            opts_in = item.get("options") or {}
            if not isinstance(opts_in, dict):
                raise InputError(f"{name}: options must be an object.")
            defaults = registry[name]["defaults"]
            opts: Dict[str, Any] = {}
            for k, v in opts_in.items():
                if k not in PARAMS or k not in defaults or k in HIDDEN_PARAMS.get(name, ()):
                    raise InputError(f"{name}: option {str(k)[:40]!r} cannot be set from the page.")
                val = self._check_param(name, k, v)
                if val is not None:  # an empty layer means "automatic": the method's default
                    opts[k] = val
            methods.append((name, opts))
        want_metrics = bool(body.get("metrics", False)) and self.metrics_fns is not None
        steps = body.get("metric_steps", DEFAULT_METRIC_STEPS)
        lo, hi = METRIC_STEPS_RANGE
        if isinstance(steps, bool) or not isinstance(steps, int) or not lo <= steps <= hi:
            raise InputError(f"curve steps: expected an integer from {lo} to {hi}, got {str(steps)[:20]!r}.")
        return Request(image_id=body["image_id"], target=int(target), methods=methods, metrics=want_metrics,
                       metric_steps=steps)

    def _check_param(self, method: str, key: str, v: Any):
        p = PARAMS[key]
        where = f"{method}: {p.label}"
        if p.kind in ("int", "float"):
            if isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise InputError(f"{where}: expected a number, got {v[:20]!r}.") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{where}: expected a number, got {str(v)[:20]!r}.")
            if p.kind == "int":
                if float(v) != int(v):
                    raise InputError(f"{where}: expected a whole number, got {v}.")
                v = int(v)
            if not p.lo <= v <= p.hi:
                lo, hi = (int(p.lo), int(p.hi)) if p.kind == "int" else (p.lo, p.hi)
                raise InputError(f"{where}: {v} is out of range; allowed {lo} to {hi}.")
            return float(v) if p.kind == "float" else v
        if p.kind == "choice":
            if v not in p.choices:
                raise InputError(f"{where}: expected one of {', '.join(p.choices)}, got {str(v)[:20]!r}.")
            return v
        if p.kind == "layer":
            if v in (None, "", "auto"):
                return None
            if not isinstance(v, str) or v not in self.layers:
                raise InputError(f"{where}: unknown layer {str(v)[:60]!r}; choose one of the listed layers "
                                 f"(e.g. {', '.join(self.layers[-3:])}).")
            return v
        raise InputError(f"{where}: cannot be set")  # pragma: no cover

    def run(self, req: Request, progress: Optional[Callable[[float, str], None]] = None) -> Result:
        """Run the request's methods (and metrics) on the stored image; everything stays in memory."""
        stored = self.get_image(req.image_id)
        x = stored.x
        result = Result(payload={})
        out_methods: List[Dict[str, Any]] = []
        raw: Dict[str, Dict[str, Any]] = {}
        n = len(req.methods)
        stages = n * (2 if req.metrics else 1)

        def report(done_stages: float, label: str):
            if progress is not None:
                progress(min(1.0, done_stages / stages), label)

        for idx, (name, opts) in enumerate(req.methods):
            full = dict(list_methods(details=True)[name]["defaults"])
            full.update(opts)
            expected = _estimate_rows(name, full)
            rows = [0]

            def on_rows(k, _idx=idx, _name=name, _exp=expected, _rows=rows):
                _rows[0] += k
                frac = min(0.99, _rows[0] / _exp) if _exp else 0.5
                report(_idx + frac, _name)

            report(idx, name)
            try:
                e = explain(self.model, x, name, target=req.target, seed=0, progress=on_rows, **opts)
            except (ValueError, TypeError) as err:
                raise InputError(f"{name}: {err}") from None
            heat = e.heatmap()
            if heat.shape[-2:] != x.shape[-2:]:
                heat = F.interpolate(heat[:, None].float(), size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)[:, 0]
            heat_np = heat[0].detach().cpu().numpy()
            signed = e.signed
            main_img = (visualize.colorize(heat_np, "bwr") if signed
                        else visualize.overlay(stored.pixels, heat_np, "jet", 0.5))
            entry: Dict[str, Any] = {
                "name": name, "signed": signed, "target": int(e.targets[0]),
                "target_name": self.class_name(int(e.targets[0])),
                "score": round(float(e.scores[0]), 5), "time_s": round(e.time_s, 3),
                "params": {k: v for k, v in e.summary()["params"].items()},
                "png": f"{name}.png", "colormap": "bwr" if signed else "jet",
            }
            result.files[f"{name}.png"] = (png_bytes(main_img), "image/png")
            attr = e.attributions.detach()
            has_both_signs = bool((attr < 0).any() and (attr > 0).any())
            if not signed and has_both_signs:
                sh = e.heatmap(sign="signed", channels="sum")
                if sh.shape[-2:] != x.shape[-2:]:
                    sh = F.interpolate(sh[:, None].float(), size=x.shape[-2:], mode="bilinear",
                                       align_corners=False)[:, 0]
                result.files[f"{name}_signed.png"] = (png_bytes(visualize.colorize(sh[0].cpu().numpy(), "bwr")),
                                                      "image/png")
                entry["signed_png"] = f"{name}_signed.png"
            raw[name] = {"attributions": attr.cpu(), "heatmap": heat.detach().cpu(), "target": e.targets.cpu(),
                         "score": e.scores.detach().cpu(), "params": entry["params"], "seed": e.seed}
            out_methods.append(entry)
            entry["_heat"] = heat
            report(idx + 1, name)

        if req.metrics and self.metrics_fns is not None:
            dele, ins = self.metrics_fns
            hw = x.shape[-2] * x.shape[-1]
            step = max(1, math.ceil(hw / req.metric_steps))
            for idx, entry in enumerate(out_methods):
                report(n + idx, f"deletion / insertion: {entry['name']}")
                sal = entry["_heat"].to(x.device)
                try:
                    entry["deletion"] = _curve_result(dele, self.model, x, sal, req.target, step)
                    entry["insertion"] = _curve_result(ins, self.model, x, sal, req.target, step)
                except (ValueError, TypeError) as err:
                    entry["metrics_error"] = str(err)
                raw[entry["name"]]["deletion_auc"] = entry.get("deletion", {}).get("auc")
                raw[entry["name"]]["insertion_auc"] = entry.get("insertion", {}).get("auc")
            result.payload["metric_step"] = step
        for entry in out_methods:
            entry.pop("_heat", None)
        buf = io.BytesIO()
        torch.save({"model": self.model_name, "image": stored.name, "input": x.detach().cpu(), "target": req.target,
                    "methods": raw}, buf)
        result.files["saliency.pt"] = (buf.getvalue(), "application/octet-stream")
        result.payload.update({"target": req.target, "target_name": self.class_name(req.target),
                               "methods": out_methods, "metrics": bool(req.metrics and self.metrics_fns),
                               "tensors": "saliency.pt"})
        report(stages, "done")
        return result
