"""NIH ChestX-ray14 (the NIH Clinical Center; Wang et al., CVPR 2017): 112,120 films of 30,805
adult patients, in NIH's own layout: one label file (`Data_Entry_2017.csv`, or
`Data_Entry_2017_v2020.csv`) and the films in `images/`, or in the `images_001/images/` ...
`images_012/images/` folders of NIH's twelve archives. A film's label is its `Finding Labels`
("No Finding", or findings joined by `|`). NIH warns that "No Finding" is not the same as
normal."""

import csv
import glob
import os

from .cli import UserError
from .collection import Collection, Film

# NIH's label file, by its two published names
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "View Position")
REQUIRED_COLUMNS = (IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW)
# Far above NIH's own (112,120 rows, 8 MB): the bound on reading a label file
MAX_LABEL_FILE_BYTES = 256 << 20
NIH_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
NIH_LICENSE = "NIH: unrestricted use, with attribution"
# what NIH asks of everyone who uses or shares its films
NIH_ATTRIBUTION = (f"the NIH Clinical Center's ChestX-ray14 ({NIH_URL}); cite Wang X, Peng Y, "
                   "Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray "
                   "Database and Benchmarks on Weakly-Supervised Classification and "
                   "Localization of Common Thorax Diseases. IEEE CVPR 2017, 3462-3471")


def find_label_file(nih):
    """`<nih>/Data_Entry_2017_v2020.csv` or `<nih>/Data_Entry_2017.csv`."""
    if not os.path.isdir(nih):
        raise UserError(f"--nih {nih!r} is not a folder")
    for name in LABEL_FILES:
        if os.path.isfile(os.path.join(nih, name)):
            return os.path.join(nih, name)
    raise UserError(f"--nih {nih!r} has no label file ({' or '.join(LABEL_FILES)}); give the "
                    "folder of NIH's download that holds it")


def read_labels(path):
    """The label file's rows as dicts (NIH's column names), each checked: a missing column, a
    file that is not a readable CSV, or an age that is not a whole number is one line."""
    if os.path.getsize(path) > MAX_LABEL_FILE_BYTES:
        raise UserError(f"{path} is {os.path.getsize(path) >> 20} MB, far larger than NIH's "
                        "label file; is it the right file?")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            columns = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise UserError(f"{path} has no {', '.join(missing)} column; NIH's label file "
                                f"has {', '.join(REQUIRED_COLUMNS)}")
            reader.fieldnames = columns
            rows = [{key: (value or "").strip() for key, value in row.items() if key}
                    for row in reader]
        except csv.Error as err:  # a NUL byte, a field over csv's size limit
            raise UserError(f"{path} line {reader.line_num}: not a readable CSV file "
                            f"({err})") from None
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    for line, row in enumerate(rows, start=2):
        for column in (AGE, FOLLOW_UP):
            if not row.get(column, "").isdigit():
                raise UserError(f"{path} line {line}: {column} {row.get(column)!r} of "
                                f"{row.get(IMAGE)!r} is not a whole number")
    return rows


def image_folders(nih):
    """Where NIH's films are: `images/`, and `images_001/images/` ... as its archives unpack."""
    folders = [os.path.join(nih, "images")] + sorted(
        glob.glob(os.path.join(glob.escape(nih), "images_[0-9][0-9][0-9]", "images")))
    return [folder for folder in folders if os.path.isdir(folder)]


def locate_images(nih, names):
    """{name: path} of the films named that are in one of the image folders."""
    wanted, located = set(names), {}
    for folder in image_folders(nih):
        for name in os.listdir(folder):
            if name in wanted and name not in located:
                located[name] = os.path.join(folder, name)
    return located


class NihChestXray14(Collection):
    """NIH's download at `folder`: its label file found at once (`label_file`), its rows read
    when asked (`read_rows`), and the films of chosen rows found in its image folders
    (`locate`): 112,120 films are never listed to copy 25."""

    name = "nih"

    def __init__(self, folder):
        super().__init__()
        self.folder, self.label_file = folder, find_label_file(folder)

    def read_rows(self):
        """The label file's rows (`read_labels`)."""
        return read_labels(self.label_file)

    def locate(self, rows):
        """The films of `rows` found in the image folders, in order (they join `films`): each
        one's Finding Labels, patient, age and view, NIH's licence and download site."""
        located = locate_images(self.folder, [row[IMAGE] for row in rows])
        found = [Film(located[row[IMAGE]], row[FINDINGS], row[PATIENT], self.name,
                      {"age": str(int(row[AGE])), "view": row[VIEW], "license": NIH_LICENSE,
                       "url": NIH_URL})
                 for row in rows if row[IMAGE] in located]
        self.films.extend(found)
        return found
