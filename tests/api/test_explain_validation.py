"""Bad input is refused with a ValueError / TypeError whose message starts with the argument's name."""

from __future__ import annotations

import pytest
import torch

import saliencekit as sk


def _refused(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(f"{name}:"), str(info.value)
    return str(info.value)


def test_three_d_tensor(tiny_cnn, images):
    msg = _refused(ValueError, "x", sk.explain, tiny_cnn, images[0], "gradient")
    assert "4-D" in msg


def test_integer_dtype(tiny_cnn, images):
    _refused(TypeError, "x", sk.explain, tiny_cnn, (images * 10).to(torch.int64), "gradient")
    _refused(TypeError, "x", sk.explain, tiny_cnn, (images > 0), "gradient")


def test_not_a_tensor(tiny_cnn, images):
    _refused(TypeError, "x", sk.explain, tiny_cnn, images.numpy(), "gradient")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf(tiny_cnn, images, bad):
    x = images.clone()
    x[1, 2, 3, 4] = bad
    _refused(ValueError, "x", sk.explain, tiny_cnn, x, "gradient")


def test_empty_batch(tiny_cnn, images):
    _refused(ValueError, "x", sk.explain, tiny_cnn, images[:0], "gradient")


def test_model_not_a_module(images):
    _refused(TypeError, "model", sk.explain, lambda x: x, images, "gradient")


@pytest.mark.parametrize("target", [5, -1, [0, 1, 7], torch.tensor([0, 9, 1])])
def test_target_out_of_range(tiny_cnn, images, target):
    msg = _refused(ValueError, "target", sk.explain, tiny_cnn, images, "gradient", target=target)
    assert "out of range" in msg


def test_target_wrong_count_and_type(tiny_cnn, images):
    _refused(ValueError, "target", sk.explain, tiny_cnn, images, "gradient", target=[0, 1])
    _refused(TypeError, "target", sk.explain, tiny_cnn, images, "gradient", target=torch.tensor([0.0, 1.0, 2.0]))
    _refused(ValueError, "target", sk.explain, tiny_cnn, images, "gradient", target="top1")
    _refused(TypeError, "target", sk.explain, tiny_cnn, images, "gradient", target=True)
    import numpy as np

    _refused(TypeError, "target", sk.explain, tiny_cnn, images, "gradient", target=np.array([0.5, 1.0, 2.0]))
    _refused(ValueError, "target", sk.explain, tiny_cnn, images, "gradient", target=np.array([0, 1, 5]))


def test_score_space_with_custom_target_refused(tiny_cnn, images):
    """A callable target gets the raw outputs; a score space would be silently ignored."""
    _refused(ValueError, "score", sk.explain, tiny_cnn, images, "smoothgrad", target=lambda o: o[:, 0],
             score="softmax")


def test_unknown_method(tiny_cnn, images):
    msg = _refused(ValueError, "method", sk.explain, tiny_cnn, images, "smoothgard")
    assert "smoothgrad" in msg  # a close-match hint
    _refused(TypeError, "method", sk.explain, tiny_cnn, images, 3)


def test_unknown_option(tiny_cnn, images):
    msg = _refused(TypeError, "n_sample", sk.explain, tiny_cnn, images, "smoothgrad", n_sample=3)
    assert "n_samples" in msg
    _refused(TypeError, "n_steps", sk.explain, tiny_cnn, images, "gradient", n_steps=3)


@pytest.mark.parametrize("method,option", [("smoothgrad", "n_samples"), ("smoothtaylor", "n_samples"),
                                           ("integrated_gradients", "n_steps"),
                                           ("integrated_gradients", "baseline_draws")])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_counts(tiny_cnn, images, method, option, value):
    opts = {option: value}
    if option == "baseline_draws":
        opts["baseline"] = "uniform"
    _refused(ValueError, option, sk.explain, tiny_cnn, images, method, **opts)


@pytest.mark.parametrize("value", [2.5, "10", None])
def test_non_integer_counts(tiny_cnn, images, value):
    _refused(TypeError, "n_samples", sk.explain, tiny_cnn, images, "smoothgrad", n_samples=value)


def test_smoothgrad_options_validated_even_when_unused(tiny_cnn, images):
    """rule / n_steps only matter for base=integrated_gradients, but a typo must not pass silently."""
    _refused(ValueError, "rule", sk.explain, tiny_cnn, images, "smoothgrad", n_samples=2, rule="simpson")
    _refused(ValueError, "n_steps", sk.explain, tiny_cnn, images, "smoothgrad", n_samples=2, n_steps=0)
    _refused(ValueError, "baseline", sk.explain, tiny_cnn, images, "smoothgrad", n_samples=2, baseline="grey")


def test_bad_rule(tiny_cnn, images):
    msg = _refused(ValueError, "rule", sk.explain, tiny_cnn, images, "integrated_gradients", rule="simpson")
    assert "gausslegendre" in msg


def test_bad_baseline(tiny_cnn, images):
    _refused(ValueError, "baseline", sk.explain, tiny_cnn, images, "integrated_gradients", baseline="grey")
    _refused(ValueError, "baseline", sk.explain, tiny_cnn, images, "integrated_gradients",
             baseline=torch.zeros(3, 3, 15, 16))
    _refused(ValueError, "baseline", sk.explain, tiny_cnn, images, "integrated_gradients",
             baseline=torch.zeros(2, 3, 16, 16))


def test_baseline_broadcasts(tiny_cnn, images):
    """A single C x H x W (or 1 x C x H x W) baseline is shared by all images."""
    b = torch.randn(3, 16, 16)
    a1 = sk.explain(tiny_cnn, images, "integrated_gradients", baseline=b, n_steps=4).attributions
    a2 = sk.explain(tiny_cnn, images, "integrated_gradients", baseline=b.expand(3, 3, 16, 16), n_steps=4)
    assert torch.equal(a1, a2.attributions)


def test_bad_estimator_base_score(tiny_cnn, images):
    _refused(ValueError, "estimator", sk.explain, tiny_cnn, images, "smoothgrad", estimator="median")
    _refused(ValueError, "base", sk.explain, tiny_cnn, images, "smoothgrad", base="occlusion")
    _refused(ValueError, "score", sk.explain, tiny_cnn, images, "smoothgrad", score="probability")


@pytest.mark.parametrize("opt,val,exc", [("noise_level", -0.1, ValueError), ("noise_level", float("nan"), ValueError),
                                         ("stdev", -1.0, ValueError), ("stdev", "big", TypeError)])
def test_bad_noise(tiny_cnn, images, opt, val, exc):
    _refused(exc, opt, sk.explain, tiny_cnn, images, "smoothgrad", n_samples=2, **{opt: val})


def test_bad_smoothtaylor_noise(tiny_cnn, images):
    _refused(ValueError, "noise_scale", sk.explain, tiny_cnn, images, "smoothtaylor", noise_scale=-0.5)
    _refused(ValueError, "noise_percent", sk.explain, tiny_cnn, images, "smoothtaylor", noise_percent=-5)
    _refused(ValueError, "noise_scale", sk.explain, tiny_cnn, images, "smoothtaylor", noise_scale="auto")


@pytest.mark.parametrize("bs,exc", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_batch_size(tiny_cnn, images, bs, exc):
    _refused(exc, "batch_size", sk.explain, tiny_cnn, images, "smoothgrad", batch_size=bs)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_bad_seed(tiny_cnn, images, seed):
    _refused(TypeError, "seed", sk.explain, tiny_cnn, images, "smoothgrad", seed=seed)


def test_bad_top_k(tiny_cnn, images):
    _refused(ValueError, "top_k", sk.explain, tiny_cnn, images, "active", top_k=0)
    _refused(TypeError, "top_k", sk.explain, tiny_cnn, images, "inactive", top_k=1.5)


def test_model_with_wrong_output(images):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.mean(1)  # B x H x W

    _refused(ValueError, "model", sk.explain, Bad(), images, "gradient")


def test_heatmap_options(tiny_cnn, images):
    e = sk.explain(tiny_cnn, images, "gradient")
    _refused(ValueError, "sign", e.heatmap, sign="both")
    _refused(ValueError, "channels", e.heatmap, channels="median")
    _refused(ValueError, "clip", e.heatmap, clip=0)
    _refused(ValueError, "clip", e.heatmap, clip=101)
    _refused(TypeError, "heatmap", e.heatmap, cmap="jet")


def test_load_images_validation(tmp_path):
    import numpy as np

    _refused(ValueError, "items", sk.load_images, [])
    _refused(FileNotFoundError, "items", sk.load_images, tmp_path / "missing.jpg")
    _refused(ValueError, "items", sk.load_images, np.zeros((4, 4, 5), dtype=np.uint8))
    _refused(TypeError, "items", sk.load_images, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    _refused(ValueError, "items", sk.load_images, bad)


def test_load_model_validation():
    _refused(ValueError, "name", sk.load_model, "resnet-9000")
    _refused(TypeError, "name", sk.load_model, 3)
