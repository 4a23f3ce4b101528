"""The explorer's logic, independent of any web framework: works on bytes and plain Python values.

``Explorer`` holds the model and its facts (classes, the layers offered for CAMs), prepares and
predicts uploaded images, checks a page's request and runs it: maps from ``explain``, curves from
the metric registry, PNGs and a ``.pt`` of raw tensors rendered in memory.

What the page offers comes from the registries, read at each call: the methods (and, per method,
the options in its ``MethodSpec.ui`` with their ranges; every other option keeps its default),
the progress estimate (``MethodSpec.rows_per_image``), and the curves (:func:`curve_metrics`).

Before a run the page asks for an estimate of its duration (:meth:`Explorer.estimate`): each
method's rows per image times the model's seconds per forward+backward row, plus the curves'
forward rows times the seconds per forward row. Both times are measured once on the model (a
blank batch at its input size) and then follow the runs actually done; the page asks the user to
confirm a run estimated above ``LONG_RUN_SECONDS``.
"""

from __future__ import annotations

import io
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import data, methods, visualize
from ..api import explain, list_methods
from ..core import checks
from ..core.guard import as_output
from ..core.layers import is_spatial, layer_outputs
from ..methods import Option
from ..metrics.registry import METRICS, MetricSpec
from ..models import class_names, copy_model, get_preprocessing
from .uploads import MAX_IMAGES, MAX_PIXELS, MAX_SIDE, MAX_UPLOAD_BYTES, ImageStore, InputError, StoredImage, \
    decode_image, png_bytes

MAX_METHODS_PER_RUN = 8
METRIC_STEPS_RANGE = (4, 224)
DEFAULT_METRIC_STEPS = 28
DEFAULT_METHODS = ("smoothgrad", "gradcam")   # ticked when the page opens (those registered)
LONG_RUN_SECONDS = 60.0                       # the page asks before a run estimated to take longer
CALIBRATION_ROWS = 4                          # rows of the blank batch that times the model
LAYER_DEPTH = 2                               # CAM layers offered: module names with fewer dots than this
AUTOMATIC_LAYER = (None, "", "auto")          # the page's "automatic" layer: the method's own default


def curve_metrics() -> List[MetricSpec]:
    """The metrics the page draws as curves: the registered curve metrics that perturb the image in
    model space with no fixed options (deletion and insertion, RISE protocol). Each is called as
    ``fn(model, x, saliency, target=, step=, return_curves=True)`` and returns ``auc``, ``curves``
    and ``fractions``."""
    return [s for s in METRICS.values() if s.kind == "curve" and s.space == "model" and not s.options]


def _short_doc(doc: str, limit: int = 170) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    return para if len(para) <= limit else para[: limit - 1].rsplit(" ", 1)[0] + " …"


def colormap_stops(cmap: str, n: int = 11) -> List[str]:
    """``n`` CSS colours along ``cmap``, for the page's colour bars."""
    rgb = visualize.colorize(np.linspace(0, 1, n)[None, :], cmap)[0]
    return ["#%02x%02x%02x" % tuple(int(c) for c in px) for px in rgb]


def _at_size(heat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A B x h x w map resized (bilinear) to ``like``'s spatial size when it differs."""
    if heat.shape[-2:] == like.shape[-2:]:
        return heat
    return F.interpolate(heat[:, None].float(), size=like.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _curve(spec: MetricSpec, model, x, saliency, target: int, step: int) -> Dict[str, Any]:
    """A curve metric on one image: its AUC, the curve and its x axis, rounded for the page."""
    res = spec.fn(model, x, saliency, target=target, step=step, return_curves=True)
    y = torch.as_tensor(res.curves).float()
    y = y[0] if y.dim() == 2 else y.reshape(-1)
    return {"auc": float(torch.as_tensor(res.auc).reshape(-1)[0]),
            "curve": [round(float(v), 5) for v in y.tolist()],
            "fractions": [round(float(v), 5) for v in torch.as_tensor(res.fractions).reshape(-1).tolist()]}


def _has_parameters(m: torch.nn.Module) -> bool:
    """Layers worth offering for a CAM: with weights (convs, norms, blocks), not activations or padding."""
    return next(m.parameters(), None) is not None


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


class Explorer:
    """The model, the uploaded images and the code that answers the page's requests."""

    def __init__(self, model: torch.nn.Module, model_name: str = "model", *,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 max_images: int = MAX_IMAGES, samples: Optional[List[Tuple[str, np.ndarray]]] = None):
        self.model = checks.model(model).eval()
        self.model_name = model_name
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.spec = get_preprocessing(model)
        self.names = class_names(model)
        self.max_upload_bytes = checks.positive_int("max_upload_bytes", max_upload_bytes)
        self.max_pixels = checks.positive_int("max_pixels", max_pixels)
        self.max_side = checks.positive_int("max_side", max_side)
        self.images = ImageStore(max_images)
        # Predictions for uploads run on a private copy, so they never see the hooks a CAM places
        # on the explained model while a job runs in the worker thread.
        self._predictor = copy_model(model).eval()
        self._predict_lock = threading.Lock()
        self.samples = dict(samples if samples is not None else data.sample_images())
        self.layers, self.n_classes = self._model_facts()
        # seconds per forward+backward row and per forward row (measured on first use, then followed)
        self._row_seconds: Optional[float] = None
        self._forward_row_seconds: Optional[float] = None

    # -- model facts --
    def _model_facts(self) -> Tuple[List[str], int]:
        """The layers offered for CAMs and the class count, from a blank image. The layers are the
        modules with parameters, named with fewer than ``LAYER_DEPTH`` dots, whose output is a
        spatial B x C x H x W map, in execution order."""
        s = self.spec.size or 224
        blank = torch.zeros(1, 3, s, s, device=self.device)
        try:
            layers = [name for name, module, shape in layer_outputs(self._predictor, blank)
                      if name.count(".") < LAYER_DEPTH and _has_parameters(module) and is_spatial(shape)]
        except TypeError:   # a TorchScript model takes no hooks: no layers to offer (CAMs say why when run)
            layers = []
        with torch.no_grad():
            n_classes = int(as_output(self._predictor(blank)).shape[1])
        return layers, n_classes

    def class_name(self, c: int) -> str:
        if self.names is not None and 0 <= c < len(self.names):
            return self.names[c]
        return f"class {c}"

    def info(self) -> Dict[str, Any]:
        """What the page needs to build itself: model, samples, methods with their options, limits."""
        offered = {}
        for name in list_methods():
            spec = methods.get(name)
            params = {}
            for key, option in spec.ui.items():
                d = option.describe()
                d["default"] = spec.defaults[key]
                if option.kind == "layer":
                    d["choices"] = self.layers
                params[key] = d
            offered[name] = {"params": params, "doc": _short_doc(spec.doc),
                             "signed": spec.heatmap.get("sign") == "signed", "stochastic": spec.stochastic}
        return {
            "model": self.model_name, "device": str(self.device), "n_classes": self.n_classes,
            "input_size": self.spec.size,
            "samples": list(self.samples), "methods": offered,
            "default_methods": [m for m in DEFAULT_METHODS if m in offered] or list(offered)[:1],
            "metrics": bool(curve_metrics()),
            "metric_steps": {"default": DEFAULT_METRIC_STEPS, "min": METRIC_STEPS_RANGE[0],
                             "max": METRIC_STEPS_RANGE[1]},
            "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                       "max_side": self.max_side, "max_methods": MAX_METHODS_PER_RUN},
            "colormaps": {"jet": colormap_stops("jet"), "bwr": colormap_stops("bwr")},
        }

    # -- images --
    def add_upload(self, raw: bytes, name: str = "upload") -> Tuple[str, StoredImage]:
        im, notes = decode_image(raw, max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels,
                                 max_side=self.max_side, name=name if name != "upload" else None,
                                 input_side=max(self.spec.resize or 0, self.spec.size or 0) or None)
        return self._store(im, notes, name)

    def add_sample(self, name: str) -> Tuple[str, StoredImage]:
        if not isinstance(name, str) or name not in self.samples:
            raise InputError(f"Unknown sample {str(name)[:40]!r}; choose one of: {', '.join(self.samples)}.")
        return self._store(data.to_pil(self.samples[name]), [], name)

    def _store(self, im: Image.Image, notes: List[str], name: str) -> Tuple[str, StoredImage]:
        """The model's view of ``im`` (resize, centre crop, normalise), its top-5 classes, kept in memory."""
        s, r = self.spec.size or 224, self.spec.resize or None
        w, h = im.size
        crop = f"The model sees the centre {s}x{s} crop of the {w}x{h} image (short side resized to {r or s})."
        pix01 = data.pil_to_tensor01(data.resize_crop(im, r, s))[None]
        x = self.spec.normalize(pix01).to(self.device)
        with self._predict_lock, torch.no_grad():
            probs = torch.softmax(as_output(self._predictor(x)).float(), dim=1)[0].cpu()
        top = probs.topk(min(5, probs.numel()))
        top5 = [{"index": int(c), "name": self.class_name(int(c)), "probability": round(float(p), 5)}
                for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        pixels = pix01[0].permute(1, 2, 0).numpy()
        stored = StoredImage(x=x, pixels=pixels, preview_png=png_bytes(pixels), top5=top5, notes=notes, name=name,
                             crop=crop)
        return self.images.add(stored), stored

    def get_image(self, image_id: Any) -> StoredImage:
        return self.images.get(image_id)

    # -- requests --
    def parse_request(self, body: Any) -> Request:
        """Validate the page's JSON; every problem becomes an ``InputError`` naming the field."""
        if not isinstance(body, dict):
            raise InputError("Expected a JSON object.")
        stored = self.get_image(body.get("image_id"))
        target = self._parse_target(body.get("target", "predicted"), stored)
        raw_methods = body.get("methods")
        if not isinstance(raw_methods, list) or not raw_methods:
            raise InputError("methods: choose at least one method.")
        if len(raw_methods) > MAX_METHODS_PER_RUN:
            raise InputError(f"methods: at most {MAX_METHODS_PER_RUN} methods per run.")
        available = list_methods()
        chosen: List[Tuple[str, Dict[str, Any]]] = []
        for item in raw_methods:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError("methods: each entry needs a method name.")
            name = item["name"]
            if name not in available:
                raise InputError(f"methods: unknown method {name[:40]!r}; available: {', '.join(available)}.")
            if name in (m for m, _ in chosen):
                raise InputError(f"methods: {name} is listed twice.")
            chosen.append((name, self._parse_options(name, item.get("options") or {})))
        want_metrics = bool(body.get("metrics", False)) and bool(curve_metrics())
        steps = body.get("metric_steps", DEFAULT_METRIC_STEPS)
        lo, hi = METRIC_STEPS_RANGE
        if isinstance(steps, bool) or not isinstance(steps, int) or not lo <= steps <= hi:
            raise InputError(f"curve steps: expected an integer from {lo} to {hi}, got {str(steps)[:20]!r}.")
        return Request(image_id=body["image_id"], target=target, methods=chosen, metrics=want_metrics,
                       metric_steps=steps)

    def _parse_target(self, target: Any, stored: StoredImage) -> int:
        if target in (None, "", "predicted"):
            return int(stored.top5[0]["index"])
        if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):
            target = int(target)
        if isinstance(target, bool) or not isinstance(target, int):
            raise InputError(f"class: expected 'predicted' or a class index, got {str(target)[:40]!r}.")
        if not 0 <= target < self.n_classes:
            raise InputError(f"class: {target} is out of range; this model has classes 0 to {self.n_classes - 1}.")
        return target

    def _parse_options(self, method: str, given: Any) -> Dict[str, Any]:
        """The options of ``method`` set on the page: only those in its ``MethodSpec.ui``, in range."""
        if not isinstance(given, dict):
            raise InputError(f"{method}: options must be an object.")
        shown = methods.get(method).ui
        opts: Dict[str, Any] = {}
        for key, value in given.items():
            if key not in shown:
                raise InputError(f"{method}: option {str(key)[:40]!r} cannot be set from the page.")
            value = self._check_option(f"{method}: {shown[key].label}", shown[key], value)
            if value is not None:  # an empty layer means "automatic": the method's default
                opts[key] = value
        return opts

    def _check_option(self, where: str, option: Option, v: Any):
        if option.kind in ("int", "float"):
            if isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise InputError(f"{where}: expected a number, got {v[:20]!r}.") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{where}: expected a number, got {str(v)[:20]!r}.")
            if option.kind == "int":
                if float(v) != int(v):
                    raise InputError(f"{where}: expected a whole number, got {v}.")
                v = int(v)
            if not option.lo <= v <= option.hi:
                lo, hi = (int(option.lo), int(option.hi)) if option.kind == "int" else (option.lo, option.hi)
                raise InputError(f"{where}: {v} is out of range; allowed {lo} to {hi}.")
            return float(v) if option.kind == "float" else v
        if option.kind == "choice":
            if v not in option.choices:
                raise InputError(f"{where}: expected one of {', '.join(option.choices)}, got {str(v)[:20]!r}.")
            return v
        if option.kind == "layer":
            if v in AUTOMATIC_LAYER:
                return None
            if not isinstance(v, str) or v not in self.layers:
                raise InputError(f"{where}: unknown layer {str(v)[:60]!r}; choose one of the listed layers "
                                 f"(e.g. {', '.join(self.layers[-3:])}).")
            return v
        raise InputError(f"{where}: options of kind {option.kind!r} cannot be set from the page.")

    # -- estimates --
    def seconds_per_row(self) -> Tuple[float, float]:
        """(seconds per forward+backward row, seconds per forward row) of the model on its device.

        Measured the first time on a blank batch of ``CALIBRATION_ROWS`` images at the model's
        input size (on the private copy, after one untimed warm-up pass); afterwards the
        forward+backward time follows the runs done (see :meth:`run`)."""
        if self._row_seconds is None or self._forward_row_seconds is None:
            s = self.spec.size or 224
            with self._predict_lock:
                blank = torch.zeros(CALIBRATION_ROWS, 3, s, s, device=self.device)
                timings = []
                for _ in range(2):   # the first pass warms up (allocations, kernels); the second is timed
                    xg = blank.clone().requires_grad_(True)
                    t0 = time.perf_counter()
                    out = as_output(self._predictor(xg))
                    torch.autograd.grad(out[:, 0].sum(), xg)
                    self._sync()
                    t1 = time.perf_counter()
                    with torch.no_grad():
                        self._predictor(blank)
                    self._sync()
                    timings.append((t1 - t0, time.perf_counter() - t1))
                backward, forward = timings[-1]
            if self._row_seconds is None:
                self._row_seconds = backward / CALIBRATION_ROWS
            self._forward_row_seconds = forward / CALIBRATION_ROWS
        return self._row_seconds, self._forward_row_seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def estimate(self, req: Request) -> Dict[str, Any]:
        """How long ``req`` would hold the worker: per method its rows (``MethodSpec.rows_per_image``,
        one image) times the seconds per forward+backward row, plus the curves' forward rows.
        ``long`` is true above ``LONG_RUN_SECONDS`` (the page then asks to confirm)."""
        per_row, per_forward = self.seconds_per_row()
        entries = []
        for name, opts in req.methods:
            rows = methods.get(name).rows_per_image(opts) or 1.0
            entries.append({"method": name, "rows": rows, "seconds": round(rows * per_row, 2)})
        total = sum(e["seconds"] for e in entries)
        curve_rows = 0
        if req.metrics and curve_metrics():
            hw = self.spec.size * self.spec.size if self.spec.size else 224 * 224
            step = max(1, math.ceil(hw / req.metric_steps))
            curve_rows = len(curve_metrics()) * (math.ceil(hw / step) + 1) * len(req.methods)
            total += curve_rows * per_forward
        return {"seconds": round(total, 1), "methods": entries, "curve_rows": curve_rows,
                "seconds_per_row": per_row, "seconds_per_forward_row": per_forward,
                "long": total > LONG_RUN_SECONDS, "threshold_s": LONG_RUN_SECONDS}

    def _observed(self, rows: int, seconds: float) -> None:
        """Follow the model's speed: a finished method's seconds per row (from runs of 8 rows or
        more, where fixed costs are small) moves the estimate half way towards it."""
        if rows >= 8 and seconds > 0:
            seen = seconds / rows
            self._row_seconds = seen if self._row_seconds is None else 0.5 * (self._row_seconds + seen)

    # -- running --
    def run(self, req: Request, progress: Optional[Callable[[float, str], None]] = None) -> Result:
        """Run the request's methods (and curves) on the stored image; everything stays in memory."""
        stored = self.get_image(req.image_id)
        x = stored.x
        result = Result(payload={})
        curves = curve_metrics() if req.metrics else []
        n = len(req.methods)
        stages = n * (2 if curves else 1)

        def report(done_stages: float, label: str):
            if progress is not None:
                progress(min(1.0, done_stages / stages), label)

        entries: List[Dict[str, Any]] = []
        heats: List[torch.Tensor] = []
        raw: Dict[str, Dict[str, Any]] = {}
        failed: List[Dict[str, str]] = []
        for idx, (name, opts) in enumerate(req.methods):
            expected = methods.get(name).rows_per_image(opts)
            rows = [0]

            def on_rows(k, _idx=idx, _name=name, _exp=expected, _rows=rows):
                _rows[0] += k
                report(_idx + (min(0.99, _rows[0] / _exp) if _exp else 0.5), _name)

            report(idx, name)
            try:
                e = explain(self.model, x, name, target=req.target, seed=0, progress=on_rows, **opts)
            except (ValueError, TypeError) as err:
                # one method the model cannot run (a CAM on a TorchScript file, say) fails alone
                failed.append({"name": name, "error": f"{name}: {err}"})
                report(idx + 1, name)
                continue
            entry, files, heat = self._render(name, e, stored)
            result.files.update(files)
            raw[name] = {"attributions": e.attributions.detach().cpu(), "heatmap": heat.detach().cpu(),
                         "target": e.targets.cpu(), "score": e.scores.detach().cpu(), "params": entry["params"],
                         "seed": e.seed}
            entries.append(entry)
            heats.append(heat)
            self._observed(rows[0], e.time_s)
            report(idx + 1, name)

        if failed and not entries:   # nothing to show: the page reports the error
            raise InputError("; ".join(f["error"] for f in failed))
        if curves:
            hw = x.shape[-2] * x.shape[-1]
            step = max(1, math.ceil(hw / req.metric_steps))
            label = " / ".join(s.name for s in curves)
            for idx, (entry, heat) in enumerate(zip(entries, heats, strict=True)):
                report(n + idx, f"{label}: {entry['name']}")
                try:
                    for spec in curves:
                        entry[spec.name] = _curve(spec, self.model, x, heat.to(x.device), req.target, step)
                except (ValueError, TypeError) as err:
                    entry["metrics_error"] = str(err)
                for spec in curves:
                    raw[entry["name"]][f"{spec.name}_auc"] = entry.get(spec.name, {}).get("auc")
            result.payload["metric_step"] = step
        buf = io.BytesIO()
        torch.save({"model": self.model_name, "image": stored.name, "input": x.detach().cpu(), "target": req.target,
                    "methods": raw}, buf)
        result.files["saliency.pt"] = (buf.getvalue(), "application/octet-stream")
        result.payload.update({"target": req.target, "target_name": self.class_name(req.target),
                               "methods": entries, "failed": failed, "metrics": bool(curves),
                               "tensors": "saliency.pt"})
        report(stages, "done")
        return result

    def _render(self, name: str, e, stored: StoredImage):
        """The page's entry for one explanation, its PNGs, and the heatmap at the input's size: an
        overlay (one-signed maps) or a diverging map (signed ones), plus a signed view of the raw
        attribution when it has both signs but the default view does not show them."""
        x = stored.x
        heat = _at_size(e.heatmap(), x)
        heat_np = heat[0].detach().cpu().numpy()
        signed = e.signed
        main_img = (visualize.colorize(heat_np, "bwr") if signed
                    else visualize.overlay(stored.pixels, heat_np, "jet", 0.5))
        target = int(e.targets[0])
        entry: Dict[str, Any] = {
            "name": name, "signed": signed, "target": target, "target_name": self.class_name(target),
            "score": round(float(e.scores[0]), 5), "time_s": round(e.time_s, 3),
            "params": dict(e.summary()["params"]), "png": f"{name}.png", "colormap": "bwr" if signed else "jet",
        }
        files = {f"{name}.png": (png_bytes(main_img), "image/png")}
        attr = e.attributions.detach()
        if not signed and bool((attr < 0).any() and (attr > 0).any()):
            sh = _at_size(e.heatmap(sign="signed", channels="sum"), x)
            files[f"{name}_signed.png"] = (png_bytes(visualize.colorize(sh[0].cpu().numpy(), "bwr")), "image/png")
            entry["signed_png"] = f"{name}_signed.png"
        return entry, files, heat


__all__ = ["Explorer", "InputError", "LONG_RUN_SECONDS", "Request", "Result", "curve_metrics", "decode_image"]
