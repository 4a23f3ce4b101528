"""Every metric takes an ``Explanation`` and judges the map ``evaluate`` judges; the I-GOS protocol
ranks an I-GOS explanation's own mask cells (1 - mask) at the mask's resolution."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cnn_32

import saliencekit as sk
from saliencekit import metrics
from saliencekit.evaluation import evaluate_images
from saliencekit.evaluation.run import image_id
from saliencekit.explanation import Explanation
from saliencekit.metrics.allegiance import allegiance
from saliencekit.metrics.aupc import aupc
from saliencekit.metrics.scoring import explanation_maps
from saliencekit.metrics.total_variation import total_variation

IGOS_HEATMAP = {"sign": "abs", "channels": "sum", "clip": None}   # the igos method's heatmap defaults


def _igos_explanation(mask: torch.Tensor, targets) -> Explanation:
    """An I-GOS explanation built by hand: attributions 1 - up(mask), as the method returns them."""
    up = F.interpolate(mask, size=(16, 16), mode="bilinear", align_corners=True)
    return Explanation(method="igos", attributions=1 - up, targets=torch.tensor(targets),
                       scores=torch.zeros(len(targets)), params={}, seed=0, extras={"mask": mask},
                       heatmap_defaults=dict(IGOS_HEATMAP))


def _deletion_by_hand(model, x, cells, cls, substrate, per=1):
    """I-GOS deletion written out: cells ranked by value (descending, then position), ``per`` cells per step."""
    b, mh, mw = cells.shape
    aucs = []
    for i in range(b):
        vals = cells[i].reshape(-1).tolist()
        order = sorted(range(mh * mw), key=lambda p: (-vals[p], p))
        ys = []
        for k in range(-(-mh * mw // per) + 1):
            m = torch.zeros(mh * mw)
            m[order[:k * per]] = 1
            up = F.interpolate(m.view(1, 1, mh, mw), size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
            with torch.no_grad():
                ys.append(torch.softmax(model((x[i] * (1 - up) + substrate[i] * up)[None]), 1)[0, cls[i]].item())
        n = len(ys) - 1
        aucs.append((sum(ys) - ys[0] / 2 - ys[-1] / 2) / n)
    return torch.tensor(aucs)


def _contrast_mask() -> torch.Tensor:
    """An 8 x 8 mask whose cell order the bilinear round trip changes: 1 - mask is 0.50 on a lone
    cell among zeros and 0.49 on a cell among 0.48s; averaged back from the 16 x 16 bilinear map the
    lone cell drops below its neighbourhood-supported rival."""
    keep = torch.zeros(8, 8)          # 1 - mask
    keep[1, 1] = 0.50
    keep[4:8, 4:8] = 0.48
    keep[5, 5] = 0.49
    return (1 - keep)[None, None]


def test_igos_protocol_ranks_the_mask_cells(tiny_cnn, images):
    x = images[:1]
    mask = _contrast_mask()
    e = _igos_explanation(mask, [2])
    sub = torch.full_like(x, 0.3)
    # step 4 of 256 pixels = 1 of 64 cells per step; mask_size (default 28) is ignored for the mask
    res = metrics.deletion(tiny_cnn, x, e, protocol="igos", step=4, substrate=sub, return_curves=True)
    ref = _deletion_by_hand(tiny_cnn, x, 1 - mask[:, 0], [2], sub)
    torch.testing.assert_close(res.auc, ref.float(), rtol=1e-5, atol=1e-6)
    assert res.classes.tolist() == [2]  # the explanation's class, not the prediction
    assert res.curves.shape == (1, 65)
    # the old route, the heatmap averaged back to cells, ranks the cells differently
    pooled = F.adaptive_avg_pool2d(e.heatmap()[:, None], 8)[0, 0].reshape(-1)
    assert pooled[5 * 8 + 5] > pooled[1 * 8 + 1]
    via_heat = metrics.deletion(tiny_cnn, x, e.heatmap(), target=[2], protocol="igos", mask_size=8, step=4,
                                substrate=sub)
    assert abs(float(via_heat[0]) - float(ref[0])) > 1e-4
    # insertion too, and a non-square mask at its own resolution
    ins = metrics.insertion(tiny_cnn, x, e, protocol="igos", step=4, substrate=sub)
    assert ins.shape == (1,)
    tall = torch.rand(1, 1, 4, 8, generator=torch.Generator().manual_seed(0))
    e2 = _igos_explanation(tall, [1])
    r2 = metrics.deletion(tiny_cnn, x, e2, protocol="igos", step=8, substrate=sub)
    torch.testing.assert_close(r2, _deletion_by_hand(tiny_cnn, x, 1 - tall[:, 0], [1], sub).float(),
                               rtol=1e-5, atol=1e-6)
    # a plain map with an (h, w) mask_size pair is averaged down to that grid
    heat = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))
    r3 = metrics.deletion(tiny_cnn, x, heat, target=[1], protocol="igos", mask_size=(4, 8), step=8, substrate=sub)
    small = F.adaptive_avg_pool2d(heat[:, None], (4, 8))[:, 0]
    torch.testing.assert_close(r3, _deletion_by_hand(tiny_cnn, x, small, [1], sub).float(), rtol=1e-5, atol=1e-6)


def test_rise_protocol_of_igos_uses_its_pixel_map(tiny_cnn, images):
    x = images[:1]
    e = _igos_explanation(_contrast_mask(), [0])
    torch.testing.assert_close(metrics.deletion(tiny_cnn, x, e, step=16),
                               metrics.deletion(tiny_cnn, x, e.heatmap(), target=[0], step=16))


def _signed_explanation(targets=(0, 1, 2)) -> Explanation:
    g = torch.Generator().manual_seed(8)
    return Explanation(method="smoothtaylor", attributions=torch.randn(3, 3, 16, 16, generator=g),
                       targets=torch.tensor(list(targets)), scores=torch.zeros(3), params={}, seed=0,
                       heatmap_defaults={"sign": "signed", "channels": "sum", "clip": 99})


def test_every_metric_takes_an_explanation(tiny_cnn, images):
    x01 = (images - images.min()) / (images.max() - images.min())   # identity preprocessing
    for e in (sk.explain(tiny_cnn, x01, "gradient", target=[4, 1, 3]), _signed_explanation((4, 1, 3))):
        if e.signed:
            heat = e.attributions.sum(1).abs()                    # |signed channel sum|
        else:
            heat = e.heatmap()                                    # the method's default heatmap
        tv = e.attributions.sum(1)                                # signed channel sum of the raw attributions
        maps = explanation_maps(e)
        torch.testing.assert_close(maps.heat, heat)
        torch.testing.assert_close(maps.tv, tv)
        assert maps.cells is None
        cls = [4, 1, 3]
        for fn in (metrics.deletion, metrics.insertion):
            torch.testing.assert_close(fn(tiny_cnn, x01, e, step=32), fn(tiny_cnn, x01, heat, target=cls, step=32))
            torch.testing.assert_close(fn(tiny_cnn, x01, e, step=32, protocol="igos", mask_size=4),
                                       fn(tiny_cnn, x01, heat, target=cls, step=32, protocol="igos", mask_size=4))
        opts = dict(window=3, regions=3, draws=3, seed=1)
        torch.testing.assert_close(aupc(tiny_cnn, x01, e, **opts), aupc(tiny_cnn, x01, heat, target=cls, **opts))
        for fn in (metrics.average_drop, metrics.increase_in_confidence):
            torch.testing.assert_close(fn(tiny_cnn, x01, e), fn(tiny_cnn, x01, heat, target=cls))
        torch.testing.assert_close(allegiance(tiny_cnn, x01, e), allegiance(tiny_cnn, x01, heat))
        a, b = total_variation(e, min_size=8), total_variation(tv, min_size=8)
        torch.testing.assert_close(a["autvc"], b["autvc"])
        masks = torch.zeros(3, 16, 16, dtype=torch.bool)
        masks[:, 4:10, 5:12] = True
        for fn in (metrics.pointing_game, metrics.energy_pointing_game, metrics.relevance_mass,
                   metrics.relevance_rank):
            torch.testing.assert_close(fn(e, masks), fn(heat, masks), equal_nan=True)
        # an explicit target still wins over the explanation's
        torch.testing.assert_close(metrics.deletion(tiny_cnn, x01, e, target="predicted", step=32),
                                   metrics.deletion(tiny_cnn, x01, heat, step=32))


def test_explanation_checks(tiny_cnn, images):
    e = _signed_explanation()
    with pytest.raises(ValueError, match="3 maps, x has 2 images"):
        metrics.deletion(tiny_cnn, images[:2], e)
    custom = _signed_explanation((-1, -1, -1))
    with pytest.raises(ValueError, match="target"):
        metrics.deletion(tiny_cnn, images, custom)
    metrics.deletion(tiny_cnn, images, custom, target=[0, 1, 2], step=64)   # fine with explicit classes
    with pytest.raises(TypeError, match="saliency"):
        metrics.deletion(tiny_cnn, images, [[0.0]])


def test_evaluate_igos_row_uses_the_mask():
    model = tiny_cnn_32()
    g = torch.Generator().manual_seed(3)
    x01 = torch.rand(1, 3, 32, 32, generator=g)
    opts = {"iterations": 3, "ig_steps": 3, "mask_size": 8, "l1": 0.01, "tv": 0.1}   # a mask that moves
    res = evaluate_images(model, [("photo", x01[0])], ["igos"], ["deletion_igos", "deletion"], seed=0,
                          method_options={"igos": opts})
    row = {r["metric"]: r["value"] for r in res.rows}
    x = model.saliencekit_preprocessing.normalize(x01)
    with torch.no_grad():
        cls = model(x).argmax(1)
    e = sk.explain(model, x, "igos", target=cls, seed=0, image_ids=[image_id("photo")], **opts)
    cells = 1 - e.extras["mask"][:, 0]
    assert cells.shape == (1, 8, 8) and cells.unique().numel() > 10, "the test needs a non-trivial I-GOS mask"
    from saliencekit.core.imageops import gaussian_blur
    # step 224 of 1024 pixels = round(224 * 64 / 1024) = 14 of the 64 cells per step
    ref = _deletion_by_hand(model, x, cells, cls.tolist(), gaussian_blur(x, 51, 50.0), per=14)
    assert row["deletion_igos"] == pytest.approx(float(ref[0]), abs=1e-6)
    assert row["deletion_igos"] == pytest.approx(float(metrics.deletion(model, x, e, protocol="igos")[0]), abs=1e-6)
    via_heat = metrics.deletion(model, x, e.heatmap(), target=cls, protocol="igos", mask_size=8)
    assert abs(row["deletion_igos"] - float(via_heat[0])) > 1e-4    # the bilinear round trip ranks otherwise
    assert row["deletion"] == pytest.approx(float(metrics.deletion(model, x, e)[0]), abs=1e-6)
