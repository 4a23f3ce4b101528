"""`saliencekit evaluate` and evaluation.evaluate_images: files, resume, --overwrite, skipping, invariance."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TinyCNN, _init
from PIL import Image

from saliencekit.evaluation import run as ev
from saliencekit.cli import main
from saliencekit.models import Preprocessing

SPEC = Preprocessing(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
METHODS = "gradient,smoothgrad,random"
METRICS = "deletion,insertion,autvc,aupc,average_drop"
OPTS = ["-o", "smoothgrad.n_samples=2", "-M", "deletion.step=128", "-M", "insertion.step=128",
        "-M", "aupc.window=4", "-M", "aupc.regions=2", "-M", "aupc.draws=3"]


def _model():
    m = _init(TinyCNN(), 0)
    m.saliencekit_preprocessing = SPEC
    return m


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(d / f"img{k}.png")
    (d / "broken.png").write_bytes(b"not an image at all")
    (d / "labels.json").write_text(json.dumps([{"file": f"img{k}.png", "class_index": k} for k in range(3)]))
    return d


@pytest.fixture
def cli(monkeypatch):
    import saliencekit.cli_evaluate as ce

    monkeypatch.setattr(ce, "_load_model", lambda name, device: _model())
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(main, ["evaluate", *args], catch_exceptions=False)
        return r
    return run


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_cli_writes_resumes_overwrites(cli, folder, tmp_path):
    out = tmp_path / "out"
    r = cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), *OPTS)
    assert r.exit_code == 0, r.output
    assert "broken.png" in r.output and "skipping" in r.output
    assert (out / "skipped.txt").read_text().startswith("broken.png")
    for f in ("results.csv", "summary.md", "curves.png", "bars.png", "timings.csv", "curves.csv"):
        assert (out / f).is_file(), f
    rows = _rows(out / "results.csv")
    assert list(rows[0]) == ["image", "class_index", "method", "metric", "value"]
    assert len(rows) == 3 * 3 * 5
    assert {r["image"] for r in rows} == {"img0.png", "img1.png", "img2.png"}
    assert "seconds" not in (out / "results.csv").read_text()
    summary = (out / "summary.md").read_text()
    assert "| smoothgrad |" in summary and "deletion ↓" in summary
    first = (out / "results.csv").read_bytes()

    # same run elsewhere with another block size: byte-for-byte identical results
    out2 = tmp_path / "out2"
    assert cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out2), "--block-size", "1",
               *OPTS).exit_code == 0
    assert (out2 / "results.csv").read_bytes() == first

    # resume: a tampered finished value is kept (not recomputed, not overwritten)
    text = first.decode().splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith("img1.png") and ",gradient,deletion," in line)
    parts = text[i].split(",")
    parts[-1] = "12345"
    text[i] = ",".join(parts)
    (out / "results.csv").write_text("\n".join(text) + "\n")
    r = cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), *OPTS)
    assert r.exit_code == 0 and "resuming" in r.output
    assert "12345" in (out / "results.csv").read_text()

    # an unfinished pair is completed: delete one image's rows of one method
    kept = [line for line in (out / "results.csv").read_text().splitlines()
            if not (line.startswith("img2.png") and ",random," in line)]
    (out / "results.csv").write_text("\n".join(kept) + "\n")
    assert cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), *OPTS).exit_code == 0
    now = (out / "results.csv").read_text()
    assert "12345" in now and now.count("img2.png,") == 15

    # --overwrite recomputes everything: back to the original bytes
    assert cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), "--overwrite",
               *OPTS).exit_code == 0
    assert (out / "results.csv").read_bytes() == first


def test_cli_errors_and_limit(cli, folder, tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(folder), "--methods", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "nope" in r.output
    r = cli(str(folder), "--methods", "gradient", "--metrics", "deletion", "--limit", "2", "--out",
            str(tmp_path / "o1"), "-M", "deletion.step=256", "--target", "label")
    assert r.exit_code == 0, r.output
    rows = _rows(tmp_path / "o1" / "results.csv")
    assert [(r["image"], r["class_index"]) for r in rows] == [("img0.png", "0")]  # broken.png skipped


def test_results_depend_only_on_seed_and_image():
    g = torch.Generator().manual_seed(0)
    imgs = [(f"im{k}", torch.rand(3, 32, 32, generator=g)) for k in range(3)]
    model = _model()
    kw = {"methods": ["smoothgrad", "random"], "metrics": ["deletion", "aupc"], "seed": 3,
          "method_options": {"smoothgrad": {"n_samples": 2}},
          "metric_options": {"deletion": {"step": 256}, "aupc": {"window": 4, "regions": 2, "draws": 2}}}
    full = ev.evaluate_images(model, imgs, block_size=3, **kw).rows
    alone = ev.evaluate_images(model, imgs[2:], block_size=1, **kw).rows
    assert [r for r in full if r["image"] == "im2"] == alone
    other_seed = ev.evaluate_images(model, imgs[2:], block_size=1, **{**kw, "seed": 4}).rows
    assert [r["value"] for r in other_seed] != [r["value"] for r in alone]


def test_channels_last_rows_agree_and_reproduce():
    g = torch.Generator().manual_seed(0)
    imgs = [(f"im{k}", torch.rand(3, 32, 32, generator=g)) for k in range(2)]
    model = _model()
    kw = {"methods": ["gradient", "smoothgrad"], "metrics": ["deletion", "insertion"], "seed": 1,
          "method_options": {"smoothgrad": {"n_samples": 3}},
          "metric_options": {"deletion": {"step": 128}, "insertion": {"step": 128}}}
    ref = ev.evaluate_images(model, imgs, **kw).rows
    cl = ev.evaluate_images(model, imgs, channels_last=True, **kw).rows
    again = ev.evaluate_images(model, imgs, channels_last=True, **kw).rows
    assert cl == again
    assert [(r["image"], r["method"], r["metric"]) for r in cl] == [(r["image"], r["method"], r["metric"]) for r in ref]
    for a, b in zip(ref, cl):
        assert abs(a["value"] - b["value"]) <= 1e-4 * max(1.0, abs(a["value"]))
    assert sk_defaults().channels_last == "auto"  # the process default is put back
    with pytest.raises(TypeError, match="channels_last"):
        ev.evaluate_images(model, imgs, channels_last="yes", **kw)


def sk_defaults():
    from saliencekit import perf

    return perf.get_defaults()
