"""The registries are the single source of truth: a method and a metric registered at runtime (no other
file touched) appear in `saliencekit methods`, `saliencekit evaluate --list`, the web explorer's method
list, and are evaluated by `evaluate_images`."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.core import engine
from saliencekit.evaluation import evaluate_images
from saliencekit.methods import REGISTRY, Option, Variant, register
from saliencekit.metrics import registry as metric_registry

TOY = "toy_doubled_gradient"
TOY_VARIANT = "toy_doubled_gradient_max"
TOY_METRIC = "toy_mean_heat"


def _toy_method(ctx, factor):
    """Toy: ``factor`` times the input gradient (a method defined in a test)."""
    out = torch.zeros(ctx.x.shape, dtype=engine.acc_dtype(ctx.x.dtype))

    def on_sample(i, j, g, point):
        out[i] = factor * g

    ctx.run(engine.Plan(ctx.n, 1, lambda img, smp, stp: ctx.x[img]), on_sample)
    return {"attributions": out}


def _mean_heat(model, x, saliency):
    """Toy: the mean of the map per image (a metric defined in a test)."""
    return saliency.float().mean((1, 2))


@pytest.fixture
def toys():
    register(TOY, defaults={"factor": 2.0}, ui={"factor": Option("float", "factor", 0.5, 4.0, help="scale")},
             cost=lambda o: 1, variants={TOY_VARIANT: Variant(TOY, heatmap={"channels": "max"})})(_toy_method)
    metric_registry.register(TOY_METRIC, fn=_mean_heat, higher_is_better=True, kind="scalar", space="model",
                             judge=lambda j, opts: (_mean_heat(j.model, j.x, j.heat), None))
    try:
        yield
    finally:
        REGISTRY.pop(TOY, None)
        metric_registry.METRICS.pop(TOY_METRIC, None)


def test_a_runtime_method_is_explained_and_listed(toys, tiny_cnn, images):
    e = sk.explain(tiny_cnn, images, TOY, target=1)
    ref = sk.explain(tiny_cnn, images, "gradient", target=1)
    torch.testing.assert_close(e.attributions, 2.0 * ref.attributions)
    assert TOY in sk.list_methods()
    out = CliRunner().invoke(main, ["methods"])
    assert out.exit_code == 0, out.output
    assert TOY in out.output and "factor=2.0" in out.output


def test_evaluate_list_shows_the_runtime_method_its_variant_and_the_metric(toys):
    out = CliRunner().invoke(main, ["evaluate", "--list"])
    assert out.exit_code == 0, out.output
    methods_line = next(line for line in out.output.splitlines() if line.startswith("methods:"))
    assert TOY in methods_line and TOY_VARIANT in methods_line
    assert TOY_METRIC in out.output


def test_the_web_explorer_offers_the_runtime_method(toys, tiny_cnn):
    from saliencekit.web import Explorer

    info = Explorer(tiny_cnn, "tiny").info()
    assert info["methods"][TOY]["params"]["factor"]["min"] == 0.5
    assert info["methods"][TOY]["params"]["factor"]["default"] == 2.0


def test_evaluate_images_runs_the_runtime_method_and_metric(toys, tiny_cnn):
    g = torch.Generator().manual_seed(3)
    items = [("a.png", torch.rand(3, 16, 16, generator=g)), ("b.png", torch.rand(3, 16, 16, generator=g))]
    res = evaluate_images(tiny_cnn, items, [TOY, TOY_VARIANT], [TOY_METRIC], batch_size=4)
    assert [(r["image"], r["method"], r["metric"]) for r in res.rows] == [
        ("a.png", TOY, TOY_METRIC), ("b.png", TOY, TOY_METRIC),
        ("a.png", TOY_VARIANT, TOY_METRIC), ("b.png", TOY_VARIANT, TOY_METRIC)]
    # the metric saw the method's own heatmap: the variant's max over channels differs from the sum
    values = {(r["image"], r["method"]): r["value"] for r in res.rows}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert values[("a.png", TOY)] != values[("a.png", TOY_VARIANT)]


def test_registration_refuses_ui_options_a_method_does_not_accept():
    with pytest.raises(ValueError, match="ui"):
        register("toy_bad", defaults={}, ui={"n_samples": Option("int", "samples", 1, 9)})(_toy_method)
    assert "toy_bad" not in REGISTRY


TOY_METHOD_FILE = '''from saliencekit.methods.base import register


@register("toy_file_method", defaults={})
def toy(ctx):
    """Toy method from a file."""
    return {"attributions": ctx.x * 0}
'''

TOY_METRIC_FILE = '''from saliencekit.metrics.registry import register


def f(model, x, saliency):
    """Toy metric from a file."""
    return saliency.mean((1, 2))


register("toy_file_metric", fn=f, higher_is_better=True, kind="scalar", space="model",
         judge=lambda j, o: (f(j.model, j.x, j.heat), None))
'''


def test_a_new_file_in_the_methods_or_metrics_package_is_registered(tmp_path, monkeypatch):
    """Adding a method or a metric is adding one file: the packages import every module they hold."""
    import sys

    import saliencekit.methods as methods_pkg
    import saliencekit.metrics as metrics_pkg

    for sub, name, text in (("m", "toy_file_method", TOY_METHOD_FILE), ("k", "toy_file_metric", TOY_METRIC_FILE)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{name}.py").write_text(text)
    monkeypatch.setattr(methods_pkg, "__path__", list(methods_pkg.__path__) + [str(tmp_path / "m")])
    monkeypatch.setattr(metrics_pkg, "__path__", list(metrics_pkg.__path__) + [str(tmp_path / "k")])
    try:
        methods_pkg.load_modules()
        metrics_pkg.load_modules()
        assert "toy_file_method" in sk.list_methods()
        assert "toy_file_metric" in metric_registry.METRICS
    finally:
        REGISTRY.pop("toy_file_method", None)
        metric_registry.METRICS.pop("toy_file_metric", None)
        sys.modules.pop("saliencekit.methods.toy_file_method", None)
        sys.modules.pop("saliencekit.metrics.toy_file_metric", None)
