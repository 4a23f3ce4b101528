"""CAMs on token layers of a tiny ViT, on the real EfficientNet-Lite0, and through the CLI."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_state, model_state
from torch import nn

import saliencekit as sk


class Block(nn.Module):
    def __init__(self, d, heads=2):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, t):
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """Patch embedding (4x4), class token (+ optional register tokens), 2 blocks, head on the class token."""

    def __init__(self, d=8, n_classes=4, registers=0, max_tokens=64):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1 + registers, d))
        self.pos = nn.Parameter(torch.randn(1, max_tokens, d) * 0.1)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        t = t + self.pos[:, :t.shape[1]]
        return self.head(self.norm(self.blocks(t))[:, 0])


def vit(registers=0):
    torch.manual_seed(1)
    return TinyViT(registers=registers).eval()


def token_reference(model, layer, x, classes, prefix, grid_hw):
    """Grad-CAM on a token layer written out: drop the prefix tokens, re-grid, formula."""
    m = copy.deepcopy(model)
    mod = dict(m.named_modules())[layer]
    store = {}
    h = mod.register_forward_hook(lambda _m, i, o: store.__setitem__("a", o))
    try:
        out = m(x)
        g, = torch.autograd.grad(out.gather(1, torch.tensor(classes)[:, None]).sum(), store["a"])
    finally:
        h.remove()
    b, _n, c = g.shape

    def grid(t):
        return t[:, prefix:].reshape(b, *grid_hw, c).permute(0, 3, 1, 2)
    A, G = grid(store["a"].detach()), grid(g)
    return (G.mean(dim=(2, 3))[:, :, None, None] * A).sum(1, keepdim=True).clamp(min=0)


@pytest.mark.parametrize("registers,size,grid_hw", [(0, (16, 16), (4, 4)), (4, (16, 16), (4, 4)),
                                                    (0, (16, 32), (4, 8))])
def test_vit_token_layer_grid_inferred_and_prefix_dropped(registers, size, grid_hw):
    model = vit(registers)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    e = sk.explain(model, x, "gradcam", layer="blocks.1.norm1", target=[1, 3])
    assert_same_state(before, model_state(model))
    ref = token_reference(model, "blocks.1.norm1", x, [1, 3], 1 + registers, grid_hw)
    assert ref.abs().sum() > 0
    assert e.extras["cam"].shape == (2, 1) + grid_hw
    assert e.attributions.shape == (2, 1) + size
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-4, atol=1e-6)
    e2 = sk.explain(model, x, "gradcam", layer="blocks.1.norm1", target=[1, 3], prefix_tokens=1 + registers)
    torch.testing.assert_close(e2.attributions, e.attributions)


def test_vit_explicit_prefix_tokens_and_smooth_variant():
    model = vit(0)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="prefix_tokens"):
        sk.explain(model, x, "gradcam", layer="blocks.1.norm1", prefix_tokens=2)  # 15 tokens: no 4x4 grid
    a = sk.explain(model, x, "gradcampp", layer="blocks.1.norm1")
    b = sk.explain(model, x, "smoothgradcampp", layer="blocks.1.norm1", stdev=0.0, n_samples=1)
    torch.testing.assert_close(b.attributions, a.attributions, rtol=1e-6, atol=1e-7)
    u = sk.explain(model, x, "gradcam", layer="blocks.0.norm1",
                   target=sk.Units("blocks.1.norm1", positions=[(0, 1, 2)]))
    assert u.extras["cam"].shape == (1, 1, 4, 4)


def test_real_model_cams(real_model):
    x = sk.load_images([a for _, a in sk.sample_images()[:1]], preprocessing=sk.get_preprocessing(real_model))
    before = model_state(real_model)
    e = sk.explain(real_model, x, "gradcampp", channels=[0, 5, 7])
    assert_same_state(before, model_state(real_model))
    assert e.extras["layer"] == "_swish"  # the last 7x7 feature layer before pooling
    assert e.extras["cam"].shape == (1, 1, 7, 7) and e.attributions.shape == (1, 1, 224, 224)
    assert e.extras["weights"].shape == (1, 1280)
    full = sk.explain(real_model, x, "gradcam", layer="_swish")
    assert full.heatmap().amax() == 1 and full.heatmap().amin() == 0


def test_cli_layers_lists_shapes_and_the_automatic_layer():
    from saliencekit.cli import main

    r = CliRunner().invoke(main, ["layers"])
    assert r.exit_code == 0, r.output
    assert "_blocks.15._project_conv" in r.output
    assert "1 x 1280 x 7 x 7" in r.output
    assert "* automatic CAM layer: _swish" in r.output
    r = CliRunner().invoke(main, ["layers", "--model", "nope"])
    assert r.exit_code != 0


def test_cli_explain_gradcampp_with_layer_and_channels(tmp_path):
    from saliencekit.cli import main
    from saliencekit.visualize import save_png

    name, arr = sk.sample_images()[0]
    img = save_png(arr, tmp_path / f"{name}.png")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(img), "--method", "gradcampp", "--layer", "_blocks.15",
                                  "--channels", "0,5,7", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / f"{name}_gradcampp.png").is_file()
    saved = torch.load(out / "tensors" / "gradcampp.pt")
    assert saved["cam"].shape == (1, 1, 7, 7)
    r = CliRunner().invoke(main, ["explain", str(img), "--method", "gradcam", "--layer", "_block.15",
                                  "--out", str(out)])
    assert r.exit_code != 0 and "_blocks.15" in r.output
