"""The tutorial's augmentation, drawn so that a rerun can reuse what it computed.

The tutorial rotated each training image by a random angle of up to 15 degrees either way
(`ImageDataGenerator(rotation_range=15, fill_mode="nearest")`), anew every epoch. Keras's
`RandomRotation` does the same, but draws its angles from a stream: an image's angle depends on
where its batch falls, so nothing computed from a rotated image can be found again.

Here the angle of a training image in an epoch is drawn from (seed, epoch, the image's SHA-256)
alone, and the image is rotated exactly as `RandomRotation` rotates it (the same affine matrix
about the centre, bilinear, "nearest" fill). The same seed gives the same angles in every run,
whatever the batch size, the learning rate or the number of epochs, so the frozen VGG16's
features of each rotated image can be cached (`rotated_key`), and a rerun finds them.
"""

import hashlib
import math

import numpy as np

from .cli import lazy_import

keras = lazy_import("keras")

# The tutorial's augmentation: ImageDataGenerator(rotation_range=15, fill_mode="nearest").
ROTATION_DEGREES = 15
FILL_MODE = "nearest"
INTERPOLATION = "bilinear"
AUGMENTATION = f"random rotation up to {ROTATION_DEGREES} degrees either way"


def rotation_angles(seed, epoch, digests):
    """The angle, in degrees, by which each image (named by the SHA-256 of its file) is
    rotated in `epoch` (0-based) of a run seeded with `seed`: uniform in [-15, 15)."""
    return np.array([np.random.default_rng([seed, epoch, int(digest[:16], 16)])
                     .uniform(-ROTATION_DEGREES, ROTATION_DEGREES) for digest in digests])


def rotation_matrices(angles, height, width):
    """`RandomRotation`'s affine matrix for each angle (degrees), about the image's centre:
    (len(angles), 8) float32, as `keras.ops.image.affine_transform` takes them."""
    theta = np.asarray(angles, dtype=np.float64) * math.pi / 180
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    zeros = np.zeros_like(theta)
    return np.stack([cos, -sin, cx - cx * cos + cy * sin,
                     sin, cos, cy - cx * sin - cy * cos, zeros, zeros], axis=1).astype(np.float32)


def rotate(images, matrices):
    """A batch of float images (n, height, width, channels), each rotated by its matrix."""
    return keras.ops.image.affine_transform(images, matrices, interpolation=INTERPOLATION,
                                            fill_mode=FILL_MODE)


def rotated_key(digest, angle):
    """The feature cache's key for the image with SHA-256 `digest` rotated by `angle` degrees:
    the exact angle (its hexadecimal float), so that no two angles share an entry."""
    return hashlib.sha256(f"{digest} rotated {float(angle).hex()}".encode()).hexdigest()
