"""`saliencekit evaluate`, evaluation.evaluate_images and the block store: files, resume, --overwrite,
skipping, invariance."""

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_cnn_32, write_photos

from saliencekit.cli import main
from saliencekit.core.speed import get_defaults
from saliencekit.evaluation import run as ev
from saliencekit.evaluation import store as st
from saliencekit.models import Preprocessing

SPEC = Preprocessing(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
METHODS = "gradient,smoothgrad,random"
METRICS = "deletion,insertion,autvc,aupc,average_drop"
OPTS = ["-o", "smoothgrad.n_samples=2", "-M", "deletion.step=128", "-M", "insertion.step=128",
        "-M", "aupc.window=4", "-M", "aupc.regions=2", "-M", "aupc.draws=3"]


def _model():
    return tiny_cnn_32()


@pytest.fixture
def folder(tmp_path):
    d = write_photos(tmp_path / "imgs", 3, seed=0, prefix="img")
    (d / "broken.png").write_bytes(b"not an image at all")
    (d / "labels.json").write_text(json.dumps([{"file": f"img{k}.png", "class_index": k} for k in range(3)]))
    return d


@pytest.fixture
def cli(monkeypatch):
    import saliencekit.cli.evaluate as ce

    monkeypatch.setattr(ce, "_load_model", lambda name, device: _model())
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(main, ["evaluate", *args], catch_exceptions=False)
        return r
    return run


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _value(out, image, method, metric):
    return next((r["value"] for r in _rows(out / "results.csv")
                 if (r["image"], r["method"], r["metric"]) == (image, method, metric)), None)


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

    # the store: one entry per (block, method); block size 8 puts the three images in one block
    blocks = out / "blocks"
    assert sorted(p.name for p in blocks.iterdir()) == [f"block_0000.{m}.json" for m in sorted(METHODS.split(","))]

    # resume: a stored value changed with a matching sha256 (a valid entry) is kept: the entry is
    # reused, not recomputed
    entry = blocks / "block_0000.gradient.json"
    e = json.loads(entry.read_text())
    i = next(k for k, r in enumerate(e["rows"]) if r[0] == "img1.png" and r[3] == "deletion")
    e["rows"][i][4] = 12345.0
    e["sha256"] = st.entry_digest(e)
    entry.write_text(json.dumps(e))
    r = cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), *OPTS)
    assert r.exit_code == 0 and "resuming: 3 finished" in r.output
    assert _value(out, "img1.png", "gradient", "deletion") == "12345"

    # a missing or damaged entry is recomputed; the tables are complete and hold nothing twice
    (blocks / "block_0000.random.json").unlink()
    (blocks / "block_0000.smoothgrad.json").write_text('{"format": 2, "rows": [')
    r = cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), *OPTS)
    assert "block_0000.smoothgrad.json: is not complete JSON" in r.output
    assert r.exit_code == 0 and "resuming: 1 finished" in r.output
    now = (out / "results.csv").read_text().splitlines()
    assert _value(out, "img1.png", "gradient", "deletion") == "12345"
    # the same lines as the first run, in the same order, but for the tampered value
    assert [line for line in now if not line.endswith(",12345")] == \
        [line for line in first.decode().splitlines() if not line.startswith("img1.png,") or
         ",gradient,deletion," not in line]

    # a subset of the metrics reuses the entries; another metric option recomputes the method's entries
    r = cli(str(folder), "--methods", "gradient", "--metrics", "deletion", "--out", str(out), *OPTS)
    assert r.exit_code == 0 and "resuming: 1 finished" in r.output
    assert len(_rows(out / "results.csv")) == 3 and _value(out, "img1.png", "gradient", "deletion") == "12345"
    r = cli(str(folder), "--methods", "gradient", "--metrics", "deletion", "--out", str(out), *OPTS,
            "-M", "deletion.step=256")
    assert r.exit_code == 0 and "resuming:" not in r.output
    assert _value(out, "img1.png", "gradient", "deletion") not in ("12345", None)

    # --overwrite recomputes everything: back to the original bytes
    assert cli(str(folder), "--methods", METHODS, "--metrics", METRICS, "--out", str(out), "--overwrite",
               *OPTS).exit_code == 0
    assert (out / "results.csv").read_bytes() == first


def test_cli_keeps_finished_work_after_an_error(cli, folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    maps = ev._maps

    def failing(model, x, resolved, *args, **kwargs):
        if resolved[0] == "random":
            raise ValueError("random: broken for this test")
        return maps(model, x, resolved, *args, **kwargs)

    monkeypatch.setattr(ev, "_maps", failing)
    r = cli(str(folder), "--methods", "gradient,random", "--metrics", "deletion", "--out", str(out), *OPTS)
    assert r.exit_code != 0 and "broken for this test" in r.output
    rows = _rows(out / "results.csv")  # the finished method is in the tables and in the store
    assert [(r["image"], r["method"]) for r in rows] == [(f"img{k}.png", "gradient") for k in range(3)]
    assert [p.name for p in (out / "blocks").iterdir()] == ["block_0000.gradient.json"]
    monkeypatch.setattr(ev, "_maps", maps)
    r = cli(str(folder), "--methods", "gradient,random", "--metrics", "deletion", "--out", str(out), *OPTS)
    assert r.exit_code == 0 and "resuming: 1 finished" in r.output
    assert len(_rows(out / "results.csv")) == 6


def test_cli_errors_and_limit(cli, folder, tmp_path):
    r = CliRunner().invoke(main, ["evaluate", str(folder), "--methods", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "nope" in r.output
    r = cli(str(folder), "--methods", "gradient", "--metrics", "deletion", "--limit", "2", "--out",
            str(tmp_path / "o1"), "-M", "deletion.step=256", "--target", "label")
    assert r.exit_code == 0, r.output
    assert "skipping unreadable image broken.png" in r.output
    rows = _rows(tmp_path / "o1" / "results.csv")
    # broken.png (first by name) is skipped and does not count: two readable images
    assert [(r["image"], r["class_index"]) for r in rows] == [("img0.png", "0"), ("img1.png", "1")]


def test_cli_list_reads_the_registries():
    from saliencekit.evaluation import variants
    from saliencekit.metrics import registry

    r = CliRunner().invoke(main, ["evaluate", "--list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "methods: " + ", ".join(variants.available())
    assert "deletion (lower is better)" in lines[1] and "insertion (higher is better)" in lines[1]
    assert all(m in lines[1] for m in registry.METRICS)
    assert lines[2] == ("defaults: --methods " + ",".join(variants.defaults()) + " --metrics "
                        + ",".join(registry.defaults()))


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
    assert get_defaults().channels_last == "auto"  # the process default is put back
    with pytest.raises(TypeError, match="channels_last"):
        ev.evaluate_images(model, imgs, channels_last="yes", **kw)



# ---- the block store -------------------------------------------------------------------------------

def _fake(names, method="gradient", metrics=("deletion",), value=0.1):
    """A finished (block, method) result with awkward values (repr-exact floats, NaN, a comma in a name)."""
    res = ev.EvalResult()
    for n in names:
        for m in metrics:
            res.rows.append({"image": n, "class_index": 3, "method": method, "metric": m, "value": value / 3})
            res.curves += [{"image": n, "method": method, "metric": m, "step": s, "value": 1 / (s + 7)}
                           for s in range(3)]
            res.timings.append({"image": n, "method": method, "stage": m, "seconds": 0.25})
        res.timings.append({"image": n, "method": method, "stage": "explain", "seconds": 0.5})
        res.extras.append({"image": n, "method": method, "key": "sigma", "value": float("nan")})
    return res


def _store(out, names, **kw):
    args = dict(methods=["gradient"], metrics=["deletion"], model="m", block_size=2, threads=1)
    args.update(kw)
    return st.BlockStore(out, names, args.pop("methods"), args.pop("metrics"), **args)


def test_store_round_trips_exactly_and_atomically(tmp_path):
    names = ["a.jpg", "b, c.jpg", "d.jpg"]
    s = _store(tmp_path, names)
    assert s.blocks == [["a.jpg", "b, c.jpg"], ["d.jpg"]] and not s.finished
    res = _fake(names[:2])
    s.put(res)
    back = _store(tmp_path, names)  # a later run with the same configuration
    assert back.finished == {(0, "gradient")} and back.todo(0) == [] and back.todo(1) == ["gradient"]
    got = back.load(0, "gradient")
    assert got.rows == res.rows and got.curves == res.curves and got.timings == res.timings  # bit for bit
    assert got.extras[0]["value"] != got.extras[0]["value"]  # NaN survives
    assert not list((tmp_path / "blocks").glob(".*.tmp"))
    assert [p.name for p in (tmp_path / "blocks").iterdir()] == ["block_0000.gradient.json"]


def test_store_refuses_incomplete_or_foreign_results(tmp_path):
    s = _store(tmp_path, ["a", "b", "c"])
    with pytest.raises(RuntimeError, match="incomplete"):
        s.put(_fake(["a"]))  # block 0 is [a, b]
    twice = _fake(["a", "b"])
    twice.rows.append(dict(twice.rows[0]))
    with pytest.raises(RuntimeError, match="duplicated"):
        s.put(twice)
    with pytest.raises(ValueError, match="image 'x'"):
        s.put(_fake(["x"]))
    with pytest.raises(ValueError, match="method 'smoothgrad'"):
        s.put(_fake(["a", "b"], method="smoothgrad"))
    assert not s.finished and not (tmp_path / "blocks").exists()
    with pytest.raises(ValueError, match="unique"):
        _store(tmp_path, ["a", "a"])
    with pytest.raises(ValueError, match="block_size"):
        _store(tmp_path, ["a"], block_size=0)
    with pytest.raises(ValueError, match="metric_options"):
        _store(tmp_path, ["a"], metric_options={"nope": {}})


def test_store_reuses_only_matching_entries(tmp_path):
    names = ["a", "b", "c", "d"]
    s = _store(tmp_path, names, metrics=["deletion", "insertion"])
    s.put(_fake(["a", "b"], metrics=("deletion", "insertion")))
    s.put(_fake(["c", "d"], metrics=("deletion", "insertion")))
    assert _store(tmp_path, names, metrics=["deletion", "insertion"]).finished == {(0, "gradient"), (1, "gradient")}
    # fewer metrics: reused, restricted to them (values, curves and timings)
    sub = _store(tmp_path, names, metrics=["insertion"])
    assert sub.finished == {(0, "gradient"), (1, "gradient")}
    got = sub.load(0, "gradient")
    assert {r["metric"] for r in got.rows + got.curves} == {"insertion"}
    assert {r["stage"] for r in got.timings} == {"explain", "insertion"}
    # one more image: only the block whose images changed is recomputed
    assert _store(tmp_path, names + ["e"], metrics=["deletion", "insertion"], block_size=4).finished == set()
    assert _store(tmp_path, names[:2] + ["x", "y"], metrics=["deletion", "insertion"]).finished == {(0, "gradient")}
    # anything the values depend on: nothing reused
    for change in ({"seed": 1}, {"model": "other"}, {"threads": 2}, {"device": "cuda"}, {"batch_size": 4},
                   {"channels_last": True}, {"metrics": ["deletion", "insertion", "autvc"]},
                   {"metric_options": {"deletion": {"step": 3}}},
                   {"method_options": {"gradient": {"score": "logit"}}},
                   {"target": "label", "labels": dict.fromkeys(names, 1)}):
        kw = {"metrics": ["deletion", "insertion"], **change}
        assert _store(tmp_path, names, **kw).finished == set(), change
    # options of a metric this run does not compute do not matter; --overwrite empties the store
    assert len(_store(tmp_path, names, metrics=["insertion"], metric_options={"deletion": {"step": 3}}).finished) == 2
    assert _store(tmp_path, names, metrics=["deletion", "insertion"], overwrite=True).finished == set()
    assert not list((tmp_path / "blocks").iterdir())


def test_local_backend_resumes_from_the_store(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = [(f"im{k}", torch.rand(3, 32, 32, generator=g)) for k in range(3)]
    model = _model()
    kw = {"seed": 2, "method_options": {"smoothgrad": {"n_samples": 2}}, "metric_options": {"deletion": {"step": 256}},
          "block_size": 2, "threads": 1}
    methods, metrics = ["smoothgrad", "random"], ["deletion", "autvc"]
    ref = ev.evaluate_images(model, imgs, methods, metrics, seed=2, method_options=kw["method_options"],
                             metric_options=kw["metric_options"], block_size=2)
    delivered = []
    s = st.BlockStore(tmp_path, [n for n, _ in imgs], methods, metrics, model="tiny", **kw)
    res = st.evaluate_local(s, model, imgs, on_block=delivered.append)
    assert res.rows == ref.rows and res.curves == ref.curves
    assert len(delivered) == 2 * 2  # once per (block, method)
    (tmp_path / "blocks" / "block_0001.random.json").unlink()
    again = st.BlockStore(tmp_path, [n for n, _ in imgs], methods, metrics, model="tiny", **kw)
    assert again.todo(0) == [] and again.todo(1) == ["random"]
    computed = []
    res = st.evaluate_local(again, model, imgs, on_block=computed.append)
    assert res.rows == ref.rows
    assert len(computed) == 4 and [r["image"] for r in computed[-1].rows] == ["im2", "im2"]


def test_non_finite_warning_names_the_image_file():
    from saliencekit.api import NonFiniteWarning

    class NanOnBright(torch.nn.Module):
        """NaN scores for images whose first value (model space) is above 1."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return torch.where((x[:, 0, 0, 0] > 1.0)[:, None], torch.full_like(out, float("nan")), out)

    torch.manual_seed(0)
    model = NanOnBright(tiny_cnn_32())
    dark, bright = torch.rand(3, 32, 32) * 0.5, torch.rand(3, 32, 32) * 0.5
    bright[0, 0, 0] = 1.5
    with pytest.warns(NonFiniteWarning, match=r"image\(s\) 0 \(bright\.png\)"):
        ev.evaluate_images(model, [("dark.png", dark), ("bright.png", bright)], ["gradient"], ["deletion"],
                           target="predicted")
