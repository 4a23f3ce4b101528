"""One image reader for the API, the command line and the web: every Pillow mode converted the same
way, EXIF orientation, size limits checked from the header, tiny images noted."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import saliencekit as sk
from saliencekit import data
from saliencekit.cli import main
from saliencekit.web.uploads import InputError, decode_image


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h grayscale pixels (a decompression bomb's header, no data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _web_pixels(raw: bytes, **kw) -> np.ndarray:
    im, _ = decode_image(raw, **kw)
    return np.asarray(im)


def _api_pixels(path, **kw) -> np.ndarray:
    """What load_images reads from ``path`` at its own size (no resize, no crop), as uint8 RGB."""
    im = Image.open(path)
    x = sk.load_images(path, size=0, resize=0, normalize=False, **kw)[0]
    assert tuple(x.shape[1:]) == (im.size[1], im.size[0])
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ---- the 16-bit grayscale PNG ------------------------------------------------------------

def test_16_bit_grayscale_png_keeps_its_gray_levels_in_the_api_and_the_web(tmp_path):
    ramp = np.linspace(0, 65535, 224 * 224).reshape(224, 224).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")

    want = np.round(ramp / 65535.0 * 255).astype(np.uint8)         # the real range is 65535, not 255
    x = sk.load_images([path], normalize=False)
    assert x.shape == (1, 3, 224, 224)
    got = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    # 224x224 at resize 256 / crop 224: compare at the file's own size, then the default batch's spread
    api = _api_pixels(path)
    np.testing.assert_array_equal(api, np.repeat(want[..., None], 3, axis=2))
    assert got.min() < 20 and got.max() > 235 and abs(float(x.mean()) - 0.5) < 0.01   # not all white
    web = _web_pixels(path.read_bytes())
    np.testing.assert_array_equal(web, api)                          # identical arrays

    # the same pixels as a uint16 array, and as an "I" (32-bit) image holding 0..65535
    np.testing.assert_array_equal(np.asarray(data.to_pil(ramp)), api)
    np.testing.assert_array_equal(np.asarray(data.to_pil(Image.fromarray(ramp.astype(np.int32)))), api)


def test_float_images_keep_their_values(tmp_path):
    a = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    path = tmp_path / "f.tiff"
    Image.fromarray(a, "F").save(path)
    want = np.repeat(np.round(a * 255).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(_api_pixels(path), want)
    np.testing.assert_array_equal(_web_pixels(path.read_bytes()), want)
    # another range is stretched to 0..255, and the note says so
    im, notes = data.read_image(Image.fromarray(a * 1000 - 500, "F"))
    assert np.asarray(im).min() == 0 and np.asarray(im).max() == 255
    assert any("-500" in n and "500" in n for n in notes), notes


def test_transparency_is_flattened_on_white_the_same_way_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0                          # transparent band: white
    rgba[10:20, :, 3] = 255                      # opaque band: the colours
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    a = rgba[..., 3:].astype(np.float64) / 255
    want = np.round(rgba[..., :3] * a + 255 * (1 - a))
    api = _api_pixels(path)
    web = _web_pixels(path.read_bytes())
    np.testing.assert_array_equal(api, web)
    np.testing.assert_allclose(api, want, atol=1)
    assert (api[:10] == 255).all() and np.array_equal(api[10:20], rgba[10:20, :, :3])
    # an RGBA array and an RGBA PIL image: flattened the same way (the old array path dropped alpha)
    np.testing.assert_array_equal(np.asarray(data.to_pil(rgba)), api)
    np.testing.assert_array_equal(np.asarray(data.to_pil(Image.fromarray(rgba, "RGBA"))), api)
    # LA and a palette with a transparent entry
    la = Image.fromarray(np.stack([rgba[..., 0], rgba[..., 3]], -1), "LA")
    (tmp_path / "la.png").write_bytes(_png(la))
    la_api = _api_pixels(tmp_path / "la.png")
    assert (la_api[:10] == 255).all() and np.array_equal(la_api, _web_pixels(_png(la)))
    pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    (tmp_path / "p.png").write_bytes(_png(pal))
    np.testing.assert_array_equal(_api_pixels(tmp_path / "p.png"), _web_pixels(_png(pal)))


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_other_modes_are_converted_identically(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    im = rgb.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr") else "PNG"
    path = tmp_path / f"m.{fmt.lower()}"
    im.save(path, format=fmt)
    api = _api_pixels(path)
    np.testing.assert_array_equal(api, np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(api, _web_pixels(path.read_bytes()))


def test_exif_orientation_is_applied_in_the_api_like_the_web(tmp_path):
    arr = np.zeros((60, 120, 3), np.uint8)
    arr[:, :60] = (255, 0, 0)                   # stored landscape: red left half, black right half
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6                            # display rotated 90 degrees clockwise
    path = tmp_path / "portrait.jpg"
    im.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    raw = path.read_bytes()
    x = sk.load_images(path, size=0, resize=0, normalize=False)[0]
    assert tuple(x.shape) == (3, 120, 60)       # portrait
    assert x[0, 10, 30] > 0.8 and x[0, -10, 30] < 0.25   # red on top after the rotation, black below
    api = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    web, notes = decode_image(raw)
    np.testing.assert_array_equal(np.asarray(web), api)
    assert any("EXIF orientation" in n for n in notes)
    # a PIL image opened by the user is rotated the same way, and left as it was
    opened = Image.open(path)
    np.testing.assert_array_equal(np.asarray(data.to_pil(opened)), api)
    assert opened.size == (120, 60)


# ---- size limits --------------------------------------------------------------------------------

def test_decompression_bomb_is_refused_naming_the_file_and_the_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 20000))          # 400 MP: past Pillow's own bomb limit
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(12000, 12000))           # 144 MP: past ours (50 MP)
    for path, size in ((bomb, "400 megapixels"), (big, "12000x12000")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                    # no DecompressionBombWarning either
            with pytest.raises(ValueError) as e:
                sk.load_images(path)
        msg = str(e.value)
        assert msg.startswith("items:") and str(path) in msg and size in msg and "limit is 50 megapixels" in msg
        assert "not an image" not in msg
        with pytest.raises(InputError) as e:
            decode_image(path.read_bytes(), name=path.name)
        assert e.value.status == 413 and path.name in str(e.value) and size in str(e.value)
        assert "limit is 50 megapixels" in str(e.value) and "not an image" not in str(e.value)
    # the limit is the same constant everywhere, and can be lowered per call
    from saliencekit.web import uploads
    assert uploads.MAX_PIXELS == data.MAX_PIXELS
    small = tmp_path / "s.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(small)
    with pytest.raises(ValueError, match="100x100.*limit is 0.005 megapixels"):
        sk.load_images(small, max_pixels=5000)
    # the evaluate reader skips such a file with the same message
    _, _, skipped = data.read_folder(tmp_path)
    assert ("big.png", f"items: {big} is 12000x12000 (144 megapixels); the limit is 50 megapixels. "
            "Downscale it first.") in skipped


def test_not_an_image_and_truncated_files_are_told_apart(tmp_path):
    bad = tmp_path / "doc.png"
    bad.write_bytes(b"%PDF-1.4 not an image")
    with pytest.raises(ValueError, match=r"^items: .*doc.png is not an image that can be read \(expected JPEG"):
        sk.load_images(bad)
    good = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut.png looks like a PNG but could not be decoded"):
        sk.load_images(cut)


# ---- tiny images --------------------------------------------------------------------------------

def test_tiny_image_is_upscaled_with_a_note_in_the_api_the_web_and_the_cli(tmp_path, tiny_cnn, monkeypatch):
    tiny = tmp_path / "tiny5.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(tiny)
    with pytest.warns(data.ImageNote, match=r"^items: .*tiny5.png is only 5x5 pixels: it was upscaled 51.2x"):
        x = sk.load_images(tiny)
    assert x.shape == (1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # an ordinary photo gives no note
        sk.load_images(sk.sample_images()[0][1])
    _, notes = decode_image(tiny.read_bytes(), name="tiny5.png")
    assert any("only 5x5 pixels" in n and "upscaled" in n for n in notes), notes

    monkeypatch.setattr("saliencekit.models.load_model", lambda name, device="cpu": tiny_cnn)
    res = CliRunner().invoke(main, ["explain", str(tiny), "-m", "gradient", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if "only 5x5 pixels" in ln]
    assert len(lines) == 1 and lines[0].startswith("note: items: ") and "tiny5.png" in lines[0], res.stderr


# ---- the user's inputs and the other readers ----------------------------------------------------

@pytest.mark.filterwarnings("ignore::saliencekit.data.ImageNote")
def test_callers_images_are_not_changed(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    before = rgba.copy()
    im = Image.fromarray(rgba, "RGBA")
    sk.load_images([rgba, im])
    assert np.array_equal(rgba, before) and im.mode == "RGBA" and np.array_equal(np.asarray(im), before)
    ramp = (np.arange(600, dtype=np.uint16) * 100).reshape(20, 30)
    ramp_before = ramp.copy()
    sk.load_images(ramp)
    assert np.array_equal(ramp, ramp_before)


def test_ray_workers_decode_file_bytes_with_the_same_reader(tmp_path):
    from saliencekit.evaluation.ray import _pack, _unpack

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    arr = _unpack("g16.png", _pack("g16.png", path))
    np.testing.assert_array_equal(arr, np.asarray(data.read_image(path)[0]))
    assert arr.max() == 255 and arr.min() == 0


def test_samples_command_writes_the_bundled_photos(tmp_path):
    out = tmp_path / "photos"
    res = CliRunner().invoke(main, ["samples", str(out)])
    assert res.exit_code == 0, res.output
    for name, arr in sk.sample_images():
        path = out / f"{name}.png"
        assert f"wrote {path}" in res.output
        np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)   # lossless: the same pixels
        torch.testing.assert_close(sk.load_images(path), sk.load_images(arr), rtol=0, atol=0)
    # again: nothing rewritten; a different file of the same name is kept unless --overwrite
    res = CliRunner().invoke(main, ["samples", str(out)])
    assert res.exit_code == 0 and "already there" in res.output
    mine = out / "chelsea.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mine)
    kept = mine.read_bytes()
    res = CliRunner().invoke(main, ["samples", str(out)])
    assert res.exit_code == 1 and "--overwrite" in res.stderr and mine.read_bytes() == kept
    res = CliRunner().invoke(main, ["samples", str(out), "--overwrite"])
    assert res.exit_code == 0 and np.array_equal(np.asarray(Image.open(mine)), sk.sample_images()[0][1])
    # a file where the directory should be
    res = CliRunner().invoke(main, ["samples", str(mine)])
    assert res.exit_code == 2 and "DIRECTORY" in res.output
