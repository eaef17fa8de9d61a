"""From a film's bytes to what the model says of it: predict_covid19.py and serve_covid19.py
both classify through `classify`, so a film gets the same probabilities, input check and
Grad-CAM from the command line and from the page.

One forward pass gives everything (`make_classifier`): the class probabilities, each image's
description for the input check, and the last convolution's output (`block5_conv3`). Grad-CAM
needs the gradient of the class's score with respect to that output, and from there to the
score there is only `block5_pool` and the head; so the heatmaps are a backward step through
those few layers (`_gradcam_tail`), not a second pass through VGG16 per film.
"""

import dataclasses
import io
import sys

import cv2
import numpy as np

from . import spreadsheet
from .cli import UserError, capture_stderr_fd, lazy_import, shown
from .frozen import (
    description_output,
    layers_missing_for_description,
    model_with_precision,
)
from .images import NotAnImage, decode, model_input, scale_pixels, with_decoder_messages
from .input_check import OK, REJECTED, UNLIKE_TRAINING
from .model import check_precision, compiled
from .model_file import read_model_file

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# How strongly the heatmap shows over the X-ray (keras-io's example uses 0.4).
HEATMAP_ALPHA = 0.4


# ---------------------------------------------------------------------------------------------
# The model, loaded once
# ---------------------------------------------------------------------------------------------


def last_conv_layer(model):
    """The model's last convolutional layer, or None (a model not shaped as the tutorial's)."""
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return convolutions[-1] if convolutions else None


def _layers_after(model, layer):
    """The layers from `layer`'s output to the model's output, when they form one chain (the
    tutorial's: block5_pool, then the head); else None."""
    layers = model.layers[model.layers.index(layer) + 1:]
    previous = layer
    for current in layers:
        if current.input is not previous.output:
            return None
        previous = current
    return layers if layers and previous.output is model.output else None


def logits(last, x):
    """The class scores before the softmax of the last Dense layer `last`, in float32 as the
    softmax computes them (also under --precision bfloat16).

    Grad-CAM differentiates the score, not the softmax's probability (Selvaraju et al. 2017;
    keras-io's example): the probability's gradient is the score's times p(1 - p), which
    vanishes as the model grows sure, and for two classes it mixes in the other class's score."""
    return keras.ops.matmul(keras.ops.cast(x, "float32"), last.kernel) + last.bias


def _gradcam_tail(model, conv_layer):
    """A compiled function (conv maps, class indices) -> Grad-CAM heatmaps in [0, 1], one per
    image, at the conv map's size (14x14).

    The gradient of each image's class score with respect to its conv map, averaged over each
    channel, weights that channel; the weighted sum, with negatives clipped, shows where the
    evidence for the class is. Each image's score depends on its own map only, so one gradient
    of their sum gives every image's."""
    *middle, last = _layers_after(model, conv_layer)

    def heatmaps(conv_maps, class_indices):
        with tf.GradientTape() as tape:
            tape.watch(conv_maps)
            x = conv_maps
            for layer in middle:
                x = layer(x, training=False)
            total = tf.reduce_sum(tf.gather(logits(last, x), class_indices, axis=1, batch_dims=1))
        conv = tf.cast(conv_maps, tf.float32)
        grads = tf.cast(tape.gradient(total, conv_maps), tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        maps = tf.nn.relu(tf.reduce_sum(conv * weights[:, None, None, :], axis=-1))
        peaks = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        # scaled to a peak of 1; a map that is all zero (no evidence anywhere) stays so
        return tf.where(peaks > 0, maps / tf.where(peaks > 0, peaks, 1.0), maps)

    conv_shape = conv_layer.output.shape[1:]
    compiled = tf.function(heatmaps, input_signature=[
        tf.TensorSpec((None, *conv_shape), conv_layer.output.dtype),
        tf.TensorSpec((None,), tf.int32)])
    compiled._omit_frequent_tracing_warning = True  # as `frozen.on_image_batches` says
    return compiled


@dataclasses.dataclass(frozen=True)
class Classifier:
    """The model as predict and the page run it: one compiled forward pass giving the
    probabilities, with an input check each image's description, and with Grad-CAM the last
    convolution's output; and the backward step that turns those into heatmaps."""

    model: object  # the network in its --precision
    class_names: list
    forward: object  # the compiled pass: a list of its outputs (`outputs`)
    outputs: tuple  # what `forward` gives, in order: "probabilities", "descriptions", "conv"
    input_check: object = None  # an `input_check.InputCheck`, or None for a model without one
    recalibration: object = None  # a `calibration.Recalibration` the model file carries
    heatmaps: object = None  # `_gradcam_tail`, when Grad-CAM was asked for
    classify_rejected: bool = False  # classify what the check rejects too (--classify-rejected)

    def outcome(self, distance):
        return None if self.input_check is None else self.input_check.outcomes([distance])[0]

    def is_classified(self, outcome):
        """Every image gets a class but those the check rejects, unless classify_rejected."""
        return outcome != REJECTED or self.classify_rejected


def load_model(model_path, gradcam=False, precision="float32"):
    """The saved model and what its file carries (`model_file.ModelFile`): its class names,
    its input check (None, said in one line, for a model trained before the check existed)
    and its recalibration."""
    model_file = read_model_file(model_path)
    if gradcam and last_conv_layer(model_file.model) is None:
        raise UserError(f"--gradcam: --model {model_path!r} has no convolutional layer, so "
                        "there is no map to draw; use a model train_covid19.py saved, or leave "
                        "out --gradcam")
    if model_file.input_check is None:
        print(f"[WARNING] --model {shown(model_path)} carries no input check (it was trained "
              "before train_covid19.py fitted one): every image is classified unchecked; "
              "retrain it to have its inputs checked", file=sys.stderr)
    if model_file.recalibration is not None:
        print(f"[INFO] --model {shown(model_path)}: probabilities "
              f"{shown(model_file.recalibration.summary())}")
    check_precision(precision)
    return model_file


def make_classifier(model_path, model_file, precision="float32", gradcam=False,
                    classify_rejected=False):
    """The loaded model in `precision`, with its input check and Grad-CAM built into one
    forward pass; a check that does not fit the model is one line, before any image is read."""
    model = model_with_precision(model_file.model, precision)
    input_check = model_file.input_check
    outputs, tensors = ["probabilities"], [model.output]
    if input_check is not None:
        missing = layers_missing_for_description(model)
        if missing:
            raise UserError(f"--model {model_path!r} has an input check but no layer "
                            f"{', '.join(missing)} for it to read; use a model train_covid19.py "
                            "saved as it is")
        description = description_output(model)
        if description.shape[-1] != input_check.reference.shape[1]:
            raise UserError(f"--model {model_path!r}: its input check describes images with "
                            f"{input_check.reference.shape[1]} numbers, its network with "
                            f"{description.shape[-1]}; use a model train_covid19.py saved as "
                            "it is")
        outputs.append("descriptions")
        tensors.append(description)
    heatmaps = None
    if gradcam:
        conv_layer = last_conv_layer(model)
        if _layers_after(model, conv_layer) is None:
            raise UserError(f"--gradcam: --model {model_path!r} is not one chain of layers "
                            f"after {conv_layer.name}; use a model train_covid19.py saved")
        outputs.append("conv")
        tensors.append(conv_layer.output)
        heatmaps = _gradcam_tail(model, conv_layer)
    network = keras.Model(model.inputs, tensors)
    return Classifier(model, model_file.class_names, compiled(network),
                      tuple(outputs), input_check, model_file.recalibration, heatmaps,
                      classify_rejected)


# ---------------------------------------------------------------------------------------------
# Classify a batch of images
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
    """What the model says of a batch: probabilities (n, classes) after the model's
    recalibration, each image's distance (None without a check) and Grad-CAM heatmap (None
    without Grad-CAM, or for an image that is not classified)."""

    probabilities: np.ndarray
    distances: list
    heatmaps: list


def predict(classifier, images, gradcam=False):
    """The `Batch` for uint8 images, preprocessed exactly as in training, from one forward
    pass (and a backward step through the head for the heatmaps)."""
    computed = classifier.forward(scale_pixels(images))
    if len(classifier.outputs) == 1:  # a model of one output gives its tensor, not a list
        computed = [computed]
    outputs = dict(zip(classifier.outputs, computed))
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
    distances = [None] * len(images)
    if classifier.input_check is not None:
        distances = classifier.input_check.distances(np.asarray(outputs["descriptions"]))
    if classifier.recalibration is not None:  # the new site's probabilities
        probabilities = classifier.recalibration.apply(probabilities)
    heatmaps = [None] * len(images)
    if gradcam:
        # of the class predicted, after recalibration: the class the line names
        maps = classifier.heatmaps(outputs["conv"], probabilities.argmax(1).astype(np.int32))
        heatmaps = [heatmap if classifier.is_classified(classifier.outcome(distance)) else None
                    for heatmap, distance in zip(np.asarray(maps), distances)]
    return Batch(probabilities, list(distances), heatmaps)


def decoded_again(read):
    """The film `read()` gives, decoded again at its own size (a batch keeps only the model's
    224x224 inputs); a damaged file's decoder lines were shown when it was first read."""
    with capture_stderr_fd():
        return decode(read())


def overlay(image, heatmap, max_side=None):
    """The decoded X-ray `image`, at its own size or scaled down to `max_side` pixels on its
    longer side, with `heatmap` in the jet colour map over it."""
    image = shrunk(image, max_side)
    height, width = image.shape[:2]
    heat = cv2.resize(heatmap.astype(np.float32), (width, height))
    colored = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)
    return cv2.addWeighted(colored, HEATMAP_ALPHA, image, 1 - HEATMAP_ALPHA, 0)


def shrunk(image, max_side):
    """`image` scaled down so that its longer side is at most `max_side` (None: as it is)."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# Classify films one batch at a time
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Film:
    """What was made of one film: `error` (why it cannot be used) and nothing else, or its
    class probabilities, the check's distance and outcome, whether it is classified, and its
    heatmap. `damage` is what a decoder said of a file it could still decode."""

    index: int  # its place among the films given
    name: str
    read: object = None  # () -> its bytes, again, for the overlay
    error: str | None = None
    decoder_said: str | None = None  # with an error: the decoder's words
    damage: str | None = None
    probabilities: np.ndarray | None = None
    distance: float | None = None
    outcome: str | None = None
    classified: bool = False
    heatmap: np.ndarray | None = None

    def predicted(self, class_names):
        return class_names[int(self.probabilities.argmax())] if self.classified else None


def _load(read):
    """(uint8 model input, None) of the film `read()` gives, or (None, why it cannot be used)."""
    try:
        return model_input(decode(read())), None
    except NotAnImage as err:
        return None, str(err)


def classify(classifier, films, batch_size, gradcam=False, on_read=None):
    """`Film`s for `films`, (name, read) pairs where `read()` gives a film's bytes or raises
    `images.NotAnImage`. A film that cannot be used is yielded at once, as it is read; the
    others a batch at a time, in order, after their batch's one forward pass. Only a batch of
    decoded images is held at once, whatever the number of films. `on_read()` is called after
    each film is read (a progress bar)."""
    waiting, images = [], []

    def flush():
        batch = predict(classifier, np.stack(images), gradcam)
        for film, row, distance, heatmap in zip(waiting, batch.probabilities, batch.distances,
                                                batch.heatmaps):
            outcome = classifier.outcome(distance)
            yield dataclasses.replace(film, probabilities=row, distance=distance,
                                      outcome=outcome,
                                      classified=classifier.is_classified(outcome),
                                      heatmap=heatmap)

    for index, (name, read) in enumerate(films):
        [((image, reason), message)] = with_decoder_messages(_load, [read])
        if image is None:
            yield Film(index, name, error=reason, decoder_said=message)
        else:
            waiting.append(Film(index, name, read, damage=message))
            images.append(image)
        if on_read is not None:
            on_read()
        if len(images) == batch_size:
            yield from flush()
            waiting, images = [], []
    if images:
        yield from flush()


# ---------------------------------------------------------------------------------------------
# What a film's result says: a printed line, a CSV row
# ---------------------------------------------------------------------------------------------


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


def csv_header(class_names):
    return ["file", "predicted", *[f"p_{name}" for name in class_names], "input_check",
            "input_distance"]


def csv_row(path, row, class_names, outcome=None, distance=None, classified=True):
    cells = ([class_names[int(row.argmax())], *[f"{p:.6f}" for p in row]] if classified
             else [""] * (1 + len(class_names)))
    # a model without a check leaves its cells empty: the columns are the same for every model
    check_cells = ["", ""] if outcome is None else [outcome, f"{distance:.4f}"]
    return [path, *cells, *check_cells]


def csv_text(films, class_names):
    """predict's --csv file, as text, for the usable `films`."""
    text = io.StringIO()
    writer = spreadsheet.Writer(text)
    writer.writerow(csv_header(class_names))
    for film in films:
        if film.error is None:
            writer.writerow(csv_row(film.name, film.probabilities, class_names, film.outcome,
                                    film.distance, film.classified))
    return text.getvalue()
