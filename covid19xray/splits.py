"""Which images train and which test: the class encoding, the tutorial's 80/20 holdout split,
cross-validation folds, and the patients that keep one person's films on one side.

- `encode_labels(labels)`: the tutorial's one-hot encoding; classes sort by name, so covid is 0.
- `holdout_split(...)`: the tutorial's stratified `train_test_split`, or the same fraction of
  patients held out (`--split patient`).
- `cv_folds(...)`: K folds stratified by class, grouped by patient when the patients are known.
- `patients_of(dataset, paths)`: each image's patient, from the dataset's `manifest.csv`.
"""

import os
import sys

import numpy as np

from .cli import UserError, lazy_import
from .config import TEST_SIZE
from .manifest import MANIFEST, manifest_key, read_manifest
from .report import counts_per_class

keras = lazy_import("keras")


def encode_labels(labels):
    """Perform one-hot encoding on the labels, as the tutorial: LabelBinarizer, then
    to_categorical for two classes. Returns (one-hot rows as float32, class names): classes
    sort by name, so covid is 0 and normal is 1; with more classes (covid/, normal/,
    pneumonia/) LabelBinarizer's rows are one-hot already."""
    from sklearn.preprocessing import LabelBinarizer

    class_names = sorted(set(labels))
    if len(class_names) < 2:
        raise UserError(f"found {len(class_names)} class folder(s) ({', '.join(class_names)}); "
                        "training needs two or more, such as covid/ and normal/")
    lb = LabelBinarizer()
    onehot = lb.fit_transform(labels)
    if len(class_names) == 2:
        onehot = keras.utils.to_categorical(onehot)
    return onehot.astype("float32"), [str(name) for name in lb.classes_]


def class_counts(onehot, class_names):
    """`covid: 25, normal: 25`."""
    return ", ".join(f"{name}: {n}" for name, n in counts_per_class(onehot, class_names).items())


def holdout_split(paths, onehot, class_names, kind, seed, patients):
    """Partition the images into training and testing splits, 80% for training and 20% for
    testing: (train paths, test paths, train rows, test rows).

    `random`: the tutorial's `train_test_split`, stratified on the one-hot rows (splitting the
    paths picks the same images as the tutorial's split of the pixel arrays). `patient`: every
    patient on one side, a fifth of the patients for testing; it needs `patients`.
    """
    from sklearn.model_selection import train_test_split

    if kind == "random":
        try:
            return tuple(train_test_split(paths, onehot, test_size=TEST_SIZE, stratify=onehot,
                                          random_state=seed))
        except ValueError as err:
            raise UserError(f"too few images for a stratified 80/20 split "
                            f"({class_counts(onehot, class_names)}); scikit-learn: {err}") from None
    try:  # the first of 5 folds
        train, test = cv_folds(onehot.argmax(axis=1), round(1 / TEST_SIZE), seed, class_names,
                               patients)[0]
    except UserError as err:
        raise UserError(f"{err} (or use --split random)") from None
    return [paths[i] for i in train], [paths[i] for i in test], onehot[train], onehot[test]


def cv_folds(classes, n_folds, seed, class_names, patients=None):
    """K folds stratified by class (scikit-learn's, shuffled with `seed`), grouped by patient
    when `patients` is given: [(train indices, test indices)], every image in exactly one test
    fold. A fold without some class on one side is a UserError saying so."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if patients is None:
        smallest = np.bincount(classes).min()
        if smallest < n_folds:
            raise UserError(f"{n_folds} folds need at least {n_folds} images of each class; "
                            f"the smallest class has {smallest}")
        return list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
                    .split(classes, classes))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    try:
        splits = list(folds.split(classes, classes, groups=patients))
    except ValueError as err:
        raise UserError(f"cannot split {len(set(patients))} patients into {n_folds} folds "
                        f"({err})") from None
    for train, test in splits:
        for side, idx in (("training", train), ("test", test)):
            missing = [name for c, name in enumerate(class_names) if c not in set(classes[idx])]
            if missing:
                raise UserError(f"a patient split into {n_folds} folds leaves no "
                                f"{', '.join(missing)} image on the {side} side; each class "
                                "needs images of more patients")
    return splits


def patients_of(dataset, paths):
    """The patient id of each image at `paths` (inside `dataset`) from its manifest, or None
    when the dataset has no manifest. An image the manifest does not list is its own patient."""
    manifest = read_manifest(dataset)
    if manifest is None:
        return None
    return [manifest[file]["patient_id"] if file in manifest else f"file:{file}"
            for file in (manifest_key(path, dataset) for path in paths)]


def warn_shared_patients(train_paths, test_paths, paths, patients):
    """How many patients have images on both sides (None when the patients are unknown), with
    a warning when any do: the test images are then not all new patients."""
    if patients is None:
        return None
    patient = dict(zip(paths, patients))
    shared = len({patient[p] for p in train_paths} & {patient[p] for p in test_paths})
    if shared:
        print(f"[WARNING] {shared} patient(s) have images on both sides of the random split, "
              "so the test images are not all new patients; --split patient keeps each "
              "patient on one side", file=sys.stderr)
    return shared


def require_patients(dataset, patients):
    """A UserError when the dataset has no manifest to name its patients."""
    if patients is None:
        raise UserError(f"--split patient needs {os.path.join(dataset, MANIFEST)}, which the "
                        "dataset builders write; rebuild the dataset with them or use --split "
                        "random")


def positive_class(positive, class_names):
    """The index of --positive among the classes (0, the first, without it): a `UserError`
    for a class the dataset lacks, or with other than two classes."""
    if positive is None:
        return 0
    if len(class_names) != 2:
        raise UserError(f"--positive {positive!r}: a positive class needs two classes, the "
                        f"dataset has {len(class_names)} ({', '.join(class_names)}); with more, "
                        "every class is reported against the rest")
    if positive not in class_names:
        raise UserError(f"--positive {positive!r} is not a class of the dataset "
                        f"({', '.join(class_names)})")
    return class_names.index(positive)


def check_batch_size(batch_size, trainP):
    if batch_size > len(trainP):
        raise UserError(f"--batch-size {batch_size} is larger than the training split "
                        f"({len(trainP)} images); use --batch-size {len(trainP)} or less")
