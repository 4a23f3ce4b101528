"""One option parser for the commands, every option checked before the model loads, output written
whole or not at all, progress inside each method, and help texts (through click's CliRunner on a
tiny model)."""

from __future__ import annotations

import io
import json

import click
import pytest
import torch
from click.testing import CliRunner

from conftest import write_photos

from saliencekit.cli import main, progress
from saliencekit.cli.explain import default_methods
from saliencekit.methods import REGISTRY, register
from saliencekit.models import Preprocessing


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny(tiny_cnn, monkeypatch):
    """The tiny CNN behind every --model, at 32 pixels."""
    tiny_cnn.saliencekit_preprocessing = Preprocessing(size=32, resize=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    monkeypatch.setattr("saliencekit.models.load_model", lambda name, device="cpu": tiny_cnn)
    return tiny_cnn


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr("saliencekit.models.load_model", refuse)


@pytest.fixture
def photos(tmp_path):
    return write_photos(tmp_path / "photos", 2, seed=1, prefix="p")


@pytest.fixture
def toy_methods():
    """``toy_fail`` raises a ValueError, ``toy_interrupt`` a KeyboardInterrupt (registered for the test)."""
    @register("toy_fail", defaults={})
    def toy_fail(ctx):
        raise ValueError("toy_fail: broken on purpose")

    @register("toy_interrupt", defaults={})
    def toy_interrupt(ctx):
        raise KeyboardInterrupt
    yield
    REGISTRY.pop("toy_fail")
    REGISTRY.pop("toy_interrupt")


def run(*args):
    return CliRunner().invoke(main, list(args))


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# ---- one option parser, checked before the model loads -------------------------------------------

def test_explain_refuses_an_unknown_option_key_with_the_known_ones(no_model, tmp_path):
    out = tmp_path / "out"
    res = run("explain", "-o", "scroe=softmax", "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "unknown option 'scroe' (did you mean 'score'?)" in res.output
    assert "known options: score, n_samples" in res.output and "--option" in res.output
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("args,flag,words", [
    (["-m", "gradient", "-o", "n_samples=3"], "--option", "not an option of gradient; known options: score"),
    (["-m", "gradient", "--mask-size", "14"], "--mask-size", "it is an option of igos"),
    (["-m", "gradient", "--layer", "features.3"], "--layer", "it is an option of gradcam"),
    (["-m", "gradient", "-o", "score=probability"], "--option", "score: expected one of logit"),
    (["-m", "gradient", "-o", "=3"], "--option", "KEY=VALUE"),
    (["-m", "smoothgard"], "--method", "unknown method 'smoothgard'"),
    (["-m", "gradient", "--target", "cat"], "--target", "'predicted' or an integer"),
    (["-m", "gradient", "--batch-size", "0"], "--batch-size", "x>=1"),
    (["-m", "gradient", "no_such_photo.png"], "IMAGES", "no such file or folder"),
])
def test_explain_checks_every_option_before_loading(no_model, tmp_path, args, flag, words):
    res = run("explain", *args, "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert flag in res.output and words in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,flag,words", [
    (["-o", "smoothgrad.scroe=1"], "--option", "unknown option 'scroe' (did you mean 'score'?)"),
    (["-o", "smoothgard.n_samples=1"], "--option", "did you mean 'smoothgrad'?"),
    (["-M", "deletion.stpe=3"], "--metric-option", "did you mean 'step'?"),
    (["-M", "delction.step=3"], "--metric-option", "unknown metric 'delction'"),
    (["--block-size", "0"], "--block-size", "x>=1"),
])
def test_evaluate_refuses_unknown_keys_before_loading(no_model, tmp_path, args, flag, words):
    res = run("evaluate", "--methods", "gradient", "--metrics", "deletion", "--out", str(tmp_path / "o"), *args)
    assert res.exit_code == 2, res.output
    assert flag in res.output and words in res.output
    assert not (tmp_path / "o").exists()


def test_bench_refuses_an_unknown_option_key(no_model):
    res = run("bench", "-m", "gradient", "-o", "n_samples=3")
    assert res.exit_code == 2 and "not an option of gradient" in res.output


def test_an_option_for_some_of_the_methods_is_accepted(tiny, photos, tmp_path):
    out = tmp_path / "out"
    res = run("explain", str(photos), "-m", "gradient", "-m", "smoothgrad", "-o", "n_samples=2", "--out", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["smoothgrad"]["params"]["n_samples"] == 2 and "failed" not in summary


# ---- output: whole, or nothing ---------------------------------------------------------------------

def test_a_failing_later_method_is_named_and_the_rest_is_complete(tiny, photos, tmp_path, toy_methods):
    out = tmp_path / "out"
    res = run("explain", str(photos), "-m", "gradient", "-m", "toy_fail", "--out", str(out))
    assert res.exit_code == 1, res.output
    assert "toy_fail failed: toy_fail: broken on purpose" in res.output and "1 of 2 method(s) failed" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {"toy_fail": "toy_fail: broken on purpose"}
    assert list(summary["methods"]) == ["gradient"]
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "p0_gradient.png", "p1_gradient.png", "summary.json",
                                                      "tensors"]
    assert not leftovers(tmp_path)


def test_when_every_method_fails_nothing_is_written(tiny, photos, tmp_path, toy_methods):
    out = tmp_path / "deep" / "out"
    res = run("explain", str(photos), "-m", "toy_fail", "--out", str(out))
    assert res.exit_code == 1 and "every method failed: toy_fail" in res.output
    assert not (tmp_path / "deep").exists() and not leftovers(tmp_path)


def test_an_interruption_leaves_no_output(tiny, photos, tmp_path, toy_methods):
    out = tmp_path / "out"
    res = run("explain", str(photos), "-m", "gradient", "-m", "toy_interrupt", "--out", str(out))
    assert res.exit_code != 0
    assert not out.exists() and not leftovers(tmp_path)


def test_early_errors_leave_no_empty_out(tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = run("explain", str(broken), "-m", "gradient", "--out", str(out))
    assert res.exit_code == 1 and "no readable images" in res.output
    assert not out.exists() and not leftovers(tmp_path)
    (tmp_path / "afile").write_text("x")
    res = run("explain", "-m", "gradient", "--out", str(tmp_path / "afile"))
    assert res.exit_code == 2 and "exists and is not a folder" in res.output


def test_files_already_in_out_are_kept(tiny, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("old")
    res = run("explain", str(photos), "-m", "gradient", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "summary.json").read_text())["methods"]


# ---- progress ----------------------------------------------------------------------------------------

def test_piped_progress_prints_lines_and_a_last_one():
    stream = io.StringIO()
    p = progress.Progress(100, "smoothgrad", stream=stream, every=0, tty=False)
    for _ in range(4):
        p.update(25)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("smoothgrad: 25/100 rows (25%), 0 s, about 0 s left")
    assert lines[3].startswith("smoothgrad: 100/100 rows (100%)") and lines[4].startswith("smoothgrad: done, 100 rows")
    quiet = io.StringIO()
    with progress.Progress(100, "fast", stream=quiet, every=60, tty=False) as p:
        p.update(100)
    assert quiet.getvalue() == ""           # a short step prints nothing when piped


def test_terminal_progress_is_a_bar():
    stream = io.StringIO()
    with progress.Progress(40, "igos", unit="iterations", per=4, stream=stream, tty=True) as p:
        p.update(20)
        p.update(20)
    assert "igos" in stream.getvalue() and "10/10" in stream.getvalue()


def test_igos_progress_counts_iterations():
    p = progress.method_progress(REGISTRY["igos"], {"iterations": 5, "ig_steps": 3}, 2, "igos", stream=io.StringIO())
    assert (p.unit, p.total, p.per) == ("iterations", 30, 6)
    p.update(13)
    assert p.shown() == 2
    p = progress.method_progress(REGISTRY["smoothgrad"], {"n_samples": 7}, 3, "sg", stream=io.StringIO())
    assert (p.unit, p.total) == ("rows", 21)


def test_explain_reports_rows_inside_each_method_when_piped(tiny, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    res = run("explain", str(photos), "-m", "smoothgrad", "-m", "igos", "-o", "n_samples=4", "-o", "iterations=2",
              "-o", "ig_steps=2", "--mask-size", "8", "--batch-size", "2", "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "[1/2] smoothgrad: 2/8 rows (25%)" in res.output and "[1/2] smoothgrad: done, 8 rows" in res.output
    assert "[2/2] igos: 1/2 iterations" in res.output and "[2/2] igos: done, 2 iterations" in res.output


def test_a_failed_method_prints_no_done_line(tiny, photos, tmp_path, monkeypatch, toy_methods):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    res = run("explain", str(photos), "-m", "gradient", "-m", "toy_fail", "--out", str(tmp_path / "out"))
    assert "[1/2] gradient: done" in res.output and "toy_fail: done" not in res.output


# ---- help ----------------------------------------------------------------------------------------------

def test_explain_help_names_the_default_methods():
    res = run("explain", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "Default methods (without --method): " + ", ".join(default_methods()) in text
    assert "`saliencekit methods` lists every method" in text


def test_every_option_of_every_command_has_a_help_text():
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help and len(p.help) > 10, (name, p.opts)


@pytest.mark.parametrize("command", ["explain", "evaluate", "layers", "bench", "serve"])
def test_every_model_command_has_the_model_option_group(command):
    opts = {o for p in main.commands[command].params for o in p.opts}
    assert {"--model", "--weights", "--trust-model-file", "--labels", "--input-size", "--resize", "--mean",
            "--std"} <= opts
    assert ("--threads" in opts) == (command != "layers")
