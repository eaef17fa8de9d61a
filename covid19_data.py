"""The decoded-image store, and the tf.data pipelines that feed the model from it.

`load_dataset(folder)` lists a dataset's images (one folder per class), decodes each once into a
`DecodedImages` store and takes each label from its folder's name.

Decoding a JPEG X-ray costs far more than reading its 150 KB of uint8 pixels back (18 ms against
well under 1 ms for the tutorial's images), and decoding threads running every epoch would take
the CPU from VGG16's. So `DecodedImages` decodes every image once, with the shared
`covid19_images.xray_from_bytes`, into an anonymous temporary file, in the same pass that finds
which files are readable; batches read their pixels back as they need them, so memory does not
grow with the dataset. The file has no name: it disappears when closed, or when the process ends
however it ends.

The pipelines never run autotuning: tf.data's autotuning thread sleeps for up to a minute
between rounds, and destroying an iterator waits for it to wake, which stalled the end of every
training run by up to that long. Each epoch is one finite pass, so no batch is prepared that no
step will use.
"""

import concurrent.futures
import hashlib
import os
import sys
import tempfile

import numpy as np

from covid19_cli import UserError, lazy_import, shown, warn_if_not_utf8
from covid19_images import (IMAGE_SIZE, NotAnImage, list_images, read_bytes, read_header,
                            scale_pixels, xray_from_bytes)

tf = lazy_import("tensorflow")

# Images decoded at once: enough to keep every core busy, few enough that memory stays flat.
DECODE_WINDOW = 4 * (os.cpu_count() or 1)


def _decode(path):
    """(sha256 of the file, uint8 224x224x3 image, header, file size), or (None, the reason it
    cannot be used, None, None)."""
    try:
        data = read_bytes(path)
        return (hashlib.sha256(data).hexdigest(), xray_from_bytes(data), read_header(data),
                len(data))
    except NotAnImage as err:
        return None, str(err), None, None


class DecodedImages:
    """The usable images among `image_paths`, each decoded once into a temporary file on disk.

    `slot[path]` is where an image's pixels are, `digest[path]` the SHA-256 of its file (the key
    of its cached features), `header[path]` and `file_size[path]` what the file says of itself
    (the audit's confounds: no file is read twice), `skipped` the (path, reason) of every file
    that is not a usable image, and `reads` counts the images read back since the store was
    made.
    """

    IMAGE_BYTES = IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3

    def __init__(self, image_paths):
        self._file = tempfile.TemporaryFile()
        self.slot, self.digest, self.header, self.file_size = {}, {}, {}, {}
        self.skipped, self.reads = [], 0
        # OpenCV releases the GIL, so threads decode in parallel; map keeps the order.
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            for start in range(0, len(image_paths), DECODE_WINDOW):
                window = image_paths[start:start + DECODE_WINDOW]
                for path, (digest, image, header, size) in zip(window,
                                                               pool.map(_decode, window)):
                    if digest is None:
                        self.skipped.append((path, image))
                    else:
                        self.slot[path], self.digest[path] = len(self.slot), digest
                        self.header[path], self.file_size[path] = header, size
                        self._file.write(image.tobytes())
        self._file.flush()

    def read(self, slots):
        """The uint8 images in `slots`, as one (len(slots), 224, 224, 3) array."""
        self.reads += len(slots)
        return np.stack([np.frombuffer(os.pread(self._file.fileno(), self.IMAGE_BYTES,
                                                int(slot) * self.IMAGE_BYTES), np.uint8)
                         .reshape(*IMAGE_SIZE, 3) for slot in slots])

    def read_tensor(self, slots):
        """`read` as a step of a tf.data pipeline."""
        images = tf.numpy_function(self.read, [slots], tf.uint8, stateful=False)
        images.set_shape((None, *IMAGE_SIZE, 3))
        return images

    def slots(self, paths):
        return np.array([self.slot[path] for path in paths], dtype=np.int64)

    def warn_skipped(self):
        """One warning line per skipped file, then their count, on stderr."""
        for path, reason in self.skipped:
            print(f"[WARNING] skipping {shown(path)}: {reason}", file=sys.stderr)
        if self.skipped:
            print(f"[WARNING] skipped {len(self.skipped)} unreadable image(s)", file=sys.stderr)

    def close(self):
        self._file.close()


def load_dataset(dataset):
    """Every usable image under the folder `dataset`, decoded once, and its label: the name of
    its folder. Returns the store, the paths it holds (sorted) and their labels; files that are
    not usable images are skipped with a warning."""
    if not os.path.isdir(dataset):
        raise UserError(f"--dataset {dataset!r} is not a folder")
    image_paths = list_images(dataset)
    if not image_paths:
        raise UserError(f"--dataset {dataset!r} has no images (.jpg, .jpeg, .png, .bmp, .tif, "
                        ".tiff); put one folder of images per class in it")
    warn_if_not_utf8(image_paths)
    images = DecodedImages(image_paths)
    images.warn_skipped()
    if not images.slot:
        images.close()
        raise UserError(f"--dataset {dataset!r}: none of its images could be read")
    paths = list(images.slot)
    return images, paths, np.array([os.path.basename(os.path.dirname(p)) for p in paths])


def _without_autotuning(dataset):
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(1).with_options(options)


def image_batches(images, paths, batch_size, prepare=None):
    """The images at `paths`, in order, in batches, scaled to [0, 1]; never augmented.

    `prepare`, if given, changes each uint8 batch before it is scaled (the audit's masks).
    """
    dataset = tf.data.Dataset.from_tensor_slices(images.slots(paths)).batch(batch_size)
    dataset = dataset.map(images.read_tensor)
    if prepare is not None:
        dataset = dataset.map(prepare)
    return _without_autotuning(dataset.map(scale_pixels))


def training_batches(inputs, labels, batch_size, seed, prepare=None):
    """One epoch of (prepare(input batch), label batch): shuffled anew each epoch, whole batches.

    As in the tutorial, an epoch is `len(inputs) // batch_size` whole batches; an image left
    over by that division waits for another epoch's shuffle. Keras iterates the dataset once
    per epoch.
    """
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if prepare is not None:
        dataset = dataset.map(lambda x, y: (prepare(x), y))
    return _without_autotuning(dataset)
