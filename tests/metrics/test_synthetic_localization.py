"""Synthetic shapes: ground truth, the seeded small CNN, and the pointing game against a centre prior."""

import pytest
import torch

import saliencekit as sk
from saliencekit.metrics import energy_pointing_game, pointing_game, relevance_mass
from saliencekit.synthetic import SPEC, synthetic_model, synthetic_shapes


def test_dataset_is_seeded_and_prefix_stable():
    a = synthetic_shapes(6, seed=3)
    b = synthetic_shapes(3, seed=3)
    c = synthetic_shapes(3, seed=4)
    assert a.images.shape == (6, 3, 48, 48) and a.masks.shape == (6, 48, 48) and a.labels.shape == (6,)
    assert torch.equal(a.images[:3], b.images) and torch.equal(a.masks[:3], b.masks)
    assert not torch.equal(b.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert (a.masks.flatten(1).sum(1) > 20).all()
    # the mask marks the object: one uniform colour inside
    for i in range(6):
        inside = a.images[i][:, a.masks[i]]
        assert inside.std(1).max() < 1e-6
    with pytest.raises(ValueError, match="n"):
        synthetic_shapes(0)


@pytest.fixture(scope="module")
def trained():
    model = synthetic_model(seed=0)
    test = synthetic_shapes(400, seed=2024)  # held out (training uses seed + 1_000_003)
    return model, test


def test_model_accuracy(trained):
    model, test = trained
    with torch.no_grad():
        correct = int((model(SPEC.normalize(test.images)).argmax(1) == test.labels).sum())
    n = len(test.labels)
    # integer comparison: a float32 mean of exactly 95% rounds to 0.94999999
    assert correct * 100 >= 95 * n, f"accuracy {correct}/{n}"


def test_pointing_game_beats_centre_prior(trained):
    model, test = trained
    x, masks, labels = SPEC.normalize(test.images[:60]), test.masks[:60], test.labels[:60]
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    centre = torch.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * (h / 6) ** 2))
    centre = centre.expand(x.shape[0], h, w)
    tol = 3  # 15 px at 224 px, scaled to 48 px
    base_pg = pointing_game(centre, masks, tolerance=tol).mean()
    base_mass = relevance_mass(centre, masks).mean()
    names = ["gradient", "smoothgrad"] + [m for m in ("gradcam", "gradcampp") if m in sk.list_methods()]
    opts = {"smoothgrad": {"n_samples": 4}}
    for name in names:
        e = sk.explain(model, x, name, target=labels, **opts.get(name, {}))
        heat = e.heatmap()
        if heat.shape[-2:] != (h, w):
            heat = torch.nn.functional.interpolate(heat[:, None], size=(h, w), mode="bilinear")[:, 0]
        pg = pointing_game(heat, masks, tolerance=tol).mean()
        assert pg > base_pg + 0.2, (name, float(pg), float(base_pg))
        assert relevance_mass(heat, masks).mean() > base_mass, name
        assert energy_pointing_game(heat, masks).mean() > energy_pointing_game(centre, masks).mean()
