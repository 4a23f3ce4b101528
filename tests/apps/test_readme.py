"""The README's snippets run as written: its Python blocks are executed (on a tiny model, and on the
real one in a slow test) after `saliencekit samples photos/`, and every `saliencekit` line of its
bash blocks names a real command whose options parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

import saliencekit as sk
from saliencekit.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README.read_text()) if kind == lang]


def shell_lines() -> list[str]:
    """The `saliencekit ...` command lines of the bash blocks (comments dropped, continuations joined)."""
    out = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("saliencekit "):
                out.append(line)
    return out


@pytest.fixture
def photos_here(tmp_path, monkeypatch):
    """A working directory holding what `saliencekit samples photos/` writes, made by that command."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["samples", "photos/"])
    assert res.exit_code == 0, res.output
    return tmp_path


def _run_python_blocks():
    code = blocks("python")
    assert code, "the README has no Python block"
    for i, body in enumerate(code):
        exec(compile(body, f"README.md python block {i}", "exec"), {"__name__": f"readme_block_{i}"})


def test_python_blocks_run_as_written_on_a_tiny_model(photos_here, tiny_cnn, monkeypatch):
    monkeypatch.setattr(sk, "load_model", lambda *a, **k: tiny_cnn)
    _run_python_blocks()
    # the block's e.save("out/") names its files after the photos it read
    assert (photos_here / "out" / "chelsea_smoothgrad.png").is_file()
    assert (photos_here / "out" / "coffee_smoothgrad.png").is_file()


@pytest.mark.slow
def test_python_blocks_run_as_written_on_the_real_model(photos_here):
    # one torch thread: about 16 s on 2 cores even when other processes keep them busy, where torch's
    # default thread count can take minutes (the snippet is what is tested, not the machine's load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_python_blocks()
    finally:
        torch.set_num_threads(threads)
    for name in ("chelsea_smoothgrad.png", "coffee_smoothgrad.png", "smoothgrad.pt", "smoothgrad.json"):
        assert (photos_here / "out" / name).is_file()


def test_bash_lines_are_commands_not_pipes():
    lines = shell_lines()
    assert any(line.startswith("saliencekit samples ") for line in lines)
    for line in lines:
        code = line.split("#", 1)[0]
        assert not re.search(r"[|;&]", code), f"a shell operator in the README's command line: {line!r}"


def test_bash_lines_parse(photos_here):
    """Each line names a registered command, and its options and arguments parse (nothing is run);
    the photos it names are those `saliencekit samples photos/` wrote."""
    for line in shell_lines():
        args = shlex.split(line.split("#", 1)[0])[1:]
        with main.make_context("saliencekit", list(args), resilient_parsing=True) as ctx:
            name, cmd, rest = main.resolve_command(ctx, list(args))
            assert cmd is not None, line
            try:
                cmd.make_context(name, rest, parent=ctx)
            except click.BadParameter as e:      # a placeholder file a user supplies is fine; options are not
                assert "does not exist" in str(e.message), f"{line!r}: {e.format_message()}"
            except click.UsageError as e:
                pytest.fail(f"README line does not parse: {line!r}: {e.format_message()}")
        for a in args:
            if a.startswith("photos/") and a != "photos/":
                assert Path(a).is_file(), f"{line!r} names {a}, which `saliencekit samples photos/` does not write"
