"""Copy the COVID-19 positive PA chest X-rays out of Cohen's COVID-19 image collection.

The tutorial's first dataset builder, rewritten to work on every version of the collection's
`metadata.csv` (github.com/ieee8023/covid-chestxray-dataset). A plain
`finding == "COVID-19" and view == "PA"` filter finds nothing in today's file, whose findings are
hierarchical (`Pneumonia/Viral/COVID-19`), so copies of the tutorial silently build an empty
folder. This script matches each label of the finding, and says so when nothing matches.

Usage:
    python build_covid_dataset.py --covid covid-chestxray-dataset --output mydata/covid
    python build_covid_dataset.py -c covid-chestxray-dataset -o mydata/covid --limit 25
    python build_covid_dataset.py -c covid-chestxray-dataset -o mydata/covid \
        --license "CC BY" --per-patient 1 --limit 25
    python build_covid_dataset.py -c covid-chestxray-dataset -o mydata/sars --finding SARS \
        --view PA --view AP
    python build_covid_dataset.py -c covid-chestxray-dataset -o external/covid \
        --license "CC BY" --exclude-patients dataset/manifest.csv
    python build_covid_dataset.py \
        -c https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/master \
        -o mydata/covid --license "CC BY" --per-patient 1 --limit 25   # downloads 25 images
    python build_covid_dataset.py --covidx COVIDx --output covidx   # train/ and test/ apart

`--license "CC BY"` keeps rows whose `license` is CC BY of any version (never CC BY-NC-SA or
CC BY-NC-ND); `--per-patient 1` keeps one image of each patient, so no patient can end up on
both sides of a random train/test split.

Links in the checkout are followed (`images/` may live on another disk), but only files whose
content is an image are copied, whatever their names say (covid19xray.building). Reruns are safe:
identical files already in the output are left alone, and a different file with the same name
is never overwritten (reported, and the exit code is 1). Each image's patient, licence and source
URL go into `manifest.csv` beside the output folder (`mydata/manifest.csv`), which
`train_covid19.py --split patient` reads and which is the dataset's attribution list.
"""

import dataclasses
import os
import random
import re
import sys

from covid19xray.building import copy_into_output, refusal
from covid19xray.cli import ArgumentParser, UserError, cli, positive, shown
from covid19xray.cohen import COHEN_RAW_URL, CohenCollection, finding_labels, patient_of
from covid19xray.config import Config, add_flags, default_cache_folder, flag, seed_flag
from covid19xray.covidx import SPLITS, Covidx
from covid19xray.fetch import Missing, Refused, is_url, warn_missing
from covid19xray.manifest import patients_in_both, patients_in_manifests
from covid19xray.preflight import check_output_folder
from covid19xray.writing import claim_outputs


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildConfig(Config):
    """What the builder is told, built once from the flags (`parse_args`): each field is its
    flag, with its default and help (`config.flag`)."""

    covid: str | None = flag(None, short="-c", help=(
        "path to a checkout of Cohen's covid-chestxray-dataset (with metadata.csv and images/), "
        f"or the http(s):// URL of one, such as {COHEN_RAW_URL}: then only the selected images "
        "are downloaded"))
    covidx: str | None = flag(None, metavar="DIR", help=(
        "instead of --covid: an unpacked COVIDx (its train/ and test/ image folders and label "
        "files), copied into --output's train/<class>/ and test/<class>/ with a manifest.csv "
        "each (patients, sources); the official test split stays apart, for --external"))
    cache_dir: str = flag(default_factory=default_cache_folder, help=(
        "with a URL, where downloads are kept (in downloads/) so that a rerun downloads nothing "
        "twice"))
    # Required, as in the tutorial: a default of dataset/covid would add images to the shipped
    # dataset instead of building a new one.
    output: str = flag(short="-o", help=(
        "folder to copy the selected images into, created if missing, for example mydata/covid"))
    finding: tuple = flag((), help="finding label to select, repeatable (default: COVID-19)")
    view: tuple = flag((), help="radiographic view to select, repeatable (default: PA)")
    license: tuple = flag((), help=(
        "keep only rows with this licence, repeatable; a bare name matches every version: "
        "'CC BY' matches CC BY, CC BY 3.0 and CC BY 4.0, never CC BY-NC-SA (default: any "
        "licence)"))
    per_patient: int | None = flag(None, type=positive(int), metavar="N", help=(
        "keep at most N images of each patient, picked with --seed, before --limit (default: "
        "all)"))
    limit: int | None = flag(None, type=positive(int), help=(
        "copy a reproducible random sample of at most this many images"))
    exclude_patients: tuple = flag((), metavar="MANIFEST", help=(
        "leave out every row whose patient has an image of this source in that manifest.csv "
        "(for example dataset/manifest.csv), so that a test set shares no patient with a "
        "training set; repeatable"))
    seed: int = seed_flag("the --per-patient and --limit picks")

    def __post_init__(self):
        # frozen all the way; the tutorial's selection where none is given
        for name, default in (("finding", ("COVID-19",)), ("view", ("PA",)),
                              ("license", ()), ("exclude_patients", ())):
            object.__setattr__(self, name, tuple(getattr(self, name)) or default)


def parse_args(argv=None):
    """The builder's flags, as a `BuildConfig`."""
    ap = ArgumentParser(
        description="Copy COVID-19 positive PA X-rays from Cohen's collection into a folder.",
    )
    add_flags(ap, BuildConfig)
    args = ap.parse_args(argv)
    if (args.covid is None) == (args.covidx is None):
        ap.error("give one of --covid (Cohen's collection) and --covidx (COVIDx)")
    if args.covidx is not None:
        given = [option for option, value in (("--finding", args.finding), ("--view", args.view),
                                              ("--license", args.license),
                                              ("--per-patient", args.per_patient),
                                              ("--limit", args.limit),
                                              ("--exclude-patients", args.exclude_patients))
                 if value]
        if given:
            ap.error(f"{', '.join(given)} select rows of Cohen's metadata.csv; --covidx copies "
                     "COVIDx's splits whole")
    return BuildConfig.from_flags(args)


# ---------------------------------------------------------------------------------------------
# Select rows of metadata.csv (covid19xray.cohen reads it, whatever its version)
# ---------------------------------------------------------------------------------------------


def normalize_license(text):
    """`' cc  BY 4.0 '` -> `'cc by 4.0'`: trimmed, case-folded, inner spaces folded."""
    return " ".join(text.split()).casefold()


def license_matches(license, wanted):
    """True when `license` is `wanted`, or `wanted` with a version after it.

    `CC BY` matches `CC BY`, `CC BY 3.0` and `CC BY 4.0`, never `CC BY-NC-SA` or `CC BY-SA`;
    `CC BY 4.0` matches only itself. An empty licence matches nothing.
    """
    license, wanted = normalize_license(license), normalize_license(wanted)
    return bool(license) and (license == wanted or bool(
        re.fullmatch(re.escape(wanted) + r" v?\d+(\.\d+)*", license)))


def select_rows(rows, findings, views, licenses=None):
    """Rows with a finding label among `findings`, a view among `views` (case-insensitive) and,
    if any `licenses` are given, a licence matching one of them."""
    findings = {finding.strip().casefold() for finding in findings}
    views = {view.strip().casefold() for view in views}
    return [row for row in rows
            if finding_labels(row.get("finding", "")) & findings
            and row.get("view", "").casefold() in views
            and (not licenses
                 or any(license_matches(row.get("license", ""), w) for w in licenses))]


# ---------------------------------------------------------------------------------------------
# Resolve, sample and copy
# ---------------------------------------------------------------------------------------------


def excluded_patients(manifests):
    """The patients of this builder's source in each manifest file."""
    return patients_in_manifests(manifests, CohenCollection.name)


def without_patients(rows, patients, manifests):
    """`rows` minus those of `patients` (a row's patient: its patientid, else its file name,
    as `patient_of` says), with a line saying how many went."""
    kept = [row for row in rows if patient_of(row.get("filename", ""), row) not in patients]
    print(f"[INFO] --exclude-patients: left out {len(rows) - len(kept)} matching row(s) of the "
          f"{len(patients)} patient(s) in {', '.join(shown(m) for m in manifests)}")
    return kept


def at_most_per_patient(films, per_patient, seed):
    """The paths of at most `per_patient` of each patient's films: each patient's sorted images
    are shuffled by one generator seeded with `seed`, patients in sorted order, and the first N
    are kept."""
    by_patient = {}
    for film in sorted(films, key=lambda film: film.path):
        by_patient.setdefault(film.patient, []).append(film.path)
    rng, kept = random.Random(seed), []
    for patient in sorted(by_patient):
        images = by_patient[patient]
        rng.shuffle(images)
        kept.extend(images[:per_patient])
    return sorted(kept)


def sample_order(sources, limit, seed):
    """The order `sample` picks from: sorted, then (with a limit) a seeded shuffle."""
    order = sorted(sources)
    if limit is not None:
        random.Random(seed).shuffle(order)
    return order


def sample(sources, limit, seed):
    """A reproducible random `limit` of `sources`: the first `limit` of `sample_order`."""
    if limit is None or limit >= len(sources):
        return list(sources)
    return sorted(sample_order(sources, limit, seed)[:limit])


def describe_seen(rows, licenses=None):
    """The distinct findings and views (and licences) in the file, to show why nothing matched."""
    seen = f"findings seen: {sorted({row.get('finding', '') for row in rows})}; " \
           f"views seen: {sorted({row.get('view', '') for row in rows})}"
    if licenses:
        seen += f"; licences seen: {sorted({row.get('license', '') for row in rows})}"
    return seen


def describe_selection(config):
    """`finding COVID-19 and view PA (and licence CC BY)`, as the messages say it."""
    text = f"finding {' or '.join(config.finding)} and view {' or '.join(config.view)}"
    if config.license:
        text += f" and licence {' or '.join(config.license)}"
    return text


def download_chosen(remote, order, wanted, counts):
    """Download the files of `order` one after another until `wanted` are in the cache. A file
    that fails (404, refused content) is named, counted, and replaced by the next in `order`.
    Returns {local path: relative path}."""
    got = {}
    for relative in order:
        if len(got) == wanted:
            break
        url = remote.url(relative)
        try:
            path = remote.fetch(relative, check=refusal, announce=lambda url: print(
                f"[INFO] downloading {len(got) + 1}/{wanted}: {shown(url)}", flush=True))
        except Missing as err:
            warn_missing(url, err)
            counts["refused" if isinstance(err, Refused) else "missing files"] += 1
            continue
        got[path] = relative
    return got


def build(config):
    """Read and filter metadata.csv, pick the images and copy them into --output."""
    cohen = CohenCollection(config.covid, config.cache_dir)
    # read and filter metadata.csv before creating anything
    columns, rows, shown_as = cohen.read_metadata()
    if config.license and "license" not in columns:
        raise UserError(f"{shown_as} has no license column, so --license cannot select rows; "
                        "drop --license or use a newer metadata.csv")
    matched = select_rows(rows, config.finding, config.view, config.license)
    print(f"[INFO] {len(rows)} rows in metadata.csv, {len(matched)} with "
          f"{describe_selection(config)}")
    if config.exclude_patients and matched:
        matched = without_patients(matched, excluded_patients(config.exclude_patients),
                                   config.exclude_patients)
        if not matched:
            raise UserError(f"every row with {describe_selection(config)} is of a patient in "
                            f"{', '.join(config.exclude_patients)}")
    if not matched:
        raise UserError(f"no row has {describe_selection(config)}; "
                        f"{describe_seen(rows, config.license)}")

    films, dropped = cohen.locate(matched)
    if not films:
        # The tutorial's copies end here with an empty folder and no word: say why instead.
        raise UserError(f"none of the {len(matched)} matching rows has its image in --covid "
                        f"{config.covid!r} ({', '.join(f'{k}: {v}' for k, v in dropped.items())}); "
                        "is the checkout complete, with images/ (and volumes/)?")
    sources = [film.path for film in films]
    if config.per_patient is not None:
        capped = at_most_per_patient(films, config.per_patient, config.seed)
        print(f"[INFO] at most {config.per_patient} image(s) per patient: {len(capped)} of "
              f"{len(sources)} images (seed {config.seed})")
        sources = capped
    chosen = sample(sources, config.limit, config.seed)
    if config.limit is not None:
        print(f"[INFO] sampled {len(chosen)} of {len(sources)} images (seed {config.seed})")
    relative_of = {path: path for path in chosen}  # a checkout's files are copied from there
    remote = cohen.remote
    if remote is not None:
        # the same picks as from a checkout; a file that cannot be had is replaced by the next
        # in --limit's seeded order, so that the count stays --limit when enough rows exist
        before = remote.downloaded
        relative_of = download_chosen(remote, sample_order(sources, config.limit, config.seed),
                                      len(chosen), dropped)
        fetched = remote.downloaded - before
        print(f"[INFO] {fetched} image(s) downloaded, {len(relative_of) - fetched} already in the "
              f"cache {shown(remote.folder)}")
        chosen = sorted(relative_of)

    def manifest_row(path):
        return {**cohen.manifest_cells(relative_of[path]),
                "excluded_patients_of": ";".join(config.exclude_patients),
                "downloaded_from": "" if remote is None else remote.url(relative_of[path])}

    copy_into_output(chosen, config.output, {"rows read": len(rows), "rows matched": len(matched)},
                     dropped, manifest_row=manifest_row, source_name=cohen.name)
    return 0


# ---------------------------------------------------------------------------------------------
# COVIDx
# ---------------------------------------------------------------------------------------------


def build_covidx(config):
    """COVIDx's two splits into `--output`/train/<class>/ and `--output`/test/<class>/, each
    image's patient and source in the manifest.csv of its split (covid19xray.covidx)."""
    splits = {split: Covidx(config.covidx, split) for split in SPLITS}
    shared = patients_in_both(*(zip(splits[split].sources, splits[split].patients)
                                for split in SPLITS))
    if shared:
        print(f"[WARNING] {len(shared)} patient(s) have images in both of COVIDx's splits "
              f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''})", file=sys.stderr)
    conflicts, filled = 0, set()
    for split, covidx in splits.items():
        rows = covidx.films
        print(f"[INFO] COVIDx {split}: {len(rows)} labelled image(s), {covidx.left_out} line(s) "
              "left out")
        present = [row for row in rows if os.path.isfile(row.path)]
        missing = len(rows) - len(present)
        if present:
            filled.add(split)
        for label in sorted({row.label for row in present}):
            sources = sorted(row.path for row in present if row.label == label)
            output = os.path.join(config.output, split, label)
            try:
                copy_into_output(
                    sources, output, {"labelled": len(sources)},
                    {"missing files": sum(1 for row in rows if row.label == label
                                          and not os.path.isfile(row.path))},
                    manifest_row=covidx.manifest_cells, source_name=covidx.name)
            except UserError as err:  # conflicts: the rest is still copied, then it fails
                conflicts += 1
                print(f"[WARNING] {err}", file=sys.stderr)
        if missing:
            print(f"[WARNING] COVIDx {split}: {missing} labelled image(s) missing from "
                  f"{shown(os.path.join(config.covidx, split))}", file=sys.stderr)
    made = {split: os.path.join(config.output, split) for split in SPLITS
            if os.path.isdir(os.path.join(config.output, split)) and split in filled}
    if "train" in made and "test" in made:
        print(f"[INFO] train on {shown(made['train'])}; test on the official split with "
              f"--external {shown(made['test'])}")
    elif made:  # never a folder this run did not make
        [(split, folder)] = made.items()
        print(f"[INFO] COVIDx {split} is in {shown(folder)}; its other split had no image to copy")
    if conflicts:
        raise UserError(f"{conflicts} class folder(s) of {config.output!r} hold files with the "
                        "names of COVIDx images but other contents; they were not overwritten")
    return 0


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    if config.covidx is not None:
        if not os.path.isdir(config.covidx):
            raise UserError(f"--covidx {config.covidx!r} is not a folder")
        check_output_folder(config.output, "--output", config.covidx, "--covidx")
        with claim_outputs(config.output):
            return build_covidx(config)
    if is_url(config.covid):
        check_output_folder(config.output, "--output")
    else:
        if not os.path.isdir(config.covid):
            raise UserError(f"--covid {config.covid!r} is not a folder (nor an http(s):// URL)")
        check_output_folder(config.output, "--output", config.covid, "--covid")
    with claim_outputs(config.output):  # a second build into the same folder stops here
        return build(config)


if __name__ == "__main__":
    sys.exit(main())
