"""The API's edges: input dtypes, models returning the wrong number of rows, NaN / inf outputs and
gradients, a short repr, saved files named after the images, titled pictures with a legend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliencekit as sk
from saliencekit import visualize
from saliencekit.api import NonFiniteWarning


# ---- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, opts", [("gradient", {}), ("smoothgrad", {"n_samples": 3}),
                                          ("integrated_gradients", {"n_steps": 4})])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_inputs_are_converted_to_the_models_dtype(tiny_cnn, images, method, opts, dtype):
    x = images.to(dtype)
    before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = sk.explain(tiny_cnn, x, method, seed=1, batch_size=4, **opts)
    ref = sk.explain(tiny_cnn, x.float(), method, seed=1, batch_size=4, **opts)
    assert e.attributions.dtype == torch.float32 and e.inputs.dtype == torch.float32
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=0, atol=0)
    assert torch.equal(e.targets, ref.targets)
    assert x.dtype == dtype and torch.equal(x, before)            # the caller's tensor is unchanged


def test_float32_input_to_a_float64_model(tiny_cnn, images):
    model = tiny_cnn.double()
    e = sk.explain(model, images, "gradient")
    assert e.attributions.dtype == torch.float64
    torch.testing.assert_close(e.attributions, sk.explain(model, images.double(), "gradient").attributions,
                               rtol=0, atol=0)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_conversion_that_overflows_is_refused_naming_x_and_both_dtypes(tiny_cnn, images):
    model = tiny_cnn.half()
    with pytest.raises(ValueError) as e:
        sk.explain(model, images.double() * 1e6, "gradient")
    msg = str(e.value)
    assert msg.startswith("x:") and "torch.float64" in msg and "torch.float16" in msg


# ---- rows of scores -----------------------------------------------------------------------------

class DropsARow(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:-1]


class AddsARow(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return torch.cat([out, out[:1]])


@pytest.mark.parametrize("wrapper, got", [(DropsARow, 2), (AddsARow, 4)])
@pytest.mark.parametrize("method, opts", [("gradient", {}), ("smoothgrad", {"n_samples": 2}),
                                          ("gradcam", {}), ("integrated_gradients", {"n_steps": 2})])
def test_wrong_number_of_rows_is_refused(tiny_cnn, images, wrapper, got, method, opts):
    model = wrapper(tiny_cnn)
    with pytest.raises(ValueError) as e:
        sk.explain(model, images, method, batch_size=3, **opts)
    msg = str(e.value)
    assert msg.startswith("model:") and wrapper.__name__ in msg
    assert f"returned {got} rows" in msg and "batch of 3 images" in msg, msg


# ---- NaN and inf --------------------------------------------------------------------------------

class NanForMarkedImages(nn.Module):
    """NaN scores for images whose first pixel is above 100; NaN gradients (finite scores) for images
    whose first pixel is exactly 5."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        first = x[:, 0, 0, 0]
        out = out + 0 * torch.sqrt((first - 5.0).abs())[:, None]     # d sqrt(|t|)/dt at 0 is inf: 0 * inf
        return torch.where((first > 100)[:, None], torch.full_like(out, float("nan")), out)


def test_nan_outputs_and_gradients_are_warned_naming_the_images(tiny_cnn, images):
    x = images.clone()
    x[1, 0, 0, 0] = 1000.0
    x[2, 0, 0, 0] = 5.0
    model = NanForMarkedImages(tiny_cnn)
    with pytest.warns(NonFiniteWarning) as rec:
        sk.explain(model, x, "gradient", names=["cat", "dog", "cup"])
    msgs = [str(w.message) for w in rec]
    assert any("outputs are NaN or infinite for image(s) 1 (dog)" in m for m in msgs), msgs
    assert any("gradients are NaN or infinite for image(s) 2 (cup)" in m for m in msgs), msgs
    assert not any("0 (cat)" in m for m in msgs)
    with pytest.warns(NonFiniteWarning, match=r"outputs are NaN or infinite for image\(s\) 1;"):
        sk.explain(model, x, "smoothgrad", n_samples=2, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk.explain(model, images, "gradient")                   # finite everywhere: no warning


# ---- repr, names, files -------------------------------------------------------------------------

def test_repr_is_short(tiny_cnn, images):
    e = sk.explain(tiny_cnn, torch.cat([images] * 4), "smoothgrad", n_samples=2, names=[f"im{i}" for i in range(12)])
    text = repr(e)
    assert text == str(e) and len(text) < 400, text
    assert text.startswith("Explanation(method='smoothgrad', shape=(12, 3, 16, 16)")
    assert "targets=[" in text and "... 4 more" in text and "n_samples=2" in text and "score='logit'" in text
    assert "im0" in text and "tensor(" not in text


def test_save_names_files_after_the_images(tiny_cnn, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("cat", "dog"):
        p = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    x = sk.load_images(paths, size=32, resize=32)
    assert x.image_names == ["cat", "dog"]
    e = sk.explain(tiny_cnn, x, "gradient")
    assert e.names == ["cat", "dog"]
    written = {p.name for p in e.save(tmp_path / "a")}
    assert {"cat_gradient.png", "dog_gradient.png"} <= written
    # arrays have no names: image{i}; mixed: the known ones kept
    arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert not hasattr(sk.load_images(arr, size=32, resize=32), "image_names")
    assert sk.load_images([paths[0], arr], size=32, resize=32).image_names == ["cat", "image1"]
    e2 = sk.explain(tiny_cnn, x.clone(), "gradient")                 # a new tensor: names unknown
    assert {"image0_gradient.png", "image1_gradient.png"} <= {p.name for p in e2.save(tmp_path / "b")}
    # explicit names, made safe and unique; save(names=) overrides
    e3 = sk.explain(tiny_cnn, x, "gradient", names=["a/b", "a/b"])
    assert {"a_b_gradient.png", "a_b_2_gradient.png"} <= {p.name for p in e3.save(tmp_path / "c")}
    assert "z_gradient.png" in {p.name for p in e3.save(tmp_path / "d", names=["z", "y"])}
    with pytest.raises(ValueError, match="^names: expected 2 names"):
        sk.explain(tiny_cnn, x, "gradient", names=["one"])
    with pytest.raises(ValueError, match="^names: expected 2 names"):
        e3.save(tmp_path / "e", names=["one"])
    with pytest.raises(TypeError, match="^names:"):
        sk.explain(tiny_cnn, x, "gradient", names="cat")


def test_saved_pictures_carry_a_title_and_a_colour_bar(tiny_cnn, images, tmp_path):
    e = sk.explain(tiny_cnn, images, "gradient", names=["a", "b", "c"])
    heat = e.heatmap().numpy()
    png = e.save(tmp_path / "ann")[0]
    pic = np.asarray(Image.open(png))
    assert pic.shape[0] > heat.shape[1] + 40 and pic.shape[1] > heat.shape[2]   # room for title and bar
    bare = np.asarray(Image.open(e.save(tmp_path / "bare", annotate=False)[0]))
    np.testing.assert_array_equal(bare, visualize.overlay(e.pixels()[0], heat[0], "jet", 0.5))

    fig = visualize.map_figure(e.pixels()[0], heat[0], "a \u00b7 class 3 \u00b7 gradient", signed=False)
    texts = [t.get_text() for ax in fig.axes for t in [ax.title] + ax.get_xticklabels()]
    assert "a \u00b7 class 3 \u00b7 gradient" in texts and "0 (low)" in texts and "1 (high)" in texts
    fig = visualize.map_figure(None, heat[0], "t", signed=True)
    texts = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert "\u2212 lowers score" in texts and "raises score +" in texts

    st = sk.explain(tiny_cnn, images, "smoothtaylor", n_samples=2, names=["a", "b", "c"])
    assert st.signed
    signed_pic = np.asarray(Image.open(st.save(tmp_path / "st")[0]))
    assert signed_pic.shape[0] > heat.shape[1] + 40


def test_grid_titles_and_legends(tiny_cnn, images):
    import matplotlib.pyplot as plt

    e = sk.explain(tiny_cnn, images, "gradient", names=["a", "b", "c"])
    fig = e.plot()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == f"a: {e.target_names()[0]}" and titles.count("gradient") == 3
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert "0 (low)" in ticks and "1 (high)" in ticks
    plt.close(fig)
    pix = list(e.pixels())
    heat = list(e.heatmap().numpy())
    fig = visualize.grid(pix, {"gradient": heat, "smoothtaylor": heat}, row_titles=["a: x", "b: y", "c: z"],
                         signed={"smoothtaylor": True})
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert "\u2212 lowers score" in ticks and "raises score +" in ticks and "0 (low)" in ticks
    plt.close(fig)
