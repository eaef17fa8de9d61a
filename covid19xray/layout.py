"""Which files of a dataset folder are its images, and their classes: the layouts users bring.

- One folder of images per class (the tutorial's `dataset/covid` and `dataset/normal`, the
  builders' output, `external/`): the class is the folder's name.
- The COVID-19 Radiography Database: each class folder holds `images/` and `masks/` (a lung
  mask of the same name for each image). The class is the folder above `images/`; a mask is
  never read as an image, and a layout's `masks` names each image's.
- Anything else is refused in one line that names what was found: images directly in the
  folder, deeper ones (`train/NORMAL/x.jpeg`, as Kaggle's download unpacks), or a folder that
  is itself one class of the Radiography Database (its `images/` and `masks/` would otherwise
  train as two classes named "images" and "masks"). A label taken from the wrong folder trains
  a model on the wrong question without a word.

Each layout is one class (`DatasetLayout`); adding one is a subclass and its tests, and
`find_dataset`, `label_of` and `is_mask` ask every layout defined. Nothing here decides a
pixel: which files are read, not how (`images`, `store`).
"""

import os
import unicodedata

import numpy as np

from .cli import UserError, shown, warn_if_not_utf8
from .images import list_images
from .store import ImageStore

# The Radiography Database's folders inside a class folder.
IMAGES, MASKS = "images", "masks"
# Examples a refusal names.
SHOWN_EXAMPLES = 3


class DatasetLayout:
    """One way a dataset folder is laid out: which of its files are images and of which class,
    which are lung masks, and where a layout of its own is refused. A layout is one subclass:
    defining it registers it (`LAYOUTS`), the most specific (highest `priority`) asked first.

    An instance is one folder read this way: its images (sorted), each one's class, and each
    image's mask where one ships."""

    priority = 0

    def __init__(self, folder, paths, labels, masks):
        self.folder, self.paths, self.labels, self.masks = folder, paths, labels, masks

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYOUTS.append(cls)
        LAYOUTS.sort(key=lambda layout: -layout.priority)

    @classmethod
    def refusal(cls, top_folders, folder, flag):
        """Why `folder` (whose images stand in `top_folders`) must not be read at all, or None."""
        return None

    @classmethod
    def matches(cls, relative):
        """Whether a folder whose images are at `relative` (each a list of path parts) is laid
        out this way."""
        raise NotImplementedError

    @classmethod
    def image_class(cls, parts):
        """The class of the image at `parts` (relative to the folder), or None when it is no
        image of this layout."""
        raise NotImplementedError

    @classmethod
    def mask_key(cls, parts):
        """(class, name) of the image whose mask is at `parts`, or None when it is no mask."""
        return None

    @classmethod
    def label_of(cls, path):
        """An image's class from its path alone (predict's --labelled), or None."""
        return None

    @classmethod
    def is_mask(cls, path):
        """Whether the file at `path` is a mask of this layout: never an image to predict on."""
        return False

    def summary(self):
        """The line a run prints about this layout, or None for plain class folders."""
        return None


LAYOUTS = []  # every DatasetLayout subclass, the most specific first


class ClassFolders(DatasetLayout):
    """One folder of images per class (the tutorial's `dataset/covid` and `dataset/normal`, the
    builders' output, `external/`): the class is the folder's name."""

    @classmethod
    def matches(cls, relative):
        return True

    @classmethod
    def image_class(cls, parts):
        return parts[0] if len(parts) == 2 else None

    @classmethod
    def label_of(cls, path):
        return os.path.basename(os.path.dirname(path))


class RadiographyDatabase(ClassFolders):
    """The COVID-19 Radiography Database: each class folder holds `images/` and `masks/` (a lung
    mask of the same name for each image). The class is the folder above `images/`; a mask is
    never read as an image."""

    priority = 1

    @classmethod
    def refusal(cls, top_folders, folder, flag):
        if {IMAGES, MASKS} <= top_folders or top_folders == {IMAGES}:
            return (f"{flag} {folder!r} holds {IMAGES}/ and {MASKS}/: it is one class of the "
                    "COVID-19 Radiography Database; give the folder above it, which holds one "
                    "such folder per class")
        return None

    @classmethod
    def matches(cls, relative):
        return any(len(parts) == 3 and parts[1] in (IMAGES, MASKS) for parts in relative)

    @classmethod
    def image_class(cls, parts):
        if len(parts) == 3 and parts[1] == IMAGES:
            return parts[0]
        return super().image_class(parts)

    @classmethod
    def mask_key(cls, parts):
        return (parts[0], parts[2]) if len(parts) == 3 and parts[1] == MASKS else None

    @classmethod
    def label_of(cls, path):
        folder = os.path.dirname(path)
        if os.path.basename(folder) == IMAGES and os.path.dirname(folder):
            return os.path.basename(os.path.dirname(folder))
        return None

    @classmethod
    def is_mask(cls, path):
        folder = os.path.dirname(path)
        return (os.path.basename(folder) == MASKS
                and os.path.isdir(os.path.join(os.path.dirname(folder), IMAGES)))

    def summary(self):
        kind = f"class folders with {IMAGES}/" + (f" and {MASKS}/" if self.masks else "")
        return (f"{kind} (the COVID-19 Radiography Database's layout): {len(self.masks)} lung "
                "mask(s), never read as images")


def _parts(path, folder):
    return os.path.relpath(path, folder).split(os.sep)


def find_dataset(folder, flag="--dataset"):
    """The layout (a `DatasetLayout`) of the images under `folder`, or a `UserError` naming
    what was found when no layout reads it (module docstring). Lists files; decodes none."""
    listed = list_images(folder)
    relative = [_parts(path, folder) for path in listed]
    top = {parts[0] for parts in relative if len(parts) > 1}
    for layout in LAYOUTS:
        refusal = layout.refusal(top, folder, flag)
        if refusal is not None:
            raise UserError(refusal)
    layout = next(layout for layout in LAYOUTS if layout.matches(relative))
    paths, labels, found_masks, odd = [], [], {}, []
    for path, parts in zip(listed, relative):
        label, mask = layout.image_class(parts), layout.mask_key(parts)
        if label is not None:
            paths.append(path)
            labels.append(label)
        elif mask is not None:
            found_masks[mask] = path
        else:
            odd.append(os.path.join(*parts))
    if odd:
        examples = ", ".join(shown(p) for p in odd[:SHOWN_EXAMPLES])
        more = f" and {len(odd) - SHOWN_EXAMPLES} more" if len(odd) > SHOWN_EXAMPLES else ""
        raise UserError(f"{flag} {folder!r}: {len(odd)} image(s) are not in a class folder "
                        f"({examples}{more}); give a folder that holds one folder of images "
                        f"per class, or <class>/{IMAGES}/ as the COVID-19 Radiography Database "
                        "ships")
    check_distinct_classes(labels, folder, flag)
    masks = {path: found_masks[(label, os.path.basename(path))]
             for path, label in zip(paths, labels)
             if (label, os.path.basename(path)) in found_masks}
    return layout(folder, paths, labels, masks)


def check_distinct_classes(labels, folder, flag):
    """A `UserError` naming two class folders whose names differ only by case (`Covid`,
    `covid`) or by Unicode normalization (`normé` composed or decomposed, which print alike):
    they would train as two classes, and a folder copied to a case-insensitive disk merges them.
    Both are named escaped, so that the difference shows."""
    seen = {}
    for label in sorted(set(labels)):
        key = unicodedata.normalize("NFC", label).casefold()
        if key in seen:
            raise UserError(f"{flag} {folder!r}: class folders {ascii(seen[key])} and "
                            f"{ascii(label)} differ only by case or Unicode normalization; "
                            "merge them into one folder, or rename one")
        seen[key] = label


def class_folders(folder, flag="--external"):
    """The classes of a dataset folder (`find_dataset`), read without decoding an image: for
    checks that must come before minutes of work."""
    return sorted(set(find_dataset(folder, flag).labels))


def label_of(path):
    """An image's label from its path alone, as the first layout that knows says (the name of
    its folder, as in the tutorial, or of the folder above `images/`)."""
    return next(label for layout in LAYOUTS if (label := layout.label_of(path)) is not None)


def is_mask(path):
    """Whether `path` is a mask of any layout: never an image to predict on."""
    return any(layout.is_mask(path) for layout in LAYOUTS)


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
    if layout.summary() is not None:
        print(f"[INFO] {flag} {shown(dataset)}: {layout.summary()}")
    warn_if_not_utf8(layout.paths)
    label = dict(zip(layout.paths, layout.labels))
    images = ImageStore(layout.paths)
    images.warn_skipped()
    if not len(images):
        images.close()
        raise UserError(f"{flag} {dataset!r}: none of its images could be read")
    return images, images.paths, np.array([label[path] for path in images.paths])
