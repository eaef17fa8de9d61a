"""Code shared by the project's scripts: one place, imported by all, importing none of them.

- `UserError`, `ArgumentParser` and `cli`: a problem the user can fix ends as one line on stderr
  and a non-zero exit code (2 for a bad flag, as argparse does, 1 otherwise), never a traceback.
- `list_images`: the image files under a folder, in sorted order.
- `load_xray` and `scale_pixels`: reading and preprocessing an X-ray. Whatever feeds the model
  (training, evaluation, any later prediction) calls these two, so preprocessing cannot drift.
- `atomic_output`, `check_output_path`, `check_output_folder`, `copy_new_file` and
  `copy_into_output`: writing without
  losing anything (no overwrite of a different file, no half-written output, source data never
  modified).

This module needs only the standard library, NumPy, OpenCV and imutils; TensorFlow is imported
lazily where a function needs it, so the dataset builders start instantly.
"""

import argparse
import contextlib
import csv
import filecmp
import functools
import os
import shutil
import sys
import uuid

import cv2
from imutils import paths

# The tutorial resizes every X-ray to VGG16's native input size, ignoring aspect ratio.
IMAGE_SIZE = (224, 224)

# The HDF5 attribute where train_covid19.py stores the class names (a JSON list, in the order of
# the model's outputs) and predict_covid19.py reads them.
CLASS_NAMES_ATTR = "covid19_class_names"


class UserError(Exception):
    """An error the user can fix (a wrong path or flag); `cli` prints it as one line."""

    exit_code = 1


class UsageError(UserError):
    """A flag argparse rejects; exit code 2, as argparse's own."""

    exit_code = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, not the usage block plus the error."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def cli(main):
    """Wrap a script's `main(argv)` so that a `UserError` or Ctrl-C becomes one line on stderr.

    Errors that are bugs still raise with a full traceback: hiding those would help nobody.
    """
    # the script's file name, also when a test calls main() directly
    prog = os.path.basename(sys.modules[main.__module__].__file__)

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; no output was replaced", file=sys.stderr)
            return 130

    return wrapper


def _is_hidden(name):
    # Dot-files (macOS `._x.jpg` resource forks, `.DS_Store`) and `__MACOSX` folders from zips
    # are never X-rays, even when their names end in `.jpg`.
    return name.startswith(".") or name == "__MACOSX"


def list_images(root):
    """Every image under `root` (the file types imutils accepts, recursively), sorted.

    Sorting makes the listing, and so the train/test split and any sample, the same on every
    filesystem: `os.walk` returns files in an order that differs between machines.
    """
    images = []
    for path in paths.list_images(root):
        relative = os.path.relpath(path, root)
        if not any(_is_hidden(part) for part in relative.split(os.sep)):
            images.append(path)
    return sorted(images)


def load_xray(path, size=IMAGE_SIZE):
    """Load an image as the tutorial did: OpenCV, BGR->RGB, resized to `size` ignoring aspect ratio.

    Returns a uint8 array of shape (height, width, 3), or None when OpenCV cannot decode the file.
    `cv2.IMREAD_COLOR` turns grayscale, palette, RGBA and 16-bit files into 3-channel 8-bit.
    Pixels stay uint8 (a quarter of the memory of float32, an eighth of the tutorial's float64);
    `scale_pixels` does the tutorial's division by 255 when the batch enters the model.
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, size)


def scale_pixels(images):
    """The tutorial's preprocessing: uint8 pixels -> float32 in [0, 1], no ImageNet mean subtracted.

    Works on NumPy arrays and on tensors inside a tf.data pipeline alike.
    """
    import tensorflow as tf  # lazy: the dataset builders never need TensorFlow

    return tf.cast(images, tf.float32) / 255.0


def check_output_path(path, flag, suffix=None):
    """Fail now, not after training, if `path` cannot be written as an output file."""
    if suffix and not path.lower().endswith(suffix):
        raise UserError(f"{flag} {path!r} must end in {suffix}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path!r}: folder {folder!r} does not exist; create it first")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path!r}: folder {folder!r} is not writable")


@contextlib.contextmanager
def atomic_outputs(*paths):
    """Yield one temporary path beside each of `paths`; rename them all into place only if the
    block succeeds.

    A crash or Ctrl-C while writing leaves every previous file at `paths` byte-for-byte intact
    and no half-written file there: a run that dies while saving the model keeps the earlier
    plot too. The temporary names keep the suffix, because Keras and matplotlib choose the file
    format from it.
    """
    temporaries = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        suffix = os.path.splitext(name)[1]
        # A fresh unique name, created by the writer itself so the file gets the usual mode.
        temporaries.append(os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"))
    try:
        yield temporaries
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)


@contextlib.contextmanager
def atomic_output(path):
    """`atomic_outputs` for one file: yields its temporary path."""
    with atomic_outputs(path) as (temporary,):
        yield temporary


# The outcomes of `copy_new_file`, also the keys of the builders' summaries.
COPIED, PRESENT, CONFLICT = "copied", "already present", "conflicts"


def copy_new_file(source, destination):
    """Copy `source` to `destination` (with its metadata) unless something is already there.

    Returns COPIED; PRESENT when an identical file is already at `destination` (reruns are safe);
    CONFLICT when a different file is there, which is never overwritten. The copy goes to a
    temporary file first, so an interrupted copy never leaves a truncated image behind.
    """
    if os.path.lexists(destination):
        if os.path.isfile(destination) and filecmp.cmp(source, destination, shallow=False):
            return PRESENT
        return CONFLICT
    with atomic_output(destination) as temporary:
        shutil.copy2(source, temporary)
    return COPIED


def copy_all(sources, output):
    """Copy each source file into the folder `output` under its own name, never overwriting.

    Returns the count of each outcome (COPIED, PRESENT, CONFLICT) and the sources now in
    `output` (copied or already present). Each conflict is reported on stderr; the caller
    exits non-zero when there were conflicts.
    """
    counts, in_place = {COPIED: 0, PRESENT: 0, CONFLICT: 0}, []
    for source in sources:
        destination = os.path.join(output, os.path.basename(source))
        outcome = copy_new_file(source, destination)
        counts[outcome] += 1
        if outcome == CONFLICT:
            print(f"[WARNING] not overwriting {destination}: a different file is already there "
                  f"(wanted to copy {source})", file=sys.stderr)
        else:
            in_place.append(source)
    return counts, in_place


def check_output_folder(folder, flag, source=None, source_flag=None):
    """Fail before any work if `folder` cannot be an output folder; creates nothing.

    Refuses a file, a folder inside `source` if given (source data is never modified), and a
    folder that cannot be created or written.
    """
    if source is not None and same_or_inside(folder, source):
        raise UserError(f"{flag} {folder!r} is inside {source_flag} {source!r}; write the "
                        "dataset elsewhere, source data is never modified")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder!r} is a file, not a folder")
    existing = os.path.abspath(folder)  # the folder, or the nearest parent that exists
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {folder!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {folder!r} is not writable" if existing == os.path.abspath(folder)
                        else f"{flag} {folder!r} cannot be created: {existing!r} is not writable")


def same_or_inside(path, folder):
    """True when `path` is `folder` or lies inside it, after resolving links."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def copy_into_output(sources, output, counts_before, counts_after=None, manifest_row=None,
                     source_name=""):
    """A builder's last step: create `output`, copy `sources` into it, print one summary line.

    `output` was checked by `check_output_folder` before the builder started. With
    `manifest_row` (source path -> {"patient_id", "license", "url"}), every image now in
    `output` gets a row in the manifest of the dataset folder above it (`dataset/manifest.csv`
    for `dataset/covid`). The summary is `counts_before`, then what the copy did, then
    `counts_after`, then the conflicts. Conflicts (files never overwritten) make it fail once
    everything else is copied.
    """
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {output!r} cannot be created: {err.strerror}") from None
    copied, in_place = copy_all(sources, output)
    if manifest_row is not None:
        dataset = os.path.dirname(os.path.abspath(output))
        label = os.path.basename(os.path.abspath(output))
        total = update_manifest(dataset, [
            {"file": f"{label}/{os.path.basename(source)}", "class": label,
             "source": source_name, **manifest_row(source)} for source in in_place])
        print(f"[INFO] {os.path.join(os.path.dirname(output), MANIFEST)}: {len(in_place)} "
              f"row(s) for {label}/, {total} in all")
    summary = {**counts_before, COPIED: copied[COPIED], PRESENT: copied[PRESENT],
               **(counts_after or {}), CONFLICT: copied[CONFLICT]}
    print("[INFO] " + ", ".join(f"{key}: {value}" for key, value in summary.items()))
    if copied[CONFLICT]:
        raise UserError(f"{copied[CONFLICT]} file(s) in {output!r} have the names of "
                        "selected images but other contents; they were not overwritten")


# ---------------------------------------------------------------------------------------------
# dataset/manifest.csv: which patient each image comes from
# ---------------------------------------------------------------------------------------------

MANIFEST = "manifest.csv"
# `license` and `url` (the image's source, for attribution) came later: a manifest without them
# is still read, and its rows are written back with those two cells empty.
MANIFEST_COLUMNS = ("file", "class", "patient_id", "source", "license", "url")
MANIFEST_REQUIRED = ("file", "class", "patient_id", "source")


def read_manifest(dataset):
    """{file relative to `dataset`, with `/`: row dict} from `<dataset>/manifest.csv`, or None."""
    path = os.path.join(dataset, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
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
    """
    merged = read_manifest(dataset) or {}
    merged.update({row["file"]: row for row in rows})
    with atomic_output(os.path.join(dataset, MANIFEST)) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(merged[file] for file in sorted(merged))
    return len(merged)
