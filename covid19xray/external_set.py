"""External validation: testing a trained model on labelled X-rays from somewhere else.

A test split drawn from the training folder shares its sources, hospitals and habits with the
training images; the question that sank most published COVID-19 X-ray models (DeGrave et al.,
Nature Machine Intelligence 2021; Roberts et al., Nature Machine Intelligence 2021) is whether
the model still works on images from another place. An external folder has the training
folder's shape (one folder of images per class) and is checked before it is used:

- `check_classes`: its class folders must be the model's classes, said in one line before any
  training;
- `load_external`: its images, minus any byte-identical to an image of `--dataset` (such a file
  is not external: refused, counted and named), with their one-hot labels in the model's order,
  as an `ExternalSet`, whose `facts` every external report (train's, the audit's) begins with;
- `patients_shared_with_dataset`: with a `manifest.csv` on both sides, the patients both hold;
- `sources_of`: with a `manifest.csv`, where each image comes from (`nih`, `cohen`), which
  the report breaks its metrics down by (`report.by_source`): a specificity over 101 normals
  says little if 98 of them are from one hospital.
"""

import dataclasses
import os
import sys

import numpy as np

from .cli import UserError, shown
from .layout import class_folders, load_dataset
from .manifest import manifest_key, patients_in_both, read_manifest
from .report import counts_per_class


def check_classes(folder, class_names, flag="--external"):
    """A `UserError` unless `folder`'s class folders are exactly `class_names`."""
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {folder!r} is not a folder")
    folders = class_folders(folder)
    if folders != sorted(class_names):
        missing = sorted(set(class_names) - set(folders))
        extra = sorted(set(folders) - set(class_names))
        differences = "; ".join(part for part in [
            f"missing {', '.join(missing)}" if missing else "",
            f"not in the model: {', '.join(extra)}" if extra else ""] if part)
        raise UserError(f"{flag} {folder!r} has class folders {folders or 'none'}, the model's "
                        f"classes are {sorted(class_names)} ({differences}); give it one "
                        "folder of images per class, named as in --dataset")


@dataclasses.dataclass
class ExternalSet:
    """The usable images of an external folder: the `ImageStore` holding them, their paths,
    their one-hot labels in the model's class order, the folder's manifest (read once; None
    without one), and the files refused as copies of --dataset's."""

    folder: str
    store: object
    paths: list
    onehot: np.ndarray
    manifest: dict | None
    refused: list

    @property
    def sources(self):
        """Where each image comes from (`sources_in`); None without a manifest."""
        return sources_in(self.manifest, self.folder, self.paths)

    def close(self):
        self.store.close()

    def facts(self, dataset, class_names):
        """What every external report says first: its files, counts, refused copies and the
        patients it shares with `dataset`."""
        shared = patients_shared_with_dataset(dataset, self.folder, self.manifest)
        return {
            "files": [os.path.relpath(path, self.folder) for path in self.paths],
            "counts": counts_per_class(self.onehot, class_names),
            "refused_identical_to_dataset": [os.path.relpath(path, self.folder)
                                             for path in self.refused],
            "patients_shared_with_dataset": shared,
        }


def load_external(folder, class_names, training_digests, flag="--external"):
    """The `ExternalSet` of `folder`'s usable images. `training_digests` maps the SHA-256 of
    each training-folder image to its path: an identical file in the external folder is
    refused with one warning line. Train and the audit both test through this."""
    print(f"[INFO] external test: {shown(folder)}")
    images, paths, labels = load_dataset(folder, flag)
    kept, refused = [], []
    for path in paths:
        twin = training_digests.get(images.digest(path))
        if twin is None:
            kept.append(path)
        else:
            refused.append(path)
            print(f"[WARNING] refusing {shown(path)}: byte-identical to {shown(twin)} of "
                  "--dataset, so it is no external test", file=sys.stderr)
    if refused:
        print(f"[WARNING] refused {len(refused)} external image(s) identical to a training "
              "image", file=sys.stderr)
    if not kept:
        images.close()
        raise UserError(f"{flag} {folder!r}: every image is identical to one of --dataset")
    label = dict(zip(paths, labels))
    onehot = np.array([[label[path] == name for name in class_names] for path in kept],
                      dtype="float32")
    return ExternalSet(folder, images, kept, onehot, read_manifest(folder), refused)


def patients_shared_with_dataset(dataset, folder, theirs):
    """The patients that `dataset`'s manifest and `folder`'s (`theirs`, read already) both
    name, by source (`cohen:230`); None unless both have one. Warns, in one line, when there
    are any."""
    ours = read_manifest(dataset)
    if ours is None or theirs is None:
        return None
    shared = patients_in_both(*([(row["source"], row["patient_id"]) for row in manifest.values()]
                                for manifest in (ours, theirs)))
    if shared:
        print(f"[WARNING] {len(shared)} patient(s) of {shown(folder)} have images in "
              f"{shown(dataset)} too ({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}"
              "): the external test is not all new patients", file=sys.stderr)
    return shared


def sources_of(folder, paths):
    """The source (`nih`, `cohen`, ...) of each of `paths` under `folder`, from its manifest
    (`sources_in`)."""
    return sources_in(read_manifest(folder), folder, paths)


def sources_in(manifest, folder, paths):
    """The source of each of `paths` under `folder` in its `manifest`; "unknown" for a file it
    does not list; None without a manifest."""
    if manifest is None:
        return None
    return [(manifest.get(manifest_key(path, folder)) or {}).get("source") or "unknown"
            for path in paths]


def check_external_folders(dataset, folders, class_names):
    """Each --external folder must hold the model's classes, and not be --dataset: found
    before minutes of training."""
    for folder in folders:
        if os.path.realpath(folder) == os.path.realpath(dataset):
            raise UserError(f"--external {folder!r} is --dataset; an external test needs images "
                            "from somewhere else")
        check_classes(folder, class_names)
