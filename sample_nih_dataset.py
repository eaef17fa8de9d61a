"""Sample adult chest X-rays from the NIH Clinical Center's ChestX-ray14 data set.

The dataset builder the tutorial lacked. Its normal class came from Kaggle's children's films,
so a model that learnt "adult film against child's film" looked like a COVID-19 detector; the
advice given to its users, again and again, is to take adult normals from NIH ChestX-ray14
instead. This script selects them from NIH's own layout: its label file (`Data_Entry_2017.csv`,
or `Data_Entry_2017_v2020.csv`) and its images (`images/`, or the `images_001/images/` ...
`images_012/images/` folders of NIH's twelve archives).

Usage:
    python sample_nih_dataset.py --nih ChestX-ray14 --output mydata/normal --limit 25
    python sample_nih_dataset.py --nih ChestX-ray14 --output mydata/normal --view PA --min-age 18
    python sample_nih_dataset.py --nih ChestX-ray14 --output mytest/normal \
        --exclude-patients mydata/manifest.csv

The selection, in this order: rows whose `Finding Labels` hold `--finding` (default "No
Finding"), of patients aged at least `--min-age` (default 18), in `--view` (PA, AP or both;
default both); then one film per patient, the first (its lowest `Follow-up #`); then patients in
an `--exclude-patients` manifest left out; then, with `--limit N`, a seeded random N (sorted,
shuffled with `random.Random(seed)`, the first N): the same files on every machine. The films
are copied byte for byte (only files that are images: covid19xray.building), and each one's
patient, age, view, licence and source go into `manifest.csv` beside the output folder.

NIH asks every user of the data set to link its download site, acknowledge the NIH Clinical
Center and cite Wang et al., CVPR 2017 (`NIH_ATTRIBUTION`); NIH also warns that "No Finding" is
not the same as normal.
"""

import csv
import dataclasses
import glob
import os
import random
import sys

from covid19xray.building import copy_into_output
from covid19xray.cli import ArgumentParser, UserError, cli, positive, shown
from covid19xray.config import Config, add_flags, flag, seed_flag
from covid19xray.manifest import patients_in_manifests
from covid19xray.preflight import check_output_folder
from covid19xray.writing import claim_outputs

# NIH's label file, by its two published names
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "View Position")
REQUIRED_COLUMNS = (IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW)
# Far above NIH's own (112,120 rows, 8 MB): the bound on reading a label file
MAX_LABEL_FILE_BYTES = 256 << 20
SOURCE = "nih"
NIH_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
NIH_LICENSE = "NIH: unrestricted use, with attribution"
# what NIH asks of everyone who uses or shares its films, printed after every copy
NIH_ATTRIBUTION = (f"the NIH Clinical Center's ChestX-ray14 ({NIH_URL}); cite Wang X, Peng Y, "
                   "Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray "
                   "Database and Benchmarks on Weakly-Supervised Classification and "
                   "Localization of Common Thorax Diseases. IEEE CVPR 2017, 3462-3471")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NihConfig(Config):
    """What the sampler is told, built once from the flags (`parse_args`)."""

    nih: str = flag(short="-n", help=(
        "the NIH download: a folder with Data_Entry_2017.csv (or its v2020 name) and images/ "
        "(or images_001/images/ ...)"))
    output: str = flag(short="-o", help=(
        "folder to copy the selected films into, created if missing, for example mydata/normal"))
    finding: str = flag("No Finding", help="the label a row's Finding Labels must hold")
    min_age: int = flag(18, type=int, help="the youngest patient age, in years, to select")
    view: str = flag("both", choices=["PA", "AP", "both"], help="the view to select")
    limit: int | None = flag(None, type=positive(int), help=(
        "copy a reproducible random sample of at most this many films"))
    exclude_patients: tuple = flag((), metavar="MANIFEST", help=(
        "leave out every patient with an NIH film in that manifest.csv (for example "
        "mydata/manifest.csv), so that a test set shares no patient with a training set; "
        "repeatable"))
    seed: int = seed_flag("the --limit sample")

    def __post_init__(self):
        object.__setattr__(self, "exclude_patients", tuple(self.exclude_patients))


def parse_args(argv=None):
    """The sampler's flags, as a `NihConfig`."""
    ap = ArgumentParser(description="Sample adult X-rays from NIH ChestX-ray14 (default: "
                                    "\"No Finding\", aged 18 or more, one per patient).")
    add_flags(ap, NihConfig)
    return NihConfig.from_flags(ap.parse_args(argv))


# ---------------------------------------------------------------------------------------------
# NIH's layout: the label file and the image folders
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The selection, filter by filter
# ---------------------------------------------------------------------------------------------


def select(rows, config):
    """The rows that pass every filter, in order; a `UserError` naming the filter that left
    none. Prints how many each filter kept."""
    views = {"PA", "AP"} if config.view == "both" else {config.view}
    steps = [
        (f'finding "{config.finding}"',
         lambda row: config.finding.casefold() in
         {label.strip().casefold() for label in row[FINDINGS].split("|")}),
        (f"age {config.min_age} or more", lambda row: int(row[AGE]) >= config.min_age),
        (f"view {config.view}", lambda row: row[VIEW].upper() in views),
    ]
    kept = rows
    for name, keep in steps:
        kept = [row for row in kept if keep(row)]
        print(f"[INFO] {name}: {len(kept)} row(s)")
        if not kept:
            raise UserError(f"no row is left after the filter {name} (of {len(rows)} rows in "
                            "the label file)")
    return kept


def first_per_patient(rows):
    """Each patient's first film: its lowest Follow-up #, then its image name."""
    first = {}
    for row in sorted(rows, key=lambda row: (int(row[FOLLOW_UP]), row[IMAGE])):
        first.setdefault(row[PATIENT], row)
    return sorted(first.values(), key=lambda row: row[IMAGE])


def excluded_patients(manifests):
    """The patients of this builder's source in each manifest file."""
    return patients_in_manifests(manifests, SOURCE)


def sample(rows, limit, seed):
    """A reproducible random `limit` of `rows` (all of them without a limit), sorted."""
    order = sorted(rows, key=lambda row: row[IMAGE])
    if limit is None or limit >= len(order):
        return order
    random.Random(seed).shuffle(order)
    return sorted(order[:limit], key=lambda row: row[IMAGE])


def manifest_row_of(rows_of, exclude_patients):
    """The manifest cells of each copied film: its patient, age and view, NIH's licence and
    download site, and the manifests whose patients were left out."""
    def manifest_row(path):
        row = rows_of[path]
        return {"patient_id": row[PATIENT], "age": str(int(row[AGE])), "view": row[VIEW],
                "license": NIH_LICENSE, "url": NIH_URL,
                "excluded_patients_of": ";".join(exclude_patients)}
    return manifest_row


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    label_file = find_label_file(config.nih)
    check_output_folder(config.output, "--output", config.nih, "--nih")
    rows = read_labels(label_file)
    print(f"[INFO] {len(rows)} rows in {shown(os.path.basename(label_file))}")
    selected = first_per_patient(select(rows, config))
    print(f"[INFO] one film per patient (the first): {len(selected)} film(s)")
    if config.exclude_patients:
        patients = excluded_patients(config.exclude_patients)
        selected = [row for row in selected if row[PATIENT] not in patients]
        print(f"[INFO] --exclude-patients: {len(selected)} film(s) of patients not in "
              f"{', '.join(shown(path) for path in config.exclude_patients)}")
        if not selected:
            raise UserError("every selected film is of a patient in "
                            f"{', '.join(config.exclude_patients)}")
    located = locate_images(config.nih, [row[IMAGE] for row in selected])
    missing = [row[IMAGE] for row in selected if row[IMAGE] not in located]
    if len(missing) == len(selected):
        raise UserError(f"none of the {len(selected)} selected films is in --nih "
                        f"{config.nih!r}'s images/ or images_NNN/images/ folders (the first: "
                        f"{missing[0]}); are the image archives unpacked there?")
    if missing:
        print(f"[WARNING] {len(missing)} selected film(s) named in the label file are not in "
              f"the image folders ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
              f"); sampling from the {len(located)} found", file=sys.stderr)
    chosen = sample([row for row in selected if row[IMAGE] in located], config.limit, config.seed)
    if config.limit is not None:
        print(f"[INFO] sampled {len(chosen)} of {len(located)} film(s) (seed {config.seed})")
    rows_of = {located[row[IMAGE]]: row for row in chosen}

    with claim_outputs(config.output):  # a second sample into the same folder stops here
        copy_into_output(sorted(rows_of), config.output,
                         {"rows read": len(rows), "films selected": len(selected),
                          "missing files": len(missing)},
                         manifest_row=manifest_row_of(rows_of, config.exclude_patients),
                         source_name=SOURCE)
    print(f"[INFO] NIH asks you to acknowledge {NIH_ATTRIBUTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
