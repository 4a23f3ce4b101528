"""Seeded, chunk-invariant noise.

Every random draw is a pure function of ``(seed, image index, sample index, stream)``: the
generator for one (image, sample) pair is seeded from a 64-bit mix of those integers, so the
noise an image receives does not depend on the chunk size, on which other images share the
batch, or on the order in which chunks are evaluated.

Noise is drawn on the device it is used on: CUDA's generator (Philox) gives other numbers than
the CPU's (Mersenne Twister) for the same seed, so a seeded stochastic map is reproducible on
each device type but differs between CPU and CUDA by Monte-Carlo noise. Inside
:func:`drawn_on` ``("cpu")`` every draw is made on the CPU and moved: CUDA maps then equal the
CPU maps to float rounding (slower: the noise crosses the bus).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix_seed(seed: int, *keys: int) -> int:
    """Combine a user seed and integer keys into one 63-bit generator seed."""
    h = _splitmix64(int(seed) & _MASK)
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK))
    return h & ((1 << 63) - 1)


_DRAW_ON: Optional[torch.device] = None


@contextlib.contextmanager
def drawn_on(device: torch.device | str) -> Iterator[None]:
    """Draw all noise on ``device`` (e.g. ``"cpu"``) inside the block, moving it to where it is used."""
    global _DRAW_ON
    before, _DRAW_ON = _DRAW_ON, torch.device(device)
    try:
        yield
    finally:
        _DRAW_ON = before


def generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    dev = _DRAW_ON if _DRAW_ON is not None else torch.device(device)
    g = torch.Generator(device=dev if dev.type != "mps" else "cpu")
    g.manual_seed(mix_seed(seed, *keys))
    return g


def normal(shape, seed: int, image: int, sample: int, *, stream: int = 0,
           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for (image, sample); identical for any chunking."""
    g = generator(seed, stream, image, sample, device=device)
    return torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype).to(device)


def uniform(shape, seed: int, image: int, sample: int, *, stream: int = 0,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) noise for (image, sample); identical for any chunking."""
    g = generator(seed, stream, image, sample, device=device)
    return torch.rand(tuple(shape), generator=g, device=g.device, dtype=dtype).to(device)


def resolve_seed(seed) -> int:
    """Accept an int or a ``torch.Generator`` (one integer is drawn from it)."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or a torch.Generator, got {type(seed).__name__}")
    return seed


# Streams keep independent uses of the same (seed, image, sample) apart.
STREAM_SMOOTHGRAD = 0
STREAM_TAYLOR = 1
STREAM_BASELINE = 2
STREAM_CAM = 3
STREAM_IGOS = 4
STREAM_METRIC = 5
