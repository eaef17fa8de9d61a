"""covid19xray.images: listing, loading and preprocessing X-rays, as the tutorial did, safely."""

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from covid19xray.images import NotAnImage, decode, list_images, load_xray, read_bytes, scale_pixels
from helpers import (
    write_dicom,
    write_encodings,
    write_image,
    write_odd_formats,
    write_png16,
    write_refused_radiology_files,
)


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
    # 16-bit values that use all 16 bits are scaled down to 8 bits, not clipped
    raw = cv2.imread(paths["16bit"], cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() >= 32768
    gray = cv2.resize(raw, (224, 224))
    # scaled then resized (ours) against resized then scaled: rounding apart, at most 1.5
    assert np.abs(load_xray(paths["16bit"])[..., 0].astype(int) - gray / 257).max() <= 1.5


@pytest.mark.parametrize("content, reason", [
    (b"", "not an image (no JPEG, PNG, BMP or TIFF signature, no DICOM marker)"),
    (b"GIF89a\x01\x00\x01\x00",
     "not an image (no JPEG, PNG, BMP or TIFF signature, no DICOM marker)"),
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



# ---------------------------------------------------------------------------------------------
# Radiology files: DICOM, 12- and 16-bit images, transparency
# ---------------------------------------------------------------------------------------------


def test_an_xray_reads_the_same_from_every_file_it_could_come_as(tmp_path):
    files = write_encodings(str(tmp_path))
    jpeg = load_xray(files.pop("8-bit JPEG")).astype(int)
    assert 60 < jpeg.mean() < 200  # a real X-ray, not a black frame
    for kind, path in files.items():
        # the bound is 2 grey levels; each of these holds the JPEG's very values
        assert np.abs(load_xray(path).astype(int) - jpeg).max() <= 2, kind


def test_16_bit_png_is_scaled_by_its_significant_bits(tmp_path):
    # 12-bit data that never reach 2048 (the bit length of their maximum is 11) but whose
    # PNG says 12 bits are significant: scaled by 4095, as a viewer reading sBIT shows them
    values = np.tile(np.arange(0, 2000, 10, dtype=np.uint16), (4, 1))
    plain = write_png16(str(tmp_path / "plain.png"), values)
    data = bytearray(open(plain, "rb").read())
    ihdr_end = 8 + 12 + 13  # the signature, then IHDR: length, type, 13 bytes, CRC
    chunk = b"sBIT" + bytes([12])
    data[ihdr_end:ihdr_end] = (len(chunk) - 4).to_bytes(4, "big") + chunk + zlib.crc32(
        chunk).to_bytes(4, "big")
    (tmp_path / "sbit.png").write_bytes(bytes(data))
    grey = decode(read_bytes(str(tmp_path / "sbit.png")))[..., 0]
    np.testing.assert_array_equal(grey, np.round(values * (255 / 4095)).astype(np.uint8))
    # without sBIT, the bits the data use: 11
    grey = decode(read_bytes(plain))[..., 0]
    np.testing.assert_array_equal(grey, np.round(values * (255 / 2047)).astype(np.uint8))


@pytest.mark.parametrize("name, same_as, tolerance", [
    ("MR_small_RLE.dcm", "MR_small.dcm", 0),                 # RLE lossless
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0),        # JPEG 2000 lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0),    # JPEG-LS lossless
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", 0),           # JPEG lossless, process 14
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", 8),          # JPEG baseline: lossy, YBR
])
def test_pydicoms_compressed_files_decode_to_their_uncompressed_pixels(name, same_as, tolerance):
    from pydicom.data import get_testdata_file

    got = decode(read_bytes(get_testdata_file(name))).astype(int)
    want = decode(read_bytes(get_testdata_file(same_as))).astype(int)
    assert got.shape == want.shape and want.std() > 10
    assert np.abs(got - want).max() <= tolerance


def test_a_lossy_jpeg_2000_dicom_decodes():
    from pydicom.data import get_testdata_file

    image = decode(read_bytes(get_testdata_file("693_J2KI.dcm")))  # 14-bit, irreversible
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8 and image.std() > 10


def test_radiology_files_that_cannot_be_shown_say_why_in_one_line(tmp_path, capfd):
    for path, reason in write_refused_radiology_files(str(tmp_path)).items():
        with pytest.raises(NotAnImage) as raised:
            load_xray(path)
        assert str(raised.value).startswith(reason), path
        assert "\n" not in str(raised.value)
    # and nothing else printed: no OpenCV or pydicom warning
    assert capfd.readouterr() == ("", "")


def test_dicom_files_are_listed_by_extension_or_by_their_marker(tmp_path):
    values = np.zeros((8, 8), np.uint16)
    os.makedirs(tmp_path / "s")
    for name in ["a.dcm", "b.DICOM", "s/IM0001", "1.2.840.113619.2.55.3"]:
        write_dicom(str(tmp_path / name), values)
    (tmp_path / "README").write_text("no extension, no marker")
    (tmp_path / "notes.1").write_text("x" * 200)
    os.mkfifo(tmp_path / "pipe")  # never opened for long: a FIFO has no marker to read
    relative = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert relative == ["1.2.840.113619.2.55.3", "a.dcm", "b.DICOM", "s/IM0001"]


def test_transparent_pixels_are_composited_over_black(tmp_path):
    from PIL import Image

    grey = np.full((20, 40), 200, np.uint8)
    alpha = np.zeros((20, 40), np.uint8)
    alpha[:, 20:] = 255   # the right half opaque
    alpha[:, 10:20] = 128  # a half-transparent band
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    image = decode(read_bytes(str(tmp_path / "la.png")))
    assert image.shape == (20, 40, 3)
    assert (image[:, :10] == 0).all()      # what the transparent area hid is not shown
    assert (np.abs(image[:, 10:20].astype(int) - 100) <= 1).all()
    assert (image[:, 20:] == 200).all()


@pytest.mark.parametrize("kind", ["fifo", "device", "too large"])
def test_special_and_oversized_files_are_refused_before_a_byte_is_read(tmp_path, kind):
    path = str(tmp_path / "x.png")
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait forever for a writer
        reason = "not a regular file (a FIFO, device or socket)"
    elif kind == "device":
        os.symlink("/dev/zero", path)  # reading it would never end
        reason = "not a regular file (a FIFO, device or socket)"
    else:
        with open(path, "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
            f.truncate(2 << 30)
        reason = "2.0 GiB, over the limit of 1 GiB for one image file"
    with pytest.raises(NotAnImage) as raised:
        load_xray(path)
    assert str(raised.value) == reason


def test_a_dicom_claiming_too_many_pixels_is_refused_from_its_header(tmp_path):
    import pydicom

    path = write_dicom(str(tmp_path / "big.dcm"), np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000  # 400 megapixels claimed; 128 bytes of pixels present
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NotAnImage) as raised:
        load_xray(path)
    assert str(raised.value) == ("20000x20000 pixels (400.0 megapixels), over the limit of 100 "
                                 "megapixels")


def png_with_chunk(png, kind, payload):
    """`png` with a chunk inserted before its first IDAT."""
    at = png.index(b"IDAT") - 4
    chunk = (struct.pack(">I", len(payload)) + kind + payload
             + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    return png[:at] + chunk + png[at:]


def test_a_16_bit_png_whose_sbit_chunk_says_40_bits_is_read_as_if_it_had_none():
    values = (np.arange(64 * 64).reshape(64, 64) * 7).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", values)
    plain = encoded.tobytes()
    lying = png_with_chunk(plain, b"sBIT", bytes([40]))
    np.testing.assert_array_equal(decode(lying), decode(plain))


def test_an_rgba_png_turned_by_its_exif_orientation_keeps_its_alpha_in_place():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0  # the top ten rows transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show upright
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", exif=exif.tobytes())
    image = decode(buffer.getvalue())
    assert image.shape == (60, 40, 3)  # upright
    # the top rows, turned clockwise, are the right-hand columns: black there, red elsewhere
    assert (image[:, -10:] == 0).all() and (image[:, :-10, 2] == 200).all()
