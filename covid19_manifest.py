"""`dataset/manifest.csv`: where each image of a dataset comes from.

One row per image file, written by the dataset builders and merged on every run:
`file` (relative to the dataset folder, with `/`), `class`, `patient_id` (Cohen's `patientid`;
for Kaggle the patient in the file name, such as `person1102` or `IM-0033`), `source`
(`cohen`, `kaggle`), `license` and `url` (where the image was published). It is the dataset's
attribution list, and `train_covid19.py --split patient` and `audit_covid19.py` read the
patients from it. A manifest written before `license` and `url` existed is still read; rows
written now fill them.
"""

import csv
import os

from covid19_cli import UserError
from covid19_files import atomic_output, claim_outputs

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "class", "patient_id", "source", "license", "url")
MANIFEST_REQUIRED = ("file", "class", "patient_id", "source")


def read_manifest(dataset):
    """{file: row dict} from `<dataset>/manifest.csv`, every column present; None without one.

    Names that are not UTF-8 were written as their raw bytes (surrogateescape) and come back
    as the same `str` that `os.listdir` gives.
    """
    path = os.path.join(dataset, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} has no {', '.join(missing)} column; delete it and rerun "
                            "the dataset builders to write it again")
        return {row["file"]: {column: row.get(column) or "" for column in MANIFEST_COLUMNS}
                for row in reader}


def update_manifest(dataset, rows):
    """Merge `rows` (dicts with MANIFEST_COLUMNS) into `<dataset>/manifest.csv`, by file.

    Rows of other files stay, so the two builders (and reruns) add to one manifest. Written
    to a temporary file and renamed: an interrupted update never leaves half a manifest.
    Returns how many rows the manifest holds.
    """
    path = os.path.join(dataset, MANIFEST)
    # Both builders may run at once on one dataset: each waits for the other's update, so
    # neither loses the other's rows.
    with claim_outputs(path, wait=True), atomic_output(path) as temporary:
        merged = read_manifest(dataset) or {}
        merged.update({row["file"]: row for row in rows})
        with open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(merged[file] for file in sorted(merged))
    return len(merged)


def patients_of(dataset, paths):
    """The patient id of each image at `paths` (inside `dataset`) from its manifest, or None
    when the dataset has no manifest. An image the manifest does not list is its own patient."""
    manifest = read_manifest(dataset)
    if manifest is None:
        return None
    relative = [os.path.relpath(path, dataset).replace(os.sep, "/") for path in paths]
    return [manifest[file]["patient_id"] if file in manifest else f"file:{file}"
            for file in relative]


def patient_folds(classes, patients, n_folds, seed, class_names):
    """Folds that keep every patient's images on one side, stratified by class: scikit-learn's
    StratifiedGroupKFold, shuffled with `seed`. Returns [(train indices, test indices)], one per
    fold; a fold without some class on one side is a UserError saying so."""
    from sklearn.model_selection import StratifiedGroupKFold

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
