"""End to end in headless Chromium: ``saliencekit serve`` on a free loopback port, a photo uploaded
through the page, SmoothGrad and Grad-CAM run, both maps shown with the predicted class; then a run
estimated as long asks for confirmation, and a confirmed run is cancelled from the page. Skips with
the reason when Chromium or Playwright is missing.

The screenshot goes to the test's tmp_path; with SALIENCEKIT_UPDATE_SCREENSHOT=1 it is also copied
to docs/img/web.png (the picture in docs/web.md), so ordinary test runs never modify the repository.
"""

from __future__ import annotations

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
    """``saliencekit serve`` in a subprocess; ``wait()`` blocks until the page's API answers."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "saliencekit.cli", "serve", "--port", str(self.port)]
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
def served(chromium, tmp_path):
    srv = Served(tmp_path / "serve.log")   # starts now; the test prepares its reference meanwhile
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_explorer_in_headless_chromium(chromium, served, tmp_path):
    import skimage.data
    from playwright import sync_api

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

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1380, "height": 980})
            page.set_default_timeout(120_000)
            page.goto(url)
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
            for box in page.query_selector_all("input[data-method]"):
                want = box.get_attribute("data-method") in ("smoothgrad", cam)
                if box.is_checked() != want:
                    box.click()
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
                sel = f'img.map[data-method="{name}"]'
                page.wait_for_selector(sel)
                page.wait_for_function(
                    "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
                    arg=sel)
                assert page.evaluate(f"document.querySelector('{sel}').naturalWidth") == 224
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
        finally:
            browser.close()
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("SALIENCEKIT_UPDATE_SCREENSHOT") == "1":
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG)
    print(f"screenshot: {shot}")
