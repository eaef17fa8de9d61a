"""An on-disk cache of image features, so that a rerun does not pass an image through VGG16 again.

Features of an image depend only on: the image's bytes, and what `frozen.cache_configuration`
names (the VGG16 weights, the precision, the code of the frozen base, the crop and layers of
the extractor, the transform with its parameters, the library versions and the device).
`FeatureCache` keys every entry on all of these: a changed image, weights file or precision is
recomputed, and only that.

Layout: `<folder>/<configuration key>/<first two hex digits>/<image sha256>.features`, each a
small file of our own format: a magic line, the entry's own key, the float32 features and their
SHA-256. An entry that is truncated, damaged or was written for another key is never trusted: it
is recomputed with a warning, and replaced. Entries are written to a temporary file and renamed,
so a crash never leaves half an entry. `<folder>/<configuration key>/configuration.json` says
what the key stands for.

The default folder is `$XDG_CACHE_HOME/covid19-xray` (`~/.cache/covid19-xray`). An entry holds
2,137 bytes for the tutorial's 512 features, and takes one filesystem block on disk (4 KB on most):
one per image and configuration, and, for a training run with augmentation, one per training
image and epoch (each epoch's rotation of it). `cache_line` prints both sizes after every run
that used the cache. Deleting the folder clears it; nothing else refers to it.
"""

import hashlib
import json
import os
import stat
import sys
import tempfile

import numpy as np

from .cli import UserError, shown
from .writing import atomic_output, file_kind, remove_path

MAGIC = b"covid19-xray features v1\n"
DIGEST_BYTES = 32
# Far above any entry (the input check's 4,992 floats take 20 kB): a file larger than this is
# not an entry, and is never read whole.
MAX_ENTRY_BYTES = 1 << 20


def _writable(folder):
    """Whether a file can be created in `folder`: tried, not inferred from permission bits
    (root ignores those; a read-only mount or an immutable folder does not)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def disk_usage(path):
    """Bytes that the file at `path` takes on disk (whole blocks), not its length."""
    return os.stat(path).st_blocks * 512


class FeatureCache:
    """Features of images, keyed by each image's SHA-256 within one `configuration` (a dict of
    everything else the features depend on, JSON-serializable). `what` names its entries in
    `cache_line`."""

    def __init__(self, folder, configuration, what="image(s)"):
        text = json.dumps(configuration, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()
        self.folder = os.path.join(folder, self.key[:24])
        self.root, self.what = folder, what
        self.found = self.computed = 0
        self.damaged = set()  # entries said to be damaged (`_warn_damaged`)
        self.entry_size = None  # on disk, measured on the first entry read or written
        # 0700: the features of a user's images are theirs; other users on a shared machine
        # could read them, or plant entries (which the entry's own key would refuse)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        self._check_writable()
        description = os.path.join(self.folder, "configuration.json")
        if not os.path.lexists(description):
            with atomic_output(description) as temporary, open(temporary, "w") as f:
                f.write(json.dumps(configuration, sort_keys=True, indent=2) + "\n")

    def _check_writable(self):
        """Every folder this cache writes entries into can be written: said in one line now,
        before any VGG16 work, not as a failure after it."""
        folders = [self.folder] + [entry.path for entry in os.scandir(self.folder)
                                   if entry.is_dir(follow_symlinks=False)]
        for folder in folders:
            if not _writable(folder):
                raise UserError(f"--cache-dir {self.root!r}: its folder {folder!r} cannot be "
                                "written; fix its permissions, give another --cache-dir, or "
                                "run with --no-cache")

    def _path(self, image_digest):
        return os.path.join(self.folder, image_digest[:2], f"{image_digest}.features")

    def _entry_key(self, image_digest):
        return hashlib.sha256(f"{self.key}:{image_digest}".encode()).digest()

    def _read(self, path):
        """The bytes of the entry at `path`, b"" when it cannot be read, None when there is
        none. An entry that is not a regular file (a FIFO, a link, a folder) or is larger than
        any entry is removed with a warning, unread: it must neither hang nor flood the run,
        and it is replaced with the recomputed entry."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError:
            # a symbolic link (O_NOFOLLOW), or what cannot be opened
            return self._remove(path, f"is {file_kind(os.lstat(path).st_mode)}, not an entry")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            os.close(fd)
            return self._remove(path, f"is {file_kind(info.st_mode)}, not an entry"
                                if not stat.S_ISREG(info.st_mode)
                                else f"holds {info.st_size} bytes, more than any entry")
        with os.fdopen(fd, "rb") as f:
            try:
                return f.read(MAX_ENTRY_BYTES + 1)
            except OSError:
                return b""

    def _remove(self, path, why):
        print(f"[WARNING] feature cache entry {shown(path)} {why}; removed, computing it again",
              file=sys.stderr)
        remove_path(path)
        return None

    def _payload(self, image_digest, data):
        """The features in an entry's bytes `data`, or None when it is damaged or foreign."""
        head = len(MAGIC) + DIGEST_BYTES
        payload, checksum = data[head:-DIGEST_BYTES], data[-DIGEST_BYTES:]
        if (len(data) < head + DIGEST_BYTES or not data.startswith(MAGIC)
                or data[len(MAGIC):head] != self._entry_key(image_digest)
                or len(payload) % 4 or hashlib.sha256(payload).digest() != checksum):
            return None
        return payload

    def get(self, image_digest):
        """The features cached for an image, or None (absent, damaged or foreign: recompute)."""
        path = self._path(image_digest)
        data = self._read(path)
        if data is None:
            return None
        payload = self._payload(image_digest, data)
        if payload is None:
            self._warn_damaged(path)
            return None
        if self.entry_size is None:
            self.entry_size = disk_usage(path)
        return np.frombuffer(payload, dtype="<f4")

    def put(self, image_digest, features):
        path = self._path(image_digest)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        payload = np.ascontiguousarray(features, dtype="<f4").tobytes()
        with atomic_output(path) as temporary, open(temporary, "wb") as f:
            f.write(MAGIC + self._entry_key(image_digest) + payload
                    + hashlib.sha256(payload).digest())
        if self.entry_size is None:
            self.entry_size = disk_usage(path)

    def _warn_damaged(self, path):
        """Say once per entry that it is damaged: the cost line and the lookup both find it."""
        if path not in self.damaged:
            self.damaged.add(path)
            print(f"[WARNING] feature cache entry {shown(path)} is damaged or was written for "
                  "something else; computing it again", file=sys.stderr)

    def has(self, image_digest):
        """Whether the cache holds an entry for the image that `get` will trust: read and
        checked as `get` does, so that the cost line counts a damaged entry as work to do
        (about 25 us an entry, against a VGG16 pass of 100 ms or more)."""
        path = self._path(image_digest)
        data = self._read(path)
        if data is None:
            return False
        if self._payload(image_digest, data) is None:
            self._warn_damaged(path)
            return False
        return True

    def lookup(self, digests):
        """The features cached for each of `digests` (SHA-256 of image files), None where there
        are none to trust."""
        found = [self.get(digest) for digest in digests]
        self.found += sum(features is not None for features in found)
        return found

    def store(self, digests, features):
        """Keep the features of the images whose files have these `digests`."""
        for digest, row in zip(digests, features):
            self.put(digest, row)
        self.computed += len(digests)


def cache_line(caches):
    """`[INFO] feature cache ...`: for the caches one run used (all in one folder), where, what
    was found and computed, and how large an entry and the folder are, so that it never grows
    unseen."""
    root = caches[0].root
    size = sum(disk_usage(os.path.join(base, name))
               for base, _, names in os.walk(root) for name in names)
    home = os.path.expanduser("~")
    if root.startswith(home + os.sep):  # ~/.cache/covid19-xray, as the user would type it
        root = "~" + root[len(home):]
    counts = {}
    for cache in caches:
        found, computed = counts.get(cache.what, (0, 0))
        counts[cache.what] = found + cache.found, computed + cache.computed
    entry = max(cache.entry_size or 0 for cache in caches)
    return (f"[INFO] feature cache {shown(root)}: "
            + "; ".join(f"{found} {what} found, {computed} computed"
                        for what, (found, computed) in counts.items())
            + (f"; {entry / 1e3:.1f} kB an entry" if entry else "")
            + f", {size / 1e6:.1f} MB in all (delete the folder to clear it, or run with "
            "--no-cache)")
