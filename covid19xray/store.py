"""The decoded-image store: every image of a dataset decoded once, read back by the pipelines.

`layout.load_dataset(folder)` lists a dataset's images and their classes, and decodes each
once into an `ImageStore`.

Decoding a JPEG X-ray costs far more than reading its 150 KB of uint8 pixels back (18 ms against
well under 1 ms for the tutorial's images), and decoding threads running every epoch would take
the CPU from VGG16's. So `ImageStore` decodes every image once, with the shared
`images.decode_with_header` and `images.model_input`, into an anonymous temporary file, in the
same pass that finds which files are readable; batches read their pixels back as they need
them, so memory does not grow with the dataset. The file has no name: it disappears when
closed, or when the process ends however it ends.
"""

import collections
import concurrent.futures
import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

from .cli import UserError, lazy_import
from .images import (
    IMAGE_SIZE,
    NotAnImage,
    damage_warning,
    decode_with_header,
    model_input,
    read_bytes,
    skip_warning,
    with_decoder_messages,
)
from .progress import progress

tf = lazy_import("tensorflow")

# Images decoded at once: enough to keep every core busy, few enough that memory stays flat.
DECODE_WINDOW = 4 * (os.cpu_count() or 1)

# What the store knows of one usable file: where its pixels are, the SHA-256 of its bytes (the
# key of its cached features), its header and size (the audit's confounds: no file is read
# twice).
Entry = collections.namedtuple("Entry", "slot digest header file_size")


def _decode(path):
    """(the file's `Entry` without its slot, uint8 224x224x3 image), or (None, the reason the
    file cannot be used)."""
    try:
        data = read_bytes(path)
        image, header = decode_with_header(data)
        return (hashlib.sha256(data).hexdigest(), header, len(data)), model_input(image)
    except NotAnImage as err:
        return None, str(err)


class ImageStore:
    """The usable images among `image_paths`, each decoded once into a temporary file on disk.

    `paths` are the usable ones, in order; `skipped` is the (path, reason, what its decoder
    wrote or None) of every other file; `damaged` the (path, what its decoder wrote) of usable
    files a decoder complained of.
    `image(path)`, `digest(path)`, `header(path)` and `file_size(path)` answer for one image;
    `read(slots)` reads a batch back for the tf.data pipelines (`frozen`).
    """

    IMAGE_BYTES = IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3

    def __init__(self, image_paths):
        self._file = tempfile.TemporaryFile()
        self._entries, self.skipped, self.damaged = {}, [], []
        try:
            # OpenCV releases the GIL, so threads decode in parallel; map keeps the order.
            with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool, \
                    progress(len(image_paths), "decoding") as bar:
                for start in range(0, len(image_paths), DECODE_WINDOW):
                    window = image_paths[start:start + DECODE_WINDOW]
                    decoded = with_decoder_messages(_decode, window, pool.map)
                    for path, ((facts, image), message) in zip(window, decoded):
                        if facts is None:
                            self.skipped.append((path, image, message))
                        else:
                            if message:
                                self.damaged.append((path, message))
                            self._entries[path] = Entry(len(self._entries), *facts)
                            self._file.write(image.tobytes())
                    bar.update(len(window))
            self._file.flush()
        except BaseException:  # a full TMPDIR, Ctrl-C: the anonymous file goes with the store
            self._file.close()
            raise
        self.paths = list(self._entries)

    def __len__(self):
        return len(self._entries)

    def image(self, path):
        """The uint8 (224, 224, 3) image of `path`."""
        return self.read([self._entries[path].slot])[0]

    def digest(self, path):
        return self._entries[path].digest

    def header(self, path):
        return self._entries[path].header

    def file_size(self, path):
        return self._entries[path].file_size

    def slots(self, paths):
        """Where the images of `paths` are: what `read` takes, as a tf.data pipeline's input."""
        return np.array([self._entries[path].slot for path in paths], dtype=np.int64)

    def read(self, slots):
        """The uint8 images in `slots`, as one (len(slots), 224, 224, 3) array."""
        return np.stack([np.frombuffer(os.pread(self._file.fileno(), self.IMAGE_BYTES,
                                                int(slot) * self.IMAGE_BYTES), np.uint8)
                         .reshape(*IMAGE_SIZE, 3) for slot in slots])

    def read_tensor(self, slots):
        """`read` as a step of a tf.data pipeline."""
        images = tf.numpy_function(self.read, [slots], tf.uint8, stateful=False)
        images.set_shape((None, *IMAGE_SIZE, 3))
        return images

    def warn_skipped(self):
        """One warning line per skipped file, and per file a decoder found damaged but could
        decode, then the skipped files' count, on stderr."""
        for path, message in self.damaged:
            print(damage_warning(path, message), file=sys.stderr)
        for path, reason, message in self.skipped:
            print(skip_warning(path, reason, message), file=sys.stderr)
        if self.skipped:
            print(f"[WARNING] skipped {len(self.skipped)} unreadable image(s)", file=sys.stderr)

    def close(self):
        self._file.close()


def check_room_for_decoded(count):
    """A `UserError` unless the temporary folder (TMPDIR) has room for `count` decoded images
    (224x224x3 bytes each): said before any image is decoded, not as a full disk after."""
    folder = tempfile.gettempdir()
    need, free = count * ImageStore.IMAGE_BYTES, shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"the temporary folder {folder!r} has {free / 2**20:.1f} MB free; the "
                        f"{count} decoded images need {need / 2**20:.1f} MB; set TMPDIR to a "
                        "folder with room")
