"""Fine-tune a frozen VGG16 to tell COVID-19 chest X-rays from normal ones.

The training script of "Detecting COVID-19 in X-ray images with Keras, TensorFlow, and Deep
Learning" (Adrian Rosebrock, PyImageSearch, March 2020), step for step on Keras 3: load the
images, one-hot encode, split 80/20, augment, build VGG16 with the tutorial's head, compile,
train, evaluate, plot, save. For education only: not a medical device, not a diagnosis.

Usage:
    python train_covid19.py --dataset dataset
    python train_covid19.py --dataset dataset --cache-features    # no augmentation, much faster
    python train_covid19.py --dataset dataset --precision bfloat16  # on CPUs with bfloat16

`--dataset` holds one folder of images per class; the folder name is the label. Writes the model
(HDF5, with its class names), the loss/accuracy plot, `roc.png` beside it and `report.json`, and
prints the tutorial's report with a 95% interval after each number. Only the head learns, so the
frozen VGG16 never computes the same thing twice (see `features_for_the_head`).
"""

import contextlib
import os
import sys

import numpy as np
from sklearn.metrics import classification_report
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer

from covid19_cache import FeatureCache, default_cache_folder
from covid19_cli import ArgumentParser, UserError, cli, lazy_import, positive, shown
from covid19_data import load_dataset, training_batches
from covid19_features import (cache_configuration, extract_features, make_feature_extractor,
                              make_head)
from covid19_files import atomic_outputs, check_output_path, claim_outputs, same_or_inside
from covid19_images import scale_pixels
from covid19_manifest import MANIFEST, patient_folds, patients_of
from covid19_model import (BS, EPOCHS, INIT_LR, PRECISIONS, VGG16_NOTOP_FILE, build_model,
                           check_precision, load_vgg16_base, loss_for, make_optimizer,
                           save_model)
from covid19_report import (CONFIDENCE, classification_metrics, describe, plot_history,
                            plot_roc, save_figure, versions, write_json)

keras = lazy_import("keras")

# the tutorial's initial learning rate, number of epochs to train for, and batch size are
# covid19_model's INIT_LR, EPOCHS and BS, so that audit_covid19.py trains its heads the same way;
# the tutorial's random_state and test fraction for the train/test split
SEED = 42
TEST_SIZE = 0.20


def parse_args(argv=None):
    """The tutorial's three arguments, and flags for what it hard-coded."""
    ap = ArgumentParser(description="Fine-tune a frozen VGG16 on chest X-rays "
                                    "(COVID-19 vs normal). For education only.")
    ap.add_argument("-d", "--dataset", required=True,
                    help="path to input dataset: one folder of images per class")
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
    ap.add_argument("--epochs", type=positive(int), default=EPOCHS,
                    help="training epochs (default: %(default)s)")
    ap.add_argument("--batch-size", type=positive(int), default=BS,
                    help="images per training step (default: %(default)s)")
    ap.add_argument("--lr", type=positive(float), default=INIT_LR,
                    help="initial learning rate, decayed per step as Keras 2's decay=lr/epochs "
                         "did (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=SEED,
                    help="seeds the split, Python, NumPy and TensorFlow: the same seed gives "
                         "the same run (default: %(default)s)")
    ap.add_argument("--weights", default="imagenet",
                    help="VGG16 base weights: imagenet (downloaded by Keras on first use), none "
                         f"(random), or the path of a local {VGG16_NOTOP_FILE} "
                         "(default: %(default)s)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="what the frozen VGG16 computes in; bfloat16 is about twice as fast on "
                         "CPUs with AVX512_BF16 or AMX, float16 on GPUs. The head, the loss and "
                         "the saved model stay float32 (default: %(default)s)")
    ap.add_argument("--cache-features", action="store_true",
                    help="no augmentation: every image passes through VGG16 once and the head "
                         "trains on its features, kept in --cache-dir for the next run (much "
                         "faster; the saved model is the same whole network)")
    ap.add_argument("--cache-dir", default=default_cache_folder(),
                    help="feature cache of --cache-features; delete it to clear it "
                         "(default: %(default)s)")
    return ap.parse_args(argv)


def check_outputs(args):
    """Fail now, not after training, if an output cannot be written or would land in the data.
    Returns the four outputs: model, plot, report and roc.png (in the plot's folder)."""
    roc = os.path.join(os.path.dirname(args.plot), "roc.png")
    outputs = [(args.model, "--model", ".h5"), (args.plot, "--plot", ".png"),
               (args.report, "--report", ".json"), (roc, "--plot", ".png")]
    for path, flag, suffix in outputs:
        check_output_path(path, flag, suffix=suffix)
        if os.path.isdir(args.dataset) and same_or_inside(path, args.dataset):
            raise UserError(f"{flag} {path!r} is inside --dataset {args.dataset!r}; write "
                            "outputs elsewhere, source data is never modified")
    if len({os.path.abspath(path) for path, _, _ in outputs}) < len(outputs):
        raise UserError("--model, --plot, --report and roc.png (beside --plot) must be four "
                        "different files")
    return [path for path, _, _ in outputs]


# ---------------------------------------------------------------------------------------------
# The tutorial's steps
# ---------------------------------------------------------------------------------------------


def encode_labels(labels):
    """Perform one-hot encoding on the labels, as the tutorial: LabelBinarizer, then
    to_categorical for two classes. Classes sort by name, so covid is 0 and normal is 1; with
    more classes (covid/, normal/, pneumonia/) LabelBinarizer's rows are one-hot already."""
    class_names = sorted(set(labels))
    if len(class_names) < 2:
        raise UserError(f"found {len(class_names)} class folder(s) ({', '.join(class_names)}); "
                        "training needs two or more, such as covid/ and normal/")
    lb = LabelBinarizer()
    onehot = lb.fit_transform(labels)
    if len(class_names) == 2:
        onehot = keras.utils.to_categorical(onehot)
    return onehot.astype("float32"), [str(name) for name in lb.classes_]


def split(args, paths, onehot, class_names):
    """Partition the data into training and testing splits using 80% of the data for training
    and the remaining 20% for testing: (trainP, testP, trainY, testY), and what the report says
    about it.

    Random: the tutorial's `train_test_split`, stratified on the one-hot rows (splitting the
    paths picks the same images as the tutorial's split of the pixel arrays). Patient: every
    patient on one side, from the dataset's manifest.
    """
    patients = patients_of(args.dataset, paths)
    counts = ", ".join(f"{name}: {int(n)}" for name, n in zip(class_names, onehot.sum(axis=0)))
    if args.split == "random":
        try:
            parts = train_test_split(paths, onehot, test_size=TEST_SIZE, stratify=onehot,
                                     random_state=args.seed)
        except ValueError as err:
            raise UserError(f"too few images for a stratified 80/20 split ({counts}); "
                            f"scikit-learn: {err}") from None
    elif patients is None:
        raise UserError(f"--split patient needs {os.path.join(args.dataset, MANIFEST)}, which "
                        "the dataset builders write; rebuild the dataset with them or use "
                        "--split random")
    else:
        try:  # the first of 5 folds: a fifth of the patients for testing
            trainIdx, testIdx = patient_folds(onehot.argmax(axis=1), patients,
                                              round(1 / TEST_SIZE), args.seed, class_names)[0]
        except UserError as err:
            raise UserError(f"{err} (or use --split random)") from None
        parts = ([paths[i] for i in trainIdx], [paths[i] for i in testIdx], onehot[trainIdx],
                 onehot[testIdx])
    shared = None  # unknown without a manifest
    if patients is not None:
        patient = dict(zip(paths, patients))
        shared = len({patient[p] for p in parts[0]} & {patient[p] for p in parts[1]})
    if shared:
        print(f"[WARNING] {shared} patient(s) have images on both sides of the random split, "
              "so the test images are not all new patients; --split patient keeps each "
              "patient on one side", file=sys.stderr)
    return parts, {"kind": args.split, "patients_on_both_sides": shared}


def check_batch_size(args, trainP):
    if args.batch_size > len(trainP):
        raise UserError(f"--batch-size {args.batch_size} is larger than the training split "
                        f"({len(trainP)} images); use --batch-size {len(trainP)} or less")


def make_augmentation(seed):
    """Initialize the training data augmentation: the tutorial's ImageDataGenerator(
    rotation_range=15, fill_mode="nearest") is Keras's RandomRotation layer, whose factor is a
    fraction of a full turn: 15/360 rotates by up to 15 degrees either way."""
    return keras.layers.RandomRotation(factor=15 / 360, fill_mode="nearest", seed=seed)


def features_for_the_head(args, model, images, trainP, trainY, testP):
    """What the head trains on: (training batches, the test split's features).

    Only the head learns, so the frozen base is part of the input pipeline. Test images are
    never augmented, so their features are the same every epoch: computed once. The training
    batches are the features of each batch's images, read from the store, scaled and randomly
    rotated anew every epoch; with --cache-features, of the images themselves, computed once
    and kept on disk for the next run.
    """
    extract = make_feature_extractor(model, args.precision)
    cache = None
    if args.cache_features:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        cache = FeatureCache(args.cache_dir, cache_configuration(model, extract, args.precision))
    testF = extract_features(extract, images, testP, args.batch_size, cache=cache)
    if args.cache_features:
        trainF = extract_features(extract, images, trainP, args.batch_size, cache=cache)
        print(cache.summary())
        return training_batches(trainF, trainY, args.batch_size, args.seed), testF
    return augmented_features(args, images, trainP, trainY, extract), testF


def augmented_features(args, images, trainP, trainY, extract):
    """Training batches of (`extract` of each image, rotated anew every epoch, its label)."""
    augment = make_augmentation(args.seed)
    return training_batches(
        images.slots(trainP), trainY, args.batch_size, args.seed,
        prepare=lambda slots: extract(augment(scale_pixels(images.read_tensor(slots)),
                                              training=True)))


def train(args, head, batches, steps, testF, testY):
    """Compile the head as the tutorial compiled its model and train it on `batches`,
    validating on the test split's features after every epoch."""
    print("[INFO] compiling model...")
    head.compile(loss=loss_for(testY.shape[1]), optimizer=make_optimizer(args.lr, args.epochs),
                 metrics=["accuracy"])
    print("[INFO] training head...")
    return head.fit(
        batches,
        # as the tutorial: len(train) // batch size whole batches an epoch. Given, it also
        # makes Keras start each epoch's pass over the data exactly once.
        steps_per_epoch=steps,
        validation_data=(testF, testY),
        validation_batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,  # the dataset shuffles itself; Keras warns if asked to as well
        # Keras's live bar on a terminal; one line per epoch in logs and CI output
        verbose=1 if sys.stdout.isatty() else 2,
    )


def evaluate(head, testF, testY, class_names, batch_size):
    """Make predictions on the testing set and show the tutorial's report: classification
    report, confusion matrix, accuracy, sensitivity and specificity, each with its 95%
    interval (5 of 5 covid images support a sensitivity anywhere from 0.57 to 1), and the ROC
    AUC. The head on the test features predicts what the whole model predicts on the images."""
    print("[INFO] evaluating network...")
    probabilities = head.predict(testF, batch_size=batch_size, verbose=0)
    trueIdxs, predIdxs = testY.argmax(axis=1), probabilities.argmax(axis=1)
    # zero_division=0: a model that never predicts a class gets precision 0, not a warning
    print(classification_report(trueIdxs, predIdxs, labels=list(range(len(class_names))),
                                target_names=[shown(name) for name in class_names],
                                zero_division=0))
    results = classification_metrics(trueIdxs, probabilities, class_names)
    print(np.array(results["confusion_matrix"]))
    print(describe("acc", results["accuracy"]))
    if len(class_names) == 2:
        print(describe("sensitivity", results["sensitivity"]))
        print(describe("specificity", results["specificity"]))
    else:
        for name, m in results["per_class"].items():
            print(f"{shown(name)}: {describe('sensitivity', m['sensitivity'])}, "
                  f"{describe('specificity', m['specificity'])}")
    print(f"ROC AUC: {results['roc_auc']:.4f}")
    return results, probabilities, trueIdxs


def make_report(args, class_names, split_info, trainY, testY, testP, results):
    """Everything needed to judge, and to repeat, this run (`report.json`)."""
    return {
        "class_names": class_names,
        "counts": {side: {name: int(n) for name, n in zip(class_names, Y.sum(axis=0))}
                   for side, Y in (("train", trainY), ("test", testY))},
        "split": split_info,
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, args.dataset) for path in testP],
        "augmentation": ("off (--cache-features)" if args.cache_features
                         else "random rotation up to 15 degrees either way"),
        "precision": args.precision,
        **results,
        "confidence_level": CONFIDENCE,
        "seed": args.seed,
        "flags": vars(args),
        "versions": versions(),
    }


def save_outputs(args, outputs, model, class_names, H, trueIdxs, probabilities, report):
    """Plot the training loss and accuracy and the ROC curve, serialize the model and report.

    Each output goes to a temporary file first, and all are renamed into place together at
    the end: a crash, Ctrl-C or SIGTERM anywhere before leaves the earlier files as they were.
    """
    print("[INFO] saving COVID-19 detector model...")
    try:
        with atomic_outputs(*outputs) as (model_tmp, plot_tmp, report_tmp, roc_tmp):
            save_figure(plot_history(H.history), plot_tmp)
            save_figure(plot_roc(trueIdxs, probabilities, class_names), roc_tmp)
            write_json(report_tmp, report)
            save_model(model, model_tmp, class_names)
    except OSError as err:  # a full disk, a folder removed meanwhile
        raise UserError(f"cannot write the outputs ({err.strerror or err}); every earlier "
                        f"{args.model}, {args.plot} and {args.report} was kept") from None
    model_path, plot, report_path, roc = (shown(path) for path in outputs)
    print(f"[INFO] wrote {model_path} (model), {plot} and {roc} (plots), {report_path} (report)")


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    outputs = check_outputs(args)  # before minutes of training, not after
    with claim_outputs(*outputs):  # a second run writing the same files stops here
        keras.utils.set_random_seed(args.seed)  # Python's random, NumPy and TensorFlow
        check_precision(args.precision)

        # load VGG16 first: a wrong --weights, or no network for ImageNet's, fails in seconds
        baseModel = load_vgg16_base(args.weights)

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

            # place the tutorial's head on the frozen base; `head` is that head on its own
            model = build_model(baseModel, len(class_names))
            head = make_head(model)
            batches, testF = features_for_the_head(args, model, images, trainP, trainY, testP)
            H = train(args, head, batches, len(trainP) // args.batch_size, testF, testY)

        results, probabilities, trueIdxs = evaluate(head, testF, testY, class_names,
                                                    args.batch_size)
        if args.cache_features:
            print("(trained with --cache-features: no augmentation)")
        if args.precision != "float32":
            print(f"(frozen VGG16 computed in {args.precision}; head, loss and model in float32)")
        report = make_report(args, class_names, split_info, trainY, testY, testP, results)
        save_outputs(args, outputs, model, class_names, H, trueIdxs, probabilities, report)
    print("[INFO] does it read the lungs or the image source? python audit_covid19.py "
          f"--dataset {shown(args.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
