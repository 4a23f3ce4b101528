"""The web explorer's server without a browser: a tiny model behind the real HTTP stack (uvicorn on
a free loopback port), driven with urllib. Bad input, limits, queueing, paths, and agreement of
the served maps and tensors with ``saliencekit.explain``."""

from __future__ import annotations

import builtins
import contextlib
import http.client
import io
import json
import logging
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from conftest import TinyCNN, _init, assert_same_state, model_state
from PIL import Image

import saliencekit
from saliencekit.models import get_preprocessing
from saliencekit.web import BackgroundServer, InputError, create_app, decode_image
from saliencekit.methods import REGISTRY, Option
from saliencekit.methods.gradient import input_gradients
from saliencekit.web.explorer import Explorer, Request, curve_metrics
from saliencekit.web.jobs import JobQueue
from saliencekit.web import explorer as explorer_module

SAMPLES = [("stripes", (np.indices((64, 96)).sum(0) % 16 * 16).astype(np.uint8)[..., None].repeat(3, 2))]


class Gated(TinyCNN):
    """TinyCNN whose forward can be held at a gate (to make a run last as long as the test wants)."""

    def __init__(self):
        super().__init__()
        self.gate = None          # threading.Event or None
        self.entered = None
        self.rows_seen = 0        # rows through forward (to see where a cancelled run stopped)

    def forward(self, x):
        self.rows_seen += x.shape[0]
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "test gate never opened"
        return super().forward(x)


def tiny():
    torch.manual_seed(0)
    return _init(Gated(), 0)


# ---- HTTP helpers ----------------------------------------------------------------------------

def call(url, path, data=None, method=None, headers=None):
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, status, ctype, hdrs = r.read(), r.status, r.headers.get("content-type", ""), r.headers
    except urllib.error.HTTPError as e:
        body, status, ctype, hdrs = e.read(), e.code, e.headers.get("content-type", ""), e.headers
    if ctype.startswith("application/json"):
        return status, json.loads(body), hdrs
    return status, body, hdrs


def png(arr_or_img, fmt="PNG") -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def photo(seed=0, size=(120, 90)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def explain_json(url, body):
    return call(url, "/api/explain", json.dumps(body).encode(), headers={"content-type": "application/json"})


def wait_job(url, job, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, st, _ = call(url, f"/api/jobs/{job}")
        assert status == 200
        if st["state"] in ("done", "error", "cancelled"):
            return st
        time.sleep(0.05)
    raise AssertionError("job did not finish")


@pytest.fixture(scope="module")
def server():
    model = tiny()
    app = create_app(model, "tiny", max_upload_bytes=200_000, max_pending=2, samples=SAMPLES)
    srv = BackgroundServer(app)
    url = srv.start()
    yield url, app, model
    srv.stop()


def upload(url, raw, name="photo.png"):
    return call(url, "/api/image?name=" + urllib.parse.quote(name), raw, headers={"content-type": "image/png"})


# ---- info, upload, predictions ------------------------------------------------------------------

def test_server_binds_loopback_and_sends_security_headers(server):
    url, _, _ = server
    assert url.startswith("http://127.0.0.1:")
    status, body, hdrs = call(url, "/")
    assert status == 200 and b"saliencekit explorer" in body
    assert "default-src 'self'" in hdrs["content-security-policy"]
    assert hdrs["x-content-type-options"] == "nosniff"
    status, body, _ = call(url, "/static/app.js")
    assert status == 200 and b"/api/explain" in body
    # a page on another origin that rebinds its DNS name to 127.0.0.1 sends its own Host: refused
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/info", headers={"Host": f"attacker.example:{port}"})
    assert conn.getresponse().status == 400
    conn.close()
    assert call(url.replace("127.0.0.1", "localhost"), "/api/info")[0] == 200


def test_info_is_built_from_the_registry(server):
    url, app, _ = server
    status, info, _ = call(url, "/api/info")
    assert status == 200
    registry = saliencekit.list_methods(details=True)
    assert list(info["methods"]) == list(registry)
    sg = info["methods"]["smoothgrad"]["params"]
    assert sg["n_samples"]["default"] == registry["smoothgrad"]["defaults"]["n_samples"]
    assert sg["noise_level"]["default"] == registry["smoothgrad"]["defaults"]["noise_level"]
    assert info["methods"]["gradient"]["params"] == {}
    assert info["methods"]["smoothtaylor"]["signed"] is True
    # the curves the page draws are the registry's model-space curve metrics without fixed options
    assert [s.name for s in curve_metrics()] == ["deletion", "insertion"]
    assert info["metrics"] is True
    assert info["samples"] == ["stripes"]
    assert info["n_classes"] == 5
    # layers offered for CAMs are the tiny model's spatial modules
    assert "features.0" in app.state.explorer.layers and "fc" not in app.state.explorer.layers


def test_upload_returns_the_models_top5(server):
    url, _, model = server
    arr = photo(1)
    status, r, _ = upload(url, png(arr))
    assert status == 200, r
    x = saliencekit.load_images(arr, preprocessing=get_preprocessing(model))
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[0]
    want = p.topk(5)
    assert [t["index"] for t in r["top5"]] == want.indices.tolist()
    np.testing.assert_allclose([t["probability"] for t in r["top5"]], want.values.numpy(), atol=1e-5)
    assert r["predicted"]["name"] == f"class {want.indices[0].item()}"
    status, body, hdrs = call(url, r["preview"])
    assert status == 200 and hdrs["content-type"] == "image/png"
    prev = np.asarray(Image.open(io.BytesIO(body)))
    assert prev.shape == (224, 224, 3)
    expected = saliencekit.load_images(arr, preprocessing=get_preprocessing(model), normalize=False)[0]
    np.testing.assert_allclose(prev / 255.0, expected.permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)


def test_sample_by_name_and_unknown_sample(server):
    url, _, _ = server
    status, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    assert status == 200 and r["name"] == "stripes"
    status, r, _ = call(url, "/api/image?sample=" + urllib.parse.quote("../../etc/passwd"), b"", method="POST")
    assert status == 400 and "Unknown sample" in r["error"]


# ---- bad input -------------------------------------------------------------------------------------

def test_non_image_and_corrupt_files_are_answered(server):
    url, _, _ = server
    status, r, _ = upload(url, b"%PDF-1.4 this is not an image", "doc.pdf")
    assert status == 400 and "not an image" in r["error"]
    good = png(photo(2))
    status, r, _ = upload(url, good[: len(good) // 2], "cut.png")
    assert status == 400 and "could not be decoded" in r["error"]
    status, r, _ = upload(url, b"", "empty.png")
    assert status == 400 and "empty" in r["error"]
    assert call(url, "/api/info")[0] == 200   # still serving


def test_upload_size_limit_announced_and_streamed(server):
    url, _, _ = server
    big = b"\x89PNG" + bytes(250_000)
    status, r, _ = upload(url, big)
    assert status == 413 and "limit" in r["error"]
    # no Content-Length: a chunked body is counted while it streams
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/image", body=iter([bytes(50_000)] * 6), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "content-type": "image/png"})
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()


def test_body_reading_stops_at_the_limit():
    """A streamed body is refused as soon as it passes the limit, not after buffering all of it."""
    import asyncio

    from starlette.requests import Request as StarletteRequest

    from saliencekit.web.app import _read_limited

    pulled = []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": bytes(60), "more_body": len(pulled) < 1000}

    req = StarletteRequest({"type": "http", "method": "POST", "path": "/api/image", "headers": []}, receive)
    with pytest.raises(InputError) as e:
        asyncio.run(_read_limited(req, 100, "upload"))
    assert e.value.status == 413 and len(pulled) == 2


def test_huge_image_downscaled_with_a_note_and_pixel_bombs_refused(server):
    url, _, _ = server
    wide = np.zeros((60, 3000, 3), np.uint8)
    wide[:, 1500:] = 200
    status, r, _ = upload(url, png(wide))
    assert status == 200
    assert any("downscaled to 1024x20" in n and "3000x60" in n for n in r["notes"]), r["notes"]
    with pytest.raises(InputError) as e:
        decode_image(png(photo(3, (200, 200))), max_pixels=10_000)
    assert e.value.status == 413 and "megapixels" in str(e.value)


def test_grayscale_rgba_and_palette_are_converted(server):
    url, _, _ = server
    gray = (np.indices((80, 80)).sum(0) % 255).astype(np.uint8)
    status, r, _ = upload(url, png(Image.fromarray(gray, "L")))
    assert status == 200 and any("grayscale" in n for n in r["notes"])
    prev = np.asarray(Image.open(io.BytesIO(call(url, r["preview"])[1]))).astype(int)
    assert np.array_equal(prev[..., 0], prev[..., 1]) and np.array_equal(prev[..., 1], prev[..., 2])

    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 255                      # red, but fully transparent: becomes white
    status, r, _ = upload(url, png(Image.fromarray(rgba, "RGBA")))
    assert status == 200 and any("transparency" in n for n in r["notes"])
    prev = np.asarray(Image.open(io.BytesIO(call(url, r["preview"])[1])))
    assert (prev == 255).all()

    pal = Image.fromarray(photo(4, (64, 64))).convert("P")
    im, notes = decode_image(png(pal))
    assert im.mode == "RGB" and any("palette" in n for n in notes)


def test_exif_orientation_is_applied(server):
    url, _, _ = server
    arr = np.zeros((60, 120, 3), np.uint8)
    arr[:, :60] = (255, 0, 0)                     # stored landscape: red left half, black right half
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6                              # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    status, r, _ = upload(url, buf.getvalue(), "portrait.jpg")
    assert status == 200
    assert "60x120" in r["crop"]                  # displayed as portrait: 60 wide, 120 high
    prev = np.asarray(Image.open(io.BytesIO(call(url, r["preview"])[1]))).astype(int)
    assert prev[10, 112, 0] > 200 and prev[-10, 112, 0] < 60   # red on top after rotation, black below


@pytest.mark.parametrize("patch, words", [
    ({"methods": [{"name": "smoothgrad", "options": {"n_samples": 0}}]}, ["samples", "out of range", "1 to 500"]),
    ({"methods": [{"name": "smoothgrad", "options": {"noise_level": 2.5}}]}, ["noise level", "out of range"]),
    ({"methods": [{"name": "smoothgrad", "options": {"n_samples": 2.5}}]}, ["samples", "whole number"]),
    ({"methods": [{"name": "smoothgrad", "options": {"noise_level": "lots"}}]}, ["noise level", "number"]),
    ({"methods": [{"name": "integrated_gradients", "options": {"n_steps": 100000}}]}, ["steps", "out of range"]),
    ({"methods": [{"name": "smoothgrad", "options": {"estimator": "median"}}]}, ["estimator", "mean"]),
    ({"methods": [{"name": "smoothgrad", "options": {"baseline": "blur"}}]}, ["baseline", "cannot be set"]),
    ({"methods": [{"name": "nosuchmethod"}]}, ["unknown method"]),
    ({"methods": []}, ["at least one method"]),
    ({"target": 5}, ["class", "out of range", "0 to 4"]),
    ({"target": "cat"}, ["class", "predicted"]),
    ({"metric_steps": 1}, ["curve steps"]),
])
def test_options_out_of_range_are_answered(server, patch, words):
    url, _, _ = server
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    body = {"image_id": r["image_id"], "target": "predicted", "methods": [{"name": "gradient"}]}
    body.update(patch)
    status, r, _ = explain_json(url, body)
    assert status == 400, r
    for w in words:
        assert w in r["error"], (w, r["error"])


def test_method_specific_ranges_follow_the_registry(server):
    url, _app, _ = server
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    cases = [({"name": "igos", "options": {"mask_size": 1000}}, ["mask size", "7 to 224"])]
    for cam in ("gradcam", "gradcampp", "smoothgradcampp"):
        cases.append(({"name": cam, "options": {"layer": "no.such.layer"}}, ["layer", "unknown layer"]))
    for method, words in cases:
        status, err, _ = explain_json(url, {"image_id": r["image_id"], "methods": [method]})
        assert status == 400
        for w in words:
            assert w in err["error"]


# The options the page shows per method, with their ranges (or choices); every other option of every
# method is refused. These come from each method's ``MethodSpec.ui``.
PAGE_OPTIONS = {
    "smoothgrad": {"n_samples": (1, 500), "noise_level": (0.0, 1.0), "estimator": ["mean", "square", "var"]},
    "smoothtaylor": {"n_samples": (1, 500), "noise_scale": (0.0, 5.0)},
    "integrated_gradients": {"n_steps": (1, 300)},
    "gradcam": {"layer": None},
    "gradcampp": {"layer": None},
    "smoothgradcampp": {"layer": None, "n_samples": (1, 500), "noise_level": (0.0, 1.0)},
    "igos": {"mask_size": (7, 224), "iterations": (1, 100), "preset": ["saliencekit", "aaai", "igos_pp"]},
}


def test_page_options_are_the_method_registrys(server):
    url, app, _ = server
    info = call(url, "/api/info")[1]
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    for name, m in info["methods"].items():
        shown = {}
        for key, p in m["params"].items():
            if p["kind"] == "layer":
                assert p["choices"] == app.state.explorer.layers
                shown[key] = None
            else:
                shown[key] = p["choices"] if p["kind"] == "choice" else (p["min"], p["max"])
        assert shown == PAGE_OPTIONS.get(name, {}), name
        assert list(m["params"]) == list(saliencekit.methods.get(name).ui)
        for key in sorted(set(saliencekit.methods.get(name).defaults) - set(shown))[:3]:
            status, err, _ = explain_json(url, {"image_id": r["image_id"],
                                                "methods": [{"name": name, "options": {key: 1}}]})
            assert status == 400 and err["error"] == f"{name}: option {key!r} cannot be set from the page."


def test_a_method_registered_at_runtime_appears_on_the_page(server):
    """No table in the web code: registering a method is enough for the page to offer it, with the
    options its ``ui`` lists, and to scale its progress bar by its ``cost``."""
    url, app, _ = server

    @saliencekit.methods.register("toy_scaled_gradient", defaults={"scale": 2.0, "offset": 0.0},
                                  ui={"scale": Option("float", "scale", 0.5, 4.0, help="multiplies the gradient")},
                                  cost=lambda o: 4)
    def toy(ctx, scale, offset):
        """Toy: the gradient times a scale."""
        return {"attributions": scale * input_gradients(ctx) + offset}

    try:
        info = call(url, "/api/info")[1]
        assert info["methods"]["toy_scaled_gradient"]["params"] == {
            "scale": {"kind": "float", "label": "scale", "help": "multiplies the gradient", "min": 0.5, "max": 4.0,
                      "default": 2.0}}
        assert info["methods"]["toy_scaled_gradient"]["doc"] == "Toy: the gradient times a scale."
        ex = app.state.explorer
        image_id, _ = ex.add_sample("stripes")
        with pytest.raises(InputError, match="toy_scaled_gradient: scale: 9 is out of range; allowed 0.5 to 4.0"):
            ex.parse_request({"image_id": image_id, "methods": [{"name": "toy_scaled_gradient",
                                                                 "options": {"scale": 9}}]})
        with pytest.raises(InputError, match="option 'offset' cannot be set from the page"):
            ex.parse_request({"image_id": image_id, "methods": [{"name": "toy_scaled_gradient",
                                                                 "options": {"offset": 1}}]})
        req = ex.parse_request({"image_id": image_id, "target": 1,
                                "methods": [{"name": "toy_scaled_gradient", "options": {"scale": 3}}]})
        seen = []
        res = ex.run(req, progress=lambda f, stage: seen.append((f, stage)))
        saved = torch.load(io.BytesIO(res.files["saliency.pt"][0]), weights_only=True)
        ref = saliencekit.explain(ex.model, ex.get_image(image_id).x, "gradient", target=1)
        torch.testing.assert_close(saved["methods"]["toy_scaled_gradient"]["attributions"], 3 * ref.attributions)
        # one row done out of the four its cost announces
        assert (0.25, "toy_scaled_gradient") in seen
    finally:
        del REGISTRY["toy_scaled_gradient"]
    assert "toy_scaled_gradient" not in call(url, "/api/info")[1]["methods"]


def test_bad_json_unknown_ids_and_paths(server):
    url, _, _ = server
    status, r, _ = call(url, "/api/explain", b"{not json", headers={"content-type": "application/json"})
    assert status == 400 and "JSON" in r["error"]
    status, r, _ = explain_json(url, {"image_id": "../../etc/passwd", "methods": [{"name": "gradient"}]})
    assert status == 404 and "upload" in r["error"]
    status, r, _ = explain_json(url, {"image_id": "0" * 32, "methods": [{"name": "gradient"}]})
    assert status == 404 and "no longer in memory" in r["error"]
    for path in ("/static/..%2F..%2Fapp.py", "/static/index.html", "/static/core.py", "/api/jobs/" + "0" * 32,
                 "/api/jobs/" + "0" * 32 + "/files/saliency.pt", "/api/images/..%2Fx.png", "/etc/passwd"):
        status, r, _ = call(url, path)
        assert status == 404, path
        assert "error" in r


def test_no_path_from_a_request_is_opened(server, tmp_path, monkeypatch):
    url, _, _ = server
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(photo(5)))
    opened = []
    real_open, real_pil_open = builtins.open, Image.open

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_pil(fp, *a, **k):
        opened.append(str(fp))
        return real_pil_open(fp, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(Image, "open", spy_pil)
    q = urllib.parse.quote(str(secret))
    assert call(url, f"/api/image?sample={q}", b"", method="POST")[0] == 400
    status, _r, _ = call(url, f"/api/image?name={q}", str(secret).encode(), headers={"content-type": "image/png"})
    assert status == 400   # the body is the path's text, not an image; the path is not followed
    assert explain_json(url, {"image_id": str(secret), "methods": [{"name": "gradient"}]})[0] == 404
    assert call(url, f"/static/{q}")[0] == 404
    assert not any(str(secret) in o for o in opened), opened


# ---- running methods ----------------------------------------------------------------------------

def test_served_maps_and_tensors_match_explain(server, tmp_path, monkeypatch):
    url, _, model = server
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # any temporary file would land here
    arr = photo(6)
    _, r, _ = upload(url, png(arr))
    before = model_state(model)
    status, j, _ = explain_json(url, {"image_id": r["image_id"], "target": 2,
                                      "methods": [{"name": "gradient"}, {"name": "positive"},
                                                  {"name": "smoothgrad", "options": {"n_samples": 3,
                                                                                     "noise_level": 0.1}}]})
    assert status == 200, j
    st = wait_job(url, j["job"])
    assert st["state"] == "done", st
    assert st["progress"] == 1.0
    res = st["result"]
    assert [m["name"] for m in res["methods"]] == ["gradient", "positive", "smoothgrad"]
    assert res["target"] == 2 and all(m["target"] == 2 for m in res["methods"])
    assert_same_state(before, model_state(model))
    assert list(tmp_path.iterdir()) == []

    status, blob, _ = call(url, res["files"]["saliency.pt"])
    assert status == 200
    saved = torch.load(io.BytesIO(blob), weights_only=True)   # plain tensors, numbers and strings only
    x = saliencekit.load_images(arr, preprocessing=get_preprocessing(model))
    assert torch.allclose(saved["input"], x, atol=1e-6)
    for name, opts in (("gradient", {}), ("positive", {}), ("smoothgrad", {"n_samples": 3, "noise_level": 0.1})):
        ref = saliencekit.explain(model, x, name, target=2, seed=0, **opts)
        torch.testing.assert_close(saved["methods"][name]["attributions"], ref.attributions, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved["methods"][name]["heatmap"], ref.heatmap(), rtol=1e-5, atol=1e-6)
    by = {m["name"]: m for m in res["methods"]}
    # the gradient has both signs, so a diverging view is offered; the positive map has one sign
    assert "signed_png" in by["gradient"] and "signed_png" not in by["positive"]
    for m in res["methods"]:
        status, body, hdrs = call(url, res["files"][m["png"]])
        assert status == 200 and hdrs["content-type"] == "image/png"
        assert Image.open(io.BytesIO(body)).size == (224, 224)
    status, body, hdrs = call(url, res["files"]["gradient.png"] + "?download=1")
    assert 'attachment; filename="gradient.png"' == hdrs["content-disposition"]
    assert res["metrics"] is False and "deletion" not in by["gradient"]   # not requested


def test_cam_layer_from_the_page_is_the_layer_used(server):
    url, app, model = server
    # modules with parameters and a spatial output, in execution order (parameter-free ReLUs are not
    # offered, nor the classifier, whose output is not spatial)
    assert app.state.explorer.layers == ["features.0", "features.1", "features.3", "features"]
    arr = photo(7)
    _, r, _ = upload(url, png(arr))
    _, j, _ = explain_json(url, {"image_id": r["image_id"], "target": 0,
                                 "methods": [{"name": "gradcam", "options": {"layer": "features.0"}}]})
    st = wait_job(url, j["job"])
    assert st["state"] == "done", st
    saved = torch.load(io.BytesIO(call(url, st["result"]["files"]["saliency.pt"])[1]), weights_only=True)
    x = saliencekit.load_images(arr, preprocessing=get_preprocessing(model))
    for layer, same in (("features.0", True), ("features.3", False)):
        ref = saliencekit.explain(model, x, "gradcam", target=0, layer=layer)
        got = saved["methods"]["gradcam"]["attributions"]
        assert (got.shape == ref.attributions.shape and torch.allclose(got, ref.attributions, atol=1e-6)) is same


def test_metrics_curves_match_the_metric_functions(server):
    url, _, model = server
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    _status, j, _ = explain_json(url, {"image_id": r["image_id"], "target": 1, "methods": [{"name": "gradient"}],
                                      "metrics": True, "metric_steps": 8})
    st = wait_job(url, j["job"])
    assert st["state"] == "done", st
    assert st["result"]["metrics"] is True
    m = st["result"]["methods"][0]
    step = st["result"]["metric_step"]
    assert step == 224 * 224 // 8
    saved = torch.load(io.BytesIO(call(url, st["result"]["files"]["saliency.pt"])[1]), weights_only=True)
    x = saved["input"]
    heat = saved["methods"]["gradient"]["heatmap"]
    for name, fn in (("deletion", saliencekit.metrics.deletion), ("insertion", saliencekit.metrics.insertion)):
        ref = fn(model, x, heat, target=1, step=step, return_curves=True)
        assert m[name]["auc"] == pytest.approx(float(ref.auc[0]), abs=1e-6)
        assert saved["methods"]["gradient"][f"{name}_auc"] == m[name]["auc"]
        assert len(m[name]["curve"]) == 9 and m[name]["fractions"][-1] == pytest.approx(1.0)
        np.testing.assert_allclose(m[name]["curve"], ref.curves[0].numpy(), atol=1e-5)


@contextlib.contextmanager
def worker_held(model):
    """Inside the block the model blocks in its first graph-building forward, so the run that
    reaches it holds the worker; leaving the block releases it."""
    model.gate, model.entered = threading.Event(), threading.Event()
    try:
        yield
    finally:
        model.gate.set()
        model.gate = None


@contextlib.contextmanager
def first_run_holding_the_worker(url, model):
    """Upload the sample and submit one gradient run, which holds the worker inside the block:
    yields (the request body, that run's job)."""
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    body = {"image_id": r["image_id"], "methods": [{"name": "gradient"}]}
    with worker_held(model):
        _, a, _ = explain_json(url, body)
        assert model.entered.wait(30)
        yield body, a


def test_second_request_is_queued_not_lost_and_a_full_queue_says_so(server):
    url, _app, model = server
    with first_run_holding_the_worker(url, model) as (body, a):
        sa = call(url, f"/api/jobs/{a['job']}")[1]
        assert sa["state"] == "running"
        _, b, _ = explain_json(url, dict(body, target=3))
        sb = call(url, f"/api/jobs/{b['job']}")[1]
        assert sb["state"] == "queued" and sb["ahead"] == 1
        _, c, _ = explain_json(url, dict(body, target=4))
        assert call(url, f"/api/jobs/{c['job']}")[1]["ahead"] == 2
        status, d, _ = explain_json(url, body)        # max_pending=2: the third waiting run is refused
        assert status == 429 and "busy" in d["error"]
    ra, rb, rc = (wait_job(url, j["job"]) for j in (a, b, c))
    assert ra["state"] == rb["state"] == rc["state"] == "done"
    assert rb["result"]["target"] == 3 and rc["result"]["target"] == 4


def test_progress_is_reported_per_method():
    model = tiny()
    ex = Explorer(model, "tiny", samples=SAMPLES)
    image_id, stored = ex.add_sample("stripes")
    req = ex.parse_request({"image_id": image_id, "methods": [{"name": "gradient"},
                                                              {"name": "smoothgrad", "options": {"n_samples": 4}}]})
    assert isinstance(req, Request) and req.target == stored.top5[0]["index"]
    seen = []
    ex.run(req, progress=lambda f, stage: seen.append((f, stage)))
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert any(0.5 < f < 1.0 and s == "smoothgrad" for f, s in seen)   # inside the second method
    assert {s for _, s in seen} >= {"gradient", "smoothgrad", "done"}


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")   # TorchScript is what is tested
def test_a_method_the_model_cannot_run_fails_alone(tmp_path):
    """A TorchScript model takes no hooks: ticking Grad-CAM beside the gradient fails Grad-CAM only."""
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyCNN().eval()), tmp_path / "tiny.pt")
    model = saliencekit.load_model(str(tmp_path / "tiny.pt"), input_size=32)    # as `serve --model` loads it
    ex = Explorer(model, "tiny-scripted", samples=SAMPLES)
    image_id, _ = ex.add_sample("stripes")
    req = ex.parse_request({"image_id": image_id, "methods": [{"name": "gradient"}, {"name": "gradcam"}]})
    res = ex.run(req)
    assert [m["name"] for m in res.payload["methods"]] == ["gradient"]
    [failed] = res.payload["failed"]
    assert failed["name"] == "gradcam" and "TorchScript" in failed["error"]
    only_cam = ex.parse_request({"image_id": image_id, "methods": [{"name": "gradcam"}]})
    with pytest.raises(InputError, match="gradcam: .*TorchScript"):
        ex.run(only_cam)
    # a scripted module handed over as it is (not through load_model): its private copy is a true copy
    raw = torch.jit.load(str(tmp_path / "tiny.pt"))
    before = model_state(raw)
    ex = Explorer(raw, "tiny-raw", samples=SAMPLES)
    image_id, _ = ex.add_sample("stripes")
    res = ex.run(ex.parse_request({"image_id": image_id, "methods": [{"name": "gradient"}]}))
    assert [m["name"] for m in res.payload["methods"]] == ["gradient"]
    assert_same_state(before, model_state(raw))


def test_job_queue_reports_errors_without_tracebacks():
    q = JobQueue(user_error=InputError)
    try:
        a = q.submit(lambda p: (_ for _ in ()).throw(InputError("smoothgrad: bad option")))
        b = q.submit(lambda p: 1 / 0)
        c = q.submit(lambda p: "fine")
        sa, sb, sc = q.wait(a, 10), q.wait(b, 10), q.wait(c, 10)
        assert sa["state"] == "error" and sa["error"] == "smoothgrad: bad option"
        assert sb["state"] == "error" and "ZeroDivision" not in sb["error"] and "Traceback" not in sb["error"]
        assert sc["state"] == "done" and q.result(c) == "fine"
    finally:
        q.stop()


# ---- misuse: cross-site requests, wrong verbs, cancellation, disconnects, long runs ---------------

def _route_paths(app):
    """Each route of the app with its path parameters filled in, and the verbs it accepts."""
    out = []
    for route in app.routes:
        path = route.path.replace("{name}", "app.js").replace("{image_id}", "0" * 32).replace("{job_id}", "0" * 32)
        out.append((path, set(route.methods)))
    return out


def test_cross_site_posts_are_refused(server):
    url, app, _ = server
    host = urllib.parse.urlsplit(url).netloc
    stored_before = list(app.state.explorer.images._images)
    refused = [{"Origin": "http://attacker.example"}, {"Origin": "null"},
               {"Origin": f"https://{host}"},                     # another scheme is another origin
               {"Origin": url.replace("127.0.0.1", "localhost")},  # another host name too
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Origin": url, "Sec-Fetch-Site": "cross-site"}]
    for headers in refused:
        for path, body in (("/api/image?sample=stripes", b""), ("/api/explain", b"{}"), ("/api/estimate", b"{}"),
                           ("/api/jobs/" + "0" * 32 + "/cancel", b"")):
            status, r, hdrs = call(url, path, body, headers=headers)
            assert status == 403, (headers, path, status, r)
            assert "Cross-site request refused" in r["error"], r
            assert hdrs["x-content-type-options"] == "nosniff"
    assert list(app.state.explorer.images._images) == stored_before   # nothing was stored
    # the page's own origin, a browser's same-origin fetch, and clients without the headers pass
    for headers in ({"Origin": url}, {"Origin": url, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {}):
        status, r, _ = call(url, "/api/image?sample=stripes", b"", headers=headers)
        assert status == 200, (headers, r)
    # reading is not state-changing: a foreign origin may GET (CORS keeps the answer from its page)
    assert call(url, "/api/info", headers={"Origin": "http://attacker.example"})[0] == 200


def test_extra_allowed_origins():
    model = tiny()
    app = create_app(model, "tiny", samples=SAMPLES, allowed_origins=["https://explorer.example.org"])
    try:
        with BackgroundServer(app) as url:
            ok = call(url, "/api/image?sample=stripes", b"", headers={"Origin": "https://explorer.example.org"})
            assert ok[0] == 200, ok
            assert call(url, "/api/image?sample=stripes", b"", headers={"Origin": "https://other.example.org"})[0] == 403
    finally:
        app.state.jobs.stop()
    with pytest.raises(ValueError, match="allowed_origins"):
        create_app(model, "tiny", samples=SAMPLES, allowed_origins=["not an origin"])


def test_wrong_verbs_are_answered_405_on_every_route(server):
    url, app, _ = server
    checked = 0
    for path, verbs in _route_paths(app):
        for verb in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if verb in verbs:
                continue
            status, r, hdrs = call(url, path, b"" if verb != "GET" else None, method=verb)
            assert status == 405, (verb, path, status)
            assert set(hdrs["allow"].replace(" ", "").split(",")) == verbs, (verb, path, hdrs["allow"])
            assert verb in r["error"] and "not allowed" in r["error"]
            checked += 1
    assert checked >= 4 * len(app.routes)
    with urllib.request.urlopen(urllib.request.Request(url + "/api/info", method="HEAD"), timeout=30) as resp:
        assert resp.status == 200


def test_a_running_job_is_cancelled_at_its_next_progress_report(server):
    url, _app, model = server
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    body = {"image_id": r["image_id"], "target": 1, "methods": [{"name": "smoothgrad", "options": {"n_samples": 400}},
                                                                {"name": "gradient"}]}
    before = model_state(model)
    with worker_held(model):
        _, j, _ = explain_json(url, body)
        assert model.entered.wait(30)
        status, st, _ = call(url, f"/api/jobs/{j['job']}/cancel", b"")
        assert status == 200 and st["state"] == "running" and st["stage"] == "cancelling"
        model.rows_seen = 0
    st = wait_job(url, j["job"])
    assert st["state"] == "cancelled" and "result" not in st, st
    assert model.rows_seen < 400          # stopped after the chunk in flight, not after 400 rows
    assert_same_state(before, model_state(model))   # hooks removed, flags and weights as they were
    status, again, _ = call(url, f"/api/jobs/{j['job']}/cancel", b"")
    assert status == 409 and "already ended" in again["error"]
    assert call(url, "/api/jobs/" + "0" * 32 + "/cancel", b"")[0] == 404
    # the worker goes on with the next run
    _, k, _ = explain_json(url, dict(body, methods=[{"name": "gradient"}]))
    assert wait_job(url, k["job"])["state"] == "done"


def test_a_queued_job_is_cancelled_before_it_runs(server):
    url, _app, model = server
    with first_run_holding_the_worker(url, model) as (body, a):
        _, b, _ = explain_json(url, dict(body, target=3))
        _, c, _ = explain_json(url, dict(body, target=4))
        status, sb, _ = call(url, f"/api/jobs/{b['job']}/cancel", b"")
        assert status == 200 and sb["state"] == "cancelled"
        assert call(url, f"/api/jobs/{c['job']}")[1]["ahead"] == 1   # b left the queue
    assert wait_job(url, a["job"])["state"] == "done" and wait_job(url, c["job"])["state"] == "done"
    assert call(url, f"/api/jobs/{b['job']}")[1]["state"] == "cancelled"


def test_job_queue_cancel_stops_at_the_next_progress_call():
    q = JobQueue()
    started, calls = threading.Event(), []

    def work(progress):
        for k in range(1000):
            progress(k / 1000, "loop")
            calls.append(k)
            started.set()
            time.sleep(0.002)
        return "finished"

    try:
        a = q.submit(work)
        assert started.wait(10)
        q.cancel(a)
        st = q.wait(a, 10)
        assert st["state"] == "cancelled" and q.result(a) is None
        assert len(calls) < 1000
        assert q.cancel("nope") is None
    finally:
        q.stop()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_client_disconnects_leave_no_traceback_in_the_log(server):
    url, _app, _ = server
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    _, j, _ = explain_json(url, {"image_id": r["image_id"], "methods": [{"name": "gradient"}]})
    files = wait_job(url, j["job"])["result"]["files"]
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "saliencekit.web", "")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        # a download abandoned before the answer is read
        for path in (files["saliency.pt"], "/", "/api/info"):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            sock.close()
        # bodies cut off by the client
        for head in (b"POST /api/image?name=x.png HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 150000\r\n",
                     b"POST /api/explain HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n",
                     b"POST /api/estimate HTTP/1.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n"):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head + f"Host: {host}:{port}\r\n\r\n".encode() + b"{" * 600)
            time.sleep(0.2)
            sock.close()
        time.sleep(0.5)
        assert call(url, "/api/info")[0] == 200      # the server goes on
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    noisy = [r for r in handler.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [(r.name, r.getMessage()) for r in noisy]


def test_estimate_is_rows_times_the_measured_seconds_per_row(server):
    url, app, _ = server
    ex = app.state.explorer
    _, r, _ = call(url, "/api/image?sample=stripes", b"", method="POST")
    body = {"image_id": r["image_id"], "methods": [{"name": "gradient"},
                                                   {"name": "smoothgrad", "options": {"n_samples": 30}}]}
    status, est, _ = call(url, "/api/estimate", json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert status == 200, est
    per_row = est["seconds_per_row"]
    assert 0 < per_row < 5 and 0 < est["seconds_per_forward_row"] < 5   # measured on the model
    assert [m["method"] for m in est["methods"]] == ["gradient", "smoothgrad"]
    assert [m["rows"] for m in est["methods"]] == [REGISTRY["gradient"].rows_per_image({}), 30.0]
    assert est["methods"][1]["seconds"] == pytest.approx(30 * per_row, rel=0.01, abs=0.01)
    assert est["long"] is False and est["threshold_s"] == explorer_module.LONG_RUN_SECONDS
    saved = ex._row_seconds, ex._forward_row_seconds
    try:
        ex._row_seconds, ex._forward_row_seconds = 0.5, 0.1   # a slow model: 500 samples take minutes
        body["methods"][1]["options"]["n_samples"] = 500
        _, est, _ = call(url, "/api/estimate", json.dumps(dict(body, metrics=True, metric_steps=8)).encode(),
                         headers={"content-type": "application/json"})
        curve_rows = len(curve_metrics()) * (8 + 1) * 2
        assert est["curve_rows"] == curve_rows
        assert est["seconds"] == pytest.approx(0.5 * (1 + 500) + 0.1 * curve_rows, abs=0.1)
        assert est["long"] is True
        # a bad request is refused as /api/explain refuses it
        status, bad, _ = call(url, "/api/estimate", json.dumps({"image_id": r["image_id"], "methods": []}).encode(),
                              headers={"content-type": "application/json"})
        assert status == 400 and "methods" in bad["error"]
        # a finished run of 8 rows or more moves the estimate towards the speed seen
        _, j, _ = explain_json(url, {"image_id": r["image_id"], "methods": [{"name": "smoothgrad",
                                                                               "options": {"n_samples": 16}}]})
        assert wait_job(url, j["job"])["state"] == "done"
        assert ex._row_seconds < 0.5
    finally:
        ex._row_seconds, ex._forward_row_seconds = saved


def test_page_has_cancel_and_confirm_controls(server):
    url, _, _ = server
    page = call(url, "/")[1].decode()
    for element in ('id="cancel"', 'id="confirm"', 'id="confirm-run"', 'id="confirm-back"'):
        assert element in page
    script = call(url, "/static/app.js")[1].decode()
    assert "/api/estimate" in script and "/cancel`" in script and "est.long" in script


# ---- CLI ------------------------------------------------------------------------------------------

def test_cli_serve_defaults_to_loopback(monkeypatch):
    import uvicorn
    from click.testing import CliRunner
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from saliencekit import cli, models

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **k: calls.update(app=app, host=host, port=port))
    monkeypatch.setattr(models, "load_model", lambda name, device="cpu": tiny())
    res = CliRunner().invoke(cli.main, ["serve"])
    assert res.exit_code == 0, res.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 7860
    assert "http://127.0.0.1:7860/" in res.output
    loopback_app = calls["app"]
    calls.clear()
    res = CliRunner().invoke(cli.main, ["serve", "--host", "0.0.0.0", "--port", "8123"])
    assert res.exit_code == 0 and calls["host"] == "0.0.0.0" and "warning" in res.output

    def host_checked(app):
        return any(m.cls is TrustedHostMiddleware for m in app.user_middleware)

    assert host_checked(loopback_app) and not host_checked(calls["app"])
    for app in (loopback_app, calls["app"]):
        app.state.jobs.stop()
    res = CliRunner().invoke(cli.main, ["serve", "--port", "70000"])
    assert res.exit_code != 0 and "--port" in res.output
    if not torch.cuda.is_available():
        res = CliRunner().invoke(cli.main, ["serve", "--device", "cuda"])
        assert res.exit_code != 0 and "CUDA is not available" in res.output
