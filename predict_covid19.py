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
import os
import sys

import cv2
import numpy as np

from covid19xray import spreadsheet
from covid19xray.calibration import calibration, print_calibration
from covid19xray.checks import (
    check_new_folder,
    check_not_inside_input_folders,
    check_output_folder,
    check_output_path,
)
from covid19xray.cli import (
    ArgumentParser,
    UserError,
    capture_stderr_fd,
    cli,
    first_line,
    import_tensorflow,
    lazy_import,
    one_line,
    positive,
    shown,
    warn_if_not_utf8,
)
from covid19xray.config import MODEL_FILE, PRECISION, PRECISIONS, Config, add_flags, flag
from covid19xray.export import export_saved_model, export_tflite, with_recalibration
from covid19xray.external import by_source, print_by_source, sources_of
from covid19xray.frozen import (
    layers_missing_for_description,
    model_with_description,
    model_with_precision,
)
from covid19xray.images import (
    damage_warning,
    decode,
    list_images,
    read_bytes,
    save_image,
    scale_pixels,
    skip_warning,
    try_load_xray,
    with_decoder_messages,
)
from covid19xray.input_check import OK, REJECTED, UNLIKE_TRAINING
from covid19xray.layout import is_mask, label_of
from covid19xray.manifest import MANIFEST
from covid19xray.model import check_precision, compiled
from covid19xray.model_file import read_model_file
from covid19xray.outputs import commit_outputs, missing_folders, remove_empty_folders
from covid19xray.progress import progress, say
from covid19xray.report import classification_metrics, print_evaluation, versions, write_json
from covid19xray.screening import print_screening, screening

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# How strongly the heatmap shows over the X-ray (keras-io's example uses 0.4).
HEATMAP_ALPHA = 0.4
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


def read_in_batches(image_paths, batch_size, bar):
    """(paths, uint8 images) of the usable files, `batch_size` at a time, in order; the others
    are reported on stderr and skipped. `bar` (a progress bar) counts every file read."""
    paths, images = [], []
    for path in image_paths:
        [((image, reason), message)] = with_decoder_messages(try_load_xray, [path])
        if image is None:
            say(skip_warning(path, reason, message), file=sys.stderr)
        else:
            if message:
                say(damage_warning(path, message), file=sys.stderr)
            images.append(image)
            paths.append(path)
        bar.update(1)
        if len(paths) == batch_size:
            yield paths, np.stack(images)
            paths, images = [], []
    if paths:
        yield paths, np.stack(images)


@dataclasses.dataclass(frozen=True)
class Classifier:
    """The model as predict runs it: the network, and with an input check, the same network
    with its second output (each image's description), so that one forward pass gives both."""

    model: object
    input_check: object = None  # an `input_check.InputCheck`, or None for a model without one
    described: object = None  # the network with each image's description as a second output
    recalibration: object = None  # a `calibration.Recalibration` the model file carries
    forward: object = None  # the network predict runs (`described`, or `model`), compiled

    def outcome(self, distance):
        return None if self.input_check is None else self.input_check.outcomes([distance])[0]


def predict(classifier, images):
    """Class probabilities for uint8 images, preprocessed exactly as in training, and each
    image's distance to the training images (None without an input check), from one forward
    pass."""
    outputs = classifier.forward(scale_pixels(images))
    if classifier.input_check is None:
        probabilities, distances = outputs, [None] * len(images)
    else:
        probabilities, descriptions = outputs
        distances = classifier.input_check.distances(np.asarray(descriptions))
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if classifier.recalibration is not None:  # the new site's probabilities
        probabilities = classifier.recalibration.apply(probabilities)
    return probabilities, distances


def make_classifier(config, model, input_check, recalibration=None):
    """`model` in --precision, with its input check built into its graph; a check that does
    not fit the model is one line, before any image is read."""
    model = model_with_precision(model, config.precision)
    if input_check is None:
        return Classifier(model, recalibration=recalibration, forward=compiled(model))
    missing = layers_missing_for_description(model)
    if missing:
        raise UserError(f"--model {config.model!r} has an input check but no layer "
                        f"{', '.join(missing)} for it to read; use a model train_covid19.py "
                        "saved as it is")
    described = model_with_description(model)
    size = described.outputs[1].shape[-1]
    if size != input_check.reference.shape[1]:
        raise UserError(f"--model {config.model!r}: its input check describes images with "
                        f"{input_check.reference.shape[1]} numbers, its network with {size}; "
                        "use a model train_covid19.py saved as it is")
    return Classifier(model, input_check, described, recalibration, compiled(described))


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


def last_conv_layer(model):
    """The model's last convolutional layer, or None (a model not shaped as the tutorial's)."""
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return convolutions[-1] if convolutions else None


def gradcam_model(model):
    """`model` with two outputs: the last convolutional layer's output, and the class scores
    before the softmax (the logits); build it once.

    The last layer is the tutorial's `Dense(2, activation="softmax")`; its input, times its
    kernel, plus its bias, is the score of each class. Grad-CAM differentiates that score, not
    the softmax's probability (Selvaraju et al. 2017; keras-io's example): the probability's
    gradient is the score's times p(1 - p), which vanishes as the model grows sure, and for two
    classes it mixes in the other class's score.
    """
    last = model.layers[-1]
    # in float32, as the softmax layer computes (also under --precision bfloat16)
    logits = keras.ops.matmul(keras.ops.cast(last.input, "float32"), last.kernel) + last.bias
    return keras.Model(model.inputs, [last_conv_layer(model).output, logits])


def grad_cam(grad_model, image, class_index):
    """Grad-CAM heatmap in [0, 1] of `class_index` for one uint8 image, at the conv map's size.

    The gradient of the class's score (before the softmax) with respect to the last
    convolutional layer's output, averaged over each channel, weights that channel; the
    weighted sum, with negatives clipped, shows where the evidence for the class is.
    """
    batch = scale_pixels(image[None])
    with tf.GradientTape() as tape:
        conv_output, scores = grad_model(batch, training=False)
        score = scores[:, class_index]
    conv_output = tf.cast(conv_output, tf.float32)
    grads = tf.cast(tape.gradient(score, conv_output), tf.float32)
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.nn.relu(tf.reduce_sum(conv_output[0] * weights, axis=-1)).numpy()
    peak = heatmap.max()
    return heatmap / peak if peak > 0 else heatmap  # all zero: no evidence anywhere


def overlay(path, heatmap):
    """The X-ray at `path`, at its own size, with `heatmap` in the jet colour map over it."""
    # decoded again at its own size; a damaged file's decoder lines were shown when it was read
    with capture_stderr_fd():
        image = decode(read_bytes(path))
    height, width = image.shape[:2]
    heat = cv2.resize(heatmap.astype(np.float32), (width, height))
    colored = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)
    return cv2.addWeighted(colored, HEATMAP_ALPHA, image, 1 - HEATMAP_ALPHA, 0)


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
    results = classification_metrics(true_classes, probabilities, class_names)
    print_evaluation(true_classes, probabilities, class_names, results)
    results["calibration"] = calibration(true_classes, probabilities, class_names)
    print_calibration(results["calibration"])
    # split by source when a folder given has a manifest (external/ does)
    folder = next((item for item in config.images if os.path.isdir(item)
                   and os.path.isfile(os.path.join(item, MANIFEST))), None)
    sources = None if folder is None else by_source(folder, paths, true_classes,
                                                    probabilities, class_names)
    print_by_source(sources, folder, class_names)
    screened = None
    if input_check is not None:
        screened = screening(done.outcomes, true_classes, probabilities, class_names,
                            None if folder is None else sources_of(folder, paths))
        print_screening(screened, class_names)
    return {"model": config.model, "inputs": list(config.images), "files": paths,
            "counts": {name: int((true_classes == i).sum()) for i, name in enumerate(class_names)},
            "class_names": class_names, **results, "by_source": sources,
            "input_check": screened, "versions": versions()}


def is_classified(outcome, config):
    """Whether an image gets a class: every one but those the check rejects, unless
    --classify-rejected."""
    return outcome != REJECTED or config.classify_rejected


def check_note(outcome, distance, input_check):
    """What a prediction line says of the input check: the outcome and why."""
    if outcome == OK:
        return f"[input ok: distance {distance:.2f} <= {input_check.unlike_factor:g}]"
    if outcome == UNLIKE_TRAINING:
        return (f"[input unlike_training: distance {distance:.2f} > {input_check.unlike_factor:g}: "
                "unlike every training image, trust this answer less]")
    return (f"[input rejected: distance {distance:.2f} > {input_check.reject_factor:g}: looks like "
            "no frontal chest X-ray the model knows]")


def prediction_line(path, row, class_names, outcome=None, distance=None, input_check=None,
                    classified=True):
    scores = ", ".join(f"{shown(name)} {p:.4f}" for name, p in zip(class_names, row))
    answer = (f"{shown(class_names[int(row.argmax())])} ({scores})" if classified
              else "not classified")
    line = f"{shown(path)}: {answer}"
    return line if outcome is None else f"{line} {check_note(outcome, distance, input_check)}"


def csv_row(path, row, class_names, outcome=None, distance=None, classified=True):
    cells = ([class_names[int(row.argmax())], *[f"{p:.6f}" for p in row]] if classified
             else [""] * (1 + len(class_names)))
    # a model without a check leaves its cells empty: the columns are the same for every model
    check_cells = ["", ""] if outcome is None else [outcome, f"{distance:.4f}"]
    return [path, *cells, *check_cells]


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


def load_model(config):
    """The saved model and what its file carries (`model_file.ModelFile`): its class names,
    its input check (None, said in one line, for a model trained before the check existed)
    and its recalibration."""
    import_tensorflow()
    model_file = read_model_file(config.model)
    if config.gradcam and last_conv_layer(model_file.model) is None:
        raise UserError(f"--gradcam: --model {config.model!r} has no convolutional layer, so "
                        "there is no map to draw; use a model train_covid19.py saved, or leave "
                        "out --gradcam")
    if model_file.input_check is None:
        print(f"[WARNING] --model {shown(config.model)} carries no input check (it was trained "
              "before train_covid19.py fitted one): every image is classified unchecked; "
              "retrain it to have its inputs checked", file=sys.stderr)
    if model_file.recalibration is not None:
        print(f"[INFO] --model {shown(config.model)}: probabilities "
              f"{shown(model_file.recalibration.summary())}")
    check_precision(config.precision)
    return model_file


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


def predict_every_image(config, commit, classifier, class_names, image_paths):
    """Predict and check every image a batch at a time: print a line each, and write its CSV
    row and Grad-CAM overlay to `commit`'s temporary files (no overlay for an image the check
    rejected, unless --classify-rejected). Returns the `Predictions`: counts, and with
    --labelled the paths read, their probabilities and the check's outcomes (kept only for the
    report: without it, memory does not grow with the number of images)."""
    done = Predictions()
    with contextlib.ExitStack() as stack:
        writer = None
        if config.csv:
            # the real file name, also when it is not UTF-8: its bytes go into the CSV as they are
            f = stack.enter_context(open(commit.temporary(config.csv), "w", newline="",
                                         encoding="utf-8", errors="surrogateescape"))
            writer = spreadsheet.Writer(f)  # a name a spreadsheet would run stays text
            writer.writerow(["file", "predicted", *[f"p_{name}" for name in class_names],
                             "input_check", "input_distance"])
        if config.gradcam:
            os.makedirs(config.gradcam, exist_ok=True)
            grad_model, used = gradcam_model(classifier.model), set()
        input_check = classifier.input_check
        with progress(len(image_paths), "predicting") as bar:
            for paths, images in read_in_batches(image_paths, config.batch_size, bar):
                probabilities, distances = predict(classifier, images)
                for path, image, row, distance in zip(paths, images, probabilities, distances):
                    outcome = classifier.outcome(distance)
                    classified = is_classified(outcome, config)
                    say(prediction_line(path, row, class_names, outcome, distance, input_check,
                                        classified))
                    done.count(outcome)
                    if config.labelled:
                        done.keep(path, row, outcome)
                    if writer:
                        writer.writerow(csv_row(path, row, class_names, outcome, distance,
                                                classified))
                    if config.gradcam and classified:
                        heatmap = grad_cam(grad_model, image, int(row.argmax()))
                        final = os.path.join(config.gradcam, gradcam_name(path, used))
                        save_image(commit.temporary(final), overlay(path, heatmap))
                        done.overlays += 1
    if not done.predicted:
        raise UserError("none of the given images could be read")
    return done


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
    loaded = load_model(config)
    model, class_names, input_check = loaded.model, loaded.class_names, loaded.input_check
    truth = true_class_of(image_paths, class_names) if config.labelled else None
    # the check's fit to the network is checked here, before any output is begun
    classifier = (make_classifier(config, model, input_check, loaded.recalibration)
                  if image_paths else None)

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
                done = predict_every_image(config, commit, classifier, class_names,
                                           image_paths)
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
