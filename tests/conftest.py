"""Shared fixtures: small models and inputs so the unit tests stay fast on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


class TinyCNN(nn.Module):
    """Conv -> BN -> ReLU(inplace) -> Conv -> ReLU -> pool -> Linear; spatially varying gradients."""

    def __init__(self, n_classes: int = 5, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Linear(nn.Module):
    """f(x) = W vec(x) + b: gradients are constant, known analytically."""

    def __init__(self, shape=(3, 8, 8), n_classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(shape).prod()), n_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return _init(TinyCNN(), 0)


@pytest.fixture
def linear_model():
    torch.manual_seed(0)
    return _init(Linear(), 1)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, 16, 16, generator=g)


@pytest.fixture
def small_images():
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 8, 8, generator=g)


@pytest.fixture(scope="session")
def real_model():
    from saliencekit import load_model

    return load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def sample_dir():
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"ImageNet sample folder not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


def model_state(model: nn.Module):
    """Everything explain() must leave untouched."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def assert_same_state(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grads"] == after["grads"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"]):
        assert torch.equal(a, b)


@pytest.fixture
def fresh_speed_state():
    """Process-wide speed defaults and the chunk / layout / compile caches reset around a test."""
    from saliencekit.core import chunking, speed

    old = speed.get_defaults()
    chunking.clear_cache()
    yield
    speed.set_defaults(old)
    chunking.clear_cache()


class BatchRecorder(nn.Module):
    """Wraps a model and records the batch size of every forward that builds a graph; with
    ``oom_above``, a forward of more rows raises an out-of-memory error."""

    def __init__(self, inner: nn.Module, oom_above: int | None = None):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.oom_above = oom_above

    def forward(self, x):
        if torch.is_grad_enabled():
            self.sizes.append(x.shape[0])
            if self.oom_above is not None and x.shape[0] > self.oom_above:
                raise torch.cuda.OutOfMemoryError(f"simulated: {x.shape[0]} rows > {self.oom_above}")
        return self.inner(x)


def abs_heat(a: torch.Tensor) -> torch.Tensor:
    """|attribution| summed over channels, flattened (for rank correlations)."""
    return a.abs().sum(1).flatten()


def write_photos(folder, n: int, seed: int, prefix: str = "img", hw=(36, 40)):
    """``n`` random RGB PNG files ``{prefix}{k}.png`` in ``folder`` (created); returns the folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(folder / f"{prefix}{k}.png")
    return folder


def tiny_cnn_32():
    """The seeded TinyCNN with its own preprocessing (32x32 input, no ImageNet statistics)."""
    from saliencekit.models import Preprocessing

    m = _init(TinyCNN(), 0)
    m.saliencekit_preprocessing = Preprocessing(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return m


def aupc_windows_loop(sal, w: int, regions: int):
    """AUPC's region choice written as a plain loop (an independent reference): ``w`` x ``w``
    windows of a 2-D numpy map by descending mean |saliency|, ties by position, each one kept if it
    does not overlap a kept one, until ``regions`` are kept; returns their (row, col) corners."""
    import numpy as np

    h, wd = sal.shape
    cand = []
    for r in range(h - w + 1):
        for c in range(wd - w + 1):
            cand.append((-float(np.abs(sal[r:r + w, c:c + w]).mean()), r * (wd - w + 1) + c, r, c))
    cand.sort()
    taken = []
    for _, _, r, c in cand:
        if all(abs(r - r2) >= w or abs(c - c2) >= w for r2, c2 in taken):
            taken.append((r, c))
        if len(taken) == regions:
            break
    return taken
