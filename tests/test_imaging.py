"""Decode / normalize / encode: the hostile-input corpus and metadata stripping."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from _corpus import write_corpus
from unsafe2safe_ray.imaging import DecodeLimits, ImageRejected, decode_image, encode_image

LIMITS = DecodeLimits(max_pixels=50_000_000, max_side=1024, min_side=8, max_aspect_ratio=40)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


def test_every_corpus_file_decodes_or_is_rejected_with_its_reason(corpus):
    root, expected = corpus
    for name, want in expected.items():
        data = (root / name).read_bytes()
        if want == "ok":
            pixels, _ = decode_image(data, LIMITS)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, name
        else:
            with pytest.raises(ImageRejected, match=want):
                decode_image(data, LIMITS)


def test_exif_orientation_is_applied(corpus):
    root, _ = corpus
    pixels, _ = decode_image((root / "rotated.jpg").read_bytes(), LIMITS)
    assert pixels.shape[:2] == (40, 20)  # stored 40 wide x 20 high, displayed tall


def test_sixteen_bit_uses_the_full_range(corpus):
    root, _ = corpus
    pixels, lossless = decode_image((root / "sixteen_bit.png").read_bytes(), LIMITS)
    assert lossless
    assert pixels.min() < 10 and pixels.max() > 245  # scaled, not clipped to white


def test_palette_transparency_is_composited_on_white(corpus):
    root, _ = corpus
    pixels, _ = decode_image((root / "palette_transparent.png").read_bytes(), LIMITS)
    assert (pixels[:16] == 255).all()  # transparent black became white, not black
    assert tuple(pixels[20, 5]) == (255, 0, 0)


def test_animated_takes_first_frame(corpus):
    root, _ = corpus
    pixels, _ = decode_image((root / "animated.gif").read_bytes(), LIMITS)
    assert tuple(pixels[0, 0]) == (255, 0, 0)


def test_large_images_are_bounded():
    buf = io.BytesIO()
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(buf, format="PNG")
    pixels, _ = decode_image(buf.getvalue(), LIMITS)
    assert pixels.shape == (512, 1024, 3)


def test_bomb_limit_is_configurable(corpus):
    root, _ = corpus
    big = DecodeLimits(max_pixels=2_000_000_000, max_side=256, min_side=8, max_aspect_ratio=40)
    pixels, _ = decode_image((root / "bomb.png").read_bytes(), big)
    assert pixels.shape == (256, 256, 3)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_encoded_outputs_carry_no_metadata(corpus, fmt):
    root, _ = corpus
    source = (root / "gps.jpg").read_bytes()
    assert b"SERIAL-123456" in source and b"secret-comment" in source and b"secret-xmp" in source
    with Image.open(io.BytesIO(source)) as im:
        assert im.getexif().get_ifd(0x8825)  # the input really has GPS tags
    pixels, _ = decode_image(source, LIMITS)
    out = encode_image(pixels, fmt)
    for secret in (b"SERIAL-123456", b"SecretCam", b"secret-comment", b"secret-xmp", b"Exif", b"GPS"):
        assert secret not in out
    with Image.open(io.BytesIO(out)) as im:
        assert not im.getexif() and "exif" not in im.info and "comment" not in im.info and "xmp" not in im.info
