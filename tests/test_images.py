"""covid19xray.images: listing, loading and preprocessing X-rays, as the tutorial did, safely."""

import os

import cv2
import numpy as np
import pytest

from covid19xray.images import NotAnImage, list_images, load_xray, scale_pixels
from helpers import write_image, write_odd_formats


def test_listing_is_sorted_recursive_and_skips_non_images(tmp_path):
    for name in ["b/z.png", "a/y.JPG", "a/sub/x.jpeg", "a/.hidden.jpg", "__MACOSX/a/w.jpg"]:
        write_image(str(tmp_path / name), seed=1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    relative = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert relative == ["a/sub/x.jpeg", "a/y.JPG", "b/z.png"]


def test_preprocessing_matches_the_tutorial(tmp_path):
    path = write_image(str(tmp_path / "x.png"), seed=3, size=(300, 180))
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(image, (224, 224)) / 255.0  # the tutorial's float64 pipeline
    loaded = load_xray(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (224, 224, 3)
    scaled = np.asarray(scale_pixels(loaded[None]))[0]
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, expected, rtol=0, atol=1e-7)


def test_grayscale_images_load_as_three_channels(tmp_path):
    image = load_xray(write_image(str(tmp_path / "g.jpg"), seed=4, gray=True))
    assert image.shape == (224, 224, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_odd_formats_load_as_three_channel_8_bit(tmp_path):
    paths = write_odd_formats(str(tmp_path))
    for kind, path in paths.items():
        image = load_xray(path)
        assert image.dtype == np.uint8 and image.shape == (224, 224, 3), kind
        assert image.max() > 0, kind
    # 16-bit values are scaled down to 8 bits, not clipped
    raw = cv2.imread(paths["16bit"], cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    gray = cv2.resize(raw, (224, 224))
    assert np.abs(load_xray(paths["16bit"])[..., 0].astype(int) - gray // 256).max() <= 1


@pytest.mark.parametrize("content, reason", [
    (b"", "not an image (no JPEG, PNG, BMP or TIFF signature)"),
    (b"GIF89a\x01\x00\x01\x00", "not an image (no JPEG, PNG, BMP or TIFF signature)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "not a readable image"),
    (b"\xff\xd8\xff\xe0 a JPEG that stops here", "not a readable image"),
])
def test_what_is_not_an_image_says_why(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(NotAnImage) as raised:
        load_xray(str(path))
    assert str(raised.value) == reason


def test_an_image_named_as_another_format_loads_by_its_content(tmp_path):
    png = write_image(str(tmp_path / "x.png"), seed=2, size=(50, 60))
    expected = load_xray(png)
    os.rename(png, tmp_path / "x.jpg")  # a PNG named .jpg: its first bytes say what it is
    np.testing.assert_array_equal(load_xray(str(tmp_path / "x.jpg")), expected)
