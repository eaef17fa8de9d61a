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
`features_for_the_head`): every feature it computes is kept in the feature cache
(`--cache-dir`; `--no-cache` keeps none), and a rerun with the same images, weights and seed
reads them back instead of computing them.
"""

import contextlib
import dataclasses
import os
import sys

from covid19xray.cache import cache_line
from covid19xray.cli import ArgumentParser, UserError, cli, shown
from covid19xray.config import RunConfig, add_run_flags
from covid19xray.data import epoch_batches, load_dataset, training_batches
from covid19xray.external import check_classes, load_external, sources_of
from covid19xray.features import (
    description_cache,
    extract_features,
    feature_cache,
    features_per_epoch,
    make_description_extractor,
    make_feature_extractor,
    make_head,
)
from covid19xray.input_check import fit_input_check
from covid19xray.manifest import MANIFEST
from covid19xray.model import MODEL_SUFFIXES, build_model, save_model
from covid19xray.outputs import commit_outputs, file_digest
from covid19xray.report import (
    plot_history,
    plot_roc,
    print_evaluation,
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
from covid19xray.training import (
    check_inputs,
    check_outputs,
    compile_head,
    fit_head,
    keras_verbosity,
    run_facts,
    start,
)
from covid19xray.transforms import UNCHANGED, Rotation


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Everything this run is told, built once from the flags (`parse_args`)."""

    plot: str = "plot.png"
    model: str = "covid19.h5"
    report: str = "report.json"
    split: str = "random"
    external: tuple = ()
    cache_features: bool = False

    def __post_init__(self):
        object.__setattr__(self, "external", tuple(self.external))  # frozen all the way

    @property
    def roc(self):
        """roc.png, in the plot's folder."""
        return os.path.join(os.path.dirname(self.plot), "roc.png")

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
    add_run_flags(ap, "path to input dataset: one folder of images per class")
    ap.add_argument("-p", "--plot", default="plot.png",
                    help="path to output loss/accuracy plot, PNG; roc.png is written beside it "
                         "(default: %(default)s)")
    ap.add_argument("-m", "--model", default="covid19.h5",
                    help="path to output model: HDF5 as the tutorial (.h5), or Keras's own "
                         "format (.keras) (default: %(default)s)")
    ap.add_argument("-r", "--report", default="report.json",
                    help="path to output JSON report: counts, test files, confusion matrix, "
                         "metrics with 95%% intervals, ROC AUC, flags, versions "
                         "(default: %(default)s)")
    ap.add_argument("--split", choices=["random", "patient"], default="random",
                    help="random: the tutorial's stratified 80/20 split of images; patient: "
                         f"every patient's images on one side, from --dataset's {MANIFEST} "
                         "(default: %(default)s)")
    ap.add_argument("--external", action="append", default=[], metavar="DIR",
                    help="after training, test the model on this labelled folder from another "
                         "source (one folder per class, as --dataset), with the same report; "
                         "repeatable")
    ap.add_argument("--cache-features", action="store_true",
                    help="no augmentation: every image passes through VGG16 once, not once per "
                         "epoch, and the head trains on the same features every epoch (much "
                         "faster on a first run; the saved model is the same whole network)")
    return TrainConfig.from_flags(ap.parse_args(argv))


# ---------------------------------------------------------------------------------------------
# The tutorial's steps
# ---------------------------------------------------------------------------------------------


def split(config, paths, onehot, class_names):
    """Partition the data into training and testing splits using 80% of the data for training
    and the remaining 20% for testing: (trainP, testP, trainY, testY), and what the report says
    about it (random: the tutorial's split; patient: every patient on one side)."""
    patients = patients_of(config.dataset, paths)
    if config.split == "patient":
        require_patients(config.dataset, patients)
    parts = holdout_split(paths, onehot, class_names, config.split, config.seed, patients)
    shared = warn_shared_patients(parts[0], parts[1], paths, patients)
    return parts, {"kind": config.split, "patients_on_both_sides": shared}


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


def image_describer(config, model):
    """The function that describes images for the input check, `describe(store, paths)`, each
    image once through the whole frozen VGG16 (kept in the feature cache), and that cache (or
    None with --no-cache)."""
    extract = make_description_extractor(model, config.precision)
    cache = description_cache(config.cache_folder, model, config.precision)

    def describe(store, paths):
        return extract_features(extract, store, paths, config.batch_size, UNCHANGED, cache)

    return describe, cache


def fit_the_input_check(config, describe, images, trainP):
    """Fit the input check on the training images (`covid19xray.input_check`): saved in the
    model file, it tells predict_covid19.py which images look like none the model knows."""
    check = fit_input_check(describe(images, trainP), config.seed)
    print(f"[INFO] input check fitted on {check.fitted_on} training images: unlike_training "
          f"beyond {check.unlike_factor:g}, rejected beyond {check.reject_factor:g} times the "
          "median distance of a training image to its nearest other")
    return check


@dataclasses.dataclass(frozen=True)
class HeadInputs:
    """What the head trains and is tested on (`features_for_the_head`)."""

    batches: object  # the training batches, every epoch's
    testF: object  # the test split's features
    unchanged_features: object  # `unchanged_features(store, paths)`: other images', as testF
    caches: list  # the feature caches they were read from and kept in ([] with --no-cache)


def features_for_the_head(config, model, images, trainP, trainY, testP):
    """What the head trains on: the training batches, the test split's features, and the
    function that computes other images' features as the test split's (`HeadInputs`).

    Only the head learns, so the frozen base is part of the input pipeline, and what it
    computes depends on the image alone: it is computed once and kept in the feature cache.
    Test images are never augmented: their features are the same every epoch. The tutorial's
    augmentation, `ImageDataGenerator(rotation_range=15, fill_mode="nearest")`, rotated each
    training image by a random angle anew every epoch; here `Rotation` draws that angle from
    the seed, the epoch and the image alone, so that a rerun finds every rotated image's
    features in the cache. Each training image passes through VGG16 once per epoch, on the
    first run; with --cache-features, once, not rotated. Every cache is made (its folders
    checked) before any image passes through VGG16.
    """
    extract, crops = make_feature_extractor(model, config.precision)
    plain_cache = feature_cache(config.cache_folder, model, crops, config.precision)
    rotation = Rotation(seed=config.seed)
    rotation_cache = None if config.cache_features else feature_cache(
        config.cache_folder, model, crops, config.precision, rotation)

    def unchanged_features(store, paths):
        return extract_features(extract, store, paths, config.batch_size, UNCHANGED,
                                plain_cache)

    testF = unchanged_features(images, testP)
    if config.cache_features:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        batches = training_batches(unchanged_features(images, trainP), trainY,
                                   config.batch_size, config.seed)
    else:
        trainF = features_per_epoch(extract, images, trainP, config.batch_size, rotation,
                                    config.epochs, rotation_cache)
        batches = epoch_batches(trainF, trainY, config.batch_size, config.seed)
    caches = [cache for cache in (plain_cache, rotation_cache) if cache is not None]
    return HeadInputs(batches, testF, unchanged_features, caches)


def train(config, head, batches, steps, testF, testY):
    """Compile the head as the tutorial compiled its model and train it on `batches`,
    validating on the test split's features after every epoch."""
    print("[INFO] compiling model...")
    compile_head(head, testY.shape[1], config.lr, config.epochs)
    print("[INFO] training head...")
    return fit_head(head, batches, steps, config.epochs, validation=(testF, testY),
                    batch_size=config.batch_size, verbose=keras_verbosity())


def evaluate(head, testF, testY, class_names, batch_size):
    """Make predictions on the testing set and show the tutorial's report: classification
    report, confusion matrix, accuracy, sensitivity and specificity, each with its 95%
    interval (5 of 5 covid images support a sensitivity anywhere from 0.57 to 1), and the ROC
    AUC. The head on the test features predicts what the whole model predicts on the images."""
    print("[INFO] evaluating network...")
    probabilities = head.predict(testF, batch_size=batch_size, verbose=0)
    trueIdxs = testY.argmax(axis=1)
    results = print_evaluation(trueIdxs, probabilities, class_names)
    return results, probabilities, trueIdxs


def test_externally(config, folder, head, unchanged_features, class_names, training_digests,
                    check, describe):
    """Test the trained model on an external folder, as on the test split: the same report,
    under its own heading, then what the input check says of its images. Images identical to
    one of --dataset are refused."""
    with contextlib.closing(load_external(folder, class_names, training_digests)) as external:
        extF = unchanged_features(external.store, external.paths)
        descriptions = describe(external.store, external.paths)
    print(f"[INFO] {len(external.paths)} external images "
          f"({class_counts(external.onehot, class_names)})")
    probabilities = head.predict(extF, batch_size=config.batch_size, verbose=0)
    trueIdxs = external.onehot.argmax(axis=1)
    results = print_evaluation(trueIdxs, probabilities, class_names)
    by_source = external.by_source(probabilities, class_names, printed=True)
    checked = screen(check, descriptions, trueIdxs, probabilities, class_names,
                     sources_of(folder, external.paths))
    return {**external.facts(config.dataset, class_names), **results, "by_source": by_source,
            "input_check": checked}


def training_report(config, class_names, split_info, trainY, testY, testP, results, check):
    """Everything needed to judge, and to repeat, this run (`report.json`)."""
    return {
        "class_names": class_names,
        "counts": {side: {name: int(n) for name, n in zip(class_names, Y.sum(axis=0))}
                   for side, Y in (("train", trainY), ("test", testY))},
        "split": split_info,
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, config.dataset) for path in testP],
        "augmentation": ("off (--cache-features)" if config.cache_features
                         else Rotation(seed=config.seed).summary),
        "precision": config.precision,
        **results,
        "input_check": check.summary(),
        **run_facts(config),
    }


def save_outputs(config, commit, model, class_names, check, H, trueIdxs, probabilities, report):
    """Plot the training loss and accuracy and the ROC curve, serialize the model and report,
    each to its temporary file in `commit`: renamed into place together when main's block
    ends, so that a crash, Ctrl-C or SIGTERM anywhere before leaves the earlier files as they
    were. The report, renamed last, holds the SHA-256 of the other three: a set of outputs
    can always be checked for coming from one run (docs/troubleshooting.md)."""
    print("[INFO] saving COVID-19 detector model...")
    with commit.writing():
        written = {"model": (config.model, commit.temporary(config.model))}
        save_model(model, written["model"][1], class_names, check)
        written["plot"] = (config.plot, commit.temporary(config.plot))
        save_figure(plot_history(H.history), written["plot"][1])
        written["roc"] = (config.roc, commit.temporary(config.roc))
        save_figure(plot_roc(trueIdxs, probabilities, class_names), written["roc"][1])
        folder = os.path.dirname(os.path.abspath(config.report))
        report["outputs"] = {role: {"file": os.path.relpath(os.path.abspath(final), folder),
                                    "sha256": file_digest(temporary)}
                             for role, (final, temporary) in written.items()}
        write_json(commit.temporary(config.report), report)


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    inputs = [("--dataset", config.dataset), *[("--external", f) for f in config.external]]
    outputs = check_outputs(inputs, config.outputs())  # before minutes of training
    check_inputs(inputs, config.cache_folder)
    # a second run writing the same files stops here; the outputs replace the earlier ones
    # only when everything is written
    with commit_outputs(*outputs) as commit:
        # seed everything, then load VGG16 first: a wrong --weights fails in seconds
        baseModel = start(config)

        # grab the images in the dataset folder, each decoded once; an image's label is the
        # name of its folder; then one-hot encode the labels and split the images 80/20
        print("[INFO] loading images...")
        images, paths, labels = load_dataset(config.dataset)
        with contextlib.closing(images):
            onehot, class_names = encode_labels(labels)
            (trainP, testP, trainY, testY), split_info = split(config, paths, onehot,
                                                               class_names)
            print(f"[INFO] {len(paths)} images, classes {class_names}: "
                  f"{len(trainP)} for training, {len(testP)} for testing")
            check_batch_size(config.batch_size, trainP)
            check_external(config, class_names)
            training_digests = {images.digest(path): path for path in paths}

            # place the tutorial's head on the frozen base; `head` is that head on its own
            model = build_model(baseModel, len(class_names))
            head = make_head(model)
            describe, descriptions_cache = image_describer(config, model)
            head_inputs = features_for_the_head(config, model, images, trainP, trainY, testP)
            batches, testF, unchanged_features = (head_inputs.batches, head_inputs.testF,
                                                  head_inputs.unchanged_features)
            # what predict_covid19.py will check every image against: the training images
            check = fit_the_input_check(config, describe, images, trainP)
            if head_inputs.caches:
                print(cache_line(head_inputs.caches + [descriptions_cache]))
            H = train(config, head, batches, len(trainP) // config.batch_size, testF, testY)

        results, probabilities, trueIdxs = evaluate(head, testF, testY, class_names,
                                                    config.batch_size)
        if config.cache_features:
            print("(trained with --cache-features: no augmentation)")
        if config.precision != "float32":
            print(f"(frozen VGG16 computed in {config.precision}; head, loss and model in "
                  "float32)")
        external = {folder: test_externally(config, folder, head, unchanged_features,
                                            class_names, training_digests, check, describe)
                    for folder in config.external}
        report = training_report(config, class_names, split_info, trainY, testY, testP,
                                 results, check)
        if external:
            report["external"] = external
        save_outputs(config, commit, model, class_names, check, H, trueIdxs, probabilities,
                     report)
    model_path, plot, report_path, roc = (shown(path) for path in outputs)
    print(f"[INFO] wrote {model_path} (model), {plot} and {roc} (plots), {report_path} (report)")
    print("[INFO] does it read the lungs or the image source? python audit_covid19.py "
          f"--dataset {shown(config.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
