"""`saliencekit explain` / `saliencekit methods` through click's CliRunner (tiny model; real model, bundled photos)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.cli.explain import default_methods
from saliencekit.methods import REGISTRY, register


def test_methods_lists_every_method_with_defaults():
    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 0, res.output
    for name in ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "smoothtaylor",
                 "positive", "negative", "active", "inactive"):
        assert f"{name}\n" in res.output
    assert "n_samples=50" in res.output and "noise_level=0.15" in res.output and "n_steps=50" in res.output
    assert set(sk.list_methods(details=True)) >= {"gradient", "smoothgrad"}
    assert sk.list_methods(details=True)["smoothtaylor"]["defaults"]["n_samples"] == 150
    lines = res.output.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == sorted(REGISTRY)
    score = {lines[i - 3]: lines[i] for i, line in enumerate(lines) if line.startswith("    score: ")}
    assert score["gradient"].startswith("    score: logit (default") and "default set" in score["gradient"]
    assert score["igos"].startswith("    score: softmax (default") and "default set" not in score["igos"]


def test_explain_default_set_is_the_registry_showcase():
    assert default_methods() == ["gradient", "smoothgrad", "integrated_gradients", "smoothtaylor", "positive",
                                 "negative", "gradcam", "gradcampp", "smoothgradcampp"]

    @register("toy_showcase", defaults={}, showcase=True)
    def toy(ctx):
        return {"attributions": ctx.x.detach().clone()}
    try:
        assert default_methods()[-1] == "toy_showcase"
        res = CliRunner().invoke(main, ["methods"])
        assert "toy_showcase\n" in res.output
    finally:
        REGISTRY.pop("toy_showcase")


def test_explain_passes_score_and_method_options(tiny_cnn, monkeypatch, tmp_path):
    """-o score=... becomes explain(score=...); other options reach the methods that accept them."""
    monkeypatch.setattr("saliencekit.models.load_model", lambda name, device="cpu": tiny_cnn)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", "--method", "gradient", "--method", "smoothgrad", "-o", "score=softmax",
                                    "-o", "n-samples=2", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "summary.json").read_text())
    grad, sg = summary["methods"]["gradient"], summary["methods"]["smoothgrad"]
    assert grad["params"] == {"score": "softmax"}
    assert sg["params"]["score"] == "softmax" and sg["params"]["n_samples"] == 2
    top1 = [im["top5"][0]["probability"] for im in summary["images"]]
    assert grad["scores"] == pytest.approx(top1, rel=1e-5)     # softmax of the predicted class


@pytest.mark.slow
def test_explain_on_the_bundled_samples(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", "--method", "gradient", "--method", "smoothgrad",
                                    "-o", "n_samples=2", "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (out / "grid.png").stat().st_size > 1000
    for img in ("chelsea", "coffee"):
        for m in ("gradient", "smoothgrad"):
            assert (out / f"{img}_{m}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    names = [im["name"] for im in summary["images"]]
    assert names == ["chelsea", "coffee"]
    top5 = {im["name"]: im["top5"] for im in summary["images"]}
    assert len(top5["chelsea"]) == 5 and all(isinstance(t["name"], str) for t in top5["chelsea"])
    assert 281 <= top5["chelsea"][0]["class_index"] <= 285 and "cat" in top5["chelsea"][0]["name"]
    assert top5["coffee"][0]["name"] in ("espresso", "cup", "coffee_mug", "eggnog")
    probs = [t["probability"] for t in top5["chelsea"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert summary["methods"]["smoothgrad"]["params"]["n_samples"] == 2
    assert summary["seed"] == 3
    t = torch.load(out / "tensors" / "smoothgrad.pt")
    assert t["attributions"].shape == (2, 3, 224, 224) and t["heatmap"].shape == (2, 224, 224)
    assert (out / "tensors" / "chelsea_gradient.png").is_file()
    assert "chelsea" in res.output


def test_explain_refuses_unknown_method(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--method", "smoothgard", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_explain_refuses_bad_target_and_option(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--method", "gradient", "--target", "cat", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--target" in res.output
    res = CliRunner().invoke(main, ["explain", "--method", "gradient", "-o", "n_samples", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "KEY=VALUE" in res.output
