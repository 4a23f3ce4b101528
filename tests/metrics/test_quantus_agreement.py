"""Agreement with Quantus 0.6 where the definitions coincide (issue #15; benchmarks/bench_quantus.py
does the same on EfficientNet-Lite0 and photos).

* ``deletion`` (RISE, zero substrate, softmax) vs ``quantus.PixelFlipping`` (``perturb_baseline=0.0``,
  ``softmax=True``, ``normalise=False``, ``abs=False``): Quantus flips *channel values* (the map is
  broadcast over the channels and flattened) and has no unperturbed point. On C x H x W inputs with
  ``features_in_step=s``, C Quantus steps remove C*s channel values, i.e. ``s`` whole pixels, so
  ``quantus[:, C-1::C] == ours[:, 1:]`` for ``step=s``; on the flattened 1 x (C*H*W) view with
  ``features_in_step=C*s`` the curves match point for point. The map must be free of ties (Quantus
  sorts with numpy's unstable quicksort; we break ties by position).
* ``sanity_check`` vs ``quantus.MPRT`` (top-down, cascading, Spearman): the same layers in the same
  order; with Quantus's ``reset_parameters`` replaced by our randomisation rule the per-layer Spearman
  correlations are equal.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")
trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 / >= 2.4

from saliencekit import explain  # noqa: E402
from saliencekit.evaluation import sanity  # noqa: E402
from saliencekit.metrics import deletion  # noqa: E402


def _distinct_map(b, h, w, seed=1):
    # a random permutation: no ties, so both orderings are the same
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(h * w, generator=g).float().view(h, w) / (h * w) for _ in range(b)])


def _pixel_flipping(model, x, sal, cls, features_in_step, flat=False):
    m = quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=0.0, normalise=False, abs=False,
                              disable_warnings=True)
    b, c, h, w = x.shape
    if flat:
        class Unflatten(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, z):
                return self.inner(z.reshape(z.shape[0], c, h, w))

        model = Unflatten(model).eval()
        xs = x.reshape(b, 1, -1).numpy()
        a = sal.reshape(b, 1, -1).repeat(1, 1, c).numpy()   # C copies, channel-major like x
    else:
        xs, a = x.numpy(), sal[:, None].numpy()
    out = m(model, xs, cls.numpy(), a_batch=a, softmax=True, batch_size=b, channel_first=True)
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("step", [8, 32])
def test_deletion_curve_equals_pixel_flipping_rgb(tiny_cnn, images, step):
    sal = _distinct_map(*images.shape[:1], *images.shape[2:])
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    ours = deletion(tiny_cnn, images, sal, target=cls, step=step, return_curves=True).curves.double().numpy()
    q = _pixel_flipping(tiny_cnn, images, sal, cls, step)
    c = images.shape[1]
    assert q.shape == (3, c * math.ceil(256 / step))
    np.testing.assert_allclose(q[:, c - 1::c], ours[:, 1:], rtol=1e-5, atol=1e-6)


def test_deletion_curve_and_auc_equal_pixel_flipping_flat(tiny_cnn, images):
    step = 8
    sal = _distinct_map(*images.shape[:1], *images.shape[2:], seed=2)
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    res = deletion(tiny_cnn, images, sal, target=cls, step=step, return_curves=True)
    ours = res.curves.double().numpy()
    q = _pixel_flipping(tiny_cnn, images, sal, cls, 3 * step, flat=True)
    n = 256 // step
    assert q.shape == (3, n)
    np.testing.assert_allclose(q, ours[:, 1:], rtol=1e-5, atol=1e-6)
    # AUC conventions: Quantus (utils.calculate_auc) np.trapz(dx=1) over y_1..y_n, ours the trapezoid
    # over y_0..y_n on [0, 1]. np.trapz is gone in numpy 2.4 (return_auc_per_sample=True then fails).
    q_auc = trapezoid(q, dx=1, axis=1)
    np.testing.assert_allclose((q_auc + (ours[:, 0] + ours[:, 1]) / 2) / n, res.auc.double().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_sanity_check_equals_mprt_with_our_randomisation(tiny_cnn, images, monkeypatch):
    names = sanity.parameter_layers(tiny_cnn)
    # the same layers, in the same (module) order: Quantus takes modules with reset_parameters
    assert names == [n for n, m in tiny_cnn.named_modules() if hasattr(m, "reset_parameters")]
    with torch.no_grad():
        cls = tiny_cnn(images).argmax(1)
    ours = sanity.sanity_check(tiny_cnn, images, "gradient", target=cls, seed=3)

    gen = torch.Generator().manual_seed(3)
    owners = {next(k for k in type(m).__mro__ if "reset_parameters" in vars(k))
              for n, m in tiny_cnn.named_modules() if n in names}
    for owner in owners:  # Quantus calls module.reset_parameters(): make it our rule for the call
        monkeypatch.setattr(owner, "reset_parameters", lambda self: sanity._randomise(self, gen))

    def explain_func(model, inputs, targets, **kw):
        e = explain(model, torch.as_tensor(inputs), "gradient", target=torch.as_tensor(targets), seed=3,
                    keep_inputs=False)
        return e.heatmap().numpy()[:, None]

    ref = explain_func(tiny_cnn, images.numpy(), cls.numpy())
    m = quantus.MPRT(layer_order="top_down", seed=3, abs=False, normalise=False, disable_warnings=True)
    q = m(tiny_cnn, images.numpy(), cls.numpy(), a_batch=ref, explain_func=explain_func, batch_size=3,
          channel_first=True)
    monkeypatch.undo()
    assert list(q)[1:] == ours["layers"]
    np.testing.assert_allclose(q["original"], 1.0, atol=1e-12)
    np.testing.assert_allclose(np.array([q[n] for n in ours["layers"]]), ours["spearman"].double().numpy(),
                               rtol=1e-6, atol=1e-9)
