"""Fine-tune a frozen VGG16 to tell COVID-19 chest X-rays from normal ones.

The tutorial's `train_covid19.py`, ported step for step to TensorFlow 2.21 / Keras 3.
For education only: this is not a medical device and its results are not a diagnosis.

Usage:
    python train_covid19.py --dataset dataset
    python train_covid19.py --dataset dataset --plot plot.png --model covid19.h5 \
        --epochs 25 --batch-size 8 --lr 1e-3 --seed 42 --weights imagenet

`--dataset` holds one folder per class (`covid/`, `normal/`); the folder name is the label.
Writes the trained model (HDF5) and a loss/accuracy plot, and prints the classification report
with accuracy, sensitivity and specificity on the 20% test split.
"""

import argparse
import logging
import os
import sys

# Keep TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines) off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")  # write the plot to a file; no display needed

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer

from covid19_common import (
    IMAGE_SIZE,
    UserError,
    atomic_output,
    check_output_path,
    cli,
    list_images,
    load_xray,
    scale_pixels,
)

# The tutorial's hyperparameters: initial learning rate, epochs and batch size.
INIT_LR = 1e-3
EPOCHS = 25
BS = 8
SEED = 42  # the tutorial's random_state for the train/test split
TEST_SIZE = 0.20

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
    ap = argparse.ArgumentParser(
        description="Fine-tune a frozen VGG16 on chest X-rays (COVID-19 vs normal).",
    )
    ap.add_argument("-d", "--dataset", required=True,
                    help="path to input dataset: one folder of images per class")
    ap.add_argument("-p", "--plot", default="plot.png",
                    help="path to output loss/accuracy plot, PNG (default: %(default)s)")
    ap.add_argument("-m", "--model", default="covid19.h5",
                    help="path to output model, HDF5: the name must end in .h5 "
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
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Load the images and labels
# ---------------------------------------------------------------------------------------------


def load_dataset(dataset):
    """Load every image under `dataset` as uint8 RGB 224x224; the label is the parent folder.

    Returns (data, labels, paths). Files OpenCV cannot decode are skipped with a warning.
    """
    if not os.path.isdir(dataset):
        raise UserError(f"--dataset {dataset!r} is not a folder")
    image_paths = list_images(dataset)
    if not image_paths:
        raise UserError(f"--dataset {dataset!r} has no images (.jpg, .jpeg, .png, .bmp, .tif, "
                        ".tiff); put one folder of images per class in it")

    data, labels, kept = [], [], []
    for image_path in image_paths:
        image = load_xray(image_path)
        if image is None:
            print(f"[WARNING] skipping {image_path}: not a readable image", file=sys.stderr)
            continue
        data.append(image)
        labels.append(os.path.basename(os.path.dirname(image_path)))
        kept.append(image_path)
    if len(kept) < len(image_paths):
        print(f"[WARNING] skipped {len(image_paths) - len(kept)} unreadable image(s)",
              file=sys.stderr)
    if not data:
        raise UserError(f"--dataset {dataset!r}: none of its images could be read")
    return np.stack(data), np.array(labels), kept


def encode_labels(labels):
    """One-hot encode exactly as the tutorial: LabelBinarizer, then to_categorical.

    Classes are in sorted order, so covid is index 0 and normal is index 1.
    """
    class_names = sorted(set(labels))
    if len(class_names) != 2:
        raise UserError(f"found {len(class_names)} class folder(s) ({', '.join(class_names)}); "
                        "this trainer needs exactly two, such as covid/ and normal/")
    lb = LabelBinarizer()
    onehot = keras.utils.to_categorical(lb.fit_transform(labels))
    return onehot, [str(name) for name in lb.classes_]


def split_dataset(data, onehot, paths, class_names, seed=SEED):
    """The tutorial's 80/20 split, stratified on the one-hot labels.

    Stratifying on the one-hot rows (not on class indices) matters: scikit-learn orders the
    strata by their text, and another order would give another split than the tutorial's.
    """
    try:
        return train_test_split(data, onehot, paths, test_size=TEST_SIZE, stratify=onehot,
                                random_state=seed)
    except ValueError:
        # scikit-learn needs 2+ images per class and one per class on each side; 3 per class
        # always suffices. Say so instead of showing its traceback.
        counts = ", ".join(f"{name}: {int(n)}" for name, n in zip(class_names, onehot.sum(axis=0)))
        raise UserError(f"too few images for a stratified 80/20 split ({counts}); "
                        "each class needs at least 3 images") from None


# ---------------------------------------------------------------------------------------------
# Input pipelines
# ---------------------------------------------------------------------------------------------


def make_train_dataset(trainX, trainY, batch_size, seed):
    """Shuffled, endlessly repeated batches with the tutorial's augmentation.

    The tutorial's ImageDataGenerator(rotation_range=15, fill_mode="nearest") becomes Keras's
    RandomRotation layer: a factor is a fraction of a full turn, so 15/360 rotates by up to 15
    degrees either way. Only training images are augmented.
    """
    rotate = layers.RandomRotation(factor=15 / 360, fill_mode="nearest", seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices((trainX, trainY))
    dataset = dataset.shuffle(len(trainX), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (rotate(scale_pixels(x), training=True), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_test_dataset(testX, testY, batch_size):
    """Test batches: scaled to [0, 1], never augmented."""
    dataset = tf.data.Dataset.from_tensor_slices((testX, testY)).batch(batch_size)
    return dataset.map(lambda x, y: (scale_pixels(x), y)).prefetch(tf.data.AUTOTUNE)


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


def build_model(weights="imagenet", num_classes=2):
    """The tutorial's network: frozen VGG16 base, then pool, flatten, dense, dropout, softmax."""
    baseModel = load_vgg16_base(weights)

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


def train(model, trainX, trainY, testX, testY, epochs, batch_size, lr, seed):
    """Compile as the tutorial did and train the head, validating on the test split each epoch."""
    steps_per_epoch = len(trainX) // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {batch_size} is larger than the training split "
                        f"({len(trainX)} images); use --batch-size {len(trainX)} or less")

    print("[INFO] compiling model...")
    # Two classes with a 2-unit softmax and binary cross-entropy, as in the tutorial.
    model.compile(loss="binary_crossentropy", optimizer=make_optimizer(lr, epochs),
                  metrics=["accuracy"])

    print("[INFO] training head...")
    return model.fit(
        make_train_dataset(trainX, trainY, batch_size, seed),
        steps_per_epoch=steps_per_epoch,
        validation_data=make_test_dataset(testX, testY, batch_size),
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself; Keras warns if asked to as well
        # Keras's live bar on a terminal; one line per epoch in logs and CI output.
        verbose=1 if sys.stdout.isatty() else 2,
    )


# ---------------------------------------------------------------------------------------------
# Evaluate, plot, save
# ---------------------------------------------------------------------------------------------


def evaluate(model, testX, testY, class_names, batch_size):
    """Print the classification report, confusion matrix, accuracy, sensitivity, specificity."""
    print("[INFO] evaluating network...")
    predIdxs = np.argmax(model.predict(make_test_dataset(testX, testY, batch_size), verbose=0),
                         axis=1)
    trueIdxs = testY.argmax(axis=1)

    # zero_division=0: a model that never predicts a class gets precision 0, not a warning
    print(classification_report(trueIdxs, predIdxs, labels=[0, 1], target_names=class_names,
                                zero_division=0))

    # sensitivity = recall of covid (index 0), specificity = recall of normal (index 1)
    cm = confusion_matrix(trueIdxs, predIdxs, labels=[0, 1])
    total = cm.sum()
    acc = (cm[0, 0] + cm[1, 1]) / total
    sensitivity = cm[0, 0] / (cm[0, 0] + cm[0, 1])
    specificity = cm[1, 1] / (cm[1, 0] + cm[1, 1])
    print(cm)
    print("acc: {:.4f}".format(acc))
    print("sensitivity: {:.4f}".format(sensitivity))
    print("specificity: {:.4f}".format(specificity))
    return {"confusion_matrix": cm, "accuracy": acc, "sensitivity": sensitivity,
            "specificity": specificity}


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
        with atomic_output(path) as temporary:
            fig.savefig(temporary)
    return fig


def save_model(model, path):
    """Save the whole model as HDF5, replacing `path` only once the file is complete."""
    # HDF5 is the tutorial's format; Keras 3 logs a warning calling it legacy on every save.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with atomic_output(path) as temporary:
            model.save(temporary)
    finally:
        absl_logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    # Check the outputs before spending minutes on training.
    check_output_path(args.model, "--model", suffix=".h5")
    check_output_path(args.plot, "--plot", suffix=".png")

    # Seeds Python's random, NumPy and TensorFlow in one call.
    keras.utils.set_random_seed(args.seed)

    # Build the network first: a wrong --weights, or no network for ImageNet's, fails in
    # seconds instead of after loading every image.
    print(f"[INFO] loading VGG16 base (weights: {args.weights})...")
    model = build_model(args.weights)

    # load the images, one-hot encode the labels, split 80/20
    print("[INFO] loading images...")
    data, labels, paths = load_dataset(args.dataset)
    onehot, class_names = encode_labels(labels)
    trainX, testX, trainY, testY, _, _ = split_dataset(data, onehot, paths, class_names,
                                                           args.seed)
    print(f"[INFO] {len(data)} images, classes {class_names}: "
          f"{len(trainX)} for training, {len(testX)} for testing")

    H = train(model, trainX, trainY, testX, testY, args.epochs, args.batch_size, args.lr,
              args.seed)

    evaluate(model, testX, testY, class_names, args.batch_size)
    plt.close(plot_history(H.history, args.plot))

    print("[INFO] saving COVID-19 detector model...")
    save_model(model, args.model)
    print(f"[INFO] wrote {args.model} (model) and {args.plot} (plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
