"""End to end in headless Chromium: ``saliencekit serve`` on a free loopback port, a photo uploaded
through the page, SmoothGrad and Grad-CAM run, both maps shown with the predicted class; then a run
estimated as long asks for confirmation, and a confirmed run is cancelled from the page. Two more
tests serve the user's own model from a file (a small CNN with a labels file and its own input
size): saved as a torch.export program it is explained with a gradient method and Grad-CAM from the
page; saved as TorchScript the gradient map is shown and Grad-CAM is refused on the page with what
works instead. Skips with the reason when Chromium or Playwright is missing.

The screenshot goes to the test's tmp_path; with SALIENCEKIT_UPDATE_SCREENSHOT=1 it is also copied
to docs/img/web.png (the picture in docs/web.md), so ordinary test runs never modify the repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img" / "web.png"


def find_chromium():
    for cand in (os.environ.get("SALIENCEKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chromium():
    """Checked before the server starts, so a machine without a browser skips at once."""
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (/usr/bin/chromium); on Debian: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    return path


class Served:
    """``saliencekit serve ARGS`` in a subprocess; ``wait()`` blocks until the page's API answers."""

    def __init__(self, log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "saliencekit.cli", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"saliencekit serve exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=5) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"saliencekit serve did not answer within {timeout} s")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def serve(chromium, tmp_path):
    """``serve(*args)`` starts ``saliencekit serve ARGS`` at once; every server started is stopped after the test."""
    started = []

    def start(*args: str) -> Served:
        srv = Served(tmp_path / f"serve{len(started)}.log", *args)
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture
def served(serve):
    return serve()   # starts now; the test prepares its reference meanwhile


@contextlib.contextmanager
def explorer_page(chromium: str, url: str, viewport=(1380, 980)):
    """The explorer at ``url`` in headless Chromium, once the page has built its form from ``/api/info``."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(120_000)
            page.goto(url)
            # the method checkboxes come last in the page's start-up, after every handler is attached
            page.wait_for_selector("input[data-method]", state="attached")
            yield page
        finally:
            browser.close()


def choose_methods(page, names) -> None:
    """Tick exactly the methods ``names`` in the form."""
    for box in page.query_selector_all("input[data-method]"):
        want = box.get_attribute("data-method") in names
        if box.is_checked() != want:
            box.click()


def shown_map_width(page, name: str) -> int:
    """Wait until the map of method ``name`` has loaded in the results; its width in pixels."""
    sel = f'img.map[data-method="{name}"]'
    page.wait_for_selector(sel)
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }", arg=sel)
    return page.evaluate("s => document.querySelector(s).naturalWidth", sel)


@pytest.mark.slow
def test_explorer_in_headless_chromium(chromium, served, tmp_path):
    import skimage.data

    import saliencekit

    # The photo a user would upload, and the prediction the page must show for it.
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=92)
    junk = tmp_path / "notes.txt"
    junk.write_text("definitely not a picture")
    model = saliencekit.load_model("efficientnet-lite0")
    with torch.no_grad():
        top = torch.softmax(model(saliencekit.load_images(photo)), 1)[0].argmax().item()
    predicted_name = model.saliencekit_preprocessing.class_names[top]
    cam = "gradcam"
    url = served.wait()
    assert url.startswith("http://127.0.0.1:")

    with explorer_page(chromium, url) as page:
        page.wait_for_selector("button.sample")

        # a non-image upload is answered on the page
        page.set_input_files("#file", str(junk))
        page.wait_for_selector("#error:not([hidden])")
        assert "not an image" in page.inner_text("#error")

        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#top5 li")
        assert page.is_hidden("#error")
        first = page.inner_text("#top5 li:first-child")
        assert predicted_name in first and "predicted" in first
        assert page.locator("#top5 li").count() == 5

        # choose exactly SmoothGrad (4 samples) and the CAM
        choose_methods(page, ("smoothgrad", cam))
        # an option out of range is answered on the page, and nothing runs
        page.fill('[data-method-box="smoothgrad"] [data-param="n_samples"]', "0")
        page.click("#run")
        page.wait_for_selector("#error:not([hidden])")
        assert "out of range" in page.inner_text("#error") and page.is_enabled("#run")
        page.fill('[data-method-box="smoothgrad"] [data-param="n_samples"]', "4")
        assert page.is_visible("#metrics-box")   # deletion / insertion are registered
        page.fill("#metric-steps", "8")
        page.click("#run")
        page.wait_for_selector("#error", state="hidden")
        for name in ("smoothgrad", cam):
            assert shown_map_width(page, name) == 224
        assert predicted_name in page.inner_text("#explained-class")
        assert page.locator(".card[data-result]").count() == 2
        page.wait_for_selector('svg[data-curve="deletion"]')
        assert "deletion AUC" in page.inner_text(f'[data-auc="{cam}"]')
        assert page.get_attribute("#download-tensors", "href").endswith("saliency.pt?download=1")
        assert page.is_hidden("#cancel") and page.is_hidden("#confirm")
        shot = tmp_path / "web.png"
        page.screenshot(path=str(shot), full_page=True)

        # a run the server estimates as long waits for the user's go-ahead (the estimate is
        # the server's own, marked long, so the test does not depend on this machine's speed)
        def long_estimate(route):
            answer = route.fetch()
            route.fulfill(response=answer, json=dict(answer.json(), long=True, seconds=240.0))

        page.route("**/api/estimate", long_estimate)
        page.fill('[data-method-box="smoothgrad"] [data-param="n_samples"]', "500")
        page.click("#run")
        page.wait_for_selector("#confirm:not([hidden])")
        assert "about 4 min" in page.inner_text("#confirm-text")
        assert "smoothgrad 500 rows" in page.inner_text("#confirm-text")
        page.click("#confirm-back")                      # nothing is run
        assert page.is_hidden("#confirm") and page.is_enabled("#run")
        assert page.inner_text("#progress-text").startswith("done in")
        # confirmed, then cancelled from the page while it runs
        page.click("#run")
        page.wait_for_selector("#confirm:not([hidden])")
        page.click("#confirm-run")
        page.wait_for_selector("#cancel:not([hidden])")
        page.click("#cancel")
        page.wait_for_function("() => document.getElementById('progress-text').textContent === 'cancelled'")
        assert page.is_enabled("#run") and page.is_hidden("#cancel")
        assert page.locator(".card[data-result]").count() == 2   # the earlier results stay
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("SALIENCEKIT_UPDATE_SCREENSHOT") == "1":
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG)
    print(f"screenshot: {shot}")


# Class names no ImageNet model knows: the page can only show them from the --labels file.
OWN_LABELS = ["rust spot", "leaf blight", "healthy leaf", "powdery mildew", "frost damage"]
OWN_SIZE = 64


def save_own_model(tmp_path: Path, kind: str):
    """A small CNN with len(OWN_LABELS) classes saved as a user would (``kind``: "export" writes a
    torch.export program with a dynamic batch, "torchscript" a scripted module), and its labels file."""
    from conftest import TinyCNN, _init

    net = _init(TinyCNN(n_classes=len(OWN_LABELS)), 0)
    if kind == "export":
        example = torch.randn(2, 3, OWN_SIZE, OWN_SIZE, generator=torch.Generator().manual_seed(0))
        program = torch.export.export(net, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        model_file = tmp_path / "leafnet.pt2"
        torch.export.save(program, model_file)
    else:
        model_file = tmp_path / "leafnet.pt"
        torch.jit.save(torch.jit.script(net), model_file)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(OWN_LABELS) + "\n")
    return net, model_file, labels


def own_prediction(net, model_file: Path, labels: Path, photo: Path) -> str:
    """The class name ``net`` predicts for ``photo``, preprocessed as the server does for this file and
    these options."""
    import saliencekit

    loaded = saliencekit.load_model(str(model_file), labels=str(labels), input_size=OWN_SIZE)
    assert list(saliencekit.models.class_names(loaded)) == OWN_LABELS
    x = saliencekit.load_images(photo, preprocessing=loaded.saliencekit_preprocessing)
    assert x.shape == (1, 3, OWN_SIZE, OWN_SIZE)
    with torch.no_grad():
        return OWN_LABELS[net(x)[0].argmax().item()]


def upload_and_check_classes(page, photo: Path, predicted: str) -> None:
    """Upload ``photo``; the page must show the model's own input size and class names, top one first."""
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#top5 li")
    assert page.is_hidden("#error")
    assert f"centre {OWN_SIZE}x{OWN_SIZE} crop" in page.inner_text("#crop")
    first = page.inner_text("#top5 li:first-child")
    assert predicted in first and "predicted" in first
    shown = sorted(page.locator("#top5 li .cls").all_inner_texts())
    assert shown == sorted(f"{name} ({i})" + (" · predicted" if name == predicted else "")
                           for i, name in enumerate(OWN_LABELS))


def run_and_wait(page) -> None:
    """Press Explain and wait until the run has ended (done, failed or cancelled)."""
    page.click("#run")
    page.wait_for_function("() => { const t = document.getElementById('progress-text').textContent;"
                           " return !document.getElementById('run').disabled && t !== ''"
                           " && !t.startsWith('running') && !t.startsWith('queued'); }")


def test_explorer_explains_with_a_model_loaded_from_a_file(chromium, serve, tmp_path):
    """A small CNN saved as a torch.export program with its labels and input size: the page predicts
    with it, shows its own class names, and runs a gradient method and Grad-CAM on a chosen layer."""
    import skimage.data

    net, model_file, labels = save_own_model(tmp_path, "export")
    model_bytes = model_file.read_bytes()
    srv = serve("--model", str(model_file), "--labels", str(labels), "--input-size", str(OWN_SIZE),
                "--threads", "1")
    photo = tmp_path / "leaf.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=92)
    predicted = own_prediction(net, model_file, labels, photo)
    url = srv.wait()

    with explorer_page(chromium, url) as page:
        assert "leafnet.pt2" in page.inner_text("#model-line")
        upload_and_check_classes(page, photo, predicted)

        # the gradient and Grad-CAM at a layer of the loaded program, named as in the model's code
        choose_methods(page, ("gradient", "gradcam"))
        layer = page.locator('[data-method-box="gradcam"] select[data-param="layer"]')
        assert {"features.0", "features.3"} <= set(layer.locator("option").all_inner_texts())
        layer.select_option("features.3")
        page.fill("#metric-steps", "8")
        run_and_wait(page)
        assert page.is_hidden("#error") and page.inner_text("#progress-text").startswith("done in")
        for name in ("gradient", "gradcam"):
            assert shown_map_width(page, name) == OWN_SIZE    # the map is at the model's own input size
        assert page.locator(".card[data-result]").count() == 2
        assert predicted in page.inner_text("#explained-class")
        assert f"predicted: {predicted}" in page.inner_text(".input-card")
        for name in ("gradient", "gradcam"):
            assert "deletion AUC" in page.inner_text(f'[data-auc="{name}"]')
        assert "metrics failed" not in page.inner_text("#maps")
    assert model_file.read_bytes() == model_bytes       # the user's file is left as it was
    assert "Traceback" not in srv.log_path.read_text()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")   # TorchScript is what is tested
def test_explorer_with_a_torchscript_file_explains_and_says_why_cams_cannot(chromium, serve, tmp_path):
    """A TorchScript file takes no forward hooks: the gradient map is shown with the model's own
    classes, and Grad-CAM is answered on the page with what works instead, not a blank result."""
    import skimage.data

    net, model_file, labels = save_own_model(tmp_path, "torchscript")
    srv = serve("--model", str(model_file), "--labels", str(labels), "--input-size", str(OWN_SIZE),
                "--threads", "1")
    photo = tmp_path / "leaf.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    predicted = own_prediction(net, model_file, labels, photo)
    url = srv.wait()

    with explorer_page(chromium, url) as page:
        upload_and_check_classes(page, photo, predicted)
        choose_methods(page, ("gradient",))
        page.uncheck("#metrics")
        run_and_wait(page)
        assert page.is_hidden("#error") and page.inner_text("#progress-text").startswith("done in")
        assert shown_map_width(page, "gradient") == OWN_SIZE
        assert predicted in page.inner_text("#explained-class")

        layer = page.locator('[data-method-box="gradcam"] select[data-param="layer"]')
        assert layer.locator("option").all_inner_texts() == ["automatic"]   # no layers to offer
        choose_methods(page, ("gradcam",))
        run_and_wait(page)
        error = page.inner_text("#error")
        assert page.is_visible("#error") and "TorchScript" in error and "torch.export" in error
        assert page.inner_text("#progress-text") == "failed"
        assert page.locator(".card[data-result]").count() == 1    # the gradient result stays
    assert "Traceback" not in srv.log_path.read_text()
