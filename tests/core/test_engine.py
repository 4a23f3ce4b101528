"""Engine guarantees: seeded chunk invariance, batch independence, the model and input left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_state, model_state
from torch import nn

import saliencekit as sk

# (method, options): every stochastic path plus the multi-class sign-aware maps
SEEDED = [
    ("smoothgrad", {"n_samples": 9}),
    ("smoothgrad", {"n_samples": 4, "estimator": "var", "base": "gradient_x_input"}),
    ("smoothgrad", {"n_samples": 3, "base": "integrated_gradients", "n_steps": 4}),
    ("smoothgrad", {"n_samples": 3, "base": "integrated_gradients", "n_steps": 3, "baseline": "uniform"}),
    ("integrated_gradients", {"n_steps": 6, "baseline": "uniform", "baseline_draws": 3}),
    ("integrated_gradients", {"n_steps": 5, "rule": "gausslegendre"}),
    ("smoothtaylor", {"n_samples": 11}),
    ("active", {}),
    ("inactive", {}),
    ("active", {"top_k": 2}),
]


def _ids(p):
    return p[0] + "-" + "-".join(f"{k}={v}" for k, v in p[1].items())


# Chunk invariance. The engine's part (noise keyed by (seed, image, sample), rows folded in a
# fixed order) makes maps bit-identical for any chunk size whenever the model computes each row
# independently of the batch size. PyTorch's CPU float32 convolutions do not always: ATen picks
# the kernel by batch size (for small inputs a batch of 1 runs the native kernel, larger batches
# oneDNN; with oneDNN off, batches of 16+ may go to NNPACK), and those round differently. So
# bit-identity is checked in float64 (native kernels only) and in float32 with oneDNN off for
# chunks below 16 rows; plain float32 is checked to float32 rounding.

@pytest.mark.parametrize("method,opts", SEEDED, ids=[_ids(p) for p in SEEDED])
def test_maps_bit_identical_for_any_chunk_size_float64(tiny_cnn, images, method, opts):
    m, x = tiny_cnn.double(), images.double()
    maps = [sk.explain(m, x, method, seed=5, batch_size=bs, **opts).attributions for bs in (1, 7, None)]
    assert torch.equal(maps[0], maps[1])
    assert torch.equal(maps[0], maps[2])
    assert maps[0].abs().sum() > 0


@pytest.mark.parametrize("method,opts", SEEDED[:1] + SEEDED[4:5] + SEEDED[6:8],
                         ids=[_ids(p) for p in SEEDED[:1] + SEEDED[4:5] + SEEDED[6:8]])
def test_maps_bit_identical_for_any_chunk_size_float32_without_onednn(tiny_cnn, images, method, opts):
    with torch.backends.mkldnn.flags(enabled=False):
        maps = [sk.explain(tiny_cnn, images, method, seed=5, batch_size=bs, **opts).attributions
                for bs in (1, 5, 7)]
    assert torch.equal(maps[0], maps[1])
    assert torch.equal(maps[0], maps[2])


@pytest.mark.parametrize("method,opts", SEEDED[:1] + SEEDED[6:8], ids=[_ids(p) for p in SEEDED[:1] + SEEDED[6:8]])
def test_maps_agree_for_any_chunk_size_float32(tiny_cnn, images, method, opts):
    maps = [sk.explain(tiny_cnn, images, method, seed=5, batch_size=bs, **opts).attributions
            for bs in (1, 2, 7, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-4, atol=1e-5 * maps[0].abs().max().item())


@pytest.mark.parametrize("method,opts", SEEDED[:5] + SEEDED[6:7], ids=[_ids(p) for p in SEEDED[:5] + SEEDED[6:7]])
def test_different_seeds_differ(tiny_cnn, images, method, opts):
    a = sk.explain(tiny_cnn, images, method, seed=0, **opts).attributions
    b = sk.explain(tiny_cnn, images, method, seed=1, **opts).attributions
    assert not torch.equal(a, b)
    assert torch.equal(a, sk.explain(tiny_cnn, images, method, seed=0, **opts).attributions)


def test_generator_seed(tiny_cnn, images):
    g1, g2 = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    a = sk.explain(tiny_cnn, images, "smoothgrad", seed=g1, n_samples=5)
    b = sk.explain(tiny_cnn, images, "smoothgrad", seed=g2, n_samples=5)
    assert torch.equal(a.attributions, b.attributions)
    assert isinstance(a.seed, int) and a.seed == b.seed
    # the drawn integer reproduces the map
    c = sk.explain(tiny_cnn, images, "smoothgrad", seed=a.seed, n_samples=5)
    assert torch.equal(a.attributions, c.attributions)
    # the generator advanced: a second draw gives another seed
    assert sk.explain(tiny_cnn, images, "smoothgrad", seed=g1, n_samples=5).seed != a.seed


@pytest.mark.parametrize("method,opts", SEEDED[:7] + SEEDED[7:8], ids=[_ids(p) for p in SEEDED[:8]])
def test_image_map_independent_of_batch_mates(tiny_cnn, images, method, opts):
    """Replacing the other images of the batch leaves image 1's map unchanged (bit for bit)."""
    a = sk.explain(tiny_cnn, images, method, seed=3, batch_size=4, **opts)
    other = images.clone()
    other[0] = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(99)) * 3
    other[2] = 0
    b = sk.explain(tiny_cnn, other, method, seed=3, batch_size=4, target=a.targets, **opts)
    assert torch.equal(a.attributions[1], b.attributions[1])
    assert not torch.equal(a.attributions[0], b.attributions[0])


def test_image_ids_make_maps_independent_of_position(tiny_cnn, images):
    full = sk.explain(tiny_cnn, images, "smoothgrad", n_samples=4, seed=2)
    alone = sk.explain(tiny_cnn, images[2:3], "smoothgrad", n_samples=4, seed=2, image_ids=[2])
    assert torch.equal(full.attributions[2], alone.attributions[0])


# ---- the model left as found ------------------------------------------------------------------

class TrainModel(nn.Module):
    """BatchNorm + Dropout, a mix of frozen / unfrozen parameters, a user hook, a stale .grad."""

    def __init__(self, n_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(5, n_classes)
        self.conv.bias.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.mean((2, 3)))


def _train_model():
    torch.manual_seed(0)
    m = TrainModel().train()
    m.bn.eval()  # a mixed tree: the root in train mode, one child in eval mode
    m.fc.weight.grad = torch.full_like(m.fc.weight, 7.0)  # a stale user .grad must survive untouched
    m.register_forward_hook(lambda mod, i, o: None)
    return m


ALL_METHODS = [("gradient", {}), ("gradient_x_input", {}), ("smoothgrad", {"n_samples": 3}),
               ("integrated_gradients", {"n_steps": 4}), ("smoothtaylor", {"n_samples": 3}),
               ("positive", {}), ("negative", {}), ("active", {}), ("inactive", {})]


@pytest.mark.parametrize("method,opts", ALL_METHODS, ids=[m for m, _ in ALL_METHODS])
def test_model_left_as_found(images, method, opts):
    m = _train_model()
    grad_obj = m.fc.weight.grad
    before = model_state(m)
    e1 = sk.explain(m, images, method, seed=0, **opts)
    assert_same_state(before, model_state(m))
    assert m.fc.weight.grad is grad_obj and torch.equal(grad_obj, torch.full_like(grad_obj, 7.0))
    # evaluated in eval mode: dropout off, BN with running stats -> deterministic and reproducible
    e2 = sk.explain(m, images, method, seed=0, **opts)
    assert torch.equal(e1.attributions, e2.attributions)
    assert m.training and not m.bn.training and m.drop.training


def test_training_mode_call_matches_eval_mode_call(images):
    m = _train_model()
    a = sk.explain(m, images, "smoothgrad", n_samples=3).attributions
    m.eval()
    b = sk.explain(m, images, "smoothgrad", n_samples=3).attributions
    assert torch.equal(a, b)


class Exploding(nn.Module):
    """Raises inside forward on the n-th call (after the clean forward succeeded)."""

    def __init__(self, fail_at=2):
        super().__init__()
        self.inner = _train_model()
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("boom inside forward")
        return self.inner(x)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_model_left_as_found_when_forward_raises(images, fail_at):
    m = Exploding(fail_at).train()
    before = model_state(m)
    with pytest.raises(RuntimeError, match="boom"):
        sk.explain(m, images, "smoothgrad", n_samples=5, batch_size=2)
    assert_same_state(before, model_state(m))


@pytest.mark.parametrize("bad", [{"rule": "simpson"}, {"baseline": torch.zeros(2, 2)}, {"n_steps": 0}])
def test_model_left_as_found_when_option_is_bad(images, bad):
    m = _train_model()
    before = model_state(m)
    with pytest.raises((ValueError, TypeError)):
        sk.explain(m, images, "integrated_gradients", **bad)
    assert_same_state(before, model_state(m))


def test_model_left_as_found_when_custom_target_raises(images):
    m = _train_model()
    before = model_state(m)
    with pytest.raises(ValueError, match="target"):
        sk.explain(m, images, "gradient", target=lambda out: out.sum())  # not one score per row
    assert_same_state(before, model_state(m))


# ---- grad modes and the input ------------------------------------------------------------------

def test_works_inside_no_grad(tiny_cnn, images):
    ref = sk.explain(tiny_cnn, images, "smoothgrad", n_samples=3).attributions
    with torch.no_grad():
        got = sk.explain(tiny_cnn, images, "smoothgrad", n_samples=3).attributions
    assert torch.equal(ref, got)


@pytest.mark.parametrize("method,opts", [("gradient", {}), ("integrated_gradients", {"n_steps": 3}),
                                         ("smoothtaylor", {"n_samples": 2}), ("active", {})])
def test_works_inside_inference_mode(tiny_cnn, images, method, opts):
    ref = sk.explain(tiny_cnn, images, method, **opts).attributions
    with torch.inference_mode():
        xi = images.clone()  # an inference tensor
        got = sk.explain(tiny_cnn, xi, method, **opts).attributions
    assert torch.equal(ref, got)
    # an inference tensor used outside the block works too
    assert torch.equal(ref, sk.explain(tiny_cnn, xi, method, **opts).attributions)


def test_input_not_modified(tiny_cnn, images):
    x = images.clone()
    for method in ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "active"):
        e = sk.explain(tiny_cnn, x, method)
        assert torch.equal(x, images)
        assert not x.requires_grad and x.grad is None
        assert e.attributions.shape == x.shape and e.attributions.device == x.device
        assert not e.attributions.requires_grad
    xr = images.clone().requires_grad_(True)
    sk.explain(tiny_cnn, xr, "gradient")
    assert xr.grad is None and torch.equal(xr.detach(), images)


def test_in_place_relu_model(images):
    """TinyCNN uses ReLU(inplace=True) after BN; the engine must not trip on it."""
    from conftest import TinyCNN, _init

    m = _init(TinyCNN(), 1)
    g = sk.explain(m, images, "gradient", target=0).attributions
    xr = images.clone().requires_grad_(True)
    ref, = torch.autograd.grad(m(xr)[:, 0].sum(), xr)
    torch.testing.assert_close(g, ref)


# ---- targets ---------------------------------------------------------------------------------

def test_custom_callable_target(tiny_cnn, images):
    """A callable target: d/dx of (logit 1 - logit 3) equals the difference of the two gradients."""
    e = sk.explain(tiny_cnn, images, "gradient", target=lambda out: out[:, 1] - out[:, 3])
    g1 = sk.explain(tiny_cnn, images, "gradient", target=1).attributions
    g3 = sk.explain(tiny_cnn, images, "gradient", target=3).attributions
    torch.testing.assert_close(e.attributions, g1 - g3, rtol=1e-5, atol=1e-6)
    assert e.targets.tolist() == [-1, -1, -1]
    with torch.no_grad():
        out = tiny_cnn(images)
    torch.testing.assert_close(e.scores, out[:, 1] - out[:, 3])


def test_custom_target_object_with_score(tiny_cnn, images):
    class Margin:
        def score(self, outputs, captures):
            return outputs[:, 0] * 2

    e = sk.explain(tiny_cnn, images, "integrated_gradients", target=Margin(), n_steps=8)
    ref = sk.explain(tiny_cnn, images, "integrated_gradients", target=0, n_steps=8)
    torch.testing.assert_close(e.attributions, 2 * ref.attributions)
    torch.testing.assert_close(e.delta, 2 * ref.delta, rtol=1e-4, atol=1e-5)


def test_custom_target_chunk_invariant(tiny_cnn, images):
    def t(out):
        return out.log_softmax(1)[:, 2]

    a = sk.explain(tiny_cnn, images, "smoothgrad", target=t, n_samples=5, batch_size=1).attributions
    b = sk.explain(tiny_cnn, images, "smoothgrad", target=t, n_samples=5, batch_size=7).attributions
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    ref = sk.explain(tiny_cnn, images, "smoothgrad", target=2, score="log_softmax", n_samples=5).attributions
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-7)


def test_sign_aware_methods_refuse_custom_targets(tiny_cnn, images):
    for method in ("positive", "active"):
        with pytest.raises(ValueError, match="target"):
            sk.explain(tiny_cnn, images, method, target=lambda out: out[:, 0])


@pytest.mark.parametrize("target", [2, [2, 2, 2], torch.tensor([2, 2, 2]), torch.tensor(2), np.int64(2),
                                    np.array([2, 2, 2]), (2, 2, 2)])
def test_target_forms_agree(tiny_cnn, images, target):
    e = sk.explain(tiny_cnn, images, "gradient", target=target)
    assert e.targets.tolist() == [2, 2, 2] and e.targets.dtype == torch.long


@pytest.mark.parametrize("space", ["softmax", "log_softmax"])
def test_score_spaces(tiny_cnn, images, space):
    e = sk.explain(tiny_cnn, images, "gradient", target=[0, 1, 2], score=space)
    xr = images.clone().requires_grad_(True)
    out = getattr(torch, space)(tiny_cnn(xr), dim=1)
    ref, = torch.autograd.grad(out[[0, 1, 2], [0, 1, 2]].sum(), xr)
    torch.testing.assert_close(e.attributions, ref, rtol=1e-5, atol=1e-7)
