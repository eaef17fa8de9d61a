"""X-ray image files: which files are images, reading them safely, and the one preprocessing.

- `list_images(root)`: the image files under a folder (the types imutils lists), sorted.
- `load_xray(path)` / `model_input(decoded)`: the tutorial's loading (OpenCV, BGR to RGB,
  224x224 ignoring the aspect ratio) as uint8. Training, prediction and the audit all use it.
- `scale_pixels(images)`: the tutorial's preprocessing, pixels / 255 as float32. Whatever feeds
  the model calls these two, so preprocessing cannot drift between them.
- `read_header(data)`: format, size and mode, read without decoding the pixels.

A file is an image when its first bytes are a JPEG, PNG, BMP or TIFF signature and OpenCV
decodes it; anything else raises `NotAnImage`, whose text says why. An image of more than
`MAX_PIXELS` is refused from its header, before a byte of it is decoded: a 1 MB PNG can claim
30000x30000 pixels and take gigabytes to decode. Files are read as bytes and decoded with
`cv2.imdecode`, never `cv2.imread`, which crashes on names that are not valid UTF-8.
"""

import collections
import io
import os

import cv2
import numpy as np
from imutils import paths
from PIL import Image

from .cli import lazy_import

tf = lazy_import("tensorflow")

# The tutorial resizes every X-ray to VGG16's native input size, ignoring the aspect ratio.
IMAGE_SIZE = (224, 224)
# What `decode`, `model_input` and `scale_pixels` do, in words: part of the feature cache's key, so
# change it whenever they change.
PREPROCESSING = "cv2.imdecode IMREAD_COLOR, BGR to RGB, cv2.resize 224x224 INTER_LINEAR, /255"
# Far above any chest X-ray (a 4,000 x 5,000 detector has 20 million pixels).
MAX_PIXELS = 100_000_000
# The first bytes of each format `list_images` lists, whatever the file's name says.
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# Our limit is checked below; Pillow's own (a warning at 89 million pixels) would only repeat it.
Image.MAX_IMAGE_PIXELS = None

Header = collections.namedtuple("Header", "format width height mode")


class NotAnImage(Exception):
    """A file that cannot be used as an X-ray; its text says why, for a warning line."""


def list_images(root):
    """Every image under `root` (the file types imutils accepts, recursively), sorted.

    Sorting makes the listing, and so the train/test split and any sample, the same on every
    filesystem: `os.walk` returns files in an order that differs between machines. Dot-files
    (macOS `._x.jpg`) and `__MACOSX` folders from zips are never X-rays, whatever their names.
    """
    images = []
    for path in paths.list_images(root):
        relative = os.path.relpath(path, root)
        if not any(part.startswith(".") or part == "__MACOSX" for part in relative.split(os.sep)):
            images.append(path)
    return sorted(images)


def read_bytes(path):
    """The bytes of `path`; `NotAnImage` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise NotAnImage(f"cannot be read ({err.strerror or err})") from None


def read_header(data):
    """The format, size and mode of an image's bytes, decoding no pixel.

    Raises `NotAnImage` for bytes without an image signature, a header Pillow cannot parse,
    or more than MAX_PIXELS pixels.
    """
    if not any(data.startswith(signature) for signature in SIGNATURES):
        raise NotAnImage("not an image (no JPEG, PNG, BMP or TIFF signature)")
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
            header = Header(image.format, image.width, image.height, image.mode)
    except (OSError, ValueError, SyntaxError):  # what Pillow raises for a broken header
        raise NotAnImage("not a readable image") from None
    pixels = header.width * header.height
    if pixels > MAX_PIXELS:
        raise NotAnImage(f"{header.width}x{header.height} pixels ({pixels / 1e6:.1f} "
                         f"megapixels), over the limit of {MAX_PIXELS / 1e6:.0f} megapixels")
    return header


def decode_with_header(data):
    """The image in `data` as OpenCV decodes it for the tutorial (3-channel 8-bit BGR), and its
    header, parsed once. `cv2.IMREAD_COLOR` turns grayscale, palette, RGBA and 16-bit files into
    3-channel 8-bit.
    """
    header = read_header(data)  # refuses what is not an image, or too large, before decoding
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise NotAnImage("not a readable image")
    return image, header


def decode(data):
    """`decode_with_header` without the header: the 3-channel 8-bit BGR image."""
    return decode_with_header(data)[0]


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
