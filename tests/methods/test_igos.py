"""I-GOS: objective descent, mask range, chunk/batch invariance, the direction against autograd of
the path-averaged objective written out here, resolutions and option checks."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from torch import nn

import saliencekit as sk
from saliencekit.core import noise
from saliencekit.core.imageops import gaussian_blur
from saliencekit.core.targets import ClassScore
from saliencekit.methods.base import Context
from saliencekit.methods.igos import IGOS, blurred_baseline
from saliencekit.models import IDENTITY

# Options for the toy below: its evidence is a small sharp patch, so the default l1 / tv (tuned for
# 224-pixel photos at mask 28) would outweigh the gain of deleting it; its Laplacian responds to
# pixel noise, so the path noise is kept small.
TOY = {"iterations": 4, "ig_steps": 3, "l1": 0.1, "tv": 1.0, "noise": 0.05}


class EdgeNet(nn.Module):
    """Class 0 = "has sharp edges" (mean ReLU of a Laplacian): a blurred patch loses the class.

    The Laplacian is written with shifts (elementwise ops only), so every image's output is
    bit-identical whatever the batch size; that makes exact chunk-invariance testable (a CPU
    convolution may round differently for different batch sizes).
    """

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[30.0], [0.0]]))
            self.fc.bias.copy_(torch.tensor([-2.0, 0.0]))

    def forward(self, x):
        p = F.pad(x, (1, 1, 1, 1))
        lap = 4 * x - p[..., :-2, 1:-1] - p[..., 2:, 1:-1] - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]
        return self.fc(F.relu(lap.mean(1, keepdim=True)).mean((2, 3)))


@pytest.fixture
def edge():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 3, 16, 16)
    for i, (r, c) in enumerate([(2, 3), (8, 6), (4, 9)]):
        x[i, :, r:r + 6, c:c + 6] = (torch.rand(3, 6, 6, generator=g) > 0.5).float() * 2
    return EdgeNet().eval(), x


def plain_objective(model, x, m, targets, l1, tv):
    """F(M) = p_c(x * up(M) + x~ * (1 - up(M))) + l1 mean|1 - M| + tv TV(M), written out."""
    up = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=True)
    base = gaussian_blur(x, 51, 50.0)  # identity preprocessing for a plain nn.Module
    with torch.no_grad():
        p = torch.softmax(model(x * up + base * (1 - up)), 1).gather(1, targets[:, None])[:, 0]
    l1_term = (1 - m).abs().flatten(1).mean(1)
    tv_term = ((m[:, :, 1:] - m[:, :, :-1]) ** 2).flatten(1).mean(1) + \
        ((m[..., 1:] - m[..., :-1]) ** 2).flatten(1).mean(1)
    return p + l1 * l1_term + tv * tv_term


@pytest.mark.parametrize("line_search", ["path", "plain"])
def test_objective_decreases_and_mask_in_unit_range(edge, line_search):
    model, x = edge
    before = model_state(model)
    e = sk.explain(model, x, "igos", mask_size=8, seed=1, target=0, line_search=line_search, **TOY)
    assert_same_state(before, model_state(model))
    trace = e.extras["objective"]
    assert trace.shape == (3, 5)
    assert (trace[:, 0] > 0.9).all() and (trace[:, -1] < 0.5).all()
    if line_search == "plain":  # Armijo on F itself: F never increases
        assert (trace[:, 1:] <= trace[:, :-1] + 1e-6).all()
    m = e.extras["mask"]
    assert m.shape == (3, 1, 8, 8)
    assert m.min() >= 0 and m.max() <= 1 and m.min() < 0.5
    # attributions are the upsampled 1 - M; the heatmap is normalised to [0, 1]
    up = F.interpolate(1 - m, size=(16, 16), mode="bilinear", align_corners=True)
    assert e.attributions.shape == (3, 1, 16, 16)
    assert torch.allclose(e.attributions, up, atol=1e-6)
    h = e.heatmap()
    assert h.shape == (3, 16, 16)
    assert h.min() >= 0 and torch.allclose(h.amax((1, 2)), torch.ones(3))
    # the recorded objective is F of the final mask
    assert torch.allclose(trace[:, -1], plain_objective(model, x, m, e.targets, 0.1, 1.0), atol=1e-5)
    # the deleted region is the sharp patch: the top of the map lies inside it
    for i, (r, c) in enumerate([(2, 3), (8, 6), (4, 9)]):
        k = int(h[i].flatten().argmax())
        assert r - 1 <= k // 16 <= r + 6 and c - 1 <= k % 16 <= c + 6


def test_seeded_runs_identical_for_any_chunk_size(edge):
    model, x = edge
    runs = [sk.explain(model, x, "igos", mask_size=7, seed=3, batch_size=bs, **TOY) for bs in (1, 7, None)]
    for r in runs[1:]:
        assert torch.equal(r.attributions, runs[0].attributions)
        assert torch.equal(r.extras["objective"], runs[0].extras["objective"])
    other = sk.explain(model, x, "igos", mask_size=7, seed=4, **TOY)
    assert not torch.equal(other.attributions, runs[0].attributions)  # the noise is really used


def test_one_image_does_not_change_another(edge):
    model, x = edge
    a = sk.explain(model, x, "igos", mask_size=7, seed=2, batch_size=4, target=0, **TOY)
    changed = x.clone()
    changed[0] = changed[0].flip(-1)
    b = sk.explain(model, changed, "igos", mask_size=7, seed=2, batch_size=4, target=0, **TOY)
    assert torch.equal(a.attributions[1:], b.attributions[1:])
    assert torch.equal(a.extras["step"][1:], b.extras["step"][1:])
    assert not torch.equal(a.attributions[0], b.attributions[0])
    # the first image alone gives the same result as inside the batch
    c = sk.explain(model, x[:1], "igos", mask_size=7, seed=2, target=0, **TOY)
    assert torch.equal(c.attributions[0], a.attributions[0])
    # an image explained alone under its id gets the same map as inside the batch
    d = sk.explain(model, x[2:], "igos", mask_size=7, seed=2, target=0, image_ids=[2], **TOY)
    assert torch.equal(d.attributions[0], a.attributions[2])


def test_direction_equals_autograd_of_path_averaged_objective(tiny_cnn, images):
    x = images[:2]
    classes = torch.tensor([1, 3])
    seed, S, sigma, l1, tv, beta, it = 5, 4, 0.2, 1.5, 7.0, 2.0, 2
    ctx = Context(model=tiny_cnn, x=x, score=ClassScore(classes, "softmax"), classes=classes,
                  clean_outputs=tiny_cnn(x).detach(), seed=seed, batch_size=3, preprocessing=IDENTITY)
    base = blurred_baseline(ctx, 9, 3.0)
    m0 = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(0))
    opt = IGOS(ctx, (5, 6), ig_steps=S, l1=l1, tv=tv, tv_beta=beta, noise_sigma=sigma, baseline=base)
    got, value = opt.direction(m0, it)

    # reference: autograd of (1/S) sum_s p_c(x~ + (s/S) up(M) (x - x~) + n_s) + l1 L1 + tv TV, per image
    m = m0.clone().requires_grad_(True)
    up = F.interpolate(m, size=(16, 16), mode="bilinear", align_corners=True)
    total = 0
    for s in range(1, S + 1):
        eps = torch.stack([noise.normal((3, 16, 16), seed, i, it * S + (s - 1), stream=noise.STREAM_IGOS)
                           for i in range(2)])
        pts = base + (s / S) * up * (x - base) + sigma * eps
        total = total + torch.softmax(tiny_cnn(pts), 1)[torch.arange(2), classes] / S
    l1_term = (1 - m).abs().flatten(1).mean(1)
    tv_term = ((m[:, :, 1:] - m[:, :, :-1]).abs() ** beta).flatten(1).mean(1) + \
        ((m[..., 1:] - m[..., :-1]).abs() ** beta).flatten(1).mean(1)
    objective = total + l1 * l1_term + tv * tv_term
    ref, = torch.autograd.grad(objective.sum(), m)
    # the path objective's value comes from the same forward passes, and path_objective() agrees
    assert torch.allclose(value, objective.detach(), atol=1e-6)
    assert torch.allclose(opt.path_objective(m0, torch.arange(2), it), objective.detach(), atol=1e-6)
    assert got.shape == (2, 1, 5, 6)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-7)
    assert ref.abs().max() > 1e-3


@pytest.mark.parametrize("size,shape", [((7, 12), (7, 12)), (7, (7, 7)), (16, (16, 16))])
def test_mask_resolutions(edge, size, shape):
    model, x = edge
    e = sk.explain(model, x[:2], "igos", mask_size=size, target=0, **dict(TOY, iterations=2, ig_steps=2))
    assert e.extras["mask"].shape == (2, 1) + shape
    assert e.attributions.shape == (2, 1, 16, 16)
    assert torch.isfinite(e.attributions).all()
    assert (e.extras["objective"][:, -1] < e.extras["objective"][:, 0] - 0.1).all()


@pytest.mark.parametrize("opt,value", [
    ("mask_size", 6), ("mask_size", 225), ("mask_size", 20), ("mask_size", (7,)), ("mask_size", (7, 5)),
    ("iterations", 0), ("ig_steps", 0), ("l1", -1.0), ("tv", float("nan")), ("tv_beta", 0.5),
    ("noise", -0.1), ("step_init", 0.0), ("blur_kernel", 4), ("blur_sigma", 0.0), ("score", "prob"),
    ("line_search", "wolfe"),
])
def test_bad_options_refused(tiny_cnn, images, opt, value):
    with pytest.raises(ValueError, match=opt):
        sk.explain(tiny_cnn, images[:1], "igos", **{"mask_size": 8, opt: value})


def test_bad_option_types_refused(tiny_cnn, images):
    with pytest.raises(TypeError, match="mask_size"):
        sk.explain(tiny_cnn, images[:1], "igos", mask_size="28")
    with pytest.raises(TypeError, match="iterations"):
        sk.explain(tiny_cnn, images[:1], "igos", mask_size=8, iterations=2.5)


# Values computed with the code before the presets were added (issue #15), on the toy above with
# seed 1: the default schedule (preset "saliencekit") must give the same masks, objectives and steps.
PINNED = {
    "path": {"masksum": [44.79258728027344, 46.15566635131836, 44.498775482177734],
             "m34": [0.3138224482536316, 0.2715572118759155, 0.08497267961502075],
             "obj_last": [0.3054742217063904, 0.31910496950149536, 0.27739328145980835],
             "step": [[200.0, 8.0, 8.0, 8.0], [200.0, 1.6, 8.0, 8.0], [200.0, 8.0, 8.0, 1.6]]},
    "plain": {"masksum": [45.79102325439453, 46.15566635131836, 44.498775482177734],
              "m34": [0.08614671230316162, 0.2715572118759155, 0.08497267961502075],
              "obj_last": [0.3076799511909485, 0.31910496950149536, 0.27739328145980835],
              "step": [[200.0, 1.6, 8.0, 8.0], [200.0, 1.6, 8.0, 8.0], [200.0, 8.0, 8.0, 1.6]]},
    # the default noise (0.2) and line search ("path"), not given
    "default": {"masksum": [63.99999237060547, 63.99994659423828, 63.99999237060547],
                "m34": [1.0, 1.0, 1.0],
                "obj_last": [0.9621075391769409, 0.9793535470962524, 0.9835969805717468],
                "step": [[0.00256, 0.32, 0.00256, 0.32], [0.00256, 0.000512, 0.0128, 0.0128],
                         [0.0128, 8.0, 0.0128, 1.6]]},
}


@pytest.mark.parametrize("case", ["path", "plain", "default"])
def test_default_schedule_unchanged(edge, case):
    model, x = edge
    opts = dict(TOY, line_search=case) if case != "default" else {k: v for k, v in TOY.items() if k != "noise"}
    e = sk.explain(model, x, "igos", mask_size=8, seed=1, target=0, **opts)
    pin = PINNED[case]
    m = e.extras["mask"]
    assert m.flatten(1).sum(1).tolist() == pytest.approx(pin["masksum"], abs=1e-4)
    assert m[:, 0, 3, 4].tolist() == pytest.approx(pin["m34"], abs=1e-5)
    assert e.extras["objective"][:, -1].tolist() == pytest.approx(pin["obj_last"], abs=1e-5)
    assert e.extras["step"].tolist() == [pytest.approx(s, rel=1e-6) for s in pin["step"]]
    assert e.extras["schedule"]["preset"] == "saliencekit" and e.extras["schedule"]["floor"] == "clamp"
    if case == "default":  # the preset's values given explicitly, or the preset named, change nothing
        for extra in ({"preset": None}, {"preset": "saliencekit"},
                      {"noise": 0.2, "step_init": 200.0, "line_search": "path"}):
            again = sk.explain(model, x, "igos", mask_size=8, seed=1, target=0, **opts, **extra)
            assert torch.equal(again.attributions, e.attributions), extra
            assert torch.equal(again.extras["step"], e.extras["step"]), extra
