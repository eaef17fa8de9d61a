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

import dataclasses
import os
import random
import sys

from covid19xray.building import copy_into_output
from covid19xray.cli import ArgumentParser, UserError, cli, positive, shown
from covid19xray.config import Config, add_flags, flag, seed_flag
from covid19xray.manifest import patients_in_manifests
from covid19xray.nih import (
    AGE,
    FINDINGS,
    FOLLOW_UP,
    IMAGE,
    NIH_ATTRIBUTION,
    PATIENT,
    VIEW,
    NihChestXray14,
)
from covid19xray.preflight import check_output_folder
from covid19xray.writing import claim_outputs

SOURCE = NihChestXray14.name


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


def sample(films, limit, seed):
    """A reproducible random `limit` of `films` (all of them without a limit), sorted by name."""
    order = sorted(films, key=film_name)
    if limit is None or limit >= len(order):
        return order
    random.Random(seed).shuffle(order)
    return sorted(order[:limit], key=film_name)


def film_name(film):
    """A film's name: its Image Index in the label file."""
    return os.path.basename(film.path)


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    nih = NihChestXray14(config.nih)
    check_output_folder(config.output, "--output", config.nih, "--nih")
    rows = nih.read_rows()
    print(f"[INFO] {len(rows)} rows in {shown(os.path.basename(nih.label_file))}")
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
    located = nih.locate(selected)
    found = {film_name(film) for film in located}
    missing = [row[IMAGE] for row in selected if row[IMAGE] not in found]
    if len(missing) == len(selected):
        raise UserError(f"none of the {len(selected)} selected films is in --nih "
                        f"{config.nih!r}'s images/ or images_NNN/images/ folders (the first: "
                        f"{missing[0]}); are the image archives unpacked there?")
    if missing:
        print(f"[WARNING] {len(missing)} selected film(s) named in the label file are not in "
              f"the image folders ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
              f"); sampling from the {len(located)} found", file=sys.stderr)
    chosen = sample(located, config.limit, config.seed)
    if config.limit is not None:
        print(f"[INFO] sampled {len(chosen)} of {len(located)} film(s) (seed {config.seed})")

    def manifest_row(path):
        return {**nih.manifest_cells(path),
                "excluded_patients_of": ";".join(config.exclude_patients)}

    with claim_outputs(config.output):  # a second sample into the same folder stops here
        copy_into_output(sorted(film.path for film in chosen), config.output,
                         {"rows read": len(rows), "films selected": len(selected),
                          "missing files": len(missing)},
                         manifest_row=manifest_row, source_name=SOURCE)
    print(f"[INFO] NIH asks you to acknowledge {NIH_ATTRIBUTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
