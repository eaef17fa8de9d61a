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

`--dataset` holds one folder of images per class; the folder name is the label. Writes the model
(HDF5, with its class names), the loss/accuracy plot, `roc.png` beside it and `report.json`, and
prints the tutorial's report with a 95% interval after each number. Only the head learns, so the
frozen VGG16 never computes the same thing twice (see `features_for_the_head`): every feature it
computes is kept in the feature cache (`--cache-dir`; `--no-cache` keeps none), and a rerun with
the same images, weights and seed reads them back instead of computing them.
"""

import contextlib
import os
import sys

import numpy as np

from covid19xray.augmentation import AUGMENTATION, rotation_angles
from covid19xray.cache import FeatureCache, cache_line
from covid19xray.cli import ArgumentParser, UserError, cli, shown
from covid19xray.data import epoch_batches, load_dataset, training_batches
from covid19xray.external import (
    check_classes,
    load_external,
    print_by_source,
    shared_patients,
)
from covid19xray.features import (
    cache_configuration,
    extract_features,
    make_feature_extractor,
    make_head,
)
from covid19xray.manifest import MANIFEST
from covid19xray.model import build_model, save_model
from covid19xray.outputs import claim_outputs
from covid19xray.report import (
    plot_history,
    plot_roc,
    print_evaluation,
    save_figure,
    write_json,
)
from covid19xray.splits import (
    class_counts,
    encode_labels,
    holdout_split,
    patients_of,
    require_patients,
    warn_shared_patients,
)
from covid19xray.training import (
    add_training_flags,
    check_inputs,
    check_outputs,
    compile_head,
    fit_head,
    keras_verbosity,
    run_facts,
    start,
    write_outputs,
)


def parse_args(argv=None):
    """The tutorial's three arguments, and flags for what it hard-coded: its INIT_LR, EPOCHS
    and BS are --lr, --epochs and --batch-size, whose defaults (1e-3, 25, 8) covid19xray.model
    keeps, so that audit_covid19.py trains its heads the same way."""
    ap = ArgumentParser(description="Fine-tune a frozen VGG16 on chest X-rays "
                                    "(COVID-19 vs normal). For education only.")
    add_training_flags(ap, "path to input dataset: one folder of images per class")
    ap.add_argument("-p", "--plot", default="plot.png",
                    help="path to output loss/accuracy plot, PNG; roc.png is written beside it "
                         "(default: %(default)s)")
    ap.add_argument("-m", "--model", default="covid19.h5",
                    help="path to output model, HDF5 (the name must end in .h5) "
                         "(default: %(default)s)")
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
    return ap.parse_args(argv)


def outputs_of(args):
    """The four outputs, in the order they are written: model, plot, report and roc.png (in
    the plot's folder)."""
    roc = os.path.join(os.path.dirname(args.plot), "roc.png")
    return [(args.model, "--model", ".h5"), (args.plot, "--plot", ".png"),
            (args.report, "--report", ".json"), (roc, "--plot", ".png")]


# ---------------------------------------------------------------------------------------------
# The tutorial's steps
# ---------------------------------------------------------------------------------------------


def split(args, paths, onehot, class_names):
    """Partition the data into training and testing splits using 80% of the data for training
    and the remaining 20% for testing: (trainP, testP, trainY, testY), and what the report says
    about it (random: the tutorial's split; patient: every patient on one side)."""
    patients = patients_of(args.dataset, paths)
    if args.split == "patient":
        require_patients(args.dataset, patients)
    parts = holdout_split(paths, onehot, class_names, args.split, args.seed, patients)
    shared = warn_shared_patients(parts[0], parts[1], paths, patients)
    return parts, {"kind": args.split, "patients_on_both_sides": shared}


def check_batch_size(args, trainP):
    if args.batch_size > len(trainP):
        raise UserError(f"--batch-size {args.batch_size} is larger than the training split "
                        f"({len(trainP)} images); use --batch-size {len(trainP)} or less")


def make_augmentation(args, images, trainP):
    """Initialize the training data augmentation: the tutorial's ImageDataGenerator(
    rotation_range=15, fill_mode="nearest") rotated each training image by a random angle of
    up to 15 degrees either way, anew every epoch. Returns those angles, (epochs, images):
    each drawn from the seed, the epoch and the image alone, so that a rerun draws them again
    and finds their features in the cache (covid19xray.augmentation)."""
    digests = [images.digest(path) for path in trainP]
    return np.stack([rotation_angles(args.seed, epoch, digests) for epoch in range(args.epochs)])


def feature_caches(args, model, crops):
    """The feature caches of this run: of the images as they are, and of the training images'
    rotations (one entry per image and epoch); (None, None) with --no-cache."""
    if args.no_cache:
        return None, None
    plain = FeatureCache(args.cache_dir, cache_configuration(model, crops, args.precision))
    rotated = FeatureCache(args.cache_dir,
                           cache_configuration(model, crops, args.precision, "rotated"),
                           what="rotated image(s) (one per training image and epoch)")
    return plain, rotated


def features_for_the_head(args, model, images, trainP, trainY, testP):
    """What the head trains on: (training batches, the test split's features, and the function
    that computes other images' features the same way: `features_of(store, paths)`).

    Only the head learns, so the frozen base is part of the input pipeline, and what it
    computes depends on the image alone: it is computed once and kept in the feature cache.
    Test images are never augmented: their features are the same every epoch. Each training
    image is rotated anew every epoch (`make_augmentation`), so it passes through VGG16 once
    per epoch, on the first run; with --cache-features, once, not rotated.
    """
    extract, crops = make_feature_extractor(model, args.precision)
    plain_cache, rotated_cache = feature_caches(args, model, crops)

    def features_of(store, paths):
        return extract_features(extract, store, paths, args.batch_size, cache=plain_cache)

    testF = features_of(images, testP)
    if args.cache_features:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        batches = training_batches(features_of(images, trainP), trainY, args.batch_size,
                                   args.seed)
    else:
        angles = make_augmentation(args, images, trainP)
        trainF = extract_features(extract, images, trainP * args.epochs, args.batch_size,
                                  cache=rotated_cache, angles=angles.ravel())
        batches = epoch_batches(trainF.reshape(args.epochs, len(trainP), -1), trainY,
                                args.batch_size, args.seed)
    if plain_cache is not None:
        print(cache_line([plain_cache] if args.cache_features else [plain_cache, rotated_cache]))
    return batches, testF, features_of


def train(args, head, batches, steps, testF, testY):
    """Compile the head as the tutorial compiled its model and train it on `batches`,
    validating on the test split's features after every epoch."""
    print("[INFO] compiling model...")
    compile_head(head, testY.shape[1], args.lr, args.epochs)
    print("[INFO] training head...")
    return fit_head(head, batches, steps, args.epochs, validation=(testF, testY),
                    batch_size=args.batch_size, verbose=keras_verbosity())


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


def check_external(args, class_names):
    """Each --external folder must hold the model's classes, and not be --dataset: found
    before minutes of training."""
    for folder in args.external:
        if os.path.realpath(folder) == os.path.realpath(args.dataset):
            raise UserError(f"--external {folder!r} is --dataset; an external test needs images "
                            "from somewhere else")
        check_classes(folder, class_names)


def test_externally(args, folder, head, features_of, class_names, training_digests):
    """Test the trained model on an external folder, as on the test split: the same report,
    under its own heading. Images identical to one of --dataset are refused."""
    print(f"[INFO] external test: {shown(folder)}")
    store, paths, extY, refused = load_external(folder, class_names, training_digests)
    with contextlib.closing(store):
        extF = features_of(store, paths)
    print(f"[INFO] {len(paths)} external images ({class_counts(extY, class_names)})")
    probabilities = head.predict(extF, batch_size=args.batch_size, verbose=0)
    results = print_evaluation(extY.argmax(axis=1), probabilities, class_names)
    sources = print_by_source(folder, paths, extY.argmax(axis=1), probabilities, class_names)
    return {
        "files": [os.path.relpath(path, folder) for path in paths],
        "counts": {name: int(n) for name, n in zip(class_names, extY.sum(axis=0))},
        "refused_identical_to_dataset": [os.path.relpath(path, folder) for path in refused],
        "patients_shared_with_dataset": shared_patients(args.dataset, folder),
        **results,
        "by_source": sources,
    }


def training_report(args, class_names, split_info, trainY, testY, testP, results):
    """Everything needed to judge, and to repeat, this run (`report.json`)."""
    return {
        "class_names": class_names,
        "counts": {side: {name: int(n) for name, n in zip(class_names, Y.sum(axis=0))}
                   for side, Y in (("train", trainY), ("test", testY))},
        "split": split_info,
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, args.dataset) for path in testP],
        "augmentation": "off (--cache-features)" if args.cache_features else AUGMENTATION,
        "precision": args.precision,
        **results,
        **run_facts(args),
    }


def save_outputs(outputs, model, class_names, H, trueIdxs, probabilities, report):
    """Plot the training loss and accuracy and the ROC curve, serialize the model and report.

    Each output goes to a temporary file first, and all are renamed into place together at
    the end: a crash, Ctrl-C or SIGTERM anywhere before leaves the earlier files as they were.
    """
    print("[INFO] saving COVID-19 detector model...")

    def write(model_tmp, plot_tmp, report_tmp, roc_tmp):
        save_figure(plot_history(H.history), plot_tmp)
        save_figure(plot_roc(trueIdxs, probabilities, class_names), roc_tmp)
        write_json(report_tmp, report)
        save_model(model, model_tmp, class_names)

    write_outputs(outputs, write)
    model_path, plot, report_path, roc = (shown(path) for path in outputs)
    print(f"[INFO] wrote {model_path} (model), {plot} and {roc} (plots), {report_path} (report)")


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    outputs = check_outputs(args.dataset, outputs_of(args))  # before minutes of training
    check_inputs([args.dataset, *args.external], None if args.no_cache else args.cache_dir)
    with claim_outputs(*outputs):  # a second run writing the same files stops here
        # seed everything, then load VGG16 first: a wrong --weights fails in seconds
        baseModel = start(args)

        # grab the images in the dataset folder, each decoded once; an image's label is the
        # name of its folder; then one-hot encode the labels and split the images 80/20
        print("[INFO] loading images...")
        images, paths, labels = load_dataset(args.dataset)
        with contextlib.closing(images):
            onehot, class_names = encode_labels(labels)
            (trainP, testP, trainY, testY), split_info = split(args, paths, onehot, class_names)
            print(f"[INFO] {len(paths)} images, classes {class_names}: "
                  f"{len(trainP)} for training, {len(testP)} for testing")
            check_batch_size(args, trainP)
            check_external(args, class_names)
            training_digests = {images.digest(path): path for path in paths}

            # place the tutorial's head on the frozen base; `head` is that head on its own
            model = build_model(baseModel, len(class_names))
            head = make_head(model)
            batches, testF, features_of = features_for_the_head(args, model, images, trainP,
                                                                trainY, testP)
            H = train(args, head, batches, len(trainP) // args.batch_size, testF, testY)

        results, probabilities, trueIdxs = evaluate(head, testF, testY, class_names,
                                                    args.batch_size)
        if args.cache_features:
            print("(trained with --cache-features: no augmentation)")
        if args.precision != "float32":
            print(f"(frozen VGG16 computed in {args.precision}; head, loss and model in float32)")
        external = {folder: test_externally(args, folder, head, features_of, class_names,
                                            training_digests) for folder in args.external}
        report = training_report(args, class_names, split_info, trainY, testY, testP, results)
        if external:
            report["external"] = external
        save_outputs(outputs, model, class_names, H, trueIdxs, probabilities, report)
    print("[INFO] does it read the lungs or the image source? python audit_covid19.py "
          f"--dataset {shown(args.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
