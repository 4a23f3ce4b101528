"""`saliencekit bench` and the benchmark harness in benchmarks/harness.py (functional checks on a tiny
model; no timings asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import saliencekit as sk
from saliencekit.cli import bench, main
from saliencekit.core import speed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_bench_command_is_registered():
    r = CliRunner().invoke(main, ["bench", "--help"])
    assert r.exit_code == 0
    assert "--precision" in r.output and "--option" in r.output and "--batch-size" in r.output


@pytest.mark.parametrize("flag", ["--repeats", "--images", "--threads", "--batch-size"])
def test_bench_rejects_bad_counts(flag):
    r = CliRunner().invoke(main, ["bench", flag, "0"])
    assert r.exit_code != 0 and flag in r.output and "x>=1" in r.output


def test_bench_refuses_unknown_method():
    r = CliRunner().invoke(main, ["bench", "--method", "smoothgard"])
    assert r.exit_code != 0 and "--method" in r.output and "unknown method 'smoothgard'" in r.output


def test_bench_on_a_tiny_model(tiny_cnn, monkeypatch, tmp_path):
    """The command end to end: variant names resolve through the registry, -o reaches the method,
    every requested setting gets a row, and the table is written."""
    monkeypatch.setattr("saliencekit.models.load_model", lambda name, device="cpu": tiny_cnn)
    out = tmp_path / "bench.md"
    r = CliRunner().invoke(main, ["bench", "-m", "smoothgrad_square", "-m", "gradient",
                                  "-o", "n_samples=3", "--images", "3", "--size", "16", "--repeats", "2",
                                  "--channels-last", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| smoothgrad_square")
            or line.startswith("| gradient")]
    assert [row.split(" | ")[:3] for row in rows] == [["| smoothgrad_square", "default", "9"],
                                                      ["| smoothgrad_square", "channels_last", "9"],
                                                      ["| gradient", "default", "3"],
                                                      ["| gradient", "channels_last", "3"]]
    assert all(p.is_contiguous() for p in tiny_cnn.parameters())      # channels_last put the weights back


def test_measure_reports_rows_chunk_layout_and_floor(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = tiny_cnn(x).argmax(1)
    r = bench.measure(tiny_cnn, x, target, "smoothgrad", {"n_samples": 5}, {}, repeats=2, batch_size=4)
    assert r["rows"] == 10 and r["chunk"] == 4 and r["channels_last"] is False
    assert r["best_s"] <= r["median_s"] and r["rows_per_s"] == pytest.approx(10 / r["best_s"])
    assert r["ms_per_image"] == pytest.approx(1000 * r["best_s"] / 2)
    assert r["floor_rows_per_s"] > 0 and r["share_of_floor"] == pytest.approx(r["rows_per_s"] / r["floor_rows_per_s"])
    r = bench.measure(tiny_cnn, x, target, "gradient", {}, {"channels_last": True}, repeats=1)
    assert r["rows"] == 2 and r["chunk"] == 2 and r["channels_last"] is True
    assert speed.get_defaults().channels_last == "auto"      # the settings did not leak into the defaults


def test_raw_floor_computes_the_same_gradients_as_saliencekit(tiny_cnn, monkeypatch):
    """The floor is the same work: its autograd.grad calls return saliencekit's per-row gradients."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = tiny_cnn(x).argmax(1)
    seen = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: seen.append(real(*a, **k)[0]) or (seen[-1],))
    bench.raw_floor(tiny_cnn, x, target, rows=2, chunk=1, precision="fp32", channels_last=False)()
    monkeypatch.setattr(torch.autograd, "grad", real)
    ref = sk.explain(tiny_cnn, x, "gradient", target=target, batch_size=1).attributions
    torch.testing.assert_close(torch.cat(seen), ref)
    assert all(p.requires_grad for p in tiny_cnn.parameters())      # the guard restored the parameters


def test_compare_times_every_case_and_reports_ratios(tiny_cnn):
    pytest.importorskip("captum")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = harness.compare(tiny_cnn, x, ["smoothgrad", "ig"], n=3, repeats=2, captum_chunks=(None, 1),
                          floor_chunks=(1, 2), variants={"bf16": {"precision": "bf16"}})
    sg, ig = res["groups"]["smoothgrad"], res["groups"]["ig"]
    assert [c.name for c in sg] == ["saliencekit (default)", "saliencekit bf16", "Captum (default: all at once)",
                                    "Captum chunk 1", "Captum channels_last chunk 1", "raw floor, chunk 1",
                                    "raw floor, chunk 2", "raw floor channels_last, chunk 1",
                                    "raw floor channels_last, chunk 2"]
    assert [c.kind for c in ig] == ["sk", "captum", "captum", "floor"]   # best chunks reused, no variants
    assert all(p.is_contiguous() for p in tiny_cnn.parameters())      # channels_last cases put weights back
    for c in sg + ig:
        assert c.rows == 6 and len(c.times) == 2 and c.best > 0 and c.peak_bytes is not None
    ratios = harness.summary_rows(sg)
    assert set(ratios) == {"vs Captum default", "vs Captum best chunk", "vs raw floor"}
    by = {c.name: c for c in sg}
    floor_best = min(c.best for c in sg if c.kind == "floor")
    assert ratios["vs raw floor"] == pytest.approx(floor_best / by["saliencekit (default)"].best)
    med = harness.summary_rows(sg, "median")
    assert med["vs Captum default"] == pytest.approx(by["Captum (default: all at once)"].median
                                                     / by["saliencekit (default)"].median)
    text = harness.markdown(res, "tiny")
    assert text.count("| smoothgrad |") == 9 + 1 and "goal >= 3.0x" in text and "medians" in text
    assert speed.get_defaults().precision == "fp32"      # variants did not leak into the defaults
