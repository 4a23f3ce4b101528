"""CPU memory reuse during a call (core.allocator): the mallopt calls around explain and metric calls."""

from __future__ import annotations

import pytest
import torch

import saliencekit as sk
from saliencekit.core import allocator, speed



pytestmark = pytest.mark.usefixtures("fresh_speed_state")


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1


def test_retain_memory_during_a_cpu_call_and_release_after(tiny_cnn, monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", fake)
    seen_depth = []
    h = tiny_cnn.register_forward_pre_hook(lambda m, a: seen_depth.append(allocator._depth))
    try:
        sk.explain(tiny_cnn, torch.randn(1, 3, 16, 16), "smoothgrad", n_samples=4)
    finally:
        h.remove()
    assert seen_depth and set(seen_depth) == {1}        # every forward ran inside the block
    assert fake.calls == [("mallopt", -3, 32 << 20), ("mallopt", -1, (1 << 31) - 1),   # no mmap <= 32 MiB, no trim
                          ("mallopt", -1, 64 << 20)]                                # glibc's steady trim value
    assert allocator._depth == 0
    fake.calls.clear()
    with allocator.retained_memory():                        # nested blocks (e.g. a metric inside a call) share one
        with allocator.retained_memory():
            pass
        assert len(fake.calls) == 2
    assert len(fake.calls) == 3
    from saliencekit import metrics
    fake.calls.clear()
    metrics.deletion(tiny_cnn, torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16), step=64)
    assert len(fake.calls) == 3                         # the metrics follow the default too
    fake.calls.clear()
    speed.set_defaults(retain_memory=False)
    sk.explain(tiny_cnn, torch.randn(1, 3, 16, 16), "smoothgrad", n_samples=4)
    metrics.deletion(tiny_cnn, torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16), step=64)
    assert fake.calls == []
    with pytest.raises(TypeError, match="retain_memory"):
        speed.set_defaults(retain_memory="yes")


def test_retained_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", False)
    with allocator.retained_memory():
        assert allocator._depth == 0

