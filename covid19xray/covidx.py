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

import os
import stat
import sys

from .cli import UserError, shown
from .collection import Collection, Film
from .preflight import read_regular

SPLITS = ("train", "test")
# Far above COVIDx's own label files (about 3 MB for 30,000 images): not a label file beyond.
MAX_LABEL_FILE_BYTES = 64 << 20


# A label file's line is a patient id, a file name, a class and a source: far below this.
MAX_LINE_CHARS = 4096
# Warnings about left-out lines, at most; the rest are counted in one line.
MAX_WARNINGS = 20


def label_file(covidx, split):
    """`<covidx>/<split>.txt`, or the one file named `<split>*.txt` there; a `UserError`
    otherwise, and for one that is not a regular file (a FIFO would block the read)."""
    exact = os.path.join(covidx, f"{split}.txt")
    if os.path.lexists(exact):
        path = exact
    else:
        found = sorted(name for name in os.listdir(covidx)
                       if name.startswith(split) and name.endswith(".txt"))
        if len(found) != 1:
            raise UserError(f"--covidx {covidx!r} has {'no' if not found else 'more than one'} "
                            f"label file for its {split} split ({split}.txt, or {split}_*.txt: "
                            f"{', '.join(found) or 'none'}); give the folder COVIDx unpacks "
                            "into")
        path = os.path.join(covidx, found[0])
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise UserError(f"{shown(path)!r}: cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{shown(path)!r} is not a regular file (a FIFO, device, socket or "
                        "folder), not a COVIDx label file")
    return path


def read_label_file(path):
    """The text of a label file: a regular file of at most MAX_LABEL_FILE_BYTES, UTF-8 (a
    byte-order mark read as the marker it is), no NUL, no line over MAX_LINE_CHARS; anything
    else is a `UserError`, not a label file."""
    data, why = read_regular(path, MAX_LABEL_FILE_BYTES)
    if data is None:
        raise UserError(f"{shown(path)!r} {why}, not a COVIDx label file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{shown(path)!r} is not UTF-8 text (byte {err.start}): not a COVIDx "
                        "label file") from None
    if "\0" in text:
        raise UserError(f"{shown(path)!r} holds NUL characters: not a COVIDx label file")
    longest = max((len(line) for line in text.splitlines()), default=0)
    if longest > MAX_LINE_CHARS:
        raise UserError(f"{shown(path)!r} has a line of {longest:,} characters (at most "
                        f"{MAX_LINE_CHARS:,}): not a COVIDx label file")
    return text


def is_plain_name(name):
    """Whether `name` is one folder or file name: not empty, not `.` or `..`, no separator."""
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    return bool(name) and name not in (".", "..") and not any(s in name for s in separators)


class Warnings:
    """One warning a left-out line, the first MAX_WARNINGS of them; then how many more."""

    def __init__(self, path):
        self.path, self.count = path, 0

    def left_out(self, number, why):
        self.count += 1
        if self.count <= MAX_WARNINGS:
            print(f"[WARNING] {shown(self.path)}, line {number}: {why}; left out",
                  file=sys.stderr)

    def close(self):
        if self.count > MAX_WARNINGS:
            print(f"[WARNING] {shown(self.path)}: and {self.count - MAX_WARNINGS:,} more "
                  "line(s) left out", file=sys.stderr)


def read_split(covidx, split):
    """The `Film`s of one split (each one's class, patient and source as its line says), and the
    count of lines left out: of another shape, naming a
    file outside `<covidx>/<split>/`, a class that is not one plain folder name, or a file
    listed under two classes (left out of both). Each is said in a warning (capped)."""
    folder = os.path.join(covidx, split)
    if not os.path.isdir(folder):
        raise UserError(f"--covidx {covidx!r} has no {split}/ folder of images")
    path = label_file(covidx, split)
    warnings = Warnings(path)
    rows, lines_of = {}, {}
    for number, line in enumerate(read_label_file(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not is_plain_name(fields[1]):
            warnings.left_out(number, "not 'patient_id file_name class source' of a file in its "
                                      "folder")
            continue
        if not is_plain_name(fields[2]):
            warnings.left_out(number, f"the class {fields[2]!r} is not one plain folder name")
            continue
        row = Film(os.path.join(folder, fields[1]), fields[2], fields[0], fields[3])
        lines_of.setdefault(row.path, []).append(number)
        rows.setdefault(row.path, []).append(row)
    kept = []
    for image, listed in rows.items():
        labels = sorted({row.label for row in listed})
        if len(labels) > 1:
            for number in lines_of[image]:
                warnings.left_out(number, f"{os.path.basename(image)!r} is listed under "
                                          f"{len(labels)} classes ({', '.join(labels)})")
            continue
        kept.append(listed[0])  # listed twice under one class: copied once
    warnings.close()
    return kept, warnings.count


class Covidx(Collection):
    """One split of COVIDx at `covidx` (`train` or `test`): its films, read from its label file
    (`read_split`), and how many of its lines were left out. Each film's source is the
    collection COVIDx took it from (cohen, actmed, sirm, ricord, rsna...)."""

    name = "covidx"

    def __init__(self, covidx, split):
        films, self.left_out = read_split(covidx, split)
        super().__init__(films)
        self.split = split

    def manifest_cells(self, path):
        film = self.film(path)
        return {"patient_id": film.patient, "source": film.source}
