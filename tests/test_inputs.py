"""Inputs: confined manifests, symlinks, FIFOs, bounded reads, truncated JPEGs, duplicate
spellings, oversized PNG chunks, the common extensions, tiny and strip images, and the lossless
pass-through of passed JPEGs."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tarfile
import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from _corpus import exif_rotated, jpeg_with_gps, write_good_images
from unsafe2safe_ray import open_output, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.imaging import DecodeLimits, ImageRejected, decode, decode_image
from unsafe2safe_ray.plan.listing import InputError, list_input
from unsafe2safe_ray.stages.decode import DecodeStage
from unsafe2safe_ray.storage.reads import ReadRefused, ReadTimeout, read_bounded


def _decode_rows(uris: list[str], *overrides: str) -> list[dict]:
    stage = DecodeStage(load_config("none", overrides=list(overrides)))
    stage.setup()
    return stage.process([{"key": f"{i:09d}", "shard": 0, "source_uri": u, "label": None}
                          for i, u in enumerate(uris)])


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# --- manifests are confined to their folder ---------------------------------------------------

@pytest.fixture()
def outside(tmp_path):
    """An input folder with one image, and an image outside it."""
    (tmp_path / "in").mkdir()
    _rgb(16, 16).save(tmp_path / "in" / "a.jpg")
    (tmp_path / "outside").mkdir()
    _rgb(16, 16, 1).save(tmp_path / "outside" / "secret.jpg")
    return tmp_path


@pytest.mark.parametrize("entry", ["{out}/secret.jpg", "../outside/secret.jpg", "file://{out}/secret.jpg",
                                   "sub/../../outside/secret.jpg", "http://127.0.0.1:9/secret.jpg",
                                   "s3://other-bucket/secret.jpg"])
def test_manifest_rows_outside_its_folder_are_refused(outside, entry):
    manifest = outside / "in" / "m.csv"
    manifest.write_text(f"uri\na.jpg\n{entry.format(out=outside / 'outside')}\n")
    with pytest.raises(InputError, match=r"row 2: .*outside") as err:
        list_input(str(manifest))
    assert "--allow-input-prefix" in str(err.value)


def test_allowed_prefixes_admit_outside_rows(outside):
    manifest = outside / "in" / "m.jsonl"
    manifest.write_text(json.dumps({"uri": "a.jpg"}) + "\n"
                        + json.dumps({"uri": str(outside / "outside" / "secret.jpg")}) + "\n"
                        + json.dumps({"uri": "https://example.org/data/x.jpg?token=1"}) + "\n")
    listing = list_input(str(manifest), allow_prefixes=[str(outside / "outside"), "https://example.org/data/"])
    assert [u.rsplit("/", 1)[-1] for u in listing.uris] == ["a.jpg", "secret.jpg", "x.jpg?token=1"]
    # A prefix allows its own folder only, not a sibling that shares its name's start.
    with pytest.raises(InputError, match="row 3"):
        list_input(str(manifest), allow_prefixes=[str(outside / "outside"), "https://example.org/dat"])


@pytest.mark.usefixtures("ray_local")
def test_cli_flag_allows_a_prefix(outside):
    from typer.testing import CliRunner

    from unsafe2safe_ray.cli import app

    manifest = outside / "in" / "m.csv"
    manifest.write_text(f"uri\na.jpg\n{outside / 'outside' / 'secret.jpg'}\n")
    args = ["run", "--input", str(manifest), "--profile", "none", "--shard-size", "2"]
    refused = CliRunner().invoke(app, [*args, "--output", str(outside / "out1")])
    assert refused.exit_code == 2 and "row 2" in refused.output
    ok = CliRunner().invoke(app, [*args, "--output", str(outside / "out2"),
                                  "--allow-input-prefix", str(outside / "outside")])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["counts"]["passed"] == 2


# --- symlinks, FIFOs, sizes, timeouts --------------------------------------------------------

def test_symlinks_are_not_followed_out_of_the_input(outside, caplog):
    root = outside / "in"
    (root / "link.jpg").symlink_to(outside / "outside" / "secret.jpg")
    (root / "linkdir").symlink_to(outside / "outside")
    (root / "inner.jpg").symlink_to(root / "a.jpg")  # inside: the same file, listed once
    with caplog.at_level(logging.WARNING, logger="unsafe2safe_ray"):
        listing = list_input(str(root))
    assert [u.rsplit("/", 1)[-1] for u in listing.uris] == ["a.jpg"]
    assert listing.skipped == {"symlink out of the input": 1, "symlinked folder (not followed)": 1}
    assert listing.duplicates == 1
    assert "symlink out of the input x1" in caplog.text
    manifest = root / "m.csv"
    manifest.write_text("uri\nlink.jpg\n")
    with pytest.raises(InputError, match="row 1: 'link.jpg' is outside"):
        list_input(str(manifest))


@pytest.mark.timeout(30)
def test_a_fifo_never_hangs_the_job(tmp_path):
    root = tmp_path / "in"
    write_good_images(root, 1, classes=1)
    os.mkfifo(root / "pipe.jpg")
    listing = list_input(str(root))
    assert len(listing.uris) == 1 and listing.skipped == {"not a regular file": 1}
    manifest = root / "m.csv"
    manifest.write_text("uri\nclass0/img00000.jpg\npipe.jpg\n")
    with pytest.raises(InputError, match=r"not regular files.*row 2: 'pipe.jpg'"):
        list_input(str(manifest))
    # Read directly (a FIFO that appeared after planning): a failed row at once.
    start = time.monotonic()
    [row] = _decode_rows([f"file://{root / 'pipe.jpg'}"])
    assert row["status"] == records.FAILED and "not a regular file (a FIFO)" in row["error"]
    assert time.monotonic() - start < 5


def test_oversized_files_are_refused_from_their_size_before_reading(tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(1536 * 1024 * 1024)  # 1.5 GB, sparse: costs no disk
    small = tmp_path / "small.jpg"
    _rgb(64, 64).save(small, quality=90)
    start = time.monotonic()
    rows = _decode_rows([f"file://{big}", f"file://{small}"], "io.max_file_bytes=1000000")
    assert time.monotonic() - start < 5
    assert rows[0]["status"] == records.FAILED
    assert "1610612736 bytes, above io.max_file_bytes=1000000" in rows[0]["error"]
    assert rows[1]["status"] != records.FAILED
    # The default limit (256 MiB) refuses it too, without reading 1.5 GB.
    [row] = _decode_rows([f"file://{big}"])
    assert "above io.max_file_bytes" in row["error"]
    with pytest.raises(ReadRefused):
        import fsspec

        read_bounded(fsspec.filesystem("file"), str(small), max_bytes=100, timeout_s=5)


def test_reads_time_out():
    class SlowFS:
        protocol = ("slow",)

        def info(self, path):
            time.sleep(5)
            return {"type": "file", "size": 3}

    start = time.monotonic()
    with pytest.raises(ReadTimeout, match=r"timed out after 0.3 s \(io.read_timeout_s\)"):
        read_bounded(SlowFS(), "x", max_bytes=10, timeout_s=0.3, retries=3)
    assert time.monotonic() - start < 2  # not retried


# --- truncated JPEGs ------------------------------------------------------------------------

def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_a_jpeg_declaring_more_than_its_data_holds_is_refused_not_grey():
    data = bytearray(_jpeg(_rgb(64, 64), quality=50))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 10000, 10000)
    data = bytes(data[:631]) + b"\xff\xd9"  # 633 bytes declaring 10000x10000
    start = time.monotonic()
    with pytest.raises(ImageRejected, match="truncated JPEG"):
        decode_image(data, DecodeLimits())
    assert time.monotonic() - start < 1  # refused from the header, never decoded


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_late_is_refused(progressive):
    full = _jpeg(_rgb(400, 300), quality=90, progressive=progressive)
    cut = full[: int(len(full) * 0.92)] + b"\xff\xd9"
    if progressive:
        # The last refinement scans are cut: blurry but complete. Never grey, never an error.
        pixels, _ = decode_image(cut, DecodeLimits())
        assert not (pixels[-8:, -8:] == 128).all()
    else:
        with pytest.raises(ImageRejected, match="truncated JPEG"):
            decode_image(cut, DecodeLimits())
    decode_image(full, DecodeLimits())  # the whole file is fine


def test_flat_grey_jpegs_are_not_mistaken_for_truncated_ones():
    for kw in ({}, {"progressive": True}):
        for mode in ("RGB", "L"):
            img = Image.new(mode, (48, 40), 128 if mode == "L" else (128, 128, 128))
            pixels, _ = decode_image(_jpeg(img, **kw), DecodeLimits())
            assert pixels.shape == (40, 48, 3)


# --- duplicates ---------------------------------------------------------------------------

def test_five_spellings_of_one_file_are_one_sample(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    _rgb(16, 16).save(root / "a.jpg")
    _rgb(16, 16, 1).save(root / "b.jpg")
    (root / "alias.jpg").symlink_to(root / "a.jpg")
    manifest = root / "m.csv"
    spellings = ["a.jpg", "./a.jpg", "sub/../a.jpg", str(root / "a.jpg"), f"file://{root}//a.jpg", "alias.jpg"]
    manifest.write_text("uri\n" + "\n".join(spellings + ["b.jpg"]) + "\n")
    listing = list_input(str(manifest))
    assert listing.uris == [f"file://{root}/a.jpg", f"file://{root}/b.jpg"]
    assert listing.duplicates == 5


@pytest.mark.usefixtures("ray_local")
def test_dropped_duplicates_and_skipped_files_are_in_the_plan_and_run_report(tmp_path):
    from unsafe2safe_ray.job import run_job

    root = tmp_path / "in"
    write_good_images(root, 2, classes=1)
    (root / "notes.txt").write_text("x")
    (root / "class0" / "dup.jpg").symlink_to(root / "class0" / "img00000.jpg")
    run_job(str(root), str(tmp_path / "out"), load_config("none"), run_id="dups")
    report = json.loads((tmp_path / "out" / "_runs" / "dups.json").read_text())
    assert report["plan"]["skipped"] == {"extension .txt": 1} and report["plan"]["duplicates"] == 1
    plan = json.loads((tmp_path / "out" / "_plan" / "plan.json").read_text())
    assert plan["num_images"] == 2 and plan["skipped"] == {"extension .txt": 1}


# --- file kinds that must decode ----------------------------------------------------------

def test_pngs_with_oversized_icc_and_text_chunks_decode():
    img = _rgb(20, 20)
    big_icc = io.BytesIO()
    img.save(big_icc, "PNG", icc_profile=b"\0" * 2_000_000)  # inflates past Pillow's 1 MB limit
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 2_000_000, zip=True)
    big_ztxt = io.BytesIO()
    img.save(big_ztxt, "PNG", pnginfo=info)
    for data in (big_icc.getvalue(), big_ztxt.getvalue()):
        pixels, lossless = decode_image(data, DecodeLimits())
        assert lossless and np.array_equal(pixels, np.asarray(img))


def test_common_extensions_are_listed_and_skips_are_counted(tmp_path, caplog):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.jfif", "b.jpe", "c.JPE"):
        _rgb(16, 16).save(root / name, format="JPEG")
    names = ["a.jfif", "b.jpe", "c.JPE"]
    if features.check("avif"):
        _rgb(16, 16).save(root / "d.avif", format="AVIF")
        names.append("d.avif")
    (root / "notes.txt").write_text("x")
    (root / "raw.cr2").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="unsafe2safe_ray"):
        listing = list_input(str(root))
    assert sorted(u.rsplit("/", 1)[-1] for u in listing.uris) == sorted(names)
    assert listing.skipped == {"extension .txt": 1, "extension .cr2": 1}
    assert "skipped 2 file(s)" in caplog.text
    rows = _decode_rows(listing.uris)
    assert all(r["status"] != records.FAILED for r in rows), [r["error"] for r in rows]


def test_tiny_and_strip_images_are_kept_by_default(tmp_path):
    for name, (w, h) in {"dot.png": (1, 1), "strip.png": (3000, 8), "dot.jpg": (1, 1)}.items():
        _rgb(w, h).save(tmp_path / name)
    rows = _decode_rows([f"file://{tmp_path / n}" for n in ("dot.png", "strip.png", "dot.jpg")])
    assert [(r["width"], r["height"]) for r in rows] == [(1, 1), (3000, 8), (1, 1)]
    assert all(r["status"] != records.FAILED for r in rows)
    # The limits are opt-in.
    rows = _decode_rows([f"file://{tmp_path / 'strip.png'}"], "io.max_aspect_ratio=40", "io.min_side=8")
    assert "aspect ratio" in rows[0]["error"]


# --- lossless pass-through of passed JPEGs --------------------------------------------------

def test_passthrough_is_the_same_pixels_without_metadata(tmp_path):
    jpeg_with_gps(tmp_path / "gps.jpg", 96, 64)
    source = (tmp_path / "gps.jpg").read_bytes()
    out = decode(source, DecodeLimits(), passthrough=True)
    copy = out.passthrough
    assert copy is not None and len(copy) < len(source)
    for secret in (b"SERIAL-123456", b"SecretCam", b"secret-comment", b"secret-xmp", b"Exif", b"GPS"):
        assert secret not in copy
    with Image.open(io.BytesIO(copy)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), out.pixels)
        assert not im.getexif() and not {"exif", "comment", "xmp", "icc_profile"} & set(im.info)
    # Trailing data after the EOI (MPO frames, appended payloads) is not copied.
    assert decode(source + b"TRAILING-SECRET", DecodeLimits(), passthrough=True).passthrough == copy
    # No pass-through where pixels differ from the stored image: EXIF rotation, downscaling.
    exif_rotated(tmp_path / "rot.jpg")
    assert decode((tmp_path / "rot.jpg").read_bytes(), DecodeLimits(), passthrough=True).passthrough is None
    big = _jpeg(_rgb(300, 200))
    assert decode(big, DecodeLimits(max_side=100), passthrough=True).passthrough is None


@pytest.mark.usefixtures("ray_local")
def test_passed_jpegs_are_written_pixel_identical(tmp_path):
    from unsafe2safe_ray.job import run_job

    root = tmp_path / "in"
    root.mkdir()
    jpeg_with_gps(root / "gps.jpg", 120, 80)
    _rgb(90, 70, 3).save(root / "photo.jpg", quality=85, progressive=True)
    Image.fromarray(np.asarray(_rgb(40, 30))[:, :, 0], "L").save(root / "gray.jpg")
    exif_rotated(root / "rot.jpg")
    run_job(str(root), str(tmp_path / "out"), load_config("none"), run_id="lossless")
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in open_output(str(tmp_path / "out")).captions().to_pylist()}
    members = {}
    for tar_path in (tmp_path / "out" / "images").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar})
    for name in ("gps.jpg", "photo.jpg", "gray.jpg"):
        row = rows[name]
        assert row["status"] == records.PASSED, row["error"]
        data = members[row["image_member"]]
        with Image.open(root / name) as src, Image.open(io.BytesIO(data)) as written:
            assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(src.convert("RGB"))), name
            assert not written.getexif() and "comment" not in written.info
        assert b"SERIAL-123456" not in data and b"secret-xmp" not in data
    with Image.open(io.BytesIO(members[rows["rot.jpg"]["image_member"]])) as rot:
        assert rot.size == (20, 40)  # rotation applied: re-encoded, not copied


def test_changed_pixels_are_encoded_not_copied(tmp_path):
    from unsafe2safe_ray.stages.write import WriteStage
    from unsafe2safe_ray.storage.layout import OutputLayout

    jpeg_with_gps(tmp_path / "g.jpg", 64, 48)
    [row] = _decode_rows([f"file://{tmp_path / 'g.jpg'}"])
    copy = decode((tmp_path / "g.jpg").read_bytes(), DecodeLimits(), passthrough=True).passthrough
    stage = WriteStage(load_config("none"), OutputLayout(str(tmp_path / "out")), "r")
    assert stage.to_sample(dict(row)).image_bytes == copy
    # Pixels changed behind the row's back: the checksum no longer matches, so it is encoded.
    changed = dict(row, image=bytes(255 - b for b in row["image"]))
    written = stage.to_sample(changed).image_bytes
    assert written != copy
    assert np.abs(np.asarray(Image.open(io.BytesIO(written))).astype(int)
                  - records.get_image(changed).astype(int)).mean() < 3
    # Pixels set the normal way drop the copy at once.
    edited = dict(row)
    records.set_image(edited, records.get_image(row)[::-1].copy())
    assert edited["passthrough"] is None
