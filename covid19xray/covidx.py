"""COVIDx (lindawangg/COVID-Net): its label files and image folders, as the builder reads them.

COVIDx ships image folders (`train/`, `test/`) and one label file per split (`train.txt`,
`test.txt`, or a version's own names such as `train_COVIDx9A.txt`): one line per image, space
separated, `patient_id file_name class source`. The classes are the version's own:
`positive`/`negative` from COVIDx CXR-2 on, `COVID-19`/`normal`/`pneumonia` before. The official
test split is a test set: the builder keeps it apart (`OUT/test/`), to be given as `--external`,
never trained on.

Lines are read with a bound on the file's size; a line of another shape, or naming a file
outside its split's folder, is counted and left out, never copied.
"""

import dataclasses
import os
import sys

from .cli import UserError, shown

SPLITS = ("train", "test")
# Far above COVIDx's own label files (about 3 MB for 30,000 images): not a label file beyond.
MAX_LABEL_FILE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Row:
    """One labelled image of COVIDx."""

    patient: str
    path: str  # the image file, inside its split's folder
    label: str  # the class, as the version names it
    source: str  # the collection the image comes from (cohen, actmed, sirm, ricord, rsna...)


def label_file(covidx, split):
    """`<covidx>/<split>.txt`, or the one file named `<split>*.txt` there; a `UserError`
    otherwise."""
    exact = os.path.join(covidx, f"{split}.txt")
    if os.path.isfile(exact):
        return exact
    found = sorted(name for name in os.listdir(covidx)
                   if name.startswith(split) and name.endswith(".txt"))
    if len(found) != 1:
        raise UserError(f"--covidx {covidx!r} has {'no' if not found else 'more than one'} "
                        f"label file for its {split} split ({split}.txt, or {split}_*.txt: "
                        f"{', '.join(found) or 'none'}); give the folder COVIDx unpacks into")
    return os.path.join(covidx, found[0])


def read_label_file(path):
    """The text of a label file, read with a bound (MAX_LABEL_FILE_BYTES)."""
    with open(path, "rb") as f:
        data = f.read(MAX_LABEL_FILE_BYTES + 1)
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise UserError(f"{path!r} is larger than {MAX_LABEL_FILE_BYTES >> 20} MB: not a COVIDx "
                        "label file")
    return data.decode("utf-8", errors="replace")


def read_split(covidx, split):
    """The `Row`s of one split, and the count of lines left out (of another shape, or naming a
    file outside `<covidx>/<split>/`), each said in one warning."""
    folder = os.path.join(covidx, split)
    if not os.path.isdir(folder):
        raise UserError(f"--covidx {covidx!r} has no {split}/ folder of images")
    path = label_file(covidx, split)
    rows, left_out = [], 0
    for number, line in enumerate(read_label_file(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        name = fields[1] if len(fields) == 4 else ""
        if len(fields) != 4 or os.path.basename(name) != name or name in (".", ".."):
            left_out += 1
            print(f"[WARNING] {shown(path)}, line {number}: not 'patient_id file_name class "
                  "source' of a file in its folder; left out", file=sys.stderr)
            continue
        rows.append(Row(fields[0], os.path.join(folder, name), fields[2], fields[3]))
    return rows, left_out


def shared_patients(train, test):
    """The patients with images in both splits (by source: `cohen:42`), sorted."""
    def patients(rows):
        return {f"{row.source}:{row.patient}" for row in rows}

    return sorted(patients(train) & patients(test))
