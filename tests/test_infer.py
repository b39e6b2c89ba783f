"""`cifar-edge infer` and the runtime image loader, on real and odd images."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR10_CLASSES
from PIL import Image, ImageOps

from cifar_edge.runtime.images import ImageReadError, find_images, load_image
from cifar_edge.runtime.infer import decode_batch as _real_decode_batch

N_REAL = 20


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def images(jpeg_dir, tmp_path_factory):
    """A folder of 20 real CIFAR-10 test JPEGs, 9 odd-but-valid images, 2 broken files and a .txt."""
    root = tmp_path_factory.mktemp("infer-images")
    real = root / "real"
    odd = root / "odd"
    real.mkdir()
    odd.mkdir()
    real_files = []
    for name in CIFAR10_CLASSES:
        for k in range(N_REAL // 10):
            dest = real / f"{name}_{k}.jpg"
            shutil.copy(jpeg_dir / "test" / name / f"{k:04d}.jpg", dest)
            real_files.append(dest)

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 16:] = (255, 0, 0, 0)  # fully transparent red
    large = np.zeros((150, 200, 3), np.uint8)
    large[:, :100] = (230, 20, 20)
    large[:, 100:] = (20, 20, 230)
    gray16 = np.full((40, 40), 32768, np.uint16)
    odd_files = {
        "gray": _save(Image.new("L", (32, 32), 77), odd / "gray.jpg", quality=95),
        "palette": _save(palette, odd / "palette.png"),
        "rgba": _save(Image.fromarray(rgba, "RGBA"), odd / "rgba.png"),
        "cmyk_jpeg": _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), odd / "cmyk.jpg", quality=95),
        "cmyk_tiff": _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), odd / "cmyk.tif"),
        "gray16": _save(Image.fromarray(gray16), odd / "gray16.png"),
        "large": _save(Image.fromarray(large), odd / "large.jpg", quality=95),
        "png": _save(Image.fromarray(rgb), odd / "plain.png"),
        "bmp": _save(Image.fromarray(rgb), odd / "plain.bmp"),
    }
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(rng.bytes(3000))
    truncated = root / "truncated.jpg"
    whole = (jpeg_dir / "test" / "cat" / "0005.jpg").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image\n")
    return {"root": root, "real": real_files, "odd": odd_files, "rgb": rgb,
            "corrupt": corrupt, "truncated": truncated, "notes": root / "notes.txt"}


@pytest.fixture(scope="module")
def json_run(cli, seed_export, images):
    result = cli("infer", seed_export.fp32, images["root"], "--format", "json")
    return result, json.loads(result.out)


def _by_name(rows):
    return {Path(r["path"]).name: r for r in rows}


# --- the folder run -----------------------------------------------------------------------

def test_exit_code_1_because_of_the_broken_files(json_run):
    result, _ = json_run
    assert result.code == 1
    assert result.err_lines[-1] == f"{N_REAL + 9} classified, 2 failed"


def test_broken_files_are_named_on_stderr_with_a_reason(json_run, images):
    result, _ = json_run
    skipped = [line for line in result.err_lines if line.startswith("skipped ")]
    assert len(skipped) == 2
    corrupt = next(line for line in skipped if "corrupt.jpg" in line)
    assert corrupt == f"skipped {images['corrupt']}: not an image Pillow can read"
    truncated = next(line for line in skipped if "truncated.jpg" in line)
    assert "cannot decode image" in truncated and "truncated" in truncated.split(":", 1)[1].lower()
    assert "Traceback" not in result.err


def test_every_good_image_gets_a_prediction(json_run, images):
    _, rows = json_run
    rows = _by_name(rows)
    good = {p.name for p in images["real"]} | {p.name for p in images["odd"].values()}
    assert len(good) == N_REAL + 9
    assert set(rows) == good | {"corrupt.jpg", "truncated.jpg"}  # notes.txt is not an image: ignored
    for name in good:
        row = rows[name]
        assert row["label"] in CIFAR10_CLASSES, row
        assert 0.1 <= row["probability"] <= 1.0  # top-1 of 10 is at least 1/10
        assert row["top"][0] == {"label": row["label"], "probability": row["probability"]}
    for name in ("corrupt.jpg", "truncated.jpg"):
        assert "label" not in rows[name] and rows[name]["error"]


def test_results_are_in_sorted_path_order(json_run):
    _, rows = json_run
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths)


def test_onnx_top1_equals_keras_top1_on_real_images(json_run, images, keras_seed):
    _, rows = json_run
    rows = _by_name(rows)
    pixels = np.stack([load_image(p) for p in images["real"]])
    keras_probs = keras_seed.predict(pixels.astype(np.float32) / 255.0, verbose=0)
    for path, p in zip(images["real"], keras_probs):
        row = rows[path.name]
        assert row["label"] == CIFAR10_CLASSES[int(p.argmax())], path.name
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-5)


def test_batching_does_not_change_results(cli, seed_export, images, json_run):
    _, rows = json_run
    small = cli("infer", seed_export.fp32, images["root"], "--format", "json", "--batch-size", 3, "--threads", 1)
    assert small.code == 1
    small_rows = json.loads(small.out)
    assert [r["path"] for r in small_rows] == [r["path"] for r in rows]
    for a, b in zip(rows, small_rows):
        assert a.get("label") == b.get("label") and a.get("error") == b.get("error")
        if "probability" in a:
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


# --- formats and options ---------------------------------------------------------------------

def test_csv_format_with_top_k(cli, seed_export, images):
    result = cli("infer", seed_export.fp32, images["root"], "--format", "csv", "--top-k", 3)
    assert result.code == 1
    rows = list(csv.reader(io.StringIO(result.out)))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2",
                       "label_3", "probability_3", "error"]
    body = {Path(r[0]).name: r for r in rows[1:]}
    assert len(body) == N_REAL + 9 + 2
    for name, r in body.items():
        if name in ("corrupt.jpg", "truncated.jpg"):
            assert r[1:7] == [""] * 6 and r[7]
            continue
        labels, probs = r[1:7:2], [float(v) for v in r[2:7:2]]
        assert len(set(labels)) == 3 and set(labels) <= set(CIFAR10_CLASSES)
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-5
        assert r[7] == ""


def test_json_top_k(cli, seed_export, images):
    result = cli("infer", seed_export.fp32, *images["real"][:4], "--format", "json", "--top-k", 10)
    assert result.code == 0
    for row in json.loads(result.out):
        assert len(row["top"]) == 10
        probs = [t["probability"] for t in row["top"]]
        assert probs == sorted(probs, reverse=True)
        assert sorted(t["label"] for t in row["top"]) == sorted(CIFAR10_CLASSES)
        assert sum(t["probability"] for t in row["top"]) == pytest.approx(1.0, abs=1e-4)


def test_table_format(cli, seed_export, images):
    result = cli("infer", seed_export.fp32, images["root"])  # table is the default
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].split() == ["path", "prediction"]
    assert len(lines) == 1 + N_REAL + 9 + 2
    corrupt = next(line for line in lines if "corrupt.jpg" in line)
    assert "ERROR: not an image Pillow can read" in corrupt
    real = next(line for line in lines if "cat_0.jpg" in line)
    label, prob = real.split()[-2:]
    assert label in CIFAR10_CLASSES and 0.1 <= float(prob) <= 1.0


def test_output_file(cli, seed_export, images, tmp_path):
    target = tmp_path / "sub" / "predictions.csv"
    result = cli("infer", seed_export.fp32, images["root"] / "real", "--format", "csv", "--output", target)
    assert result.code == 0
    assert result.out == ""
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert rows[0][:3] == ["path", "label_1", "probability_1"]
    assert {Path(r[0]).name for r in rows[1:]} == {p.name for p in images["real"]}
    assert result.err_lines == [f"{N_REAL} classified, 0 failed"]


def test_output_that_cannot_be_written_is_exit_5(cli, seed_export, images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("infer", seed_export.fp32, images["real"][0], "--output", blocker / "out.json")
    result.assert_one_line_error(5, "cannot write")


def test_int8_model_infers_too(cli, seed_export, images):
    result = cli("infer", seed_export.int8, images["root"], "--format", "json")
    assert result.code == 1
    rows = _by_name(json.loads(result.out))
    assert sum("label" in r for r in rows.values()) == N_REAL + 9


def test_explicit_non_image_file_is_reported_not_ignored(cli, seed_export, images):
    result = cli("infer", seed_export.fp32, images["notes"], images["real"][0], images["real"][0])
    assert result.code == 1
    assert f"skipped {images['notes']}: not an image Pillow can read" in result.err_lines
    assert result.err_lines[-1] == "1 classified, 1 failed"  # the duplicate is classified once


def test_explicit_manifest_for_a_moved_model(cli, seed_export, images, tmp_path):
    moved = tmp_path / "elsewhere.onnx"
    shutil.copy(seed_export.fp32, moved)
    lonely = cli("infer", moved, images["real"][0])
    lonely.assert_one_line_error(3, "manifest.json")
    result = cli("infer", moved, images["real"][0], "--manifest", seed_export.manifest_path, "--format", "json")
    assert result.code == 0
    assert json.loads(result.out)[0]["label"] in CIFAR10_CLASSES


# --- bad inputs ---------------------------------------------------------------------------------

def test_missing_model(cli, images, tmp_path):
    missing = tmp_path / "missing.onnx"
    cli("infer", missing, images["real"][0]).assert_one_line_error(3, "model not found", str(missing))


def test_model_that_is_not_onnx(cli, seed_run, seed_export, images, tmp_path):
    # model.keras sits beside a valid manifest.json, so only the model itself is wrong
    keras_file = seed_run.model
    cli("infer", keras_file, images["real"][0]).assert_one_line_error(3, "not a loadable ONNX model")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x00\x01garbage" * 50)
    shutil.copy(seed_export.manifest_path, tmp_path / "manifest.json")
    cli("infer", fake, images["real"][0]).assert_one_line_error(3, "not a loadable ONNX model")


def test_no_images_found(cli, seed_export, tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cli("infer", seed_export.fp32, tmp_path).assert_one_line_error(3, "no image files found")


def test_missing_image_path(cli, seed_export, tmp_path):
    missing = tmp_path / "nope.jpg"
    cli("infer", seed_export.fp32, missing).assert_one_line_error(3, "no such file or folder", str(missing))


# --- the image loader on odd images --------------------------------------------------------------

def test_odd_images_decode_to_the_right_pixels(images):
    odd = images["odd"]
    for key, path in odd.items():
        x = load_image(path)
        assert x.shape == (32, 32, 3) and x.dtype == np.uint8, key
    assert np.abs(load_image(odd["gray"]).astype(int) - 77).max() <= 3
    assert (load_image(odd["palette"]) == (10, 200, 30)).all()
    rgba = load_image(odd["rgba"])
    assert (rgba[:, :16] == (0, 0, 255)).all()
    assert (rgba[:, 16:] == 255).all()  # transparency composited onto white
    for key in ("cmyk_jpeg", "cmyk_tiff"):  # C=0 M=255 Y=255 K=0 is red
        x = load_image(odd[key]).astype(int)
        assert np.abs(x - (255, 0, 0)).max() <= 10, (key, x[0, 0])
    np.testing.assert_array_equal(load_image(odd["png"]), images["rgb"])
    np.testing.assert_array_equal(load_image(odd["bmp"]), images["rgb"])


def test_large_image_is_resized_not_cropped_or_transposed(images):
    x = load_image(images["odd"]["large"]).astype(int)
    left, right = x[:, :12].mean(axis=(0, 1)), x[:, 20:].mean(axis=(0, 1))
    assert left[0] > 200 and left[2] < 50  # red on the left
    assert right[2] > 200 and right[0] < 50  # blue on the right
    assert np.abs(x[:12] - x[20:]).max() <= 12  # same top and bottom


def test_16_bit_gray_is_scaled_not_clipped(images, tmp_path):
    with Image.open(images["odd"]["gray16"]) as image:
        assert image.mode.startswith("I")  # really a 16-bit image
    x = load_image(images["odd"]["gray16"])
    assert np.abs(x.astype(int) - 128).max() <= 1
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    y = load_image(tmp_path / "ramp16.png")[0, :, 0].astype(int)
    assert y[0] == 0 and y[-1] == 255
    assert np.all(np.diff(y) > 0)  # strictly increasing: nothing saturates
    assert abs(y[16] - 16 * 255 / 31) <= 1


def test_dark_16_bit_image_stays_dark(tmp_path):
    Image.fromarray(np.full((32, 32), 200, np.uint16)).save(tmp_path / "dark16.png")
    x = load_image(tmp_path / "dark16.png")
    assert x.max() <= 1  # 200 / 65535 of full scale


def test_load_image_errors(tmp_path, images):
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not an image Pillow can read"):
        load_image(images["corrupt"])
    with pytest.raises(ImageReadError, match="cannot decode image"):
        load_image(images["truncated"])


def test_find_images(images, tmp_path):
    found = find_images([images["root"]])
    names = [p.name for p in found]
    assert "notes.txt" not in names
    assert len(found) == N_REAL + 9 + 2
    assert found == sorted(found)
    with pytest.raises(FileNotFoundError):
        find_images([tmp_path / "nope"])
    # explicit files are kept whatever their extension, duplicates dropped
    assert find_images([images["notes"], images["notes"], images["root"] / "real"])[0] == images["notes"]
    assert len(find_images([images["root"] / "real", images["real"][0]])) == N_REAL


def _json_rows_with_broken_files(cli, model, folder, *args) -> list[dict]:
    """`infer --format json` rows over a folder holding broken files (so exit code 1)."""
    result = cli("infer", model, folder, "--format", "json", *args)
    assert result.code == 1, result.err
    return json.loads(result.out)


def test_decoding_processes_match_the_decoding_thread(cli, seed_export, images):
    """--workers 2 (processes) gives the same rows as the default decoding thread, broken files included."""
    runs = {workers: _json_rows_with_broken_files(cli, seed_export.int8, images["root"], "--batch-size", 4,
                                                  "--workers", workers) for workers in ("0", "2")}
    assert runs["0"] == runs["2"]
    errors = [r for r in runs["2"] if "error" in r]
    assert {Path(r["path"]).name for r in errors} == {"corrupt.jpg", "truncated.jpg"}


def test_concurrent_batches_match_one_batch_at_a_time(cli, seed_export, images, monkeypatch):
    """The default (one single-thread batch per core) gives the same rows as --threads 1 (one batch at a time)."""
    import cifar_edge.runtime.infer as infer

    monkeypatch.setattr(infer, "available_cores", lambda: 2)  # concurrent batches even on a 1-core runner
    runs = {threads: _json_rows_with_broken_files(cli, seed_export.int8, images["root"], "--batch-size", 3,
                                                  "--threads", threads) for threads in ("0", "1")}
    assert runs["0"] == runs["1"] and len(runs["0"]) == N_REAL + 9 + 2


def test_predict_files_runs_batches_in_parallel_in_order(seed_export, images):
    from cifar_edge.runtime.classifier import Classifier
    from cifar_edge.runtime.infer import predict_files

    files = find_images([images["root"]])
    one = list(predict_files(Classifier(seed_export.int8), files, batch_size=2))
    three = list(predict_files(Classifier(seed_export.int8, threads=1), files, batch_size=2, parallel=3))
    assert [(p.path, p.top, p.error) for p in one] == [(p.path, p.top, p.error) for p in three]
    assert [p.path for p in three] == files and sum(not p.ok for p in three) == 2


def test_plan_threads(monkeypatch):
    import cifar_edge.runtime.infer as infer

    monkeypatch.setattr(infer, "available_cores", lambda: 2)
    assert infer.plan_threads(0, 10_000, 256) == (1, 2)  # many batches: one per core, single-threaded
    assert infer.plan_threads(0, 256, 256) == (None, 1)  # one batch: all cores on it
    assert infer.plan_threads(3, 10_000, 256) == (3, 1)  # an explicit count: intra-op threads
    monkeypatch.setattr(infer, "available_cores", lambda: 1)
    assert infer.plan_threads(0, 10_000, 256) == (None, 1)


def test_tiff_orientation_tag_is_applied(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32] = (255, 0, 0)  # left half red, right half blue
    wide[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = _save(Image.fromarray(wide), tmp_path / "rotated.tif", exif=exif)
    pixels = load_image(path).astype(int)
    # After rotating clockwise the red half is on top, the blue half at the bottom.
    assert pixels[2, 16, 0] > 200 and pixels[2, 16, 2] < 50
    assert pixels[29, 16, 2] > 200 and pixels[29, 16, 0] < 50


# --- the fast JPEG path -------------------------------------------------------------------------

def _pillow_only(monkeypatch, path):
    import cifar_edge.runtime.images as images_module

    with monkeypatch.context() as m:
        m.setattr(images_module, "simplejpeg", None)
        assert images_module.decode_plain_jpeg(path) is None
        return load_image(path)


def test_fast_jpeg_path_gives_pillows_pixels(images, monkeypatch, tmp_path):
    from cifar_edge.runtime.images import decode_plain_jpeg

    progressive = _save(Image.open(images["real"][0]).resize((48, 40)), tmp_path / "progressive.jpg",
                        progressive=True, quality=90)
    plain = [*images["real"], images["odd"]["gray"], images["odd"]["large"], progressive]
    for path in plain:
        assert decode_plain_jpeg(path) is not None, path.name  # really took the fast path
        np.testing.assert_array_equal(load_image(path), _pillow_only(monkeypatch, path), err_msg=path.name)


def test_fast_jpeg_path_keeps_pillows_bomb_limit(images, monkeypatch):
    from PIL import Image as PILImage

    from cifar_edge.runtime.images import PILLOW_DEFAULT_MAX_PIXELS, decode_plain_jpeg

    path = images["real"][0]
    assert PILLOW_DEFAULT_MAX_PIXELS == PILImage.MAX_IMAGE_PIXELS  # the copy matches this Pillow's default
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # a 32x32 image is 1,024 pixels
    assert decode_plain_jpeg(path) is None  # so Pillow decodes it, and warns (or raises) as it is set to
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", None)
    assert decode_plain_jpeg(path).shape == (32, 32, 3)
    # Before Pillow is imported (infer on plain JPEGs never imports it), Pillow's default applies.
    import cifar_edge.runtime.images as images_module

    monkeypatch.delitem(sys.modules, "PIL.Image")
    monkeypatch.setattr(images_module, "PILLOW_DEFAULT_MAX_PIXELS", 100)
    assert decode_plain_jpeg(path) is None
    monkeypatch.setattr(images_module, "PILLOW_DEFAULT_MAX_PIXELS", 2000)
    assert decode_plain_jpeg(path).shape == (32, 32, 3)


def test_unusual_jpegs_go_to_pillow(images, tmp_path):
    from cifar_edge.runtime.images import decode_plain_jpeg

    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    with_exif = _save(Image.fromarray(images["rgb"]), tmp_path / "exif.jpg", exif=exif)
    png_named_jpg = _save(Image.fromarray(images["rgb"]), tmp_path / "really-png.jpg", format="PNG")
    for path in (with_exif, images["odd"]["cmyk_jpeg"], images["truncated"], images["corrupt"], png_named_jpg,
                 images["odd"]["png"]):
        assert decode_plain_jpeg(path) is None, path.name
    # ...and Pillow still applies the orientation and reads the PNG.
    np.testing.assert_array_equal(load_image(with_exif)[0, 0], np.asarray(
        ImageOps.exif_transpose(Image.open(with_exif)).convert("RGB"))[0, 0])
    np.testing.assert_array_equal(load_image(png_named_jpg), images["rgb"])


def test_find_images_lists_regular_files_in_path_order(tmp_path):
    for folder in ("cat", "cat-2"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / folder / "1.png")
    (tmp_path / "cat" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # a broken link is no image
    os.mkfifo(tmp_path / "cat" / "pipe.jpg")  # would block a reader forever
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["cat/1.png", "cat-2/1.png"]


def test_xmp_orientation_jpeg_goes_to_pillow(images, tmp_path):
    from cifar_edge.runtime.images import decode_plain_jpeg

    plain = images["real"][0].read_bytes()
    xmp = (b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
           b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
           b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>')
    segment = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    path = tmp_path / "xmp.jpg"
    path.write_bytes(plain[:2] + segment + plain[2:])
    assert decode_plain_jpeg(images["real"][0]) is not None and decode_plain_jpeg(path) is None
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path), load_image(images["real"][0])[::-1, ::-1])  # rotated 180


def test_find_images_fast_path_agrees_with_pillow(tmp_path, monkeypatch):
    from cifar_edge.runtime.images import COMMON_IMAGE_EXTENSIONS, image_extensions

    assert COMMON_IMAGE_EXTENSIONS <= image_extensions()  # the fast path never keeps what Pillow cannot open
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "sub" / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "b.ico")  # uncommon: asks Pillow's registry
    (tmp_path / "c.txt").write_text("no image")
    (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)  # not followed
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b.ico", "sub/a.png"]
    # the same files by other spellings are listed once
    monkeypatch.chdir(tmp_path)
    again = find_images([tmp_path / "sub" / "a.png", f"{tmp_path}/", ".", "sub/"])
    assert [os.path.abspath(p) for p in again] == [str(tmp_path / "sub" / "a.png"), str(tmp_path / "b.ico")]


def _decode_or_die(paths):
    """A decoding worker that dies (as an OOM kill would) on the batch holding the corrupt file."""
    if any(p.name == "corrupt.jpg" for p in paths):
        os._exit(9)
    return _real_decode_batch(paths)


def test_a_dead_decoding_process_is_a_clear_error(seed_export, images, monkeypatch):
    import cifar_edge.runtime.infer as infer
    from cifar_edge.errors import BadInputError
    from cifar_edge.runtime.classifier import Classifier

    files = find_images([images["root"]])
    monkeypatch.setattr(infer, "decode_batch", _decode_or_die)  # worker processes fork with it
    with pytest.raises(BadInputError, match="a decoding worker process died"):
        for _ in infer.predict_files(Classifier(seed_export.int8, threads=1), files, batch_size=2, workers=1,
                                     parallel=2):
            pass


def test_find_images_skips_link_loops(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")  # ELOOP on stat
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")  # a link to an image is an image
    assert [p.name for p in find_images([tmp_path])] == ["a.png", "link.png"]
