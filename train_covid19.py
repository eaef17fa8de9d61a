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
number. Only the head learns, so the frozen VGG16 never computes the same thing twice (see
`pipeline.head_inputs`): every feature it computes is kept in the feature cache
(`--cache-dir`; `--no-cache` keeps none), and a rerun with the same images, weights and seed
reads them back instead of computing them.
"""

import contextlib
import dataclasses
import os
import sys

import numpy as np

from covid19xray.cache import cache_line
from covid19xray.checks import check_paths
from covid19xray.cli import ArgumentParser, UserError, cli, shown
from covid19xray.config import RunConfig, add_flags, flag
from covid19xray.data import load_dataset
from covid19xray.external import check_classes, load_external, sources_of
from covid19xray.features import make_head
from covid19xray.input_check import fit_input_check
from covid19xray.manifest import MANIFEST
from covid19xray.model import MODEL_SUFFIXES, build_model, load_vgg16, save_model
from covid19xray.outputs import commit_outputs, file_digest
from covid19xray.pipeline import compile_head, fit_head, head_inputs, keras_verbosity
from covid19xray.report import (
    counts_per_class,
    plot_history,
    plot_roc,
    print_evaluation,
    run_facts,
    save_figure,
    write_json,
)
from covid19xray.screening import screen
from covid19xray.splits import (
    class_counts,
    encode_labels,
    holdout_split,
    patients_of,
    require_patients,
    warn_shared_patients,
)
from covid19xray.transforms import Rotation


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Everything this run is told, built once from the flags (`parse_args`): each field is its
    flag, with its default and help (`config.flag`)."""

    dataset: str = flag(short="-d", help="path to input dataset: one folder of images per class")
    plot: str = flag("plot.png", short="-p", help=(
        "path to output loss/accuracy plot, PNG; roc.png is written beside it"))
    model: str = flag("covid19.h5", short="-m", help=(
        "path to output model: HDF5 as the tutorial (.h5), or Keras's own format (.keras)"))
    report: str = flag("report.json", short="-r", help=(
        "path to output JSON report: counts, test files, confusion matrix, metrics with 95%% "
        "intervals, ROC AUC, flags, versions"))
    split: str = flag("random", choices=["random", "patient"], help=(
        "random: the tutorial's stratified 80/20 split of images; patient: every patient's "
        f"images on one side, from --dataset's {MANIFEST}"))
    external: tuple = flag((), metavar="DIR", help=(
        "after training, test the model on this labelled folder from another source (one "
        "folder per class, as --dataset), with the same report; repeatable"))
    cache_features: bool = flag(False, help=(
        "no augmentation: every image passes through VGG16 once, not once per epoch, and the "
        "head trains on the same features every epoch (much faster on a first run; the saved "
        "model is the same whole network)"))

    def __post_init__(self):
        object.__setattr__(self, "external", tuple(self.external))  # frozen all the way

    @property
    def roc(self):
        """roc.png, in the plot's folder."""
        return os.path.join(os.path.dirname(self.plot), "roc.png")

    def inputs(self):
        """The folders this run reads images from: (flag, folder)."""
        return [("--dataset", self.dataset), *[("--external", f) for f in self.external]]

    def outputs(self):
        """The four outputs, in the order they are written: (path, flag, suffix)."""
        return [(self.model, "--model", MODEL_SUFFIXES), (self.plot, "--plot", ".png"),
                (self.report, "--report", ".json"), (self.roc, "--plot", ".png")]


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
    """The images split 80/20 (`split`), in the tutorial's names."""

    trainP: list  # the training images' paths
    testP: list  # the test images' paths
    trainY: np.ndarray  # their one-hot labels
    testY: np.ndarray
    class_names: list  # sorted: covid is 0, normal 1
    patients_on_both_sides: int | None  # None when --dataset has no manifest
    digests: dict  # {SHA-256: path} of every image of --dataset: copies elsewhere are refused


def split(config, images, paths, labels):
    """One-hot encode the labels, then partition the data into training and testing splits
    using 80% of the data for training and the remaining 20% for testing (random: the
    tutorial's split; patient: every patient on one side). Takes what `load_dataset` returns."""
    onehot, class_names = encode_labels(labels)
    patients = patients_of(config.dataset, paths)
    if config.split == "patient":
        require_patients(config.dataset, patients)
    trainP, testP, trainY, testY = holdout_split(paths, onehot, class_names, config.split,
                                                 config.seed, patients)
    shared = warn_shared_patients(trainP, testP, paths, patients)
    print(f"[INFO] {len(paths)} images, classes {class_names}: "
          f"{len(trainP)} for training, {len(testP)} for testing")
    return Split(trainP, testP, trainY, testY, class_names, shared,
                 {images.digest(path): path for path in paths})


def check_batch_size(batch_size, trainP):
    if batch_size > len(trainP):
        raise UserError(f"--batch-size {batch_size} is larger than the training split "
                        f"({len(trainP)} images); use --batch-size {len(trainP)} or less")


def check_external(config, class_names):
    """Each --external folder must hold the model's classes, and not be --dataset: found
    before minutes of training."""
    for folder in config.external:
        if os.path.realpath(folder) == os.path.realpath(config.dataset):
            raise UserError(f"--external {folder!r} is --dataset; an external test needs images "
                            "from somewhere else")
        check_classes(folder, class_names)


def fit_the_input_check(config, describer, images, trainP):
    """Fit the input check on the training images (`covid19xray.input_check`), each described
    by `describer` (`pipeline.description_extractor`): saved in the model file, it tells
    predict_covid19.py which images look like none the model knows."""
    check = fit_input_check(describer.features(images, trainP), config.seed)
    print(f"[INFO] input check fitted on {check.fitted_on} training images: unlike_training "
          f"beyond {check.unlike_factor:g}, rejected beyond {check.reject_factor:g} times the "
          "median distance of a training image to its nearest other")
    return check


def train(config, head, inputs, testY):
    """Compile the head as the tutorial compiled its model and train it on the training
    batches (`inputs`, a `pipeline.HeadInputs`), validating on the test split's features after
    every epoch."""
    print("[INFO] compiling model...")
    compile_head(head, testY.shape[1], config.lr, config.epochs)
    print("[INFO] training head...")
    return fit_head(head, inputs.batches, inputs.steps, config.epochs,
                    validation=(inputs.testF, testY), batch_size=config.batch_size,
                    verbose=keras_verbosity())


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The test split's report (`evaluate`), and what the ROC plot draws."""

    results: dict  # the report's metrics, each with its 95% interval, and the ROC AUC
    probabilities: np.ndarray  # the model's, one row per test image
    trueIdxs: np.ndarray  # each test image's true class


def evaluate(head, testF, testY, class_names, batch_size):
    """Make predictions on the testing set and show the tutorial's report: classification
    report, confusion matrix, accuracy, sensitivity and specificity, each with its 95%
    interval (5 of 5 covid images support a sensitivity anywhere from 0.57 to 1), and the ROC
    AUC. The head on the test features predicts what the whole model predicts on the images."""
    print("[INFO] evaluating network...")
    probabilities = head.predict(testF, batch_size=batch_size, verbose=0)
    trueIdxs = testY.argmax(axis=1)
    return Evaluation(print_evaluation(trueIdxs, probabilities, class_names), probabilities,
                      trueIdxs)


def test_on_external(config, folder, head, inputs, data, check):
    """Test the trained model on an external folder, as on the test split (its features by
    `inputs.extractor`): the same report, under its own heading, then what the input check
    says of its images. Images identical to one of --dataset are refused."""
    with contextlib.closing(load_external(folder, data.class_names, data.digests)) as external:
        extF = inputs.extractor.features(external.store, external.paths)
        descriptions = inputs.describer.features(external.store, external.paths)
    print(f"[INFO] {len(external.paths)} external images "
          f"({class_counts(external.onehot, data.class_names)})")
    probabilities = head.predict(extF, batch_size=config.batch_size, verbose=0)
    trueIdxs = external.onehot.argmax(axis=1)
    results = print_evaluation(trueIdxs, probabilities, data.class_names)
    by_source = external.by_source(probabilities, data.class_names, printed=True)
    checked = screen(check, descriptions, trueIdxs, probabilities, data.class_names,
                     sources_of(folder, external.paths))
    return {**external.facts(config.dataset, data.class_names), **results,
            "by_source": by_source, "input_check": checked}


def training_report(config, data, evaluation, check, external):
    """Everything needed to judge, and to repeat, this run (`report.json`)."""
    return {
        "class_names": data.class_names,
        "counts": {"train": counts_per_class(data.trainY, data.class_names),
                   "test": counts_per_class(data.testY, data.class_names)},
        "split": {"kind": config.split, "patients_on_both_sides": data.patients_on_both_sides},
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, config.dataset) for path in data.testP],
        "augmentation": ("off (--cache-features)" if config.cache_features
                         else Rotation(seed=config.seed).summary),
        "precision": config.precision,
        **evaluation.results,
        "input_check": check.summary(),
        **run_facts(config),
        **({"external": external} if external else {}),
    }


def save_outputs(config, commit, model, class_names, check, H, evaluation, report):
    """Plot the training loss and accuracy and the ROC curve, serialize the model and report,
    each to its temporary file in `commit`: renamed into place together when main's block
    ends, so that a crash, Ctrl-C or SIGTERM anywhere before leaves the earlier files as they
    were. The report, renamed last, holds the SHA-256 of the other three: a set of outputs
    can always be checked for coming from one run (docs/troubleshooting.md)."""
    print("[INFO] saving COVID-19 detector model...")
    with commit.writing():
        final = {"model": config.model, "plot": config.plot, "roc": config.roc,
                 "report": config.report}
        temporary = {role: commit.temporary(path) for role, path in final.items()}
        save_model(model, temporary["model"], class_names, check)
        save_figure(plot_history(H.history), temporary["plot"])
        save_figure(plot_roc(evaluation.trueIdxs, evaluation.probabilities, class_names),
                    temporary["roc"])
        folder = os.path.dirname(os.path.abspath(config.report))
        report["outputs"] = {role: {"file": os.path.relpath(os.path.abspath(final[role]), folder),
                                    "sha256": file_digest(temporary[role])}
                             for role in ("model", "plot", "roc")}
        write_json(temporary["report"], report)


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    # every path checked before minutes of training
    outputs = check_paths(config.inputs(), config.outputs(), config.cache_folder)
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
            data = split(config, images, paths, labels)
            check_batch_size(config.batch_size, data.trainP)
            check_external(config, data.class_names)

            # place the tutorial's head on the frozen base; `head` is that head on its own
            model = build_model(baseModel, len(data.class_names))
            head = make_head(model)

            # augment, then batch: the frozen base's features of every image, kept in the
            # feature cache, and of each training image's rotation in each epoch
            inputs = head_inputs(config, model, images, data.trainP, data.trainY, data.testP,
                                 augment=not config.cache_features)
            # what predict_covid19.py will check every image against: the training images
            check = fit_the_input_check(config, inputs.describer, images, data.trainP)
            if inputs.caches:
                print(cache_line(inputs.caches))

            # compile and train the head
            H = train(config, head, inputs, data.testY)

        # make predictions on the testing set and show the report
        evaluation = evaluate(head, inputs.testF, data.testY, data.class_names,
                              config.batch_size)
        if config.cache_features:
            print("(trained with --cache-features: no augmentation)")
        if config.precision != "float32":
            print(f"(frozen VGG16 computed in {config.precision}; head, loss and model in "
                  "float32)")
        external = {folder: test_on_external(config, folder, head, inputs, data, check)
                    for folder in config.external}

        # plot the training loss and accuracy, and serialize the model and the report
        report = training_report(config, data, evaluation, check, external)
        save_outputs(config, commit, model, data.class_names, check, H, evaluation, report)
    model_path, plot, report_path, roc = (shown(path) for path in outputs)
    print(f"[INFO] wrote {model_path} (model), {plot} and {roc} (plots), {report_path} (report)")
    print("[INFO] does it read the lungs or the image source? python audit_covid19.py "
          f"--dataset {shown(config.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
