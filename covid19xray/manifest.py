"""`dataset/manifest.csv`: where each image of a dataset comes from.

One row per image file, written by the dataset builders and merged on every run:
`file` (relative to the dataset folder, with `/`), `class`, `patient_id` (Cohen's `patientid`;
for Kaggle the patient in the file name, such as `person1102` or `IM-0033`), `source`
(`cohen`, `kaggle`), `license` and `url` (where the image was published). It is the dataset's
attribution list, and `splits.patients_of` reads the patients from it for
`train_covid19.py --split patient` and `audit_covid19.py`. `excluded_patients_of` names the
manifests whose patients `build_covid_dataset.py --exclude-patients` left out of the selection
(`;` between them; empty for the other rows). `sha256` is the file's SHA-256, and
`downloaded_from` the URL a builder downloaded it from (empty when it was copied from a local
folder). `age` (years, where the source gives it) and `view` (PA, AP) are the patient's
age and the film's view. Sources: `cohen`, `kaggle`, `nih`. A manifest written before
`license`, `url`, `excluded_patients_of`, `age` or `view` existed is still read; rows written
now fill them.
"""

import csv
import os

from . import spreadsheet
from .cli import UserError
from .spreadsheet import unquoted
from .writing import atomic_output, claim_outputs

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "class", "patient_id", "source", "license", "url",
                    "excluded_patients_of", "sha256", "downloaded_from", "age", "view")
MANIFEST_REQUIRED = ("file", "class", "patient_id", "source")


def manifest_key(path, folder):
    """How `folder`'s manifest names the file at `path`: its path inside `folder`, with "/"."""
    return os.path.relpath(path, folder).replace(os.sep, "/")


def read_manifest(dataset):
    """{file: row dict} from `<dataset>/manifest.csv`, every column present; None without one.

    Names that are not UTF-8 were written as their raw bytes (surrogateescape) and come back
    as the same `str` that `os.listdir` gives.
    """
    path = os.path.join(dataset, MANIFEST)
    if not os.path.isfile(path):
        return None
    return read_manifest_file(path)


def read_manifest_file(path):
    """{file: row dict} from the manifest at `path`, every column present. A file that is not
    a readable CSV (a NUL byte, a field over csv's size limit, not UTF-8 where it matters) is a
    one-line `UserError`."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            missing = [c for c in MANIFEST_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} has no {', '.join(missing)} column; delete it and "
                                "rerun the dataset builders to write it again")
            rows = [{column: unquoted(row.get(column) or "") for column in MANIFEST_COLUMNS}
                    for row in reader]
        except csv.Error as err:
            raise UserError(f"{path} line {reader.line_num}: not a readable manifest ({err}); "
                            "delete it and rerun the dataset builders to write it again") from None
        return {row["file"]: row for row in rows}


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
            writer = spreadsheet.Writer(f)
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows([merged[file].get(column, "") for column in MANIFEST_COLUMNS]
                             for file in sorted(merged))
    return len(merged)


def patients_in_manifests(manifests, source):
    """The patients of `source` (`cohen`, `nih`) in each manifest file: what a builder's
    `--exclude-patients` leaves out. A missing or unreadable manifest is a one-line
    `UserError`."""
    patients = set()
    for path in manifests:
        if not os.path.isfile(path):
            raise UserError(f"--exclude-patients {path!r}: no such file; give the manifest.csv "
                            "of the dataset whose patients to leave out")
        patients |= {row["patient_id"] for row in read_manifest_file(path).values()
                     if row["source"] == source and row["patient_id"]}
    return patients


def patients_in_both(first, second):
    """The patients named on both sides, each side (source, patient id) pairs, as `source:id`
    (`cohen:42`; an id means nothing outside its source), sorted; empty ids are no patient."""
    def named(pairs):
        return {f"{source}:{patient}" for source, patient in pairs if patient}

    return sorted(named(first) & named(second))
