"""Fine-tune a frozen VGG16 to tell COVID-19 chest X-rays from normal ones.

The training script of "Detecting COVID-19 in X-ray images with Keras, TensorFlow, and Deep
Learning" (Adrian Rosebrock, PyImageSearch, March 2020), step for step on Keras 3: load the
images, one-hot encode, split 80/20, augment, build VGG16 with the tutorial's head, compile,
train, evaluate, plot, save. For education only: not a medical device, not a diagnosis.

Usage:
    python train_covid19.py --dataset dataset
    python train_covid19.py --dataset dataset                     # again: in seconds, same numbers
    python train_covid19.py --dataset dataset --cache-features    # no augmentation, much faster
    python train_covid19.py --dataset dataset --precision bfloat16  # on CPUs with bfloat16
    python train_covid19.py --dataset dataset --external external  # and test it elsewhere
    python train_covid19.py --dataset dataset --model covid19.keras  # Keras's own format

`--dataset` holds one folder of images per class; the folder name is the label. Writes the model
(HDF5 as the tutorial, or `.keras`; with its class names), the loss/accuracy plot, `roc.png`
beside it and `report.json`, and prints the tutorial's report with a 95% interval after each
number. Only the head learns, so the frozen VGG16 is part of the input pipeline and never
computes the same thing twice (`covid19xray.frozen`): every feature it computes is kept in the
feature cache (`--cache-dir`; `--no-cache` keeps none), and a rerun with the same images,
weights and seed reads them back instead of computing them.
"""

import contextlib
import dataclasses
import os
import sys

import numpy as np

from covid19xray.cache import cache_line
from covid19xray.cli import ArgumentParser, UserError, cli, shown
from covid19xray.config import MODEL_FILE, RunConfig, add_flags, flag
from covid19xray.cost import estimate_cost
from covid19xray.evaluation import report_on, test_on_external
from covid19xray.external_set import check_external_folders
from covid19xray.extractor import Extractor, make_extractors
from covid19xray.head import (
    balanced_class_weights,
    compile_head,
    epoch_batches,
    fit_head,
    head_probabilities,
    keras_verbosity,
    make_head,
    training_batches,
)
from covid19xray.input_check import fit_input_check
from covid19xray.layout import load_dataset
from covid19xray.manifest import MANIFEST
from covid19xray.model import build_model, load_vgg16
from covid19xray.model_file import MODEL_SUFFIXES, save_model
from covid19xray.plots import plot_calibration, plot_history, plot_roc, save_figure
from covid19xray.preflight import check_paths
from covid19xray.report import (
    counts_per_class,
    run_facts,
    write_json,
)
from covid19xray.splits import (
    check_batch_size,
    encode_labels,
    holdout_split,
    patients_of,
    positive_class,
    require_patients,
    warn_shared_patients,
)
from covid19xray.transforms import UNCHANGED, Rotation
from covid19xray.writing import commit_outputs, file_digest


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Everything this run is told, built once from the flags (`parse_args`): each field is its
    flag, with its default and help (`config.flag`)."""

    plot: str = flag("plot.png", short="-p", help=(
        "path to output loss/accuracy plot, PNG; roc.png is written beside it"))
    model: str = flag(MODEL_FILE, short="-m", help=(
        "path to output model: HDF5 as the tutorial (.h5), or Keras's own format (.keras)"))
    report: str = flag("report.json", short="-r", help=(
        "path to output JSON report: counts, test files, confusion matrix, metrics with 95%% "
        "intervals, ROC AUC, flags, versions"))
    split_by: str = flag("random", option="--split", choices=["random", "patient"], help=(
        "random: the tutorial's stratified 80/20 split of images; patient: every patient's "
        f"images on one side, from --dataset's {MANIFEST}"))
    external_folders: tuple = flag((), option="--external", metavar="DIR", help=(
        "after training, test the model on this labelled folder from another source (one "
        "folder per class, as --dataset), with the same report; repeatable"))
    cache_features: bool = flag(False, help=(
        "no augmentation: every image passes through VGG16 once, not once per epoch, and the "
        "head trains on the same features every epoch (much faster on a first run; the saved "
        "model is the same whole network)"))
    positive: str | None = flag(None, metavar="CLASS", help=(
        "with two classes, the class whose recall is the sensitivity, and whose probability the "
        "ROC curve ranks by (default: the first in sorted order, covid of covid/normal)"))
    class_weight: str | None = flag(None, choices=["balanced"], help=(
        "balanced: weigh each training image's loss by how rare its class is (images / "
        "(classes x images of its class), scikit-learn's 'balanced'), so that the smallest "
        "class counts as much as the largest; recorded in report.json"))

    def __post_init__(self):
        # frozen all the way
        object.__setattr__(self, "external_folders", tuple(self.external_folders))

    @property
    def roc(self):
        """roc.png, in the plot's folder."""
        return os.path.join(os.path.dirname(self.plot), "roc.png")

    @property
    def calibration(self):
        """calibration.png, the reliability diagram, in the plot's folder."""
        return os.path.join(os.path.dirname(self.plot), "calibration.png")

    def input_folders(self):
        """The folders this run reads images from: (flag, folder)."""
        return [("--dataset", self.dataset),
                *[("--external", folder) for folder in self.external_folders]]

    def outputs(self):
        """The four outputs, in the order they are written: (path, flag, suffix)."""
        return [(self.model, "--model", MODEL_SUFFIXES), (self.plot, "--plot", ".png"),
                (self.report, "--report", ".json"), (self.roc, "--plot", ".png"),
                (self.calibration, "--plot", ".png")]


def parse_args(argv=None):
    """The tutorial's three arguments, and flags for what it hard-coded: its INIT_LR, EPOCHS
    and BS are --lr, --epochs and --batch-size, whose defaults (1e-3, 25, 8) covid19xray.config
    keeps, so that audit_covid19.py trains its heads the same way. Returns a `TrainConfig`."""
    ap = ArgumentParser(description="Fine-tune a frozen VGG16 on chest X-rays "
                                    "(COVID-19 vs normal). For education only.")
    add_flags(ap, TrainConfig)
    return TrainConfig.from_flags(ap.parse_args(argv))


# ---------------------------------------------------------------------------------------------
# The tutorial's steps
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """The images split 80/20 (`split_dataset`), in the tutorial's names."""

    trainP: list  # the training images' paths
    testP: list  # the test images' paths
    trainY: np.ndarray  # their one-hot labels
    testY: np.ndarray
    class_names: list  # sorted: covid is 0, normal 1
    positive: int  # with two classes, the positive class's index (--positive; else 0)
    patients_on_both_sides: int | None  # None when --dataset has no manifest
    digests: dict  # {SHA-256: path} of every image of --dataset: copies elsewhere are refused


def split_dataset(config, images, paths, labels):
    """One-hot encode the labels, then partition the data into training and testing splits
    using 80% of the data for training and the remaining 20% for testing (random: the
    tutorial's split; patient: every patient on one side). Takes what `load_dataset` returns."""
    onehot, class_names = encode_labels(labels)
    patients = patients_of(config.dataset, paths)
    if config.split_by == "patient":
        require_patients(config.dataset, patients)
    trainP, testP, trainY, testY = holdout_split(paths, onehot, class_names, config.split_by,
                                                 config.seed, patients)
    shared = warn_shared_patients(trainP, testP, paths, patients)
    print(f"[INFO] {len(paths)} images, classes {class_names}: "
          f"{len(trainP)} for training, {len(testP)} for testing")
    return Split(trainP, testP, trainY, testY, class_names,
                 positive_class(config.positive, class_names), shared,
                 {images.digest(path): path for path in paths})


@dataclasses.dataclass(frozen=True)
class Extractors:
    """The frozen base, as this run uses it (`frozen_base`)."""

    unchanged: Extractor  # the features of images as they are: the test split, --cache-features
    rotated: Extractor | None  # of training images rotated anew each epoch (None: no augmenting)
    whole: Extractor  # features and descriptions (the input check's) from one pass of each image
    caches: list  # the feature caches they read and fill ([] with --no-cache)


def frozen_base(config, model):
    """Only the head learns, so the frozen base is part of the input pipeline, and what it
    computes depends on the image alone: it is computed once and kept in the feature cache
    (`covid19xray.frozen`). An image that needs both its features and its description for the
    input check (every one with --cache-features, the external ones) passes through VGG16
    once for both. Every cache is made, and its folders checked, here, before any image passes
    through VGG16."""
    if config.cache_features:
        whole, _ = make_extractors(config, model)
        unchanged, rotated = whole, None
    else:
        whole, (unchanged, rotated) = make_extractors(config, model,
                                                      [UNCHANGED, Rotation(seed=config.seed)])
    # with --cache-features, `unchanged` is `whole`: its caches counted once
    used = [unchanged] + ([rotated] if rotated is not None else []) + (
        [whole] if whole is not unchanged else [])
    return Extractors(unchanged, rotated, whole,
                      [cache for extractor in used for cache in extractor.caches])


@dataclasses.dataclass(frozen=True)
class TestSplit:
    """The test split: its images, their one-hot labels and their features (`test_split`)."""

    testP: list
    testY: np.ndarray
    testF: np.ndarray  # the frozen base's features of each test image, as it is


def compute_test_features(extractors, images, split):
    """The test images' features. Test images are never augmented: their features are the
    same every epoch, computed once."""
    return TestSplit(split.testP, split.testY,
                     extractors.unchanged.features(images, split.testP))


@dataclasses.dataclass(frozen=True)
class TrainingFeatures:
    """The training images' features (`augment`), every epoch's."""

    trainF: np.ndarray  # (epochs, images, features): one epoch when not augmented
    augmented: bool  # whether each epoch holds its own rotation of every image


def augment(config, extractors, images, trainP):
    """Construct the training data augmentation: the tutorial's
    `ImageDataGenerator(rotation_range=15, fill_mode="nearest")` rotated each training image
    by a random angle anew every epoch. Here `Rotation` draws that angle from the seed, the
    epoch and the image alone, so that a rerun finds every rotated image's features in the
    cache: each training image passes through VGG16 once per epoch, on the first run. With
    --cache-features, once, not rotated."""
    if extractors.rotated is None:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        return TrainingFeatures(extractors.unchanged.features(images, trainP)[None], False)
    return TrainingFeatures(
        extractors.rotated.outputs_per_epoch(images, trainP, config.epochs)[0], True)


@dataclasses.dataclass(frozen=True)
class Batches:
    """What the head trains on (`batch`)."""

    batches: object  # a tf.data.Dataset of (features, one-hot labels), every epoch's
    steps: int  # whole batches an epoch, as the tutorial: len(trainP) // batch size
    class_weight: dict | None  # {class index: weight of its images' loss} (--class-weight)


def batch(config, training, trainY):
    """The training features in shuffled batches of --batch-size (`covid19xray.head`): each
    epoch its own rotations, or the same features reshuffled (--cache-features); with
    --class-weight balanced, each class's weight."""
    if training.augmented:
        batches = epoch_batches(training.trainF, trainY, config.batch_size, config.seed)
    else:
        batches = training_batches(training.trainF[0], trainY, config.batch_size, config.seed)
    weights = None if config.class_weight is None else balanced_class_weights(trainY)
    return Batches(batches, len(trainY) // config.batch_size, weights)


def describe_training_images(extractors, images, trainP):
    """Each training image's description for the input check (`covid19xray.description`):
    the whole image, as it is, through the whole frozen VGG16."""
    return extractors.whole.outputs(images, trainP)[1]


def fit_the_input_check(config, descriptions):
    """Fit the input check on the training images' `descriptions`
    (`covid19xray.input_check`): saved in the model file, it tells predict_covid19.py which
    images look like none the model knows."""
    input_check = fit_input_check(descriptions, config.seed)
    print(f"[INFO] input check fitted on {input_check.fitted_on} training images: "
          f"unlike_training beyond {input_check.unlike_factor:g}, rejected beyond "
          f"{input_check.reject_factor:g} times the median distance of a training image to its "
          "nearest other")
    return input_check


def train(config, head, batches, test):
    """Compile the head as the tutorial compiled its model and train it on the training
    `batches`, validating on the `test` split's features after every epoch."""
    print("[INFO] compiling model...")
    compile_head(head, test.testY.shape[1], config.lr, config.epochs)
    print("[INFO] training head...")
    return fit_head(head, batches.batches, batches.steps, config.epochs,
                    validation=(test.testF, test.testY), batch_size=config.batch_size,
                    verbose=keras_verbosity(), class_weight=batches.class_weight)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The test split's report (`evaluate`), and what the ROC plot draws."""

    results: dict  # the report's metrics, each with its 95% interval, and the ROC AUC
    probabilities: np.ndarray  # the model's, one row per test image
    true_classes: np.ndarray  # each test image's true class


def evaluate(head, test, class_names, positive=0, seed=0):
    """Make predictions on the testing set and show the tutorial's report: classification
    report, confusion matrix, accuracy, sensitivity and specificity, each with its 95%
    interval (5 of 5 covid images support a sensitivity anywhere from 0.57 to 1), and the ROC
    AUC. The head on the test features predicts what the whole model predicts on the images."""
    print("[INFO] evaluating network...")
    probabilities = head_probabilities(head, test.testF)
    if not np.isfinite(probabilities).all():
        raise UserError("the trained model's probabilities are not finite numbers (training "
                        "diverged); nothing was written; try a lower --lr")
    true_classes = test.testY.argmax(axis=1)
    results = report_on(true_classes, probabilities, class_names, positive, seed)
    return Evaluation(results, probabilities, true_classes)


def training_report(config, split, evaluation, input_check, external_reports, batches):
    """Everything needed to judge, and to repeat, this run (`report.json`)."""
    return {
        "class_names": split.class_names,
        "counts": {"train": counts_per_class(split.trainY, split.class_names),
                   "test": counts_per_class(split.testY, split.class_names)},
        "split": {"kind": config.split_by,
                  "patients_on_both_sides": split.patients_on_both_sides},
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, config.dataset) for path in split.testP],
        "augmentation": ("off (--cache-features)" if config.cache_features
                         else Rotation(seed=config.seed).summary),
        "precision": config.precision,
        "class_weight": (None if batches.class_weight is None else
                         {split.class_names[c]: w for c, w in batches.class_weight.items()}),
        **evaluation.results,
        "input_check": input_check.summary(),
        **run_facts(config),
        **({"external": external_reports} if external_reports else {}),
    }


def save_outputs(config, commit, model, split, input_check, H, evaluation, external_tests,
                 report):
    """Plot the training loss and accuracy and the ROC curve, serialize the model and the
    `report`, each to its temporary file in `commit`: renamed into place together when main's
    block ends, so that a crash, Ctrl-C or SIGTERM anywhere before leaves the earlier files as
    they were. The report, renamed last, adds the SHA-256 of the other three: a set of outputs
    can always be checked for coming from one run (docs/troubleshooting.md)."""
    print("[INFO] saving COVID-19 detector model...")
    with commit.writing():
        final = {"model": config.model, "plot": config.plot, "roc": config.roc,
                 "calibration": config.calibration, "report": config.report}
        temporary = {role: commit.temporary(path) for role, path in final.items()}
        save_model(model, temporary["model"], split.class_names, input_check)
        save_figure(plot_history(H.history), temporary["plot"])
        save_figure(plot_roc(evaluation.true_classes, evaluation.probabilities,
                             split.class_names, split.positive), temporary["roc"])
        sets = {"test split": (evaluation.true_classes, evaluation.probabilities),
                **{os.path.basename(os.path.normpath(folder)) or folder:
                   (t.true_classes, t.probabilities) for folder, t in external_tests.items()}}
        save_figure(plot_calibration(sets, split.class_names, split.positive),
                    temporary["calibration"])
        folder = os.path.dirname(os.path.abspath(config.report))
        written = {role: {"file": os.path.relpath(os.path.abspath(final[role]), folder),
                          "sha256": file_digest(temporary[role])}
                   for role in ("model", "plot", "roc", "calibration")}
        write_json(temporary["report"], {**report, "outputs": written})


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    # every path checked before minutes of training
    outputs = check_paths(config.input_folders(), config.outputs(), config.cache_folder)
    # a second run writing the same files stops here; the outputs replace the earlier ones
    # only when everything is written
    with commit_outputs(*outputs) as commit:
        # seed everything, then load VGG16 first: a wrong --weights fails in seconds
        baseModel = load_vgg16(config.weights, config.seed, config.precision)

        # grab the images in the dataset folder, each decoded once; an image's label is the
        # name of its folder
        print("[INFO] loading images...")
        images, paths, labels = load_dataset(config.dataset)
        with contextlib.closing(images):
            # one-hot encode the labels and split the images 80/20
            split = split_dataset(config, images, paths, labels)
            check_batch_size(config.batch_size, split.trainP)
            check_external_folders(config.dataset, config.external_folders, split.class_names)

            # place the tutorial's head on the frozen base; `head` is that head on its own
            model = build_model(baseModel, len(split.class_names))
            head = make_head(model)

            # the frozen base, part of the input pipeline: its features kept in the cache
            extractors = frozen_base(config, model)
            # what that will cost, before it starts
            estimate_cost(extractors, images, split, config.epochs)
            # the test images' features, never augmented
            test = compute_test_features(extractors, images, split)
            # augment the training images, then batch them for the head
            training = augment(config, extractors, images, split.trainP)
            batches = batch(config, training, split.trainY)
            # what predict_covid19.py will check every image against: the training images
            descriptions = describe_training_images(extractors, images, split.trainP)
            input_check = fit_the_input_check(config, descriptions)
            if extractors.caches:
                print(cache_line(extractors.caches))

            # compile and train the head
            H = train(config, head, batches, test)

        # make predictions on the testing set and show the report
        evaluation = evaluate(head, test, split.class_names, split.positive, config.seed)
        if config.cache_features:
            print("(trained with --cache-features: no augmentation)")
        if config.precision != "float32":
            print(f"(frozen VGG16 computed in {config.precision}; head, loss and model in "
                  "float32)")
        external_tests = {folder: test_on_external(folder, config.dataset, config.seed, head,
                                                   extractors, split, input_check)
                          for folder in config.external_folders}
        external_reports = {folder: t.report for folder, t in external_tests.items()}

        # plot the training loss and accuracy, and serialize the model and the report
        report = training_report(config, split, evaluation, input_check, external_reports,
                                 batches)
        save_outputs(config, commit, model, split, input_check, H, evaluation, external_tests,
                     report)
    model_path, plot, report_path, roc, calibration_plot = (shown(path) for path in outputs)
    print(f"[INFO] wrote {model_path} (model), {plot}, {roc} and {calibration_plot} (plots), "
          f"{report_path} (report)")
    print("[INFO] does it read the lungs or the image source? python audit_covid19.py "
          f"--dataset {shown(config.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
