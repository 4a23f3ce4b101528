"""Deletion / insertion against a plain per-step loop of the protocol, and oracle ordering."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_state, model_state
from saliencekit.metrics import deletion, insertion


def _blur_loop(x, k, sigma):
    # independent blur: a dense 2-D kernel applied with reflect padding, channel by channel
    r = k // 2
    t = torch.arange(k, dtype=torch.float64) - r
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k2 = (g[:, None] * g[None, :]).float()
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        xp = F.pad(x[:, c:c + 1], (r, r, r, r), mode="reflect")
        out[:, c:c + 1] = F.conv2d(xp, k2[None, None])
    return out


def _loop_curve(model, x, sal, step, start_img, end_img, cls):
    """One image at a time, one forward per step: the RISE protocol written out."""
    curves = []
    for i in range(x.shape[0]):
        order = sorted(range(sal[i].numel()), key=lambda p: (-float(sal[i].reshape(-1)[p]), p))
        cur = start_img[i].clone()
        n = math.ceil(len(order) / step)
        ys = []
        for k in range(n + 1):
            if k > 0:
                for p in order[(k - 1) * step:k * step]:
                    r, c = divmod(p, x.shape[-1])
                    cur[:, r, c] = end_img[i][:, r, c]
            with torch.no_grad():
                ys.append(torch.softmax(model(cur[None]), 1)[0, cls[i]].item())
        curves.append(ys)
    y = torch.tensor(curves)
    n = y.shape[1] - 1
    auc = torch.tensor([sum(0.5 * (c[j] + c[j + 1]) / n for j in range(n)) for c in curves])
    return y, auc


@pytest.mark.parametrize("step", [7, 16])
def test_deletion_insertion_equal_loop(tiny_cnn, images, step):
    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    sal[0, :4, :4] = 0.5  # ties: broken by position
    before = model_state(tiny_cnn)
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    d = deletion(tiny_cnn, images, sal, step=step, return_curves=True, batch_size=5)
    y, auc = _loop_curve(tiny_cnn, images, sal, step, images, torch.zeros_like(images), cls)
    assert d.curves.shape == (3, math.ceil(256 / step) + 1)
    torch.testing.assert_close(d.curves, y.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.auc, auc.float(), rtol=1e-5, atol=1e-6)
    ins = insertion(tiny_cnn, images, sal, step=step, return_curves=True)
    y2, auc2 = _loop_curve(tiny_cnn, images, sal, step, _blur_loop(images, 11, 5.0), images, cls)
    torch.testing.assert_close(ins.curves, y2.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ins.auc, auc2.float(), rtol=1e-4, atol=1e-5)
    assert_same_state(before, model_state(tiny_cnn))


def test_explicit_substrate_and_target(tiny_cnn, images):
    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    sub = torch.full_like(images, 0.3)
    cls = torch.tensor([1, 2, 3])
    d = deletion(tiny_cnn, images, sal, target=cls, step=32, substrate=sub, return_curves=True)
    y, _ = _loop_curve(tiny_cnn, images, sal, 32, images, sub, cls)
    torch.testing.assert_close(d.curves, y.float(), rtol=1e-5, atol=1e-6)
    ins = insertion(tiny_cnn, images, sal, target=cls, step=32, substrate=sub, return_curves=True)
    y2, _ = _loop_curve(tiny_cnn, images, sal, 32, sub, images, cls)
    torch.testing.assert_close(ins.curves, y2.float(), rtol=1e-5, atol=1e-6)


def test_igos_protocol_equals_loop(tiny_cnn, images):
    sal = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ms = 4
    res = deletion(tiny_cnn, images, sal, step=32, protocol="igos", mask_size=ms, return_curves=True)
    # kernel 51 > image 16: the library blur pads by replication there; the substrate is that blur
    from saliencekit.core.imageops import gaussian_blur
    blur = gaussian_blur(images, 51, 50.0)
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    small = F.avg_pool2d(sal, 4)[:, 0].reshape(3, -1)
    per = 2  # 32 px of 256 -> 2 of 16 cells
    for i in range(3):
        order = sorted(range(16), key=lambda p: (-float(small[i, p]), p))
        ys = []
        for k in range(9):
            m = torch.zeros(16)
            m[order[:k * per]] = 1
            up = F.interpolate(m.view(1, 1, 4, 4), size=(16, 16), mode="bilinear", align_corners=True)[0]
            inp = images[i] * (1 - up) + blur[i] * up
            with torch.no_grad():
                ys.append(torch.softmax(tiny_cnn(inp[None]), 1)[0, cls[i]].item())
        torch.testing.assert_close(res.curves[i], torch.tensor(ys), rtol=1e-5, atol=1e-6)


class Oracle(torch.nn.Module):
    """Two classes; logit of class 0 = sum(w * x) with known positive weights w."""

    def __init__(self, w, bias, scale):
        super().__init__()
        self.w = torch.nn.Parameter(w, requires_grad=False)
        self.bias, self.scale = bias, scale

    def forward(self, x):
        s = ((x * self.w).flatten(1).sum(1) - self.bias) / self.scale
        return torch.stack([s, -s], 1)


def test_oracle_best_reversed_worst_random_between():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 3, 12, 12, generator=g) ** 4 * 2
    x = torch.rand(4, 3, 12, 12, generator=g) + 0.5
    total = float((x * w).flatten(1).sum(1).mean())
    model = Oracle(w, bias=total / 2, scale=total / 20).eval()  # logit crosses 0 half-way
    contrib = (x * w).sum(1)  # exact per-pixel contribution to the logit
    rnd = torch.rand(4, 12, 12, generator=g)
    kw = dict(target=0, step=12)
    d = {k: deletion(model, x, m, **kw) for k, m in {"oracle": contrib, "reversed": -contrib, "random": rnd}.items()}
    assert (d["oracle"] < d["random"]).all() and (d["random"] < d["reversed"]).all()
    sub = torch.zeros_like(x)
    i = {k: insertion(model, x, m, substrate=sub, **kw)
         for k, m in {"oracle": contrib, "reversed": -contrib, "random": rnd}.items()}
    assert (i["oracle"] > i["random"]).all() and (i["random"] > i["reversed"]).all()


def test_chunk_invariance_and_errors(tiny_cnn, images):
    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    a = deletion(tiny_cnn, images, sal, step=16, batch_size=3)
    b = deletion(tiny_cnn, images, sal, step=16, batch_size=50)
    c = deletion(tiny_cnn, images[1:2], sal[1:2], step=16)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:2], c)
    with pytest.raises(ValueError, match="protocol"):
        deletion(tiny_cnn, images, sal, protocol="nope")
    with pytest.raises(ValueError, match="saliency"):
        deletion(tiny_cnn, images, sal[:, :8])
    with pytest.raises(TypeError, match="step"):
        insertion(tiny_cnn, images, sal, step=2.5)
    with pytest.raises(ValueError, match="substrate"):
        deletion(tiny_cnn, images, sal, substrate=torch.zeros(2, 3, 5, 5))


def test_channels_last_default_same_scores_model_untouched(tiny_cnn, images):
    import saliencekit as sk

    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    ref = deletion(tiny_cnn, images, sal, step=16, return_curves=True)
    before = model_state(tiny_cnn)
    ptrs = [p.data_ptr() for p in tiny_cnn.parameters()]
    previous = sk.set_defaults(channels_last=True)
    try:
        seen = []
        hook = tiny_cnn.features[0].register_forward_pre_hook(
            lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                     and m.weight.is_contiguous(memory_format=torch.channels_last)))
        try:
            cl = deletion(tiny_cnn, images, sal, step=16, return_curves=True)
        finally:
            hook.remove()
    finally:
        sk.set_defaults(previous)
    assert seen and all(seen)  # the forward really ran in channels_last
    torch.testing.assert_close(cl.curves, ref.curves, rtol=1e-5, atol=1e-6)
    assert_same_state(before, model_state(tiny_cnn))
    assert [p.data_ptr() for p in tiny_cnn.parameters()] == ptrs
    assert all(p.is_contiguous() for p in tiny_cnn.parameters())


def test_explicit_classes_need_no_extra_forward_and_are_range_checked(tiny_cnn, images):
    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        a = deletion(tiny_cnn, images, sal, target=cls, step=64)
        n_explicit = sum(calls)
        b = deletion(tiny_cnn, images, sal, step=64)
    finally:
        h.remove()
    torch.testing.assert_close(a, b)
    assert n_explicit == 3 * (256 // 64 + 1)          # the curve points only
    assert sum(calls) - n_explicit == n_explicit + 3   # "predicted" adds one clean forward per image
    with pytest.raises(ValueError, match="class index 9 is out of range"):
        deletion(tiny_cnn, images, sal, target=9, step=64)
    with pytest.raises(ValueError, match=">= 0"):
        insertion(tiny_cnn, images, sal, target=[0, -1, 2], step=64)
