"""A synthetic data set with ground truth, and a small CNN trained on it in seconds.

``synthetic_shapes(n, seed)``: ``size`` x ``size`` RGB images (default 48) of textured clutter
(smooth colour noise, random line segments and dots) with one filled shape (circle, square,
triangle or cross; random colour, size and position) whose *shape* decides the class. Returns
the images in [0, 1], the labels and the shape's mask. Everything is a pure function of
(n, seed, size): image k is drawn from its own generator, so ``synthetic_shapes(n, s)[k]`` does
not depend on ``n``.

``synthetic_model(seed)``: a small CNN trained on 1500 such images (seeded, CPU, a few seconds to
well under a minute on 2 cores) with test accuracy >= 95%; it carries a ``Preprocessing`` spec
(mean 0.5, std 0.25) so the library's pixel-space code paths work. Nothing is cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .core import noise
from .core.checks import integer, positive_int
from .models import Preprocessing

CLASSES = ("circle", "square", "triangle", "cross")
SPEC = Preprocessing(size=48, resize=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=CLASSES)
_STREAM = 101


@dataclass
class SyntheticShapes:
    images: torch.Tensor   # n x 3 x size x size in [0, 1]
    labels: torch.Tensor   # n (long)
    masks: torch.Tensor    # n x size x size (bool): the class-deciding shape
    classes: tuple = CLASSES

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, k):
        return self.images[k], self.labels[k], self.masks[k]


def _shape_mask(kind: int, yy, xx, cy, cx, r, rng) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if kind == 0:
        return dy * dy + dx * dx <= r * r
    if kind == 1:
        h = r * 0.85
        return (np.abs(dy) <= h) & (np.abs(dx) <= h)
    if kind == 2:  # upward triangle
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.62)
    t = max(1.5, r * 0.3)
    return ((np.abs(dy) <= t) & (np.abs(dx) <= r)) | ((np.abs(dx) <= t) & (np.abs(dy) <= r))


def _one(seed: int, k: int, size: int):
    rng = np.random.default_rng(noise.mix_seed(seed, _STREAM, k))
    label = int(rng.integers(len(CLASSES)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # smooth colour noise: a few random low-frequency waves per channel
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(3):
            fy, fx = rng.uniform(0.02, 0.15, 2)
            ph = rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
    img = 0.5 + 0.12 * img + rng.normal(0, 0.06, (size, size, 3))
    # clutter: line segments and dots
    for _ in range(int(rng.integers(4, 8))):
        y0, x0 = rng.uniform(0, size, 2)
        ang = rng.uniform(0, np.pi)
        ln = rng.uniform(size * 0.15, size * 0.45)
        tt = np.linspace(0, 1, int(ln * 2))
        ys = np.clip((y0 + np.sin(ang) * ln * tt).astype(int), 0, size - 1)
        xs = np.clip((x0 + np.cos(ang) * ln * tt).astype(int), 0, size - 1)
        img[ys, xs] = rng.uniform(0, 1, 3)
    for _ in range(int(rng.integers(5, 12))):
        cy, cx = rng.uniform(0, size, 2)
        rd = rng.uniform(1.0, 2.5)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= rd * rd] = rng.uniform(0, 1, 3)
    # the object
    r = rng.uniform(size * 0.13, size * 0.19)
    m = r + 2
    cy, cx = rng.uniform(m, size - m, 2)
    mask = _shape_mask(label, yy, xx, cy, cx, r, rng)
    col = rng.uniform(0, 1, 3)
    while np.abs(col - img[mask].mean(0)).sum() < 0.6:
        col = rng.uniform(0, 1, 3)
    img[mask] = col
    return np.clip(img, 0, 1).astype(np.float32), label, mask


def synthetic_shapes(n: int, seed: int = 0, size: int = 48) -> SyntheticShapes:
    """``n`` images with one class-deciding shape on clutter; see the module docstring."""
    positive_int("n", n)
    integer("seed", seed)
    if isinstance(size, bool) or not isinstance(size, int) or size < 24:
        raise ValueError(f"size: expected an int >= 24, got {size!r}")
    imgs, labels, masks = zip(*(_one(seed, k, size) for k in range(n)))
    return SyntheticShapes(images=torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
                           labels=torch.tensor(labels, dtype=torch.long),
                           masks=torch.from_numpy(np.stack(masks)))


class ShapesCNN(nn.Module):
    """conv(16) -> conv(32) -> conv(32) -> conv(32) (each with batch norm) and pooling, global average pool, linear: 4 classes."""

    def __init__(self, n_classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def synthetic_model(seed: int = 0, n_train: int = 1500, epochs: int = 6, size: int = 48,
                    data: SyntheticShapes | None = None) -> nn.Module:
    """Train ``ShapesCNN`` on ``synthetic_shapes(n_train, seed)`` (Adam, seeded); eval mode, with
    ``saliencekit_preprocessing`` attached. Deterministic for a given seed on one machine."""
    g = torch.Generator().manual_seed(noise.mix_seed(seed, _STREAM, 1))
    data = data if data is not None else synthetic_shapes(n_train, seed=seed + 1_000_003, size=size)
    x = SPEC.normalize(data.images)
    y = data.labels
    old = torch.get_rng_state()
    torch.manual_seed(noise.mix_seed(seed, _STREAM, 2))
    model = ShapesCNN()
    torch.set_rng_state(old)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * ((len(y) + 63) // 64))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 64):
            idx = perm[s:s + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    model.saliencekit_preprocessing = SPEC
    model.saliencekit_name = "synthetic-shapes-cnn"
    return model


__all__ = ["CLASSES", "SPEC", "ShapesCNN", "SyntheticShapes", "synthetic_model", "synthetic_shapes"]
