"""The benchmark harness behind `saliencekit bench` (functional checks on a tiny model; no timings asserted)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from saliencekit import cli_bench, perf
from saliencekit.cli import main


def test_bench_command_is_registered():
    r = CliRunner().invoke(main, ["bench", "--help"])
    assert r.exit_code == 0
    assert "--precision" in r.output and "--captum" in r.output


def test_bench_rejects_bad_counts():
    r = CliRunner().invoke(main, ["bench", "--n", "0"])
    assert r.exit_code != 0 and "--n" in r.output


def test_compare_times_every_case_and_reports_ratios(tiny_cnn):
    pytest.importorskip("captum")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = cli_bench.compare(tiny_cnn, x, ["smoothgrad", "ig"], n=3, repeats=2, captum_chunks=(None, 1),
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
    ratios = cli_bench.summary_rows(sg)
    assert set(ratios) == {"vs Captum default", "vs Captum best chunk", "vs raw floor"}
    by = {c.name: c for c in sg}
    floor_best = min(c.best for c in sg if c.kind == "floor")
    assert ratios["vs raw floor"] == pytest.approx(floor_best / by["saliencekit (default)"].best)
    med = cli_bench.summary_rows(sg, "median")
    assert med["vs Captum default"] == pytest.approx(by["Captum (default: all at once)"].median
                                                     / by["saliencekit (default)"].median)
    text = cli_bench.markdown(res, "tiny")
    assert text.count("| smoothgrad |") == 9 + 1 and "goal >= 3.0x" in text and "medians" in text
    assert perf.get_defaults().precision == "fp32"      # variants did not leak into the defaults


def test_raw_floor_computes_the_same_gradients_as_saliencekit(tiny_cnn, monkeypatch):
    """The floor is the same work: its autograd.grad calls return saliencekit's per-row gradients."""
    import saliencekit as sk

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = tiny_cnn(x).argmax(1)
    seen = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: seen.append(real(*a, **k)[0]) or (seen[-1],))
    cli_bench.raw_floor(tiny_cnn, x, target, rows_per_image=1, chunk=1)()
    monkeypatch.setattr(torch.autograd, "grad", real)
    ref = sk.explain(tiny_cnn, x, "gradient", target=target, batch_size=1).attributions
    torch.testing.assert_close(torch.cat(seen), ref)
