"""Which files of a dataset folder are its images, and their classes: the layouts users bring.

- One folder of images per class (the tutorial's `dataset/covid` and `dataset/normal`, the
  builders' output, `external/`): the class is the folder's name.
- The COVID-19 Radiography Database: each class folder holds `images/` and `masks/` (a lung
  mask of the same name for each image). The class is the folder above `images/`; a mask is
  never read as an image, and `Layout.masks` names each image's.
- Anything else is refused in one line that names what was found: images directly in the
  folder, deeper ones (`train/NORMAL/x.jpeg`, as Kaggle's download unpacks), or a folder that
  is itself one class of the Radiography Database (its `images/` and `masks/` would otherwise
  train as two classes named "images" and "masks"). A label taken from the wrong folder trains
  a model on the wrong question without a word.

Nothing here decides a pixel: which files are read, not how (`images`, `store`).
"""

import dataclasses
import os

import numpy as np

from .cli import UserError, shown, warn_if_not_utf8
from .images import list_images
from .store import ImageStore

# The Radiography Database's folders inside a class folder.
IMAGES, MASKS = "images", "masks"
# Examples a refusal names.
SHOWN_EXAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Layout:
    """A dataset folder's images (sorted), each one's class, and its lung mask if one ships."""

    paths: list
    labels: list
    masks: dict  # {image path: its mask's path}; {} without masks
    kind: str  # "class folders", or "class folders with images/ (and masks/)"


def _parts(path, folder):
    return os.path.relpath(path, folder).split(os.sep)


def find_dataset(folder, flag="--dataset"):
    """The `Layout` of the images under `folder`, or a `UserError` naming what was found when
    it is neither layout (module docstring). Lists files; decodes none."""
    listed = list_images(folder)
    top = {_parts(path, folder)[0] for path in listed if len(_parts(path, folder)) > 1}
    if {IMAGES, MASKS} <= top or top == {IMAGES}:
        raise UserError(f"{flag} {folder!r} holds {IMAGES}/ and {MASKS}/: it is one class of "
                        "the COVID-19 Radiography Database; give the folder above it, which "
                        f"holds one such folder per class")
    paths, labels, found_masks, odd = [], [], {}, []
    for path in listed:
        parts = _parts(path, folder)
        if len(parts) == 2 or (len(parts) == 3 and parts[1] == IMAGES):
            paths.append(path)
            labels.append(parts[0])
        elif len(parts) == 3 and parts[1] == MASKS:
            found_masks[(parts[0], parts[2])] = path
        else:
            odd.append(os.path.join(*parts))
    if odd:
        examples = ", ".join(shown(p) for p in odd[:SHOWN_EXAMPLES])
        more = f" and {len(odd) - SHOWN_EXAMPLES} more" if len(odd) > SHOWN_EXAMPLES else ""
        raise UserError(f"{flag} {folder!r}: {len(odd)} image(s) are not in a class folder "
                        f"({examples}{more}); give a folder that holds one folder of images "
                        f"per class, or <class>/{IMAGES}/ as the COVID-19 Radiography Database "
                        "ships")
    masks = {path: found_masks[(label, os.path.basename(path))]
             for path, label in zip(paths, labels)
             if (label, os.path.basename(path)) in found_masks}
    radiography = any(_parts(path, folder)[1] == IMAGES for path in paths)
    kind = (f"class folders with {IMAGES}/" + (f" and {MASKS}/" if masks else "")
            if radiography else "class folders")
    return Layout(paths, labels, masks, kind)


def class_folders(folder, flag="--external"):
    """The classes of a dataset folder (`find_dataset`), read without decoding an image: for
    checks that must come before minutes of work."""
    return sorted(set(find_dataset(folder, flag).labels))


def label_of(path):
    """An image's label: the name of its folder, as in the tutorial, or of the folder above
    `images/` (the Radiography Database's layout)."""
    folder = os.path.dirname(path)
    if os.path.basename(folder) == IMAGES and os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def is_mask(path):
    """Whether `path` is a lung mask of the Radiography layout: in a `masks/` folder beside an
    `images/` one. Never an image to predict on."""
    folder = os.path.dirname(path)
    return (os.path.basename(folder) == MASKS
            and os.path.isdir(os.path.join(os.path.dirname(folder), IMAGES)))


def load_dataset(dataset, flag="--dataset"):
    """Every usable image of the dataset folder `dataset` (`find_dataset`), decoded once, and
    its label. Returns the store, the paths it holds (sorted) and their labels; files that are
    not usable images are skipped with a warning. `flag` names the folder in messages."""
    if not os.path.isdir(dataset):
        raise UserError(f"{flag} {dataset!r} is not a folder")
    layout = find_dataset(dataset, flag)
    if not layout.paths:
        raise UserError(f"{flag} {dataset!r} has no images (.jpg, .jpeg, .png, .bmp, .tif, "
                        ".tiff, .dcm, or DICOM files without an extension); put one folder of "
                        "images per class in it")
    if layout.kind != "class folders":
        print(f"[INFO] {flag} {shown(dataset)}: {layout.kind} (the COVID-19 Radiography "
              f"Database's layout): {len(layout.masks)} lung mask(s), never read as images")
    warn_if_not_utf8(layout.paths)
    label = dict(zip(layout.paths, layout.labels))
    images = ImageStore(layout.paths)
    images.warn_skipped()
    if not len(images):
        images.close()
        raise UserError(f"{flag} {dataset!r}: none of its images could be read")
    return images, images.paths, np.array([label[path] for path in images.paths])
