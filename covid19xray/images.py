"""X-ray image files: which files are images, reading them safely, and the one preprocessing.

- `list_images(root)`: the image files under a folder, sorted: the types imutils lists, DICOM
  (`.dcm`, `.dicom`, and files named without an extension, or by a DICOM UID, that carry the
  DICOM marker).
- `load_xray(path)` / `model_input(decoded)`: the tutorial's loading (OpenCV, BGR to RGB,
  224x224 ignoring the aspect ratio) as uint8. Training, prediction and the audit all use it.
- `scale_pixels(images)`: the tutorial's preprocessing, pixels / 255 as float32. Whatever feeds
  the model calls these two, so preprocessing cannot drift between them.
- `read_header(data)`: format, size and mode, read without decoding the pixels.

A file is an image when its first bytes are a JPEG, PNG, BMP or TIFF signature, or it has
`DICM` at byte 128, and it decodes; anything else raises `NotAnImage`, whose text says why. An
image of more than `MAX_PIXELS` is refused from its header, before a byte of it is decoded: a
1 MB PNG can claim 30000x30000 pixels and take gigabytes to decode. Files are read as bytes
(`read_bytes`: regular files only, at most `MAX_FILE_BYTES`) and decoded from memory.

Every image reaches the model as 8-bit grey or colour, as a viewer shows it:
- 8-bit files as OpenCV decodes them, as the tutorial did.
- 16-bit PNG and TIFF scaled by the bits their data use (a PNG's `sBIT` chunk when it has one,
  else the bit length of the largest value, at least 8), not shifted right by 8: 12-bit values
  in a 16-bit file would otherwise become 0-15, an almost black image.
- DICOM through its own pipeline (`_dicom_to_grey`): the modality LUT, then the VOI LUT, or the
  first window, or else the full range of the stored bits; MONOCHROME1 inverted.
- Transparent pixels composited over black (where nothing was drawn, as on a film's edge).
- Floating-point and 32-bit integer pixels refused: their scale cannot be known.
"""

import collections
import io
import os
import stat
import struct
import warnings

import cv2
import numpy as np
from PIL import Image

from .cli import capture_stderr_fd, first_line, lazy_import, shown

tf = lazy_import("tensorflow")
pydicom = lazy_import("pydicom")

# The tutorial resizes every X-ray to VGG16's native input size, ignoring the aspect ratio.
IMAGE_SIZE = (224, 224)
# Far above any chest X-ray (a 4,000 x 5,000 detector has 20 million pixels).
MAX_PIXELS = 100_000_000
# Far above any chest X-ray file (an uncompressed 16-bit 5,000 x 5,000 DICOM is 50 MB): the
# bound on every read, checked from the file's size before a byte is read.
MAX_FILE_BYTES = 1 << 30
# The first bytes of each format `list_images` lists, whatever the file's name says.
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# A DICOM file (PS3.10) is a 128-byte preamble, then these 4 bytes.
DICOM_MARKER, DICOM_MARKER_AT = b"DICM", 128
# The extensions imutils lists as images, and DICOM's.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
# Our limit is checked below; Pillow's own (a warning at 89 million pixels) would only repeat it.
Image.MAX_IMAGE_PIXELS = None

Header = collections.namedtuple("Header", "format width height mode alpha", defaults=[False])


class NotAnImage(Exception):
    """A file that cannot be used as an X-ray; its text says why, for a warning line."""


# ---------------------------------------------------------------------------------------------
# Finding and reading files
# ---------------------------------------------------------------------------------------------


def _may_be_dicom_by_name(name):
    """DICOM exports often have no extension (`IM0001`) or are named by a UID
    (`1.2.840.113619.2.55.3.6`): such names are checked for the marker."""
    extension = os.path.splitext(name)[1]
    return extension == "" or extension[1:].isdigit()


def list_images(root):
    """Every image under `root`, recursively, sorted: the file types imutils lists, DICOM's
    extensions, and files whose names may be DICOM (`_may_be_dicom_by_name`) that carry its
    marker.

    Sorting makes the listing, and so the train/test split and any sample, the same on every
    filesystem: `os.walk` returns files in an order that differs between machines. Dot-files
    (macOS `._x.jpg`) and `__MACOSX` folders from zips are never X-rays, whatever their names.
    Folders that are links are not entered, as imutils did not.
    """
    images = []
    for base, folders, names in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".") and f != "__MACOSX"]
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(base, name)
            extension = os.path.splitext(name)[1].lower()
            if extension in IMAGE_EXTENSIONS + DICOM_EXTENSIONS or (
                    _may_be_dicom_by_name(name) and _has_dicom_marker(path)):
                images.append(path)
    return sorted(images)


def _open_regular(path):
    """A file object on `path` and its size, when it is a regular file of at most
    MAX_FILE_BYTES; else `NotAnImage`. Opened without blocking, so that a FIFO cannot hang the
    run, and checked from the open descriptor, so that the file checked is the file read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise NotAnImage(f"cannot be read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAnImage("not a regular file (a FIFO, device or socket)")
        if info.st_size > MAX_FILE_BYTES:
            raise NotAnImage(f"{info.st_size / 2**30:.1f} GiB, over the limit of "
                             f"{MAX_FILE_BYTES / 2**30:.0f} GiB for one image file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _has_dicom_marker(path):
    try:
        f, _ = _open_regular(path)
    except NotAnImage:
        return False
    with f:
        try:
            return f.read(DICOM_MARKER_AT + 4)[DICOM_MARKER_AT:] == DICOM_MARKER
        except OSError:
            return False


def read_bytes(path):
    """The bytes of `path`, a regular file of at most MAX_FILE_BYTES; `NotAnImage` when it is
    anything else or cannot be read."""
    f, size = _open_regular(path)
    with f:
        try:
            return f.read(size + 1)[:MAX_FILE_BYTES]  # +1: a file grown since is not cut short
        except OSError as err:
            raise NotAnImage(f"cannot be read ({err.strerror or err})") from None


def is_dicom(data):
    return data[DICOM_MARKER_AT:DICOM_MARKER_AT + 4] == DICOM_MARKER


# ---------------------------------------------------------------------------------------------
# Headers: what a file claims, checked before its pixels are decoded
# ---------------------------------------------------------------------------------------------


def ignore_decoder_warnings():
    """Pillow and pydicom warn of each oddity they read past in a damaged file (`Tag data
    larger than file`, `Invalid value for VR DS`), naming no file; the one line that names the
    file says what matters. The filter is set again at each use: a caller's
    `warnings.catch_warnings` (pytest's, around each test) would undo a filter set once. Not
    `catch_warnings` here: it is not thread-safe, and the loader decodes in threads."""
    for module in ("PIL", "pydicom"):
        warnings.filterwarnings("ignore", module=module)


def _check_pixels(width, height):
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise NotAnImage(f"{width}x{height} pixels ({pixels / 1e6:.1f} megapixels), over the "
                         f"limit of {MAX_PIXELS / 1e6:.0f} megapixels")


def _read_dicom(data, pixels):
    """The pydicom dataset in `data`: its header only, or with its pixels."""
    try:
        ignore_decoder_warnings()
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as err:  # pydicom raises many types on a damaged file
        raise NotAnImage(f"not a readable DICOM file ({first_line(err)})") from None


def _header_value(ds, keyword, kind=int, low=None, high=None, default=None, first=False):
    """One value of a DICOM header that may be damaged, checked before it is used: a number
    (`kind` int or float) from `low` to `high`, or a `str` when `kind` is str; `default` when
    the element is missing or empty. Several values are refused, or with `first`, the first is
    taken (a file may offer several windows). Anything else is a `NotAnImage` naming the
    element, so that a damaged file is one skipped line, not a traceback."""
    try:
        value = ds.get(keyword)
    except Exception as err:  # pydicom converts an element's raw bytes when it is read
        raise NotAnImage(f"a damaged DICOM header: {keyword} cannot be read "
                         f"({first_line(err)})") from None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) > 1 and not first:
            raise NotAnImage(f"a damaged DICOM header: {keyword} holds {len(value)} values, "
                             "not one")
        value = value[0] if len(value) else None
    if value is None or value == "" or value == b"":
        return default
    if kind is str:
        return str(value).strip()
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not np.isfinite(number) or (kind is int and not number.is_integer()):
        raise NotAnImage(f"a damaged DICOM header: {keyword} is {str(value)[:40]!r}, not "
                         f"{'a whole number' if kind is int else 'a number'}")
    number = kind(number)
    if (low is not None and number < low) or (high is not None and number > high):
        raise NotAnImage(f"a damaged DICOM header: {keyword} is {number}, outside "
                         f"{low}-{high}" if high is not None else
                         f"a damaged DICOM header: {keyword} is {number}, below {low}")
    return number


def _dicom_header(ds):
    """The header of a pydicom dataset, refusing a file without one image of at most
    MAX_PIXELS before any pixel is decoded."""
    rows = _header_value(ds, "Rows", low=0, high=65535)
    columns = _header_value(ds, "Columns", low=0, high=65535)
    if not rows or not columns:
        raise NotAnImage("a DICOM file without an image (no Rows and Columns)")
    frames = _header_value(ds, "NumberOfFrames", low=1, default=1)
    if frames > 1:
        raise NotAnImage(f"{frames} frames; a chest radiograph has one")
    _check_pixels(columns, rows)
    return Header("DICOM", columns, rows, _header_value(ds, "PhotometricInterpretation", str,
                                                        default=""))


def _pixel_format(ds):
    """The header values the pixel pipeline uses, each checked (`_header_value`):
    {bits_stored, signed, samples}."""
    allocated = _header_value(ds, "BitsAllocated", low=1, high=64, default=16)
    stored = _header_value(ds, "BitsStored", low=1, high=allocated, default=allocated)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        _header_value(ds, keyword, float)
    return {"bits_stored": stored,
            "signed": _header_value(ds, "PixelRepresentation", low=0, high=1, default=0) == 1,
            "samples": _header_value(ds, "SamplesPerPixel", low=1, high=4, default=1)}


def _png_significant_bits(data):
    """The largest value of a PNG's `sBIT` chunk (the bits the encoder says are significant),
    or None. Reads only the chunks before the pixel data."""
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"sBIT":
            return max(data[at + 8:at + 8 + length], default=None)
        if kind in (b"IDAT", b"IEND"):
            return None
        at += 12 + length
    return None


def read_header(data):
    """The format, size, mode and transparency of an image's bytes, decoding no pixel.

    Raises `NotAnImage` for bytes without an image signature or DICOM marker, a header that
    cannot be parsed, more than MAX_PIXELS pixels, several frames, or floating-point pixels.
    """
    if is_dicom(data):
        return _dicom_header(_read_dicom(data, pixels=False))
    ignore_decoder_warnings()
    if not any(data.startswith(signature) for signature in SIGNATURES):
        raise NotAnImage("not an image (no JPEG, PNG, BMP or TIFF signature, no DICOM marker)")
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
            alpha = "A" in image.mode or "transparency" in image.info
            header = Header(image.format, image.width, image.height, image.mode, alpha)
    except (OSError, ValueError, SyntaxError):  # what Pillow raises for a broken header
        raise NotAnImage("not a readable image") from None
    _check_pixels(header.width, header.height)
    if header.mode == "F" or header.mode.startswith("F;"):
        raise NotAnImage("floating-point pixels, whose grey scale cannot be known; save it "
                         "with 8- or 16-bit integer pixels")
    return header


# ---------------------------------------------------------------------------------------------
# Decoding: the pixels as a viewer shows them, 8-bit BGR
# ---------------------------------------------------------------------------------------------


def _to_8_bits(image, significant_bits=None):
    """uint8 as it is; uint16 scaled by its significant bits (the largest value's bit length
    when not given, at least 8) to 0-255; anything else refused."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise NotAnImage(f"{image.dtype} pixels, whose grey scale cannot be known; save it with "
                         "8- or 16-bit integer pixels")
    if significant_bits is not None and not 1 <= significant_bits <= 16:
        significant_bits = None  # a chunk that says more bits than 16-bit pixels hold is wrong
    bits = significant_bits or max(8, int(image.max()).bit_length())
    top = (1 << bits) - 1
    return np.round(np.minimum(image, top) * (255.0 / top)).astype(np.uint8)


def _window(values, center, width, function):
    """The VOI window of DICOM PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT or SIGMOID), to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    # LINEAR, the default: the window's edges at center - 0.5 -/+ (width - 1) / 2
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)


def _dicom_to_grey(ds, stored, pixel_format):
    """Stored DICOM values to grey in [0, 1], as a viewer shows them: the modality LUT
    (RescaleSlope/Intercept, or a Modality LUT), then the VOI LUT, or else the first
    WindowCenter/Width, or else the whole range the stored bits can hold; MONOCHROME1 inverted
    (its 0 is white)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, ds).astype(np.float64)
    center = _header_value(ds, "WindowCenter", float, first=True)
    width = _header_value(ds, "WindowWidth", float, first=True)
    if "VOILUTSequence" in ds:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        # the LUT is indexed by the modality LUT's output, an integer
        grey = apply_voi(np.round(values).astype(np.int64), ds).astype(np.float64)
        grey /= float((1 << min(max(int(descriptor[2]), 1), 32)) - 1)
    elif center is not None and width is not None and width > 0:
        function = (_header_value(ds, "VOILUTFunction", str, first=True) or "LINEAR").upper()
        grey = _window(values, center, width, function)
    else:
        bits, signed = pixel_format["bits_stored"], pixel_format["signed"]
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        ends = apply_modality_lut(np.array([low, high]), ds).astype(np.float64)
        low, high = float(ends.min()), float(ends.max())
        grey = (values - low) / max(high - low, 1e-12)
    grey = np.clip(np.nan_to_num(grey), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def _decode_dicom(data):
    """A DICOM file's one frame as 8-bit BGR, through `_dicom_to_grey` for grey images."""
    # parsed once; pydicom decodes the pixel data only when `pixel_array` asks for it, after
    # the header has refused too many pixels or frames
    ds = _read_dicom(data, pixels=True)
    header = _dicom_header(ds)
    pixel_format = _pixel_format(ds)
    if "PixelData" not in ds:
        raise NotAnImage("a DICOM file without integer pixel data (float pixel data, or none)")
    try:
        stored = ds.pixel_array
    except Exception as err:  # the decoder plugins raise many types
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        if "plugin" in str(err).lower() or "not support" in str(err).lower():
            raise NotAnImage(f"its transfer syntax '{name}' cannot be decoded by the installed "
                             "DICOM decoders (pydicom, python-gdcm)") from None
        raise NotAnImage(f"its pixel data cannot be decoded ({name}: {first_line(err)})") from None
    try:
        return _dicom_pixels_to_bgr(ds, stored, header, pixel_format), header
    except NotAnImage:
        raise
    except Exception as err:  # a damaged LUT or an element pydicom cannot apply
        raise NotAnImage(f"a damaged DICOM header or pixel data ({type(err).__name__}: "
                         f"{first_line(err)})") from None


def _dicom_pixels_to_bgr(ds, stored, header, pixel_format):
    """A DICOM frame's stored values as 8-bit BGR: grey through `_dicom_to_grey`, colour as
    it is."""
    interpretation = header.mode.upper()
    if interpretation in ("MONOCHROME1", "MONOCHROME2"):
        if stored.ndim != 2:
            raise NotAnImage(f"a {interpretation} DICOM file whose pixels have shape "
                             f"{stored.shape}, not one grey plane")
        grey = np.round(_dicom_to_grey(ds, stored, pixel_format) * 255.0).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if stored.ndim == 3 and stored.shape[-1] == 3:  # RGB, or YBR that pydicom made RGB
        bits = pixel_format["bits_stored"]
        rgb = (_to_8_bits(stored.astype(np.uint16), min(bits, 16)) if bits > 8
               else stored.astype(np.uint8))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    raise NotAnImage(f"photometric interpretation {header.mode or 'missing'} is not supported "
                     "(MONOCHROME1, MONOCHROME2 and RGB are)")


# EXIF orientation (1-8) as the turns and flips that show the image upright: what IMREAD_COLOR
# applies to the pixels, and IMREAD_UNCHANGED (which keeps the alpha) does not.
_ORIENTED = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.T, 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
             8: lambda a: np.rot90(a, 1)}


def _exif_orientation(data):
    """The EXIF orientation tag of an image's bytes, or 1 (as it is)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(0x0112, 1))
    except Exception:  # an EXIF block Pillow cannot parse: the image as it is
        return 1


def _over_black(data, image):
    """`image` (8-bit BGR, upright as its EXIF orientation says) with the file's transparent
    pixels composited over black, the alpha turned upright as the pixels were."""
    with_alpha = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if with_alpha is None or with_alpha.ndim != 3 or with_alpha.shape[2] not in (2, 4):
        return image  # a palette's transparency that OpenCV expands away: nothing to composite
    alpha = with_alpha[..., -1]
    if alpha.shape != image.shape[:2]:
        alpha = _ORIENTED.get(_exif_orientation(data), lambda a: a)(alpha)
    if alpha.shape != image.shape[:2]:
        raise NotAnImage(f"its transparency ({alpha.shape[1]}x{alpha.shape[0]}) does not fit "
                         f"its pixels ({image.shape[1]}x{image.shape[0]})")
    alpha = alpha.astype(np.float64)
    alpha /= 65535.0 if with_alpha.dtype == np.uint16 else 255.0
    return np.round(image * alpha[..., None]).astype(np.uint8)


def decode_with_header(data):
    """The image in `data` as 8-bit 3-channel BGR, as a viewer shows it (see the module's
    docstring), and its header, parsed once."""
    if is_dicom(data):
        return _decode_dicom(data)
    header = read_header(data)  # refuses what is not an image, or too large, before decoding
    # IMREAD_COLOR as the tutorial (3 channels, EXIF orientation), ANYDEPTH to keep 16 bits
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8),
                             cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:  # a decoder failure is this file's, never the run's end
        image = None
    if image is None:
        raise NotAnImage("not a readable image")
    bits = _png_significant_bits(data) if header.format == "PNG" else None
    image = _to_8_bits(image, bits if image.dtype == np.uint16 else None)
    if header.alpha:
        image = _over_black(data, image)
    return image, header


def decode(data):
    """`decode_with_header` without the header: the 3-channel 8-bit BGR image."""
    return decode_with_header(data)[0]


def _decoder_message(text):
    """What C decoders wrote for one file (`Corrupt JPEG data: ...`, `libpng error: ...`), as
    one line: each distinct line once, in order."""
    lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    message = "; ".join(lines)
    return message if len(message) <= 300 else message[:297] + "..."


def with_decoder_messages(function, items, map_items=map):
    """[(function(item), what the C decoders wrote while it ran, or None)] for each of `items`.

    libjpeg and libpng write their complaints about a damaged file (`Corrupt JPEG data:
    premature end of data segment`, `libpng error: IDAT: CRC error`) straight to file
    descriptor 2, naming no file. They are caught here (`capture_stderr_fd`) and handed back
    with the file they belong to, for the one warning that names it. `map_items` may run the
    calls in threads (`pool.map`); when anything was written, each item is run again on its
    own, so that every message is given to its file. `function` must not print.
    """
    with capture_stderr_fd() as written:
        results = list(map_items(function, items))
    if not written.text.strip():
        return [(result, None) for result in results]
    if len(items) == 1:
        return [(results[0], _decoder_message(written.text))]
    attributed = []
    for item in items:
        with capture_stderr_fd() as written:
            result = function(item)
        attributed.append((result, _decoder_message(written.text) or None))
    return attributed


def model_input(image, size=IMAGE_SIZE):
    """A decoded BGR image prepared as the tutorial did: BGR->RGB, resized to `size` ignoring
    the aspect ratio. Returns uint8 (height, width, 3).

    Pixels stay uint8 (a quarter of the memory of float32, an eighth of the tutorial's float64);
    `scale_pixels` does the tutorial's division by 255 when a batch enters the model.
    """
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size)


def load_xray(path, size=IMAGE_SIZE):
    """The X-ray file at `path` as the model's uint8 input; raises `NotAnImage` with the
    reason."""
    return model_input(decode(read_bytes(path)), size)


def damage_warning(path, message):
    """The one line that names a file a decoder complained of but could still decode."""
    return (f"[WARNING] {shown(path)}: damaged, used as far as it decodes (the decoder said: "
            f"{message})")


def unusable(reason, message=None):
    """Why a file cannot be used, with what its decoder said."""
    return reason + (f" (the decoder said: {message})" if message else "")


def skip_warning(path, reason, message=None):
    """The one line that names a file that is skipped, with what its decoder said."""
    return f"[WARNING] skipping {shown(path)}: {unusable(reason, message)}"


def scale_pixels(images):
    """The tutorial's preprocessing: uint8 pixels -> float32 in [0, 1], no ImageNet mean
    subtracted. Works on NumPy arrays and on tensors inside a tf.data pipeline alike."""
    return tf.cast(images, tf.float32) / 255.0


def save_image(path, image):
    """Write a BGR image with OpenCV's encoder (format from the suffix), through Python's file
    API, so that a name that is not UTF-8 works too."""
    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
    if not ok:
        raise OSError(f"OpenCV cannot encode {os.path.splitext(path)[1]!r} images")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())
