"""Damaged evaluation files: block-store entries that cannot be trusted are recomputed with a warning
naming the file (never reused), results.csv is never read back by `evaluate`, and a reader of
results.csv refuses a damaged one with the file and line named. Also: --limit counts readable
images, and the intervals of bounded metrics stay inside their range."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_cnn_32, write_photos

from saliencekit.cli import main
from saliencekit.evaluation import report
from saliencekit.evaluation import store as st
from saliencekit.metrics import registry
from saliencekit.models import Preprocessing

SPEC = Preprocessing(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
ARGS = ["--methods", "gradient,random", "--metrics", "deletion,average_drop,increase_in_confidence",
        "-M", "deletion.step=128"]
ROOT = Path(__file__).resolve().parents[2]


def _model():
    return tiny_cnn_32()


@pytest.fixture
def folder(tmp_path):
    return write_photos(tmp_path / "imgs", 4, seed=1, prefix="img")


@pytest.fixture
def cli(monkeypatch):
    import saliencekit.cli.evaluate as ce

    monkeypatch.setattr(ce, "_load_model", lambda name, device: _model())
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["evaluate", *args], catch_exceptions=False)
    return run


# ---- block-store entries ---------------------------------------------------------------------------

def _long_value(e) -> int:
    """The first stored value with more than six characters (a float with many digits)."""
    return next(i for i, row in enumerate(e["rows"]) if len(repr(row[4])) > 6)


def _cut_value(text: str) -> str:
    """A stored value cut short (``0.123456789`` -> ``0.12``): the entry is still valid JSON."""
    e = json.loads(text)
    i = _long_value(e)
    e["rows"][i][4] = float(repr(e["rows"][i][4])[:4])
    return json.dumps(e)


def _empty_value(text: str) -> str:
    e = json.loads(text)
    e["rows"][_long_value(e)][4] = ""
    return json.dumps(e)


def _drop_fields(text: str) -> str:
    e = json.loads(text)
    del e["key"], e["config"]
    return json.dumps(e)


CORRUPTIONS = {
    "value cut short": (lambda b: _cut_value(b.decode()).encode(), "does not match its sha256"),
    "file cut short": (lambda b: b[: len(b) // 2], "is not complete JSON"),
    "empty value": (lambda b: _empty_value(b.decode()).encode(), "does not match its sha256"),
    "empty file": (lambda b: b"", "is empty"),
    "missing fields": (lambda b: _drop_fields(b.decode()).encode(), "lacks the field(s) key, config"),
    "tables only, no header": (lambda b: json.dumps(json.loads(b)["rows"]).encode(), "is not a JSON object"),
    "binary bytes": (lambda b: b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)), "is not UTF-8 text"),
    "zeroed block": (lambda b: b[:40] + b"\x00" * 64 + b[104:], "binary bytes"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_store_entry_is_recomputed_with_a_warning(cli, folder, tmp_path, kind):
    damage, why = CORRUPTIONS[kind]
    out = tmp_path / "out"
    r = cli(str(folder), "--out", str(out), "--block-size", "2", *ARGS)
    assert r.exit_code == 0, r.output
    fresh = (out / "results.csv").read_bytes()
    entry = out / "blocks" / "block_0001.gradient.json"
    entry.write_bytes(damage(entry.read_bytes()))

    r = cli(str(folder), "--out", str(out), "--block-size", "2", *ARGS)
    assert r.exit_code == 0, r.output
    messages = [line for line in r.output.splitlines() if "blocks/" in line and "computed again" in line]
    assert len(messages) == 1, r.output
    assert messages[0].startswith(f"warning: {entry}: ") and why in messages[0], messages
    assert "resuming: 3 finished" in r.output        # the three sound entries are kept
    assert (out / "results.csv").read_bytes() == fresh
    # the entry was written again, and is trusted from now on
    with warnings.catch_warnings():
        warnings.simplefilter("error", st.StoreEntryWarning)
        s = st.BlockStore(out, [f"img{k}.png" for k in range(4)], ["gradient"], ["deletion"], model="m",
                          block_size=2, threads=1)
        assert s.rejected == []
    assert json.loads(entry.read_text())["sha256"] == st.entry_digest(json.loads(entry.read_text()))


def test_store_level_damage_is_reported_not_reused(tmp_path):
    names = ["a", "b"]
    kw = dict(model="m", block_size=2, threads=1)
    s = st.BlockStore(tmp_path, names, ["gradient"], ["deletion"], **kw)
    res = st.EvalResult()
    for n in names:
        res.rows.append({"image": n, "class_index": 1, "method": "gradient", "metric": "deletion",
                         "value": 0.123456789012})
        res.timings.append({"image": n, "method": "gradient", "stage": "explain", "seconds": 0.5})
    s.put(res)
    path = s.path(0, "gradient")
    good = path.read_text()
    assert json.loads(good)["sha256"] == st.entry_digest(json.loads(good))
    assert st.BlockStore(tmp_path, names, ["gradient"], ["deletion"], **kw).finished == {(0, "gradient")}
    # a value that is not a number, even with a matching digest
    e = json.loads(good)
    e["rows"][0][4] = "0.12"
    e["sha256"] = st.entry_digest(e)
    path.write_text(json.dumps(e))
    with pytest.warns(st.StoreEntryWarning, match="not a number"):
        back = st.BlockStore(tmp_path, names, ["gradient"], ["deletion"], **kw)
    assert back.finished == set() and back.rejected[0][0] == path
    with pytest.raises(FileNotFoundError, match="no finished result"):
        back.load(0, "gradient")
    # another configuration is not damage: recomputed without a warning
    path.write_text(good)
    with warnings.catch_warnings():
        warnings.simplefilter("error", st.StoreEntryWarning)
        assert st.BlockStore(tmp_path, names, ["gradient"], ["deletion"], **dict(kw, model="other")).finished == set()
        # nor is an entry of an earlier store format
        old = json.loads(good)
        old["format"] = 1
        path.write_text(json.dumps(old))
        assert st.BlockStore(tmp_path, names, ["gradient"], ["deletion"], **kw).finished == set()


# ---- results.csv -----------------------------------------------------------------------------------

def test_evaluate_never_reads_results_csv_back(cli, folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert cli(str(folder), "--out", str(out), *ARGS).exit_code == 0
    fresh = (out / "results.csv").read_bytes()
    sums = (out / report.SUMS).read_text()
    assert f"{hashlib.sha256(fresh).hexdigest()}  results.csv\n" in sums
    (out / "results.csv").write_bytes(b"\x00\xff garbage\nimg0.png,1,gradient,deletion,0.1")
    opened = []
    real_open, real_read_bytes, real_read_text = open, Path.read_bytes, Path.read_text

    def spy(file, mode="r", *a, **k):
        if "r" in mode and str(file).endswith("results.csv"):
            opened.append(str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr(Path, "read_bytes", lambda p: opened.append(str(p)) or real_read_bytes(p)
                        if p.name == "results.csv" else real_read_bytes(p))
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: opened.append(str(p)) or real_read_text(p, *a, **k)
                        if p.name == "results.csv" else real_read_text(p, *a, **k))
    r = cli(str(folder), "--out", str(out), *ARGS)
    assert r.exit_code == 0 and "resuming: 2 finished" in r.output
    monkeypatch.undo()
    assert opened == []
    assert (out / "results.csv").read_bytes() == fresh   # written again from the store


def _results(tmp_path) -> Path:
    """A results.csv as evaluate writes it, with its SHA256SUMS."""
    from saliencekit.evaluation.run import EvalResult

    res = EvalResult()
    for k, name in enumerate(["a.png", "b, c.png", "d.png"]):
        res.rows.append({"image": name, "class_index": k, "method": "gradient", "metric": "deletion",
                         "value": 0.1234567891 * (k + 1)})
        res.rows.append({"image": name, "class_index": k, "method": "gradient", "metric": "increase_in_confidence",
                         "value": 100.0 * (k % 2)})
    report.write_tables(tmp_path, res, ["a.png", "b, c.png", "d.png"], ["gradient"],
                        ["deletion", "increase_in_confidence"])
    return tmp_path / "results.csv"


def test_read_results_round_trips(tmp_path):
    rows = report.read_results(_results(tmp_path))
    assert [(r["image"], r["class_index"], r["metric"]) for r in rows][:3] == [
        ("a.png", 0, "deletion"), ("a.png", 0, "increase_in_confidence"), ("b, c.png", 1, "deletion")]
    assert rows[0]["value"] == pytest.approx(0.12345679)
    # without SHA256SUMS (e.g. an older run) the line checks still apply
    (tmp_path / report.SUMS).unlink()
    assert len(report.read_results(tmp_path / "results.csv")) == 6


def _edit(line_no: int, fn):
    def apply(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        lines[line_no - 1] = fn(lines[line_no - 1])
        return b"\n".join(lines)
    return apply


CSV_DAMAGE = {
    # name: (damage, line named, words of the message)
    "value cut short (file ends mid-value)": (lambda b: b[:-5], 7, "cut short"),
    "value cut short (still a number)": (_edit(2, lambda s: s[:-4]), None, "does not match the sha256"),
    "empty value": (_edit(3, lambda s: s.rsplit(b",", 1)[0] + b","), 3, "the value is empty"),
    "empty class": (_edit(4, lambda s: s.replace(b",1,", b",,", 1)), 4, "class_index"),
    "no header": (lambda b: b.split(b"\n", 1)[1], 1, "expected the header"),
    "missing column": (_edit(5, lambda s: s.rsplit(b",", 1)[0]), 5, "expected 5 columns"),
    "binary bytes": (_edit(6, lambda s: s[:10] + b"\xff\xfe\x00" + s[10:]), 6, "not UTF-8"),
    "NUL bytes": (_edit(6, lambda s: s[:10] + b"\x00\x00" + s[10:]), 6, "NUL"),
    "not a number": (_edit(2, lambda s: s.rsplit(b",", 1)[0] + b",0.12x"), 2, "expected a number"),
    "out of range": (_edit(2, lambda s: s.rsplit(b",", 1)[0] + b",1.5"), 2, "outside the range of deletion"),
    "empty file": (lambda b: b"", 1, "empty"),
}


@pytest.mark.parametrize("kind", list(CSV_DAMAGE))
def test_read_results_refuses_a_damaged_file_naming_file_and_line(tmp_path, kind):
    path = _results(tmp_path)
    damage, line, words = CSV_DAMAGE[kind]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as err:
        report.read_results(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg, msg
    if line is not None:
        assert f"line {line}:" in msg, msg


def test_the_claims_script_refuses_a_damaged_results_csv(tmp_path):
    spec = importlib.util.spec_from_file_location("evaluation_claims", ROOT / "benchmarks" / "evaluation_claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    path = _results(tmp_path)
    assert claims.load([path])[("gradient", "deletion")]["a.png"] == pytest.approx(0.12345679)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SystemExit, match=r"results.csv: line 7: cut short"):
        claims.load([path])


# ---- --limit and bounded intervals -------------------------------------------------------------------

def test_limit_counts_readable_images(cli, folder, tmp_path):
    for bad in ("a_broken.png", "b_empty.jpg"):
        (folder / bad).write_bytes(b"" if bad.endswith("jpg") else b"not an image")
    r = cli(str(folder), "--out", str(tmp_path / "o"), "--limit", "3", "--methods", "gradient", "--metrics",
            "deletion", "-M", "deletion.step=256")
    assert r.exit_code == 0, r.output
    assert "a_broken.png" in r.output and "b_empty.jpg" in r.output
    images = [row["image"] for row in report.read_results(tmp_path / "o" / "results.csv")]
    assert images == ["img0.png", "img1.png", "img2.png"]


def test_bounded_metrics_have_bounds_in_the_registry():
    assert {n: s.bounds for n, s in registry.METRICS.items() if s.bounds} == {
        "deletion": (0.0, 1.0), "insertion": (0.0, 1.0), "deletion_igos": (0.0, 1.0), "insertion_igos": (0.0, 1.0),
        "allegiance": (0.0, 1.0), "average_drop": (0.0, 100.0), "increase_in_confidence": (0.0, 100.0)}
    assert registry.METRICS["aupc"].bounds is None and registry.METRICS["autvc"].bounds is None
    with pytest.raises(ValueError, match="bounds"):
        registry.register("bad", fn=len, higher_is_better=True, kind="scalar", space="model",
                          judge=lambda j, o: None, bounds=(1, 0))
    assert "bad" not in registry.METRICS


def _rows(metric, values, method="m"):
    return [{"image": f"i{k}", "method": method, "metric": metric, "value": v} for k, v in enumerate(values)]


def test_intervals_of_bounded_metrics_stay_in_range():
    # increase in confidence: 0 or 100 per image -> Wilson score interval of the proportion
    rows = _rows("increase_in_confidence", [0.0, 0.0, 0.0]) + _rows("increase_in_confidence", [100.0] * 3 + [0.0],
                                                                      method="n")
    got = report.intervals(rows)
    mean, lo, hi, n, how = got[("m", "increase_in_confidence")]
    assert (mean, lo, n, how) == (0.0, 0.0, 3, "wilson") and 50 < hi < 60     # the t interval is [0, 0]
    mean, lo, hi, n, how = got[("n", "increase_in_confidence")]
    assert mean == 75 and 0 < lo < 75 < hi < 100
    p_lo, p_hi = report.wilson(3, 4)
    assert (lo, hi) == pytest.approx((100 * p_lo, 100 * p_hi))
    # a proportion near 0: Student-t would go below zero; Wilson does not
    lo_t = report.summarize(_rows("increase_in_confidence", [100.0] + [0.0] * 9))[("m", "increase_in_confidence")][1]
    assert lo_t < 0
    # continuous bounded values: Student-t, clipped at the range's ends
    vals = [0.001, 0.002, 0.0015, 0.2]
    t_mean, t_lo, t_hi, _ = report.summarize(_rows("deletion", vals))[("m", "deletion")]
    assert t_lo < 0
    mean, lo, hi, n, how = report.intervals(_rows("deletion", vals))[("m", "deletion")]
    assert (mean, lo, hi, how) == (t_mean, 0.0, t_hi, "t, clipped")
    mean, lo, hi, n, how = report.intervals(_rows("average_drop", [99.0, 99.5, 40.0]))[("m", "average_drop")]
    assert hi == 100.0 and how == "t, clipped"
    # unbounded metrics, and bounded ones far from the ends, keep the Student-t interval
    for metric, vals in (("aupc", [-3.0, 1.0, 5.0]), ("deletion", [0.4, 0.5, 0.6])):
        t = report.summarize(_rows(metric, vals))[("m", metric)]
        assert report.intervals(_rows(metric, vals))[("m", metric)] == (*t, "t")
    # NaN values are dropped as before
    assert report.intervals(_rows("deletion", [0.4, math.nan, 0.6]))[("m", "deletion")][3] == 2


def test_summary_reports_bounded_intervals_within_range(cli, folder, tmp_path):
    out = tmp_path / "out"
    r = cli(str(folder), "--out", str(out), *ARGS)
    assert r.exit_code == 0, r.output
    summary = (out / "summary.md").read_text()
    assert "Wilson" in summary and "increase_in_confidence [0, 100]" in summary
    for line in summary.splitlines():
        if line.startswith("| gradient |") or line.startswith("| random |"):
            for cell in line.strip("|").split("|")[1:]:
                if "[" in cell:
                    lo, hi = (float(v) for v in cell.split("[")[1].split("]")[0].split(","))
                    assert lo >= 0, line
