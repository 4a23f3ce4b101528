"""AUPC, total variation, allegiance, confidence, sanity check and localisation vs loop / numpy references."""

import numpy as np
import pytest
import torch
from conftest import assert_same_state, aupc_windows_loop, model_state
from scipy.integrate import simpson

from saliencekit.core import noise
from saliencekit.evaluation import sanity_check
from saliencekit.metrics import (average_drop, energy_pointing_game, increase_in_confidence, pointing_game,
                                 relevance_mass, relevance_rank)
from saliencekit.metrics.allegiance import allegiance
from saliencekit.metrics.aupc import aupc
from saliencekit.metrics.total_variation import total_variation
from saliencekit.models import Preprocessing


def test_aupc_equals_loop(tiny_cnn, images):
    sal = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    w, regions, draws, seed = 3, 5, 4, 11
    ids = [7, 123, 4]
    before = model_state(tiny_cnn)
    res = aupc(tiny_cnn, images, sal, target=[0, 1, 2], window=w, regions=regions, draws=draws, seed=seed,
               image_ids=ids, return_curves=True, batch_size=3)
    assert_same_state(before, model_state(tiny_cnn))
    for i in range(3):
        cls = i
        cur = images[i].clone()
        with torch.no_grad():
            y0 = tiny_cnn(cur[None])[0, cls].item()
        ys = [y0]
        for r, (rr, cc) in enumerate(aupc_windows_loop(sal[i].numpy(), w, regions)):
            pat = noise.uniform((draws, 3, w, w), seed, ids[i], r, stream=noise.STREAM_METRIC)
            scores = []
            for d in range(draws):  # one forward per draw: the protocol written out
                t = cur.clone()
                t[:, rr:rr + w, cc:cc + w] = pat[d]  # identity preprocessing: pixels = model space
                with torch.no_grad():
                    scores.append(tiny_cnn(t[None])[0, cls].item())
            lower_mid = sorted(scores)[(draws - 1) // 2]  # the lower middle draw, first index on ties
            keep = scores.index(lower_mid)
            cur[:, rr:rr + w, cc:cc + w] = pat[keep]
            ys.append(float(np.mean(scores)))
        ref = np.array(ys) / abs(y0)
        np.testing.assert_allclose(res["curves"][i].numpy(), ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(res["auc"][i]), simpson(ref, dx=1), rtol=1e-4, atol=1e-5)
    # the result of one image does not depend on the batch it is in
    one = aupc(tiny_cnn, images[1:2], sal[1:2], target=[1], window=w, regions=regions, draws=draws, seed=seed,
               image_ids=ids[1:2])
    torch.testing.assert_close(one, res["auc"][1:2])


def _atv_numpy(level):
    a = np.abs(level)
    a = np.minimum(a, np.percentile(a, 99))
    a = (a - a.min()) / (a.max() - a.min())
    tv = 0.0
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            if r + 1 < a.shape[0]:
                tv += abs(a[r + 1, c] - a[r, c])
            if c + 1 < a.shape[1]:
                tv += abs(a[r, c + 1] - a[r, c])
    return tv / a.size


def test_total_variation_equals_numpy():
    from skimage.transform import pyramid_gaussian

    g = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 1, 70, 70, generator=g)
    maps[1] = torch.linspace(0, 1, 70).view(1, 1, 70).expand(1, 70, 70)  # smooth ramp: low TV
    res = total_variation(maps)
    for i in range(2):
        ref = []
        for lv in pyramid_gaussian(maps[i, 0].double().numpy(), downscale=1.5, channel_axis=None):
            if min(lv.shape) < 30:
                break
            ref.append(_atv_numpy(lv))
        assert res["atv"].shape[1] == len(ref) == 3  # 70, 47, 32
        np.testing.assert_allclose(res["atv"][i].numpy(), ref, rtol=1e-5)
        np.testing.assert_allclose(float(res["autvc"][i]), simpson(np.array(ref), dx=1), rtol=1e-5)
    assert res["autvc"][1] < res["autvc"][0]
    with pytest.raises(ValueError, match="min_size"):
        total_variation(torch.rand(1, 20, 20))


def test_allegiance_equals_loop(tiny_cnn):
    g = torch.Generator().manual_seed(9)
    x01 = torch.rand(3, 3, 16, 16, generator=g)
    sal = torch.rand(3, 16, 16, generator=g)
    sal[0, :8] = 0  # zeros are never occluded
    tiny_cnn.saliencekit_preprocessing = Preprocessing(size=16, resize=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    spec = tiny_cnn.saliencekit_preprocessing
    fr = (0.0, 0.1, 0.3, 0.5, 0.9)
    for mode, fill in (("black", 0.0), ("white", 1.0)):
        res = allegiance(tiny_cnn, x01, sal, mode=mode, fractions=fr, return_curves=True)
        for i in range(3):
            with torch.no_grad():
                pred = tiny_cnn(spec.normalize(x01[i:i + 1])).argmax(1).item()
            row = []
            for p in fr:
                # the authors' threshold: the descending-sorted map at index round(p * N)
                thr = sorted(sal[i].reshape(-1).tolist(), reverse=True)[round(p * 256)]
                t = x01[i].clone()
                for r in range(16):
                    for c in range(16):
                        v = float(sal[i, r, c])
                        if v > thr and v != 0:
                            t[:, r, c] = fill
                with torch.no_grad():
                    row.append(float(tiny_cnn(spec.normalize(t[None])).argmax(1).item() == pred))
            np.testing.assert_array_equal(res["curves"][i].numpy(), row)
            np.testing.assert_allclose(float(res["auc"][i]), np.trapezoid(row, fr), rtol=1e-6)
    with pytest.raises(ValueError, match="x01"):
        allegiance(tiny_cnn, x01 * 3 - 1, sal)


def test_average_drop_and_increase(tiny_cnn, images):
    sal = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) * 5 + 1
    tiny_cnn.saliencekit_preprocessing = Preprocessing(size=16, resize=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    spec = tiny_cnn.saliencekit_preprocessing
    drop = average_drop(tiny_cnn, images, sal, target=[0, 1, 2])
    inc = increase_in_confidence(tiny_cnn, images, sal, target=[0, 1, 2])
    for i in range(3):
        s = (sal[i] - sal[i].min()) / (sal[i].max() - sal[i].min())
        e = spec.normalize(spec.denormalize(images[i:i + 1]) * s)
        with torch.no_grad():
            y = torch.softmax(tiny_cnn(images[i:i + 1]), 1)[0, i].item()
            o = torch.softmax(tiny_cnn(e), 1)[0, i].item()
        assert float(drop[i]) == pytest.approx(100 * max(0.0, y - o) / y, rel=1e-4, abs=1e-5)
        assert float(inc[i]) == (100.0 if o > y else 0.0)


def test_average_drop_full_map_keeps_image(tiny_cnn, images):
    # a map that is 1 everywhere but one pixel keeps almost the whole image: a small drop
    sal = torch.ones(3, 16, 16)
    sal[:, 0, 0] = 0
    d = average_drop(tiny_cnn, images, sal)
    assert (d < 20).all()


def test_sanity_check_changes_maps_and_keeps_model(tiny_cnn, images):
    before = model_state(tiny_cnn)
    res = sanity_check(tiny_cnn, images, method="gradient", seed=0)
    assert_same_state(before, model_state(tiny_cnn))
    assert res["layers"][0] == "fc" and len(res["layers"]) == 4
    assert res["spearman"].shape == (4, 3) and res["ssim"].shape == (4, 3)
    assert (res["spearman"][-1].abs() < 0.9).all()  # fully randomised: the map has changed
    res2 = sanity_check(tiny_cnn, images, method="gradient_x_input", layers=1)
    assert res2["layers"] == ["fc"] and res2["spearman"].shape == (1, 3)
    with pytest.raises(ValueError, match="layers"):
        sanity_check(tiny_cnn, images, layers=0)


def test_pointing_and_mass():
    sal = torch.zeros(3, 40, 40)
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    sal[0, 15, 15] = 1.0   # inside
    sal[1, 30, 19] = 1.0   # 10 px below the mask: inside tolerance 15, not 5
    sal[2, 39, 39] = 1.0   # far
    torch.testing.assert_close(pointing_game(sal, masks), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(pointing_game(sal, masks, tolerance=5), torch.tensor([1.0, 0.0, 0.0]))
    sal2 = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    m = masks.float()
    ref = (sal2 * m).sum((1, 2)) / sal2.sum((1, 2))
    torch.testing.assert_close(relevance_mass(sal2, masks), ref)
    n = (sal2 - sal2.amin((1, 2), keepdim=True)) / (sal2.amax((1, 2), keepdim=True) - sal2.amin((1, 2), keepdim=True))
    torch.testing.assert_close(energy_pointing_game(sal2, masks), (n * m).sum((1, 2)) / n.sum((1, 2)))
    perfect = masks.float() + 0.01 * sal2
    torch.testing.assert_close(relevance_rank(perfect, masks), torch.ones(3))
    empty = torch.zeros_like(masks)
    assert torch.isnan(pointing_game(sal, empty)).all()
