"""Classify chest X-rays with a model that train_covid19.py saved, and show where it looked.

For education only: this is not a medical device and its output is not a diagnosis.

Usage:
    python predict_covid19.py --model covid19.h5 xray.jpg
    python predict_covid19.py --model covid19.h5 dataset/covid more.png --csv predictions.csv
    python predict_covid19.py --model covid19.h5 xray.jpg --gradcam gradcam/
    python predict_covid19.py --model covid19.h5 photo.jpg --classify-rejected
    python predict_covid19.py --model covid19.h5 external --labelled --report external.json
    python predict_covid19.py --model covid19.keras --export savedmodel --tflite covid19.tflite

Prints one line per image: the predicted class and every class's probability, and what the
input check says of it: `ok`, `unlike_training` (classified, but unlike every training image),
or `rejected` (not classified: it looks like no frontal chest X-ray the model knows), with its
distance to the nearest training image and the threshold (`covid19xray.input_check`). The class
names and the check come from the model file (train_covid19.py stores them there), and each
image is prepared by the same `load_xray` and `scale_pixels` that training uses. `--gradcam DIR`
writes each classified X-ray with a Grad-CAM heatmap of the predicted class over it: the regions
whose features raised that class's score (before the softmax) most (Selvaraju et al. 2017, as in
keras-io's "Grad-CAM class activation visualization"). Images are read, predicted and written a
batch at a time, so memory does not grow with their number; files that are not usable images are
reported and skipped. Every output is renamed into place only when the run ends well.

`--export DIR` and `--tflite FILE` write the model for plain TensorFlow: a SavedModel folder and
a TensorFlow Lite file that take the same 224x224x3 input and give the same probabilities
(`covid19xray.export`). They are done here, on a saved model, rather than by train_covid19.py:
a model trained earlier, .h5 or .keras, is exported without training it again, and the same run
can show its predictions on a few images beside the export.
"""

import contextlib
import dataclasses
import functools
import os
import sys

import numpy as np

from covid19xray import spreadsheet
from covid19xray.cli import (
    ArgumentParser,
    UserError,
    capture_stderr_fd,
    cli,
    first_line,
    import_tensorflow,
    one_line,
    positive,
    shown,
    warn_if_not_utf8,
)
from covid19xray.config import MODEL_FILE, PRECISION, PRECISIONS, Config, add_flags, flag
from covid19xray.evaluation import report_on
from covid19xray.export import export_saved_model, export_tflite, with_recalibration
from covid19xray.external_set import sources_of
from covid19xray.images import damage_warning, list_images, read_bytes, save_image, skip_warning
from covid19xray.input_check import OK, REJECTED, UNLIKE_TRAINING
from covid19xray.layout import is_mask, label_of
from covid19xray.manifest import MANIFEST
from covid19xray.prediction import (
    classify,
    csv_header,
    csv_row,
    decoded_again,
    load_model,
    make_classifier,
    overlay,
    prediction_line,
)
from covid19xray.preflight import (
    check_new_folder,
    check_not_inside_input_folders,
    check_output_folder,
    check_output_path,
)
from covid19xray.progress import progress, say
from covid19xray.report import (
    by_source,
    input_check_report,
    print_by_source,
    print_input_check_report,
    versions,
    write_json,
)
from covid19xray.writing import (
    Background,
    commit_outputs,
    missing_folders,
    remove_empty_folders,
)

# Images per forward pass: on a CPU, VGG16 computes no faster in larger batches, and only this
# many decoded images (and their Grad-CAM maps) are held at once, whatever the number of files.
PREDICT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictConfig(Config):
    """Everything this run is told, built once from the flags (`parse_args`): each field is its
    flag, with its default and help (`config.flag`)."""

    images: tuple = flag((), positional=True, nargs="*", metavar="IMAGE_OR_FOLDER", help=(
        "X-ray image files, or folders searched for images recursively"))
    model: str = flag(MODEL_FILE, short="-m", help=(
        "model saved by train_covid19.py, .h5 or .keras"))
    csv: str | None = flag(None, help="also write file,predicted,p_<class>... to this CSV file")
    gradcam: str | None = flag(None, metavar="DIR", help=(
        "write <name>_gradcam.png per image into this folder: the X-ray at its own size with the "
        "Grad-CAM heatmap of the predicted class over it"))
    labelled: bool = flag(False, help=(
        "the images' folders name their true classes (folders laid out as train_covid19.py's "
        "--dataset): after the predictions, print the training script's test report on them"))
    classify_rejected: bool = flag(False, help=(
        "classify the images the input check rejects too, as predictions were made before the "
        "check existed; their lines and CSV rows still say rejected"))
    report: str | None = flag(None, metavar="JSON", help=(
        "with --labelled, also write that report to this JSON file"))
    batch_size: int = flag(PREDICT_BATCH_SIZE, type=positive(int), help=(
        "images per forward pass"))
    precision: str = flag(PRECISION, choices=PRECISIONS, help=(
        "what the network computes in; the softmax stays float32"))
    export: str | None = flag(None, metavar="DIR", help=(
        "also write the model as a TensorFlow SavedModel into this new folder: serve(images) "
        "takes (n, 224, 224, 3) RGB floats in [0, 1] and returns the class probabilities "
        "(float32, whatever --precision says)"))
    tflite: str | None = flag(None, metavar="FILE", help=(
        "also write the model as a TensorFlow Lite file (.tflite), with the same input and "
        "output"))

    def __post_init__(self):
        object.__setattr__(self, "images", tuple(self.images))  # frozen all the way


def parse_args(argv=None):
    """Returns a `PredictConfig`."""
    ap = ArgumentParser(description="Classify chest X-rays with a model train_covid19.py "
                                    "saved. For education only.")
    add_flags(ap, PredictConfig)
    args = ap.parse_args(argv)
    if not (args.images or args.export or args.tflite):
        ap.error("give the images to predict, or --export or --tflite to export the model")
    for name, given in [("--csv", args.csv), ("--gradcam", args.gradcam),
                        ("--labelled", args.labelled)]:
        if given and not args.images:
            ap.error(f"{name} needs the images to predict")
    return PredictConfig.from_flags(args)


# ---------------------------------------------------------------------------------------------
# Find, load and classify the images, a batch at a time
# ---------------------------------------------------------------------------------------------


def find_images(items):
    """The image files named, and those under the folders named, in the order given; never
    the lung masks of the Radiography Database's layout."""
    image_paths = []
    for item in items:
        if os.path.isdir(item):
            image_paths.extend(path for path in list_images(item) if not is_mask(path))
        elif os.path.isfile(item):
            image_paths.append(item)
        else:
            raise UserError(f"{shown(item)!r}: no such file or folder")
    return image_paths


def gradcam_name(path, used):
    """`<stem>_gradcam.png`, made unique among the names `used` in this run."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = f"{stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_gradcam.png"
    used.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def true_class_of(image_paths, class_names):
    """With --labelled: each image's class index, from the name of its folder; a `UserError`
    naming the first image whose folder is not one of the model's classes."""
    indices = []
    for path in image_paths:
        label = label_of(path)
        if label not in class_names:
            raise UserError(f"--labelled: {shown(path)!r} is in a folder named {label!r}, which "
                            f"is not a class of the model ({', '.join(class_names)}); lay the "
                            "images out as train_covid19.py's --dataset")
        indices.append(class_names.index(label))
    return dict(zip(image_paths, indices))


def labelled_report(config, class_names, done, truth, input_check):
    """The training script's test report on every labelled image that could be read, those
    the input check rejected included, then what the check said of them."""
    paths, probabilities = done.paths, np.asarray(done.probabilities)
    print(f"[INFO] {len(paths)} labelled images: the model's report on them (every one, "
          "whatever the input check said)")
    true_classes = np.array([truth[path] for path in paths])
    results = report_on(true_classes, probabilities, class_names)
    # split by source when a folder given has a manifest (external/ does)
    folder = next((item for item in config.images if os.path.isdir(item)
                   and os.path.isfile(os.path.join(item, MANIFEST))), None)
    sources = None if folder is None else sources_of(folder, paths)
    results_by_source = by_source(sources, true_classes, probabilities, class_names)
    print_by_source(results_by_source, folder, class_names)
    screened = None
    if input_check is not None:
        screened = input_check_report(done.outcomes, true_classes, probabilities, class_names,
                                      sources)
        print_input_check_report(screened, class_names)
    return {"model": config.model, "inputs": list(config.images), "files": paths,
            "counts": {name: int((true_classes == i).sum()) for i, name in enumerate(class_names)},
            "class_names": class_names, **results, "by_source": results_by_source,
            "input_check": screened, "versions": versions()}


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """What this run will write (`plan_outputs`), all renamed into place together at its end."""

    files: list  # files and new folders: --csv, --report, --export, --tflite
    folders: list  # folders of files: --gradcam


def plan_outputs(config):
    """Every output checked before the slow work: none inside a folder predict reads images
    from (a --gradcam overlay there would be read as an X-ray next time, or trained on as a
    class of its own). Returns the `OutputPlan`."""
    if config.report and not config.labelled:
        raise UserError("--report needs --labelled: without true classes there is no report")
    input_folders = [("the image folder", item) for item in config.images
                     if os.path.isdir(item)]
    for name, path in [("--csv", config.csv), ("--report", config.report),
                       ("--gradcam", config.gradcam), ("--export", config.export),
                       ("--tflite", config.tflite)]:
        if path:
            check_not_inside_input_folders(path, name, input_folders)
    if config.csv:
        check_output_path(config.csv, "--csv", suffix=".csv")
    if config.report:
        check_output_path(config.report, "--report", suffix=".json")
    if config.gradcam:
        check_output_folder(config.gradcam, "--gradcam")
    if config.export:
        check_new_folder(config.export, "--export")
    if config.tflite:
        check_output_path(config.tflite, "--tflite", suffix=".tflite")
    return OutputPlan([path for path in (config.csv, config.report, config.export, config.tflite)
                       if path],
                      [config.gradcam] if config.gradcam else [])


def export_model(config, commit, model, class_names, input_check):
    """Write the float32 model as a SavedModel and a TensorFlow Lite file, each to its
    temporary name in `commit`; TensorFlow's converters print their C++ lines only if they
    fail."""
    failure = None
    with capture_stderr_fd() as converter_lines:
        try:
            if config.export:
                export_saved_model(model, commit.temporary(config.export), class_names, input_check)
            if config.tflite:
                export_tflite(model, commit.temporary(config.tflite), input_check)
        except OSError:  # a full disk: the one line `cli` prints
            raise
        except Exception as err:  # the converters raise many types
            failure = first_line(err)
    if failure is not None:
        said = one_line(converter_lines.text)[:300] or "nothing more"
        raise UserError(f"cannot export --model {config.model!r}: {failure} (TensorFlow said: "
                        f"{said})")


@dataclasses.dataclass
class Predictions:
    """What `predict_every_image` did: images read and overlays written, the check's counts,
    and with --labelled each image's path, probabilities and outcome."""

    predicted: int = 0
    overlays: int = 0
    outcome_counts: dict = dataclasses.field(default_factory=lambda: {
        OK: 0, UNLIKE_TRAINING: 0, REJECTED: 0})
    paths: list = dataclasses.field(default_factory=list)
    probabilities: list = dataclasses.field(default_factory=list)
    outcomes: list = dataclasses.field(default_factory=list)  # each kept image's, in order

    def count(self, outcome):
        self.predicted += 1
        if outcome is not None:
            self.outcome_counts[outcome] += 1

    def keep(self, path, row, outcome):
        self.paths.append(path)
        self.probabilities.append(row)
        self.outcomes.append(outcome)

    def check_line(self):
        """`[INFO] input check: 3 of 40 images rejected, 5 unlike the training images`."""
        return (f"[INFO] input check: {self.outcome_counts[REJECTED]} of {self.predicted} "
                f"images rejected, {self.outcome_counts[UNLIKE_TRAINING]} unlike the training "
                "images")


def predict_every_image(config, commit, classifier, image_paths):
    """Predict and check every image a batch at a time (`prediction.classify`): print a line
    each, and write its CSV row and Grad-CAM overlay to `commit`'s temporary files (no overlay
    for an image the check rejected, unless --classify-rejected). Returns the `Predictions`:
    counts, and with --labelled the paths read, their probabilities and the check's outcomes
    (kept only for the report: without it, memory does not grow with the number of images)."""
    class_names, input_check = classifier.class_names, classifier.input_check
    done = Predictions()
    with contextlib.ExitStack() as stack:
        writer = None
        if config.csv:
            # the real file name, also when it is not UTF-8: its bytes go into the CSV as they are
            f = stack.enter_context(open(commit.temporary(config.csv), "w", newline="",
                                         encoding="utf-8", errors="surrogateescape"))
            writer = spreadsheet.Writer(f)  # a name a spreadsheet would run stays text
            writer.writerow(csv_header(class_names))
        if config.gradcam:
            os.makedirs(config.gradcam, exist_ok=True)
            used = set()
            overlays = stack.enter_context(Background())
        films = [(path, functools.partial(read_bytes, path)) for path in image_paths]
        with progress(len(image_paths), "predicting") as bar:
            for film in classify(classifier, films, config.batch_size, bool(config.gradcam),
                                 on_read=lambda: bar.update(1)):
                path, row = film.name, film.probabilities
                if film.error is not None:
                    say(skip_warning(path, film.error, film.decoder_said), file=sys.stderr)
                    continue
                if film.damage:
                    say(damage_warning(path, film.damage), file=sys.stderr)
                say(prediction_line(path, row, class_names, film.outcome, film.distance,
                                    input_check, film.classified))
                done.count(film.outcome)
                if config.labelled:
                    done.keep(path, row, film.outcome)
                if writer:
                    writer.writerow(csv_row(path, row, class_names, film.outcome, film.distance,
                                            film.classified))
                if film.heatmap is not None:
                    final = os.path.join(config.gradcam, gradcam_name(path, used))
                    # decoded here: the decoders' messages are caught on the process's stderr
                    overlays.submit(write_overlay, commit.temporary(final),
                                    decoded_again(film.read), film.heatmap)
                    done.overlays += 1
    if not done.predicted:
        raise UserError("none of the given images could be read")
    return done


def write_overlay(path, image, heatmap):
    save_image(path, overlay(image, heatmap))


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    plan = plan_outputs(config)
    # the images named, and those in the folders named
    image_paths = find_images(config.images)
    warn_if_not_utf8(image_paths)
    if config.images and not image_paths:
        raise UserError(f"no images in {', '.join(shown(item) for item in config.images)}")
    # load the model, its class names and its input check
    import_tensorflow()
    loaded = load_model(config.model, bool(config.gradcam), config.precision)
    model, class_names, input_check = loaded.model, loaded.class_names, loaded.input_check
    truth = true_class_of(image_paths, class_names) if config.labelled else None
    # the check's fit to the network is checked here, before any output is begun
    classifier = (make_classifier(config.model, loaded, config.precision, bool(config.gradcam),
                                  config.classify_rejected) if image_paths else None)

    # every output is written to its temporary file, and all are renamed into place together
    # at the end: a full disk or Ctrl-C half-way leaves the earlier ones, and no temporary file;
    # nor the --gradcam folder (and its parents) if this run made them
    made = missing_folders(config.gradcam) if config.gradcam else []
    try:
        with commit_outputs(*plan.files, folders=plan.folders) as commit:
            if config.export or config.tflite:
                export_model(config, commit, model if loaded.recalibration is None
                             else with_recalibration(model, loaded.recalibration),
                             class_names, input_check)
            done = Predictions()  # none with --export or --tflite alone
            if image_paths:
                done = predict_every_image(config, commit, classifier, image_paths)
                if input_check is not None:
                    print(done.check_line())
            if config.labelled:
                report = labelled_report(config, class_names, done, truth, input_check)
                if config.report:
                    write_json(commit.temporary(config.report), report)
    except BaseException:
        remove_empty_folders(made)
        raise
    if config.report:
        print(f"[INFO] wrote {shown(config.report)}")
    if config.csv:
        print(f"[INFO] wrote {shown(config.csv)}")
    if config.gradcam:
        print(f"[INFO] wrote {done.overlays} Grad-CAM overlay(s) to {shown(config.gradcam)}")
    endpoints = "" if input_check is None else "; serve_checked(images) adds the input check"
    if config.export:
        print(f"[INFO] wrote {shown(config.export)} (TensorFlow SavedModel: serve(images) -> "
              f"probabilities of {', '.join(class_names)}{endpoints})")
    if config.tflite:
        print(f"[INFO] wrote {shown(config.tflite)} (TensorFlow Lite, the same input and "
              + ("output)" if input_check is None else
                 "outputs: probabilities, input_distance, input_check)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
