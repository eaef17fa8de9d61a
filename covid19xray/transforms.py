"""What is done to an image before the frozen VGG16 sees it: one small type per kind of change.

Every image is decoded, resized and scaled to [0, 1] the same way (`images`); a transform then
changes the scaled batch, or not:

- `UNCHANGED`: the image as it is (the test split, `--cache-features`, the audit's `full`);
- `Rotation`: the tutorial's augmentation, a random rotation of up to 15 degrees either way,
  drawn anew for every image and epoch;
- `BoxMask`: the audit's masks, a box blacked out (`lungs_hidden`) or all but it (`lungs_only`);
  `LungMasks`: the same with each image's own lung mask, where the dataset ships them.

A transform applies itself (`parameters` per image, then `apply` on the batch inside the tf.data
pipeline), and names itself, with every parameter it has, in the feature cache's key
(`describe`): a changed box or seed can never reuse features computed for another.
`entry_key` names one image's entry within that key from the image's SHA-256 and the row of
parameters it was changed by: the SHA-256 itself for a transform without parameters (the image
is the same every epoch), else a hash of both (for the rotation, its exact matrix).

Why the rotation is drawn here rather than by Keras's `RandomRotation`: that layer draws its
angles from a stream, so an image's angle depends on where its batch falls, and nothing
computed from a rotated image can be found again. Here the angle of an image in an epoch is
drawn from (seed, epoch, the image's SHA-256) alone, and the image is rotated exactly as
`RandomRotation` rotates it (the same affine matrix about the centre, bilinear, "nearest" fill).
The same seed gives the same angles in every run, whatever the batch size, the learning rate or
the number of epochs, so a rerun finds the features of every rotated image in the cache.
"""

import dataclasses
import hashlib
import math

import numpy as np

from .cli import lazy_import
from .config import FILL_MODE, INTERPOLATION, ROTATION_DEGREES
from .images import IMAGE_SIZE

keras = lazy_import("keras")
tf = lazy_import("tensorflow")


@dataclasses.dataclass(frozen=True)
class Transform:
    """The base of every transform; on its own, it leaves the image as it is."""

    # how `cache.cache_line` names this transform's entries, and a progress bar its images
    entries = "image(s)"
    label = ""

    def cache_key_part(self):
        """The transform's kind and every parameter: its part of the feature cache's key."""
        return {"kind": type(self).__name__, **dataclasses.asdict(self)}

    def parameters(self, digests, epoch):
        """What `apply` needs for each image (named by its SHA-256) in `epoch`: (n, k) float32."""
        return np.zeros((len(digests), 0), np.float32)

    def apply(self, images, parameters):
        """The batch of scaled images (n, height, width, 3), changed; `parameters` its rows."""
        return images

    def parameters_and_keys(self, digests, epochs):
        """Every image (named by its SHA-256) in each of `epochs` epochs, epoch by epoch and
        image by image within each: the rows of `parameters` that change it, (epochs *
        len(digests), k) float32, and the feature cache's name for each (`entry_key`)."""
        parameters = np.concatenate([self.parameters(digests, epoch) for epoch in range(epochs)])
        keys = [entry_key(digests[n % len(digests)], row) for n, row in enumerate(parameters)]
        return parameters, keys


def entry_key(digest, parameters):
    """The feature cache's name for the image with SHA-256 `digest` changed by its row of
    `parameters` (float32): `digest` when there are none, else a hash of both. Two images
    changed by the same parameters are the same image, and share an entry."""
    if parameters.size == 0:
        return digest
    return hashlib.sha256(digest.encode() + np.asarray(parameters, np.float32).tobytes()
                          ).hexdigest()


class Unchanged(Transform):
    """The image as it is: the test split, `--cache-features`, the audit's `full`."""


UNCHANGED = Unchanged()


def rotation_angles(seed, epoch, digests, degrees=ROTATION_DEGREES):
    """The angle, in degrees, by which each image (named by the SHA-256 of its file) is
    rotated in `epoch` (0-based) of a run seeded with `seed`: uniform in [-degrees, degrees)."""
    return np.array([np.random.default_rng([seed, epoch, int(digest[:16], 16)])
                     .uniform(-degrees, degrees) for digest in digests])


def rotation_matrices(angles, height, width):
    """`RandomRotation`'s affine matrix for each angle (degrees), about the image's centre:
    (len(angles), 8) float32, as `keras.ops.image.affine_transform` takes them."""
    theta = np.asarray(angles, dtype=np.float64) * math.pi / 180
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    zeros = np.zeros_like(theta)
    return np.stack([cos, -sin, cx - cx * cos + cy * sin,
                     sin, cos, cy - cx * sin - cy * cos, zeros, zeros], axis=1).astype(np.float32)


def rotate(images, matrices, interpolation=INTERPOLATION, fill_mode=FILL_MODE):
    """A batch of float images (n, height, width, channels), each rotated by its matrix."""
    return keras.ops.image.affine_transform(images, matrices, interpolation=interpolation,
                                            fill_mode=fill_mode)


@dataclasses.dataclass(frozen=True)
class Rotation(Transform):
    """The tutorial's `ImageDataGenerator(rotation_range=15, fill_mode="nearest")`: each image
    rotated by its own angle in every epoch, drawn from `seed`, the epoch and the image."""

    seed: int
    degrees: float = ROTATION_DEGREES
    fill_mode: str = FILL_MODE
    interpolation: str = INTERPOLATION

    entries = "rotated image(s) (one per training image and epoch)"
    label = "rotated"

    @property
    def summary(self):
        """What the training report says of it."""
        return f"random rotation up to {self.degrees:g} degrees either way"

    def angles(self, digests, epoch):
        return rotation_angles(self.seed, epoch, digests, self.degrees)

    def parameters(self, digests, epoch):
        return rotation_matrices(self.angles(digests, epoch), *IMAGE_SIZE)

    def apply(self, images, parameters):
        return rotate(images, parameters, self.interpolation, self.fill_mode)


@dataclasses.dataclass(frozen=True)
class BoxMask(Transform):
    """A box, as fractions of the image's width and height (left, top, right, bottom), kept
    and everything else blacked out (`keep="inside"`), or blacked out itself
    (`keep="outside"`)."""

    box: tuple
    keep: str

    label = "masked"

    def __post_init__(self):
        if self.keep not in ("inside", "outside"):
            raise ValueError(f"keep must be 'inside' or 'outside', not {self.keep!r}")

    def pixels(self, height=IMAGE_SIZE[0], width=IMAGE_SIZE[1]):
        """The box's rows and columns on an image of that size: (top, bottom, left, right)."""
        left, top, right, bottom = self.box
        return (round(top * height), round(bottom * height), round(left * width),
                round(right * width))

    def mask(self, height=IMAGE_SIZE[0], width=IMAGE_SIZE[1]):
        """1 where the image is kept, 0 where it is blacked out: float32 (height, width, 1)."""
        top, bottom, left, right = self.pixels(height, width)
        inside = np.zeros((height, width, 1), np.float32)
        inside[top:bottom, left:right] = 1
        return inside if self.keep == "inside" else 1 - inside

    def apply(self, images, parameters):
        # scaled pixels times 0 or 1: exactly the masked uint8 image, scaled
        return images * tf.constant(self.mask(*images.shape[1:3]))


@dataclasses.dataclass(frozen=True)
class LungMasks(Transform):
    """Each image's own lung mask (the COVID-19 Radiography Database ships one per image, in
    `masks/`), kept with everything else blacked out (`keep="inside"`), or blacked out itself
    (`keep="outside"`): the audit's variants where masks ship, in place of `BoxMask`.

    The masks are read from `store` (an `ImageStore` of the mask files, decoded and resized as
    images are) at `slot_of[image SHA-256]`; a mask pixel counts as lung above half grey. Each
    entry's key names the image and its mask (`mask_of[image SHA-256]`: the mask file's
    SHA-256), so an image masked otherwise is never served the features of this one."""

    keep: str
    store: object = dataclasses.field(compare=False, repr=False)
    slot_of: dict = dataclasses.field(compare=False, repr=False)
    mask_of: dict = dataclasses.field(compare=False, repr=False)

    label = "masked"

    def __post_init__(self):
        if self.keep not in ("inside", "outside"):
            raise ValueError(f"keep must be 'inside' or 'outside', not {self.keep!r}")

    def cache_key_part(self):
        return {"kind": type(self).__name__, "keep": self.keep}

    def parameters(self, digests, epoch):
        # where each image's mask is in `store`
        return np.array([[self.slot_of[digest]] for digest in digests], np.float32)

    def parameters_and_keys(self, digests, epochs):
        parameters = np.concatenate([self.parameters(digests, epoch) for epoch in range(epochs)])
        keys = [hashlib.sha256(f"{digest}:{self.mask_of[digest]}".encode()).hexdigest()
                for digest in digests] * epochs
        return parameters, keys

    def apply(self, images, parameters):
        masks = self.store.read_tensor(tf.cast(parameters[:, 0], tf.int64))
        lung = tf.cast(tf.reduce_max(masks, axis=-1, keepdims=True) > 127, images.dtype)
        return images * (lung if self.keep == "inside" else 1 - lung)
