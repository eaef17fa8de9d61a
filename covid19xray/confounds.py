"""What can tell two sources of X-rays apart besides the lungs: file and image properties, and
perceptual hashes that find copies of one image.

- `image_properties(header, file_size, image)`: per image, the properties a shortcut can hide
  in: width, height and aspect ratio as stored, grey or colour, bit depth, file format and size,
  and, of the 224x224 image the model sees, the mean intensity and that of its border.
- `separation(is_positive, values)`: how well one property alone separates two classes, as a
  ROC AUC that does not care which class has the larger values.
- `perceptual_hash(image)` and `duplicates(...)`: exact copies (the same SHA-256) and near
  copies: the same picture resized, recompressed or brightened. Chest X-rays all look alike at
  the scale of a 64-bit perceptual hash (on Kaggle's 5,856 films, 1,881 pairs of different
  films lie within 6 bits, their pixels correlating at 0.55 to 0.96), so the hash only finds the
  candidates; a pair is a near copy when its 64x64 grey versions also correlate at
  NEAR_DUPLICATE_CORRELATION or more.
- `describe_properties` and `find_duplicates`: the audit's use of them, per class, the
  confounds (a property alone separating the classes with an AUC of CONFOUND_AUC or more).
"""

import dataclasses

import cv2
import numpy as np

from .auc_interval import auc_with_interval
from .progress import progress

# Near copies: perceptual hashes at most this many bits of 64 apart (the candidates), whose
# 64x64 grey versions correlate at least this much (the confirmation).
NEAR_DUPLICATE_BITS = 6
NEAR_DUPLICATE_CORRELATION = 0.98
# The border whose brightness is measured: this fraction of the image on each side.
BORDER = 0.1
NUMERIC = ("width", "height", "aspect_ratio", "channels", "bit_depth", "file_size",
           "mean_intensity", "border_intensity")
CATEGORICAL = ("format", "colour")

_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def image_properties(header, file_size, image):
    """The properties of a file with this `header` (images.read_header) and size in
    bytes, whose 224x224 RGB uint8 image is `image`."""
    grey = header.mode in _GREY_MODES
    border = max(1, round(BORDER * image.shape[0]))
    frame = np.ones(image.shape[:2], bool)
    frame[border:-border, border:-border] = False
    return {"width": header.width, "height": header.height,
            "aspect_ratio": header.width / header.height, "channels": 1 if grey else 3,
            "colour": "grey" if grey else "colour", "bit_depth": _BIT_DEPTH.get(header.mode, 8),
            "format": header.format, "file_size": file_size,
            "mean_intensity": float(image.mean() / 255),
            "border_intensity": float(image[frame].mean() / 255)}


def separation(is_positive, values, seed=0):
    """How well `values` alone separate the positive class from the other: the ROC AUC of the
    values or of their negatives, whichever is higher (0.5: not at all; 1: perfectly), with its
    bootstrap interval, and which class has the higher values."""
    values = np.asarray(values, dtype=float)
    auc = auc_with_interval(is_positive, values, seed)
    if auc["value"] >= 0.5:
        return {**auc, "higher_in_positive": True}
    low, high = auc["ci95"]
    return {"value": 1 - auc["value"], "ci95": [1 - high, 1 - low], "higher_in_positive": False}


def perceptual_hash(image):
    """The 64-bit DCT hash of an image (pHash: 32x32 grey, the 8x8 lowest frequencies, each
    above or below their median), as an unsigned integer."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    low = cv2.dct(cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA))[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def thumbnail(image):
    """A 64x64 grey version of an image, centred and scaled to unit length: the dot product of
    two is their pixels' correlation."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-6)


def duplicates(paths, labels, digests, hashes, image_of):
    """Exact copies (same SHA-256, any number of files) and near copies (pairs of other files
    whose perceptual hashes differ in at most NEAR_DUPLICATE_BITS bits and whose pixels
    correlate at NEAR_DUPLICATE_CORRELATION or more), each with its files, their classes, and
    whether it crosses classes (a label error). `image_of(path)` gives an image's 224x224
    pixels, read only for the candidate pairs."""
    copies = []
    groups = {}
    for path, digest in zip(paths, digests):
        groups.setdefault(digest, []).append(path)
    label = dict(zip(paths, labels))
    for files in groups.values():
        if len(files) > 1:
            classes = sorted({label[f] for f in files})
            copies.append({"kind": "exact", "files": files, "classes": classes,
                           "cross_class": len(classes) > 1, "distance": 0})
    hashes = np.array(hashes, dtype=np.uint64)
    digests = np.array(digests)
    thumbnails = {}
    for start in range(0, len(paths), 512):  # in blocks: memory stays flat for thousands
        block = hashes[start:start + 512, None] ^ hashes[None, :]
        distance = np.bitwise_count(block)
        for i, j in zip(*np.nonzero(distance <= NEAR_DUPLICATE_BITS)):
            i += start
            if j <= i or digests[i] == digests[j]:
                continue
            for k in (i, j):
                if k not in thumbnails:
                    thumbnails[k] = thumbnail(image_of(paths[k]))
            correlation = float(thumbnails[i] @ thumbnails[j])
            if correlation >= NEAR_DUPLICATE_CORRELATION:
                files = [paths[i], paths[j]]
                classes = sorted({label[f] for f in files})
                copies.append({"kind": "near", "files": files, "classes": classes,
                               "cross_class": len(classes) > 1,
                               "distance": int(distance[i - start, j]),
                               "correlation": round(correlation, 4)})
    return copies


# A property is a confound when it alone separates the classes at least this well (ROC AUC).
CONFOUND_AUC = 0.8


@dataclasses.dataclass(frozen=True)
class Confounds:
    """The images' properties per class, and those that alone separate the classes
    (`describe_properties`)."""

    per_class: dict  # {class: {property: its spread or tally}}
    confounds: list  # the separating ones, strongest first


def describe_properties(rows, labels, class_names, seed):
    """Per class, the distributions of the images' properties (`rows`); the confounds: every
    numeric property that alone separates the classes (with more than two, a class from the
    rest) with an AUC of at least CONFOUND_AUC."""
    per_class, confounds = {}, []
    for name in class_names:
        mine = [row for row, label in zip(rows, labels) if label == name]
        per_class[name] = {prop: spread([row[prop] for row in mine]) for prop in NUMERIC}
        per_class[name].update({prop: tally([row[prop] for row in mine])
                                for prop in CATEGORICAL})
    # two classes: the first against the other, as before; more: each against the rest
    tested = class_names[:1] if len(class_names) == 2 else class_names
    for prop in NUMERIC:
        values = np.array([row[prop] for row in rows], float)
        found = [(name, separation(labels == name, values, seed)) for name in tested]
        name, auc = max(found, key=lambda pair: pair[1]["value"])
        if auc["value"] >= CONFOUND_AUC:
            rest = class_names[1] if len(class_names) == 2 else "the rest"
            confounds.append({"property": prop, "auc": {"value": auc["value"],
                                                        "ci95": auc["ci95"]},
                              "separates": [name, rest],
                              "higher_in": name if auc["higher_in_positive"] else rest,
                              "per_class": {name: per_class[name][prop] for name in class_names}})
    confounds.sort(key=lambda c: -c["auc"]["value"])
    return Confounds(per_class, confounds)


def spread(values):
    values = np.asarray(values, float)
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def tally(values):
    return {value: values.count(value) for value in sorted(set(values))}


def find_duplicates(images, paths, labels, hashes):
    """Exact and near copies among the images (`duplicates`)."""
    return duplicates(paths, list(labels), [images.digest(path) for path in paths], hashes,
                      images.image)


@dataclasses.dataclass(frozen=True)
class Measurements:
    """Every image's properties and perceptual hash, in the order of its path (`measure`)."""

    rows: list  # `image_properties` of each image
    hashes: list  # `perceptual_hash` of each image


def measure(images, paths):
    """Every image's properties and perceptual hash, in one pass over the store."""
    rows, hashes = [], []
    with progress(len(paths), "image properties") as bar:
        for path in paths:
            image = images.image(path)
            rows.append(image_properties(images.header(path), images.file_size(path), image))
            hashes.append(perceptual_hash(image))
            bar.update(1)
    return Measurements(rows, hashes)
