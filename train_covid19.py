"""Fine-tune a frozen VGG16 to tell COVID-19 chest X-rays from normal ones.

The tutorial's `train_covid19.py`, ported step for step to TensorFlow 2.21 / Keras 3.
For education only: this is not a medical device and its results are not a diagnosis.

Usage:
    python train_covid19.py --dataset dataset
    python train_covid19.py --dataset dataset --plot plot.png --model covid19.h5 \
        --epochs 25 --batch-size 8 --lr 1e-3 --seed 42 --weights imagenet
    python train_covid19.py --dataset dataset --cache-features   # no augmentation, ~18x faster

`--dataset` holds one folder per class (`covid/`, `normal/`; more classes work too); the folder
name is the label. Writes the trained model (HDF5, with its class names), the loss/accuracy
plot, the ROC curve (`roc.png` beside the plot) and `report.json`, and prints the classification
report with accuracy, sensitivity and specificity, each with its 95% interval, on the 20% test
split. `--split patient` keeps every patient's images on one side (from `dataset/manifest.csv`).

Only the small head is trained; the VGG16 base is frozen, so this script never recomputes what
the base already computed: the test split goes through VGG16 once, not once per epoch, and with
`--cache-features` every image does. Each image is decoded once; batches read the pixels back
from a temporary file as they need them, so memory does not grow with the dataset.
"""

import argparse
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import platform
import sys
import tempfile

# Keep TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines) off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")  # write the plot to a file; no display needed

import cv2
import h5py
import keras
import matplotlib.pyplot as plt
import numpy as np
import scipy
import sklearn
import tensorflow as tf
from keras import layers
from scipy.stats import binomtest
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.preprocessing import LabelBinarizer

from covid19_common import (
    ArgumentParser,
    IMAGE_SIZE,
    CLASS_NAMES_ATTR,
    MANIFEST,
    UserError,
    atomic_outputs,
    check_output_path,
    cli,
    list_images,
    load_xray,
    read_manifest,
    same_or_inside,
    scale_pixels,
)

# The tutorial's hyperparameters: initial learning rate, epochs and batch size.
INIT_LR = 1e-3
EPOCHS = 25
BS = 8
SEED = 42  # the tutorial's random_state for the train/test split
TEST_SIZE = 0.20
CONFIDENCE = 0.95  # of the Wilson intervals in the report

# The head's AveragePooling2D(4x4) turns VGG16's 7x7 output into 1x1 with "valid" pooling, so it
# reads only the top-left 4x4 cells. Those depend only on the top-left 218x218 input pixels and,
# after each of VGG16's pooling layers, only on the top-left region of the size below (each
# 3x3 convolution widens the region a cell depends on by one row and column). Computing just
# these regions gives the same features, bit for bit, with 15% fewer operations.
FEATURE_CROPS = {"input": 218, "block1_pool": 108, "block2_pool": 53, "block3_pool": 25,
                 "block4_pool": 11}

# The file Keras downloads for `VGG16(weights="imagenet", include_top=False)`.
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def parse_args(argv=None):
    ap = ArgumentParser(
        description="Fine-tune a frozen VGG16 on chest X-rays (COVID-19 vs normal).",
    )
    ap.add_argument("-d", "--dataset", required=True,
                    help="path to input dataset: one folder of images per class")
    ap.add_argument("-p", "--plot", default="plot.png",
                    help="path to output loss/accuracy plot, PNG (default: %(default)s)")
    ap.add_argument("-m", "--model", default="covid19.h5",
                    help="path to output model, HDF5: the name must end in .h5 "
                         "(default: %(default)s)")
    ap.add_argument("-r", "--report", default="report.json",
                    help="path to output JSON report: counts, confusion matrix, metrics with "
                         "95%% intervals, ROC AUC, seed, flags, versions; roc.png is written "
                         "beside --plot (default: %(default)s)")
    ap.add_argument("--split", choices=["random", "patient"], default="random",
                    help="random: the tutorial's stratified 80/20 split of images; patient: "
                         f"every patient's images on one side, from --dataset's {MANIFEST} "
                         "(default: %(default)s)")
    ap.add_argument("--epochs", type=_positive(int), default=EPOCHS,
                    help="number of training epochs (default: %(default)s)")
    ap.add_argument("--batch-size", type=_positive(int), default=BS,
                    help="images per training step (default: %(default)s)")
    ap.add_argument("--lr", type=_positive(float), default=INIT_LR,
                    help="initial learning rate; decays per step as Keras 2's decay=lr/epochs did "
                         "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=SEED,
                    help="seeds the split, Python, NumPy and TensorFlow (default: %(default)s)")
    ap.add_argument("--weights", default="imagenet",
                    help="VGG16 base weights: 'imagenet' (downloaded by Keras), 'none' (random), "
                         f"or PATH to a local copy of {VGG16_NOTOP_FILE} (default: %(default)s)")
    ap.add_argument("--cache-features", action="store_true",
                    help="no augmentation: pass every image through VGG16 once and train the "
                         "head on the cached features (much faster; the saved model is the same "
                         "whole network)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Load the images and labels
# ---------------------------------------------------------------------------------------------


class DecodedImages:
    """The readable images of a dataset, each decoded once into a temporary file on disk.

    Decoding a JPEG X-ray costs far more than reading its 150 KB of uint8 pixels back (18 ms
    against well under 1 ms for the tutorial's images here), and decoding threads running every
    epoch would take the CPU from VGG16's. So every image is decoded once, by the shared
    `load_xray`, in the pass that finds which files are readable; batches then read their pixels
    back from the file as they need them, so memory does not grow with the dataset. The file has
    no name: it disappears when closed, or when the process ends however it ends.
    """

    IMAGE_BYTES = IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3

    def __init__(self, image_paths):
        self._file = tempfile.TemporaryFile()
        self.slot, self.unreadable = {}, []
        # OpenCV releases the GIL, so threads decode in parallel; map keeps the order.
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            for path, image in zip(image_paths, pool.map(load_xray, image_paths)):
                if image is None:
                    self.unreadable.append(path)
                else:
                    self.slot[path] = len(self.slot)
                    self._file.write(image.tobytes())
        self._file.flush()

    def read(self, slot):
        """The uint8 224x224x3 image in `slot`."""
        data = os.pread(self._file.fileno(), self.IMAGE_BYTES, int(slot) * self.IMAGE_BYTES)
        return np.frombuffer(data, np.uint8).reshape(*IMAGE_SIZE, 3)

    def slots(self, paths):
        return np.array([self.slot[path] for path in paths], dtype=np.int64)

    def close(self):
        self._file.close()


def find_images(dataset):
    """Every readable image under `dataset`, decoded once, and its label (the parent folder).

    Returns (images, paths, labels): a `DecodedImages` and, in sorted order, the paths it holds
    and their labels. Files OpenCV cannot decode are skipped with a warning.
    """
    if not os.path.isdir(dataset):
        raise UserError(f"--dataset {dataset!r} is not a folder")
    image_paths = list_images(dataset)
    if not image_paths:
        raise UserError(f"--dataset {dataset!r} has no images (.jpg, .jpeg, .png, .bmp, .tif, "
                        ".tiff); put one folder of images per class in it")

    images = DecodedImages(image_paths)
    for image_path in images.unreadable:
        print(f"[WARNING] skipping {image_path}: not a readable image", file=sys.stderr)
    if images.unreadable:
        print(f"[WARNING] skipped {len(images.unreadable)} unreadable image(s)", file=sys.stderr)
    if not images.slot:
        images.close()
        raise UserError(f"--dataset {dataset!r}: none of its images could be read")
    paths = list(images.slot)
    labels = np.array([os.path.basename(os.path.dirname(path)) for path in paths])
    return images, paths, labels


def encode_labels(labels):
    """One-hot encode as the tutorial: LabelBinarizer (then to_categorical for two classes).

    Classes are in sorted order, so covid is index 0 and normal is index 1. For two classes
    LabelBinarizer gives one column and to_categorical makes it two, as in the tutorial; for
    more (covid/, normal/, pneumonia/) LabelBinarizer's rows are one-hot already.
    """
    class_names = sorted(set(labels))
    if len(class_names) < 2:
        raise UserError(f"found {len(class_names)} class folder(s) ({', '.join(class_names)}); "
                        "training needs two or more, such as covid/ and normal/")
    lb = LabelBinarizer()
    onehot = lb.fit_transform(labels)
    if len(class_names) == 2:
        onehot = keras.utils.to_categorical(onehot)
    return onehot.astype("float32"), [str(name) for name in lb.classes_]


def split_dataset(paths, onehot, class_names, seed=SEED):
    """The tutorial's 80/20 split, stratified on the one-hot labels: (trainP, testP, trainY, testY).

    Splitting the paths with the same arguments picks the same images as the tutorial's split of
    the pixel arrays. Stratifying on the one-hot rows (not on class indices) matters:
    scikit-learn orders the strata by their text, and another order would give another split.
    """
    try:
        return train_test_split(paths, onehot, test_size=TEST_SIZE, stratify=onehot,
                                random_state=seed)
    except ValueError:
        # Say what scikit-learn needs instead of showing its traceback.
        counts = ", ".join(f"{name}: {int(n)}" for name, n in zip(class_names, onehot.sum(axis=0)))
        raise UserError(f"too few images for a stratified 80/20 split ({counts}); each class "
                        f"needs at least {min_images_per_class(len(class_names))} "
                        "images") from None


def min_images_per_class(num_classes):
    """The fewest images per class for which the stratified 80/20 split always works.

    scikit-learn puts ceil(20% of the images) on the test side and needs one image of every
    class on each side: 3 per class for two classes, 4 for three, 5 from five classes on.
    """
    m = 2
    while True:
        test = math.ceil(TEST_SIZE * num_classes * m)
        if test >= num_classes and num_classes * m - test >= num_classes:
            return m
        m += 1


def patients_of(dataset, paths):
    """The patient id of each image from `<dataset>/manifest.csv`, or None with no manifest.

    An image the manifest does not list counts as a patient of its own.
    """
    manifest = read_manifest(dataset)
    if manifest is None:
        return None
    relative = [os.path.relpath(path, dataset).replace(os.sep, "/") for path in paths]
    return np.array([manifest[file]["patient_id"] if file in manifest else f"file:{file}"
                     for file in relative])


def split_by_patient(paths, onehot, class_names, patients, seed=SEED):
    """An 80/20 split that keeps every patient's images on one side, stratified by class.

    scikit-learn's StratifiedGroupKFold with 5 folds: the first fold's held-out fifth of the
    patients is the test split. Returns what `split_dataset` returns.
    """
    classes = onehot.argmax(axis=1)
    folds = StratifiedGroupKFold(n_splits=round(1 / TEST_SIZE), shuffle=True, random_state=seed)
    try:
        train_idx, test_idx = next(folds.split(paths, classes, groups=patients))
    except ValueError as err:
        raise UserError(f"cannot split {len(set(patients))} patients into 5 folds ({err}); "
                        "use --split random") from None
    for side, idx in (("training", train_idx), ("test", test_idx)):
        missing = [name for c, name in enumerate(class_names) if c not in set(classes[idx])]
        if missing:
            raise UserError(f"the patient split leaves no {', '.join(missing)} image on the "
                            f"{side} side; each class needs images of more patients "
                            "(or use --split random)")
    paths = np.array(paths)
    return list(paths[train_idx]), list(paths[test_idx]), onehot[train_idx], onehot[test_idx]


# ---------------------------------------------------------------------------------------------
# Input pipelines
# ---------------------------------------------------------------------------------------------


def reader(images):
    """tf.data step: slot -> the uint8 224x224x3 image `images` holds there."""
    def read(slot):
        image = tf.numpy_function(images.read, [slot], tf.uint8, stateful=False)
        image.set_shape((*IMAGE_SIZE, 3))
        return image

    return read


def image_batches(images, paths, batch_size):
    """The images at `paths`, in order, scaled to [0, 1]; never augmented."""
    dataset = tf.data.Dataset.from_tensor_slices(images.slots(paths))
    dataset = dataset.map(reader(images)).batch(batch_size)
    return dataset.map(scale_pixels).prefetch(tf.data.AUTOTUNE)


def make_train_dataset(inputs, labels, batch_size, seed, images=None):
    """Shuffled, endlessly repeated training batches of (input, one-hot label).

    With `images`, `inputs` are image paths: only their slots are shuffled and each batch reads
    its images from `images` and augments them. The tutorial's ImageDataGenerator(
    rotation_range=15, fill_mode="nearest") becomes Keras's RandomRotation layer: a factor is a
    fraction of a full turn, so 15/360 rotates by up to 15 degrees either way. This runs on
    tf.data's thread while the model computes. Without `images`, `inputs` are cached feature
    vectors, used as they are.
    """
    if images is not None:
        inputs = images.slots(inputs)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = dataset.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True).repeat()
    if images is None:
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    rotate = layers.RandomRotation(factor=15 / 360, fill_mode="nearest", seed=seed)
    read = reader(images)
    dataset = dataset.map(lambda slot, y: (read(slot), y)).batch(batch_size)
    dataset = dataset.map(lambda x, y: (rotate(scale_pixels(x), training=True), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Build the model: frozen VGG16 base + the tutorial's head
# ---------------------------------------------------------------------------------------------


def keras_cache_folder():
    """Where Keras looks for downloaded weights (KERAS_HOME, else ~/.keras), plus `models/`."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")


def load_vgg16_base(weights):
    """VGG16 without its classifier on a 224x224x3 input, with `weights` imagenet|none|PATH."""
    input_tensor = keras.Input(shape=(*IMAGE_SIZE, 3))
    if weights == "none":
        return keras.applications.VGG16(weights=None, include_top=False,
                                        input_tensor=input_tensor)
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(weights="imagenet", include_top=False,
                                            input_tensor=input_tensor)
        except Exception as err:  # Keras raises a bare Exception for a failed download
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"cannot get the VGG16 ImageNet weights ({reason}). Offline, copy "
                f"{VGG16_NOTOP_FILE} into {keras_cache_folder()}/ or pass --weights PATH "
                "(a local copy of that file), or --weights none for random weights"
            ) from None
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights!r}: no such file; use imagenet, none or the path "
                        f"of a local {VGG16_NOTOP_FILE}")
    try:
        return keras.applications.VGG16(weights=weights, include_top=False,
                                        input_tensor=input_tensor)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"--weights {weights!r} is not a VGG16 no-top weights file like "
                        f"{VGG16_NOTOP_FILE}: {reason}") from None


def build_model(baseModel, num_classes=2):
    """The tutorial's network: frozen VGG16 base, then pool, flatten, dense, dropout, softmax."""
    # construct the head of the model that will be placed on top of the base model
    headModel = baseModel.output
    headModel = layers.AveragePooling2D(pool_size=(4, 4))(headModel)
    headModel = layers.Flatten(name="flatten")(headModel)
    headModel = layers.Dense(64, activation="relu")(headModel)
    headModel = layers.Dropout(0.5)(headModel)
    headModel = layers.Dense(num_classes, activation="softmax")(headModel)

    # place the head on top of the base model (this is the model we will train)
    model = keras.Model(inputs=baseModel.input, outputs=headModel)

    # freeze every layer of the base so only the head is trained
    for layer in baseModel.layers:
        layer.trainable = False
    return model


def make_feature_extractor(model):
    """The frozen part of `model` (VGG16, pooling, flatten) as a function: images -> 512 features.

    It runs in inference mode and computes only the regions the pooling reads (FEATURE_CROPS),
    so its output equals the frozen layers' output on the whole 224x224 image.
    """
    frozen = model.layers[1:model.layers.index(model.get_layer("flatten")) + 1]

    @tf.function(reduce_retracing=True)
    def extract(images):
        x = images[:, :FEATURE_CROPS["input"], :FEATURE_CROPS["input"], :]
        for layer in frozen:
            x = layer(x, training=False)
            if layer.name in FEATURE_CROPS:
                x = x[:, :FEATURE_CROPS[layer.name], :FEATURE_CROPS[layer.name], :]
        return x

    return extract


def make_head(model):
    """The trainable layers after `flatten` (Dense, Dropout, Dense) as a model on 512 features.

    It shares its layers, and so its weights, with `model`: training the head trains the model.
    """
    features = keras.Input(shape=(model.get_layer("flatten").output.shape[-1],))
    x = features
    for layer in model.layers[model.layers.index(model.get_layer("flatten")) + 1:]:
        x = layer(x)
    return keras.Model(features, x, name="head")


def extract_features(extract, images, paths, batch_size):
    """The frozen part's output for the images at `paths`, computed once: (len(paths), 512)."""
    return np.concatenate([extract(batch).numpy()
                           for batch in image_batches(images, paths, batch_size)])


class HeadTrainer(keras.Model):
    """Trains only the head: each batch's images pass through the frozen base before the tape.

    Keras's own `train_step` differentiates everything `call` computes. Running the base here,
    outside it, records nothing for the 14.7M frozen weights, and the step then trains the head
    on the features exactly as `fit` would. Validation data are features already (`call`).
    """

    def __init__(self, head, extract=None):
        super().__init__()
        self.head = head
        self._extract = extract  # None: the training batches are cached features

    def call(self, features, training=False):
        return self.head(features, training=training)

    def train_step(self, data):
        inputs, y = data
        features = inputs if self._extract is None else self._extract(inputs)
        return super().train_step((features, y))


# ---------------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------------


def make_optimizer(lr=INIT_LR, epochs=EPOCHS):
    """Adam with the tutorial's `decay=INIT_LR / EPOCHS`, which Keras 3 no longer accepts.

    Keras 2 applied that decay per batch as lr / (1 + decay * iterations). InverseTimeDecay
    with decay_steps=1 computes exactly that from the optimizer's iteration count; dropping
    `decay` instead would silently train at a constant learning rate.
    """
    schedule = keras.optimizers.schedules.InverseTimeDecay(
        initial_learning_rate=lr, decay_steps=1, decay_rate=lr / epochs)
    return keras.optimizers.Adam(learning_rate=schedule)


def train(head, train_inputs, trainY, testF, testY, epochs, batch_size, lr, seed, extract=None,
          images=None):
    """Compile as the tutorial did and train the head, validating on the test split each epoch.

    `train_inputs` are image paths in `images` with `extract` (augmented, through the frozen
    base every epoch) or cached features without them. `testF` are the test split's cached
    features.
    """
    print("[INFO] compiling model...")
    trainer = HeadTrainer(head, extract)
    # Two classes: a 2-unit softmax with binary cross-entropy, as in the tutorial. More classes:
    # categorical cross-entropy, the loss that matches a softmax over all of them.
    loss = "binary_crossentropy" if trainY.shape[1] == 2 else "categorical_crossentropy"
    trainer.compile(loss=loss, optimizer=make_optimizer(lr, epochs), metrics=["accuracy"])

    print("[INFO] training head...")
    return trainer.fit(
        make_train_dataset(train_inputs, trainY, batch_size, seed, images),
        # as the tutorial: whole batches only, len(train) // batch_size steps per epoch
        steps_per_epoch=len(train_inputs) // batch_size,
        validation_data=(testF, testY),
        validation_batch_size=batch_size,
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself; Keras warns if asked to as well
        # Keras's live bar on a terminal; one line per epoch in logs and CI output.
        verbose=1 if sys.stdout.isatty() else 2,
    )


# ---------------------------------------------------------------------------------------------
# Evaluate, plot, save
# ---------------------------------------------------------------------------------------------


def wilson(successes, trials):
    """The 95% Wilson score interval of successes/trials (SciPy's), or None with no trials."""
    if trials == 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def metric(successes, trials):
    """{"value", "ci95", "successes", "trials"}: a proportion and what it rests on."""
    return {"value": float(successes / trials) if trials else None,
            "ci95": wilson(successes, trials), "successes": int(successes),
            "trials": int(trials)}


def describe(name, m):
    """`sensitivity: 1.0000 (95% CI 0.57-1.00)`: the tutorial's line plus its interval."""
    if m["value"] is None:
        return f"{name}: undefined (no images)"
    return f"{name}: {m['value']:.4f} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"


def evaluate(head, testF, testY, class_names, batch_size):
    """Print the classification report, confusion matrix, accuracy, sensitivity, specificity.

    The head on the test split's cached features predicts what the whole model predicts on the
    test images; only the frozen base's recomputation is skipped. Each proportion comes with
    its 95% Wilson interval: 5 of 5 test images support a sensitivity between 0.57 and 1.
    Returns the metrics, the predicted probabilities and the true class indices.
    """
    print("[INFO] evaluating network...")
    probabilities = head.predict(testF, batch_size=batch_size, verbose=0)
    predIdxs = np.argmax(probabilities, axis=1)
    trueIdxs = testY.argmax(axis=1)
    labels = list(range(len(class_names)))

    # zero_division=0: a model that never predicts a class gets precision 0, not a warning
    print(classification_report(trueIdxs, predIdxs, labels=labels, target_names=class_names,
                                zero_division=0))

    # Each class against the rest: sensitivity = its recall, specificity = the other classes'
    # images not called it. With two classes, covid's are the tutorial's two numbers.
    cm = confusion_matrix(trueIdxs, predIdxs, labels=labels)
    total = cm.sum()
    per_class = {}
    for c, name in enumerate(class_names):
        tp, positives = cm[c, c], cm[c].sum()
        tn = total - positives - (cm[:, c].sum() - tp)
        per_class[name] = {"sensitivity": metric(tp, positives),
                           "specificity": metric(tn, total - positives)}
    results = {"confusion_matrix": cm.tolist(), "accuracy": metric(np.trace(cm), total),
               "per_class": per_class}

    print(cm)
    print(describe("acc", results["accuracy"]))
    if len(class_names) == 2:
        # sensitivity = recall of covid (index 0), specificity = recall of normal (index 1)
        results["positive_class"] = class_names[0]
        results["sensitivity"] = per_class[class_names[0]]["sensitivity"]
        results["specificity"] = per_class[class_names[0]]["specificity"]
        print(describe("sensitivity", results["sensitivity"]))
        print(describe("specificity", results["specificity"]))
        # the positive class's probability ranks the images; AUC 0.5 is chance
        results["roc_auc"] = float(roc_auc_score(trueIdxs == 0, probabilities[:, 0]))
    else:
        for name, m in per_class.items():
            print(f"{name}: {describe('sensitivity', m['sensitivity'])}, "
                  f"{describe('specificity', m['specificity'])}")
        results["roc_auc"] = float(roc_auc_score(trueIdxs, probabilities, labels=labels,
                                                 multi_class="ovr"))
    print(f"ROC AUC: {results['roc_auc']:.4f}")
    return results, probabilities, trueIdxs


def plot_history(history, path):
    """Plot train/val loss and accuracy per epoch in the tutorial's style; returns the figure."""
    N = len(history["loss"])
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        ax.plot(np.arange(0, N), history["loss"], label="train_loss")
        ax.plot(np.arange(0, N), history["val_loss"], label="val_loss")
        ax.plot(np.arange(0, N), history["accuracy"], label="train_acc")
        ax.plot(np.arange(0, N), history["val_accuracy"], label="val_acc")
        ax.set_title("Training Loss and Accuracy on COVID-19 Dataset")
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        ax.legend(loc="lower left")
        fig.savefig(path)
    return fig


def plot_roc(trueIdxs, probabilities, class_names, path):
    """The ROC curve on the test split (one curve per class against the rest if more than two)."""
    shown = class_names[:1] if len(class_names) == 2 else class_names
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        for c, name in enumerate(shown):
            fpr, tpr, _ = roc_curve(trueIdxs == c, probabilities[:, c])
            ax.plot(fpr, tpr, label=f"{name} vs rest" if len(shown) > 1 else name)
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
        ax.set_title("ROC curve on the test split")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.legend(loc="lower right")
        fig.savefig(path)
    return fig


def save_model(model, path, class_names):
    """Save the whole model as HDF5, with the class names in the file's attributes.

    predict_covid19.py reads them back, so it never has to guess which output is which class.
    """
    # HDF5 is the tutorial's format; Keras 3 logs a warning calling it legacy on every save.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        model.save(path)
    finally:
        absl_logger.setLevel(level)
    with h5py.File(path, "a") as f:
        f.attrs[CLASS_NAMES_ATTR] = json.dumps(class_names)


def versions():
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "scikit-learn": sklearn.__version__,
            "scipy": scipy.__version__, "numpy": np.__version__, "opencv": cv2.__version__}


def write_report(path, results, class_names, counts, args, split_info, test_files):
    """The JSON report: everything needed to judge, and to repeat, this run."""
    report = {
        "class_names": class_names,
        "counts": counts,
        "split": split_info,
        # relative to --dataset: predict_covid19.py on these is prediction on unseen images
        "test_files": [os.path.relpath(path, args.dataset) for path in test_files],
        "augmentation": ("off (--cache-features)" if args.cache_features
                         else "random rotation up to 15 degrees either way"),
        **results,
        "confidence_level": CONFIDENCE,
        "seed": args.seed,
        "flags": vars(args),
        "versions": versions(),
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def roc_path(plot):
    """roc.png in the folder of the loss/accuracy plot."""
    return os.path.join(os.path.dirname(plot), "roc.png")


def check_outputs(args):
    """Fail now, not after training, if an output cannot be written or would land in the data."""
    outputs = [(args.model, "--model", ".h5"), (args.plot, "--plot", ".png"),
               (args.report, "--report", ".json"), (roc_path(args.plot), "--plot", ".png")]
    for path, flag, suffix in outputs:
        check_output_path(path, flag, suffix=suffix)
        if os.path.isdir(args.dataset) and same_or_inside(path, args.dataset):
            raise UserError(f"{flag} {path!r} is inside --dataset {args.dataset!r}; write "
                            "outputs elsewhere, source data is never modified")
    names = [os.path.abspath(path) for path, _, _ in outputs]
    if len(set(names)) < len(names):
        raise UserError("--model, --plot, --report and roc.png (beside --plot) must be four "
                        "different files")


def split(args, paths, onehot, class_names):
    """The chosen split, plus what the report says about patients."""
    patients = patients_of(args.dataset, paths)
    if args.split == "patient":
        if patients is None:
            raise UserError(f"--split patient needs {os.path.join(args.dataset, MANIFEST)}, "
                            "which the dataset builders write; rebuild the dataset with them "
                            "or use --split random")
        parts = split_by_patient(paths, onehot, class_names, patients, args.seed)
    else:
        parts = split_dataset(paths, onehot, class_names, args.seed)
    shared = None  # unknown without a manifest
    if patients is not None:
        patient = dict(zip(paths, patients))
        shared = len({patient[p] for p in parts[0]} & {patient[p] for p in parts[1]})
    if shared:
        print(f"[WARNING] {shared} patient(s) have images on both sides of the random split, "
              "so the test images are not all new patients; --split patient keeps each "
              "patient on one side", file=sys.stderr)
    return parts, {"kind": args.split, "patients_on_both_sides": shared}


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    # Check the outputs before spending minutes on training.
    check_outputs(args)

    # Seeds Python's random, NumPy and TensorFlow in one call.
    keras.utils.set_random_seed(args.seed)

    # Load VGG16 first: a wrong --weights, or no network for ImageNet's, fails in seconds
    # instead of after reading every image.
    print(f"[INFO] loading VGG16 base (weights: {args.weights})...")
    baseModel = load_vgg16_base(args.weights)

    # find and decode the images (once), one-hot encode the labels, split 80/20
    print("[INFO] loading images...")
    images, paths, labels = find_images(args.dataset)
    with contextlib.closing(images):
        train_and_report(args, baseModel, images, paths, labels)
    return 0


def train_and_report(args, baseModel, images, paths, labels):
    onehot, class_names = encode_labels(labels)
    (trainP, testP, trainY, testY), split_info = split(args, paths, onehot, class_names)
    print(f"[INFO] {len(paths)} images, classes {class_names}: "
          f"{len(trainP)} for training, {len(testP)} for testing")
    if args.batch_size > len(trainP):
        raise UserError(f"--batch-size {args.batch_size} is larger than the training split "
                        f"({len(trainP)} images); use --batch-size {len(trainP)} or less")

    # the tutorial's head on the frozen base, one softmax output per class
    model = build_model(baseModel, len(class_names))
    extract, head = make_feature_extractor(model), make_head(model)

    # The base is frozen and test images are never augmented, so their features are the same
    # every epoch: compute them once. With --cache-features the training images' too.
    testF = extract_features(extract, images, testP, args.batch_size)
    if args.cache_features:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        H = train(head, extract_features(extract, images, trainP, args.batch_size), trainY,
                  testF, testY, args.epochs, args.batch_size, args.lr, args.seed)
    else:
        H = train(head, trainP, trainY, testF, testY, args.epochs, args.batch_size, args.lr,
                  args.seed, extract=extract, images=images)

    results, probabilities, trueIdxs = evaluate(head, testF, testY, class_names,
                                                args.batch_size)
    if args.cache_features:
        print("(trained with --cache-features: no augmentation)")

    # Every output goes to a temporary file first and all are renamed into place together at
    # the end: a crash or Ctrl-C anywhere before leaves the earlier files exactly as they were.
    print("[INFO] saving COVID-19 detector model...")
    counts = {side: {name: int(n) for name, n in zip(class_names, Y.sum(axis=0))}
              for side, Y in (("train", trainY), ("test", testY))}
    try:
        with atomic_outputs(args.model, args.plot, roc_path(args.plot), args.report) as tmp:
            model_tmp, plot_tmp, roc_tmp, report_tmp = tmp
            plt.close(plot_history(H.history, plot_tmp))
            plt.close(plot_roc(trueIdxs, probabilities, class_names, roc_tmp))
            write_report(report_tmp, results, class_names, counts, args, split_info, testP)
            save_model(model, model_tmp, class_names)
    except OSError as err:  # a full disk, a folder removed meanwhile
        raise UserError(f"cannot write the outputs ({err.strerror or err}); every earlier "
                        f"{args.model}, {args.plot} and {args.report} was kept") from None
    print(f"[INFO] wrote {args.model} (model), {args.plot} and {roc_path(args.plot)} (plots), "
          f"{args.report} (report)")


if __name__ == "__main__":
    sys.exit(main())
