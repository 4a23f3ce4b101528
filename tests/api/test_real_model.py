"""End-to-end with the real pretrained EfficientNet-Lite0 (offline weights) on skimage's photos."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import saliencekit as sk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chelsea():
    import skimage.data

    return sk.load_images(skimage.data.chelsea())


def test_load_model_contract(real_model):
    assert not real_model.training
    pp = sk.get_preprocessing(real_model)
    assert (pp.size, pp.resize) == (224, 256)
    assert pp.mean == (0.485, 0.456, 0.406) and pp.std == (0.229, 0.224, 0.225)
    assert len(pp.class_names) == 1000 and pp.class_names[285] == "Egyptian_cat"


def test_load_images_forms_agree(chelsea):
    import numpy as np
    import skimage.data
    from PIL import Image

    arr = skimage.data.chelsea()
    assert chelsea.shape == (1, 3, 224, 224)
    assert torch.equal(sk.load_images(Image.fromarray(arr)), chelsea)
    both = sk.load_images([arr, arr])
    assert both.shape == (2, 3, 224, 224) and torch.equal(both[1], chelsea[0])
    raw = sk.load_images(arr, normalize=False)
    assert raw.min() >= 0 and raw.max() <= 1
    torch.testing.assert_close(sk.Preprocessing().normalize(raw), chelsea)
    assert np.isfinite(chelsea.numpy()).all()


def test_real_model_explains_chelsea_as_a_cat(real_model, chelsea):
    before = [p.detach().clone() for p in real_model.parameters()]
    e = sk.explain(real_model, chelsea, "gradient")
    assert 281 <= int(e.targets[0]) <= 285, e.target_names()  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert "cat" in e.target_names()[0]
    assert e.attributions.shape == chelsea.shape and torch.isfinite(e.attributions).all()
    h = e.heatmap()
    assert h.shape == (1, 224, 224) and h.min() == 0 and h.max() == 1
    with torch.no_grad():
        torch.testing.assert_close(e.scores, real_model(chelsea)[:, e.targets[0]])
    assert all(torch.equal(a, b) for a, b in zip(before, real_model.parameters()))
    assert all(p.grad is None for p in real_model.parameters())


def test_real_model_ig_delta_converges(real_model, chelsea):
    """IG's completeness error on chelsea (downscaled to 48 px to keep the suite fast; the 224 px
    numbers come from benchmarks/ig_delta_chelsea.py). Gauss-Legendre's error at 300 steps is
    far below its error at 50 (the integrand is only piecewise smooth: ReLU6 kinks)."""
    x = F.interpolate(chelsea, size=(48, 48), mode="bilinear", align_corners=False)
    deltas = {}
    for rule in ("gausslegendre",):
        for n in (50, 300):
            e = sk.explain(real_model, x, "integrated_gradients", target=285, n_steps=n, rule=rule, batch_size=50)
            deltas[rule, n] = float(e.delta[0])
            fx = float(e.scores[0])
    print("IG delta on chelsea (64 px, class 285):", deltas, "f(x) =", fx)
    assert abs(deltas["gausslegendre", 300]) < abs(deltas["gausslegendre", 50])
    assert abs(deltas["gausslegendre", 300]) < 0.05 * abs(fx)


def test_real_model_chunk_sizes(real_model, chelsea):
    """Same seed, same chunk size: bit-identical. Different chunk sizes: the same samples are drawn
    and folded in the same order, but PyTorch's CPU float32 convolutions pick kernels by batch
    size, so the maps agree to rounding (a last-bit change can flip a ReLU6 kink locally)."""
    x = F.interpolate(chelsea, size=(48, 48), mode="bilinear", align_corners=False)
    x = torch.cat([x, x.flip(-1)])
    a = sk.explain(real_model, x, "smoothgrad", target=285, n_samples=3, batch_size=1).attributions
    b = sk.explain(real_model, x, "smoothgrad", target=285, n_samples=3, batch_size=6).attributions
    c = sk.explain(real_model, x, "smoothgrad", target=285, n_samples=3, batch_size=6).attributions
    assert torch.equal(b, c)
    rel = (a - b).abs().sum() / b.abs().sum()
    print("relative L1 difference, chunk 1 vs 6:", float(rel))
    assert rel < 1e-3
