"""Classify chest X-rays with a model that train_covid19.py saved, and show where it looked.

For education only: this is not a medical device and its output is not a diagnosis.

Usage:
    python predict_covid19.py --model covid19.h5 xray.jpg
    python predict_covid19.py --model covid19.h5 dataset/covid more.png --csv predictions.csv
    python predict_covid19.py --model covid19.h5 xray.jpg --gradcam gradcam/

Prints one line per image: the predicted class and every class's probability. The class names
come from the model file (train_covid19.py stores them there), and each image is prepared by
the same `load_xray` and `scale_pixels` that training used. `--gradcam DIR` writes each X-ray
with a Grad-CAM heatmap of the predicted class overlaid: the regions whose features raised that
class's score most (Selvaraju et al. 2017; keras-io's "Grad-CAM class activation visualization").
Unreadable images are reported and skipped.
"""

import csv
import json
import os
import sys

# Keep TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines) off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import h5py
import keras
import numpy as np
import tensorflow as tf

from covid19_common import (
    CLASS_NAMES_ATTR,
    ArgumentParser,
    UserError,
    atomic_output,
    check_output_folder,
    check_output_path,
    cli,
    list_images,
    load_xray,
    scale_pixels,
)

# How strongly the heatmap shows over the X-ray (keras-io's example uses 0.4).
HEATMAP_ALPHA = 0.4


def parse_args(argv=None):
    ap = ArgumentParser(description="Classify chest X-rays with a trained COVID-19 model.")
    ap.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                    help="X-ray image files, or folders searched for images recursively")
    ap.add_argument("-m", "--model", default="covid19.h5",
                    help="model saved by train_covid19.py (default: %(default)s)")
    ap.add_argument("--csv", help="also write the predictions to this CSV file")
    ap.add_argument("--gradcam", metavar="DIR",
                    help="write each image with its Grad-CAM heatmap overlaid into this folder")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    args = ap.parse_args(argv)
    if args.batch_size <= 0:
        ap.error(f"--batch-size must be greater than 0, got {args.batch_size}")
    return args


# ---------------------------------------------------------------------------------------------
# Load the model and its class names
# ---------------------------------------------------------------------------------------------


def load_classifier(path):
    """The Keras model at `path` and its class names, in the order of its outputs."""
    if not os.path.isfile(path):
        raise UserError(f"--model {path!r}: no such file; train one with train_covid19.py")
    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(CLASS_NAMES_ATTR)
    except OSError:
        raise UserError(f"--model {path!r} is not an HDF5 model file (.h5) saved by "
                        "train_covid19.py") from None
    if stored is None:
        raise UserError(f"--model {path!r} has no class names, so its outputs cannot be named; "
                        "use a model saved by this train_covid19.py (retrain if it is older)")
    class_names = json.loads(stored)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a damaged or foreign file
        raise UserError(f"--model {path!r} cannot be loaded as a Keras model: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if model.output_shape[-1] != len(class_names):
        raise UserError(f"--model {path!r} has {model.output_shape[-1]} outputs but "
                        f"{len(class_names)} class names ({', '.join(class_names)}); it was not "
                        "saved by train_covid19.py as it is")
    return model, class_names


# ---------------------------------------------------------------------------------------------
# Find, load and classify the images
# ---------------------------------------------------------------------------------------------


def find_inputs(inputs):
    """The image files named, and those under the folders named, in the order given."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            found.extend(list_images(item))
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise UserError(f"{item!r}: no such file or folder")
    return found


def load_images(image_paths):
    """(paths, uint8 images) of the readable files; unreadable ones are reported and skipped."""
    kept, images = [], []
    for path in image_paths:
        image = load_xray(path)
        if image is None:
            print(f"[WARNING] skipping {path}: not a readable image", file=sys.stderr)
            continue
        kept.append(path)
        images.append(image)
    if not kept:
        raise UserError("none of the given images could be read")
    return kept, np.stack(images)


def predict(model, images, batch_size):
    """Class probabilities for uint8 images, preprocessed exactly as in training."""
    return model.predict(np.asarray(scale_pixels(images)), batch_size=batch_size, verbose=0)


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


def last_conv_layer(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]


def gradcam_model(model):
    """`model` with the last convolutional layer's output as a second output; build it once."""
    return keras.Model(model.inputs, [last_conv_layer(model).output, model.output])


def grad_cam(grad_model, image, class_index):
    """Grad-CAM heatmap in [0, 1] of `class_index` for one uint8 image, at the conv map's size.

    The gradient of the class score with respect to the last convolutional layer's output,
    averaged over each channel, weights that channel; the weighted sum, with negatives
    clipped, shows where the evidence for the class is.
    """
    batch = scale_pixels(image[None])
    with tf.GradientTape() as tape:
        conv_output, predictions = grad_model(batch, training=False)
        score = predictions[:, class_index]
    grads = tape.gradient(score, conv_output)
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.nn.relu(tf.reduce_sum(conv_output[0] * weights, axis=-1)).numpy()
    peak = heatmap.max()
    return heatmap / peak if peak > 0 else heatmap  # all zero: no evidence anywhere


def overlay(path, heatmap):
    """The X-ray at `path`, at its own size, with `heatmap` in the jet colour map over it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
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


def write_gradcams(model, paths, images, predicted, folder):
    os.makedirs(folder, exist_ok=True)
    grad_model, used = gradcam_model(model), set()
    for path, image, class_index in zip(paths, images, predicted):
        target = os.path.join(folder, gradcam_name(path, used))
        with atomic_output(target) as temporary:
            cv2.imwrite(temporary, overlay(path, grad_cam(grad_model, image, class_index)))
    print(f"[INFO] wrote {len(paths)} Grad-CAM overlay(s) to {folder}")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_predictions(paths, probabilities, class_names):
    for path, row in zip(paths, probabilities):
        scores = ", ".join(f"{name} {p:.4f}" for name, p in zip(class_names, row))
        print(f"{path}: {class_names[int(row.argmax())]} ({scores})")


def write_csv(path, paths, probabilities, class_names):
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "predicted", *[f"p_{name}" for name in class_names]])
            for image_path, row in zip(paths, probabilities):
                writer.writerow([image_path, class_names[int(row.argmax())],
                                 *[f"{p:.6f}" for p in row]])


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    # check every output before the slow work
    if args.csv:
        check_output_path(args.csv, "--csv", suffix=".csv")
    if args.gradcam:
        check_output_folder(args.gradcam, "--gradcam")
    image_paths = find_inputs(args.images)
    if not image_paths:
        raise UserError(f"no images in {', '.join(args.images)}")
    model, class_names = load_classifier(args.model)

    paths, images = load_images(image_paths)
    probabilities = predict(model, images, args.batch_size)
    print_predictions(paths, probabilities, class_names)
    if args.csv:
        write_csv(args.csv, paths, probabilities, class_names)
        print(f"[INFO] wrote {args.csv}")
    if args.gradcam:
        write_gradcams(model, paths, images, probabilities.argmax(axis=1), args.gradcam)
    return 0


if __name__ == "__main__":
    sys.exit(main())
