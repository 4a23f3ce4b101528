"""Bring your own model: a small CNN saved in every format ``load_model`` and ``--model`` accept
(TorchScript, a torch.export program, ``package.module:callable``, an architecture plus a
state_dict, a trusted pickle), loaded with its own preprocessing and class names, explained,
evaluated and served by the web explorer; every refusal names its argument or option."""

from __future__ import annotations

import copy
import csv
import json
import pickle
import textwrap
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TinyCNN, _init, write_photos

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.models import ModelError, ModelSpec, load_model, model_spec, read_labels

SIZE = 16
LABELS = ["ant", "bee", "cat", "dog", "eel"]
FACTORY = textwrap.dedent("""
    import torch
    from conftest import TinyCNN, _init

    def build():
        torch.manual_seed(0)
        return _init(TinyCNN(), 0)

    def wide():
        return _init(TinyCNN(width=4), 0)

    def not_a_module():
        return 3

    def broken():
        raise RuntimeError("no weights here")
""")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model (its reference outputs) and the same weights in every format, a labels file, photos."""
    d = tmp_path_factory.mktemp("models")
    net = _init(TinyCNN(), 0)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = {"dir": d, "net": net, "x": x}
    torch.jit.save(torch.jit.script(net), d / "scripted.pt")
    torch.jit.save(torch.jit.trace(net, x), d / "traced.pt")
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(ep, d / "program.pt2")
    fixed = torch.export.export(net, (x[:1],))
    torch.export.save(fixed, d / "fixed_batch.pt2")
    torch.save(net.state_dict(), d / "state.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, d / "ddp_ckpt.pt")
    torch.save(net, d / "whole.pt")
    (d / "mymodels.py").write_text(FACTORY)
    (d / "labels.txt").write_text("\n".join(LABELS) + "\n\n")
    write_photos(d / "photos", 2, seed=0, prefix="p", hw=(20, 24))
    return out


@pytest.fixture
def in_dir(files, monkeypatch):
    """Run in the models' folder: ``mymodels:build`` is importable from the current directory."""
    monkeypatch.chdir(files["dir"])
    return files["dir"]


FORMATS = [("scripted.pt", {}), ("traced.pt", {}), ("program.pt2", {}), ("mymodels:build", {}),
           ("mymodels:build", {"weights": "state.pt"}), ("mymodels:build", {"weights": "ddp_ckpt.pt"}),
           ("whole.pt", {"trust_model_file": True})]


@pytest.mark.parametrize("name,kw", FORMATS)
def test_every_format_loads_the_same_model(files, in_dir, name, kw):
    net = load_model(name, input_size=SIZE, labels="labels.txt", **kw)
    assert not net.training
    spec = net.saliencekit_preprocessing
    assert (spec.size, spec.resize) == (SIZE, round(SIZE * 256 / 224)) and spec.mean == (0.485, 0.456, 0.406)
    assert list(sk.models.class_names(net)) == LABELS and net.saliencekit_name == name
    x, ref = files["x"], files["net"]
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))
    torch.testing.assert_close(sk.explain(net, x, "gradient").attributions,
                               sk.explain(ref, x, "gradient").attributions)


def test_without_labels_classes_are_indices_and_named_models_keep_imagenet(in_dir):
    net = load_model("program.pt2")
    assert sk.models.class_names(net) is None
    assert net.saliencekit_preprocessing.size == SIZE          # the program's fixed input size
    plain = model_spec("efficientnet-lite0")
    assert plain.plain and plain.identity() == "efficientnet-lite0"
    assert len(plain.preprocessing().class_names) == 1000
    assert model_spec("efficientnet-lite0", weights="state.pt").preprocessing().class_names is None


def test_preprocessing_options_are_the_models(in_dir):
    net = load_model("scripted.pt", input_size=32, resize=40, mean=[0.5], std=(0.25, 0.5, 1.0))
    spec = net.saliencekit_preprocessing
    assert (spec.size, spec.resize, spec.mean, spec.std) == (32, 40, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    x = sk.load_images(np.full((50, 60, 3), 128, np.uint8), preprocessing=spec)
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(128 / 255 - 0.5) / s for s in (0.25, 0.5, 1.0)]))


@pytest.mark.parametrize("kw,arg,words", [
    ({"input_size": 0}, "input_size", "positive"),
    ({"input_size": 32, "resize": 30}, "resize", "at least the input size"),
    ({"resize": 8}, "resize", "at least the input size"),
    ({"mean": [0.5, 0.5]}, "mean", "3 numbers"),
    ({"std": [0.2, 0, 0.2]}, "std", "positive"),
    ({"mean": ["a"]}, "mean", "3 numbers"),
    ({"labels": "nope.txt"}, "labels", "no such file"),
    ({"weights": "nope.pt"}, "weights", "no such file"),
    ({"weights": "whole.pt"}, "weights", "weights_only"),
    ({"weights": "scripted.pt"}, "weights", "whole model"),
])
def test_bad_arguments_name_the_argument(in_dir, kw, arg, words):
    with pytest.raises(ModelError) as e:
        load_model("mymodels:build", **kw)
    assert e.value.argument == arg and str(e.value).startswith(f"{arg}: ") and words in str(e.value)


@pytest.mark.parametrize("name,words", [
    ("whole.pt", "runs code"),
    ("state.pt", "--weights"),
    ("missing.pt", "no such model file"),
    ("nomodule:build", "cannot import 'nomodule'"),
    ("mymodels:nothing", "no attribute 'nothing'"),
    ("mymodels:not_a_module", "returned int; expected a torch.nn.Module"),
    ("mymodels:broken", "RuntimeError: no weights here"),
    ("fixed_batch.pt2", "dynamic batch"),
    ("labels.txt", "not a file torch writes"),
    ("resnet-9000", "unknown model"),
])
def test_model_sources_refused_clearly(in_dir, name, words):
    with pytest.raises(ModelError) as e:
        load_model(name)
    assert e.value.argument == "name" and words in str(e.value)


def test_a_pickle_loads_only_when_trusted(in_dir):
    with pytest.raises(ModelError, match="trust_model_file=True") as e:
        model_spec("whole.pt")
    assert "TinyCNN" in str(e.value)            # the classes unpickling would run are named
    assert isinstance(load_model("whole.pt", trust_model_file=True), TinyCNN)


def test_weights_that_do_not_fit_name_keys_and_shapes(in_dir):
    with pytest.raises(ModelError, match="shape mismatch") as e:
        load_model("mymodels:wide", weights="state.pt")
    assert e.value.argument == "weights" and "features.0.weight (6, 3, 3, 3) vs (4, 3, 3, 3)" in str(e.value)
    with pytest.raises(ModelError, match="missing 296 key"):
        load_model("efficientnet-lite0", weights="state.pt")


def test_labels_in_every_format(tmp_path, in_dir):
    cases = {"list.json": json.dumps(LABELS), "dict.json": json.dumps({str(i): n for i, n in enumerate(LABELS)}),
             "keras.json": json.dumps({str(i): [f"n{i}", n] for i, n in enumerate(LABELS)}),
             "lines.txt": "\ufeff" + "\r\n".join(f"  {n} " for n in LABELS)}
    for fname, text in cases.items():
        (tmp_path / fname).write_text(text, encoding="utf-8")
        assert read_labels(tmp_path / fname) == tuple(LABELS), fname
    bad = {"gap.txt": ("a\n\nb\n", "line 2"), "broken.json": ('["a",\n "b"', "line 2"),
           "sparse.json": ('{"0": "a", "2": "c"}', "no name for class 1"),
           "key.json": ('{"x": "a"}', "not a class index"), "empty.txt": ("\n\n", "no class names"),
           "number.json": ('["a", 3]', "entry 1")}
    for fname, (text, words) in bad.items():
        (tmp_path / fname).write_text(text)
        with pytest.raises(ModelError, match=words) as e:
            read_labels(tmp_path / fname)
        assert e.value.argument == "labels"
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match="names 3 classes, but the model has 5 outputs"):
        load_model("scripted.pt", labels=tmp_path / "three.txt")


def test_export_program_keeps_layers_for_cams_and_copies(files, in_dir):
    net = load_model("program.pt2")
    x, ref = files["x"], files["net"]
    a = sk.explain(net, x, "gradcam", layer="features.3").attributions
    torch.testing.assert_close(a, sk.explain(ref, x, "gradcam", layer="features.3").attributions)
    torch.testing.assert_close(sk.explain(net, x, "gradcam").attributions, sk.explain(ref, x, "gradcam").attributions)
    twin = copy.deepcopy(net)                  # the web explorer predicts on a copy
    assert twin is not net and twin.saliencekit_preprocessing == net.saliencekit_preprocessing
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x))
    assert next(twin.parameters()).data_ptr() != next(net.parameters()).data_ptr()
    res = CliRunner().invoke(main, ["layers", "--model", "program.pt2"])
    assert res.exit_code == 0, res.output
    assert "features.3  Conv2d" in res.output and "* automatic CAM layer: features.4" in res.output


def test_torchscript_layers_are_refused_with_what_works(files, in_dir):
    net = load_model("scripted.pt", input_size=SIZE)
    with pytest.raises(TypeError, match="TorchScript module, which takes no forward hooks"):
        sk.explain(net, files["x"], "gradcam")
    res = CliRunner().invoke(main, ["layers", "--model", "scripted.pt"])
    assert res.exit_code == 1 and "TorchScript" in res.output and "gradcam" in res.output
    assert "torch.export" in res.output and "Traceback" not in res.output


def test_model_spec_is_picklable_for_ray_workers(files, in_dir, tmp_path, monkeypatch):
    spec = model_spec("mymodels:build", weights="state.pt", input_size=SIZE, labels="labels.txt")
    monkeypatch.chdir(tmp_path)                # a worker elsewhere: the spec carries absolute paths
    back = pickle.loads(pickle.dumps(spec))
    assert back == spec and isinstance(back, ModelSpec) and callable(back)
    net = back()                               # what a Ray worker calls (a zero-argument factory)
    with torch.no_grad():
        torch.testing.assert_close(net(files["x"]), files["net"](files["x"]))
    assert "state.pt sha256:" in spec.identity() and '"input_size": 16' in spec.identity()
    from saliencekit.evaluation import ray as ray_backend

    ray_backend._check_model(back)             # accepted as the model of the Ray backend


# ---- the commands ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [("program.pt2", []), ("scripted.pt", ["--input-size", "16"]),
                                        ("mymodels:build", ["--weights", "state.pt", "--input-size", "16"]),
                                        ("whole.pt", ["--trust-model-file", "--input-size", "16"])])
def test_cli_explain_on_every_format(files, in_dir, tmp_path, name, extra):
    out = tmp_path / "out"
    methods = ["-m", "gradient", "-m", "smoothgrad"] + ([] if name == "scripted.pt" else ["-m", "gradcam"])
    res = CliRunner().invoke(main, ["explain", "photos", "--model", name, *extra, "--labels", "labels.txt",
                                    *methods, "-o", "n_samples=2", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == name and [im["name"] for im in summary["images"]] == ["p0", "p1"]
    assert all(t["name"] in LABELS for im in summary["images"] for t in im["top5"])
    assert set(summary["methods"]) == {m for m in methods if m != "-m"}
    assert (out / "grid.png").is_file() and (out / "p0_gradient.png").is_file()


def test_cli_explain_torchscript_and_cams(in_dir, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", "photos", "--model", "scripted.pt", "--input-size", "16",
                                    "-m", "gradient", "-m", "gradcam", "--out", str(out)])
    assert res.exit_code == 2 and "gradcam capture a layer" in res.output and "torch.export" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["explain", "photos", "--model", "scripted.pt", "--input-size", "16",
                                    "-o", "n_samples=2", "-o", "n_steps=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipping gradcam, gradcampp, smoothgradcampp" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert "gradient" in summary["methods"] and "gradcam" not in summary["methods"]
    assert all(t["name"].isdigit() for t in summary["images"][0]["top5"])     # no labels: indices


@pytest.mark.parametrize("args,flag,words", [
    (["--model", "missing.pt"], "--model", "no such model file"),
    (["--model", "whole.pt"], "--model", "--trust-model-file"),
    (["--model", "state.pt"], "--model", "--weights"),
    (["--model", "mymodels:build", "--weights", "nope.pt"], "--weights", "no such file"),
    (["--model", "scripted.pt", "--labels", "nope.txt"], "--labels", "no such file"),
    (["--model", "scripted.pt", "--mean", "0.5,x"], "--mean", "comma-separated numbers"),
    (["--model", "scripted.pt", "--std", "0.5,0.5"], "--std", "3 numbers"),
    (["--model", "scripted.pt", "--input-size", "32", "--resize", "16"], "--resize", "at least"),
    (["--model", "scripted.pt", "--input-size", "0"], "--input-size", "x>=1"),
])
@pytest.mark.parametrize("command", ["explain", "evaluate", "layers", "bench", "serve"])
def test_every_command_refuses_bad_model_options_before_loading(in_dir, tmp_path, monkeypatch, command, args, flag,
                                                                 words):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr("saliencekit.models.load_model", no_load)
    extra = {"explain": ["--out", str(tmp_path / "o")], "evaluate": ["--out", str(tmp_path / "o")]}
    res = CliRunner().invoke(main, [command, *args, *extra.get(command, [])])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert flag in res.output and words in res.output
    assert not (tmp_path / "o").exists()


def test_cli_evaluate_on_a_program_resumes_by_its_identity(files, in_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "photos", "--model", "program.pt2", "--labels", "labels.txt", "--methods", "gradient,gradcam",
            "--metrics", "deletion,average_drop", "-M", "deletion.step=64", "--out", str(out), "--threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 and {r["method"] for r in rows} == {"gradient", "gradcam"}
    entry = json.loads(next((out / "blocks").glob("*.gradient.json")).read_text())
    assert "program.pt2 sha256:" in entry["config"]["model"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "resuming: 2 finished" in res.output


def test_web_api_serves_file_models(files, in_dir):
    from saliencekit.web import BackgroundServer, create_app

    for name, kw, methods in [("program.pt2", {}, ["smoothgrad", "gradcam"]),
                              ("scripted.pt", {"input_size": SIZE}, ["gradient", "gradcam"])]:
        net = load_model(name, labels="labels.txt", **kw)
        app = create_app(net, name, samples=[("stripes", np.indices((40, 40)).sum(0).astype(np.uint8) * 6)])
        with BackgroundServer(app) as url:
            info = _get(url, "/api/info")
            assert info["model"] == name and info["n_classes"] == 5 and info["input_size"] == SIZE
            choices = info["methods"]["gradcam"]["params"]["layer"]["choices"]
            assert ("features.3" in choices) if name.endswith("pt2") else choices == []
            img = _post(url, "/api/image?sample=stripes", b"")
            assert img["predicted"]["name"] in LABELS
            job = _post(url, "/api/explain", json.dumps({"image_id": img["image_id"], "methods": [
                {"name": m, "options": {"n_samples": 2} if m == "smoothgrad" else {}} for m in methods]}).encode())
            st = _wait(url, job["job"])
            if name.endswith("pt2"):
                assert st["state"] == "done", st
                assert [m["name"] for m in st["result"]["methods"]] == methods
                assert st["result"]["target_name"] in LABELS
            else:   # gradient shown; Grad-CAM fails alone (a TorchScript file takes no hooks)
                assert st["state"] == "done", st
                assert [m["name"] for m in st["result"]["methods"]] == ["gradient"]
                [failed] = st["result"]["failed"]
                assert failed["name"] == "gradcam" and "TorchScript" in failed["error"], st


def _get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.loads(r.read())


def _post(url, path, body):
    req = urllib.request.Request(url + path, data=body, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _wait(url, job, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _get(url, f"/api/jobs/{urllib.parse.quote(job)}")
        if st["state"] in ("done", "error", "cancelled"):
            return st
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_cli_serve_loads_a_model_file(in_dir, monkeypatch):
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **k: calls.update(app=app))
    res = CliRunner().invoke(main, ["serve", "--model", "program.pt2", "--labels", "labels.txt", "--threads", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "model program.pt2" in res.output and torch.get_num_threads() == 1
    explorer = calls["app"].state.explorer
    assert explorer.names == tuple(LABELS) and "features.3" in explorer.layers
    calls["app"].state.jobs.stop()


def test_cli_evaluate_on_ray_loads_a_file_model_from_its_spec(files, in_dir, tmp_path):
    """Ray workers load the model from the picklable spec: the same bytes as the one-thread local run."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        args = ["evaluate", "photos", "--model", "program.pt2", "--methods", "gradient,smoothgrad", "--metrics",
                "deletion", "-M", "deletion.step=64", "-o", "smoothgrad.n_samples=2", "--threads", "1"]
        loc = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "local")])
        assert loc.exit_code == 0, loc.output
        rr = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1"])
        assert rr.exit_code == 0, rr.output + repr(rr.exception)
        assert (tmp_path / "ray" / "results.csv").read_bytes() == (tmp_path / "local" / "results.csv").read_bytes()
    finally:
        from saliencekit.evaluation import ray as dist

        dist.shutdown_workers()
        if started:
            ray.shutdown()
