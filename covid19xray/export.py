"""The trained model where users take it next: a TensorFlow SavedModel, and TensorFlow Lite.

Both are Keras's own exports (`keras.export`) of the whole float32 network, and both take what
the model takes: a batch of 224x224 RGB images scaled to [0, 1], float32, shape
(n, 224, 224, 3). They return the softmax's probabilities in the order of the class names. Plain
TensorFlow runs them, with nothing of this project:

- the SavedModel folder: `tf.saved_model.load(folder).serve(images)`, or its
  `serving_default` signature (TF Serving); `class_names.json` beside its files names the
  outputs;
- the TensorFlow Lite file: `tf.lite.Interpreter(model_path=file)`, one image at a time as
  converted (resize its input for a batch).

A model with an input check (`input_check`) carries it into both: the SavedModel's
`serve_checked(images)`, and the TensorFlow Lite file's outputs, give beside the probabilities
each image's `input_distance` (to the nearest training image, in the check's unit) and its
`input_check` (0 ok, 1 unlike_training, 2 rejected), with the thresholds built in; the
SavedModel folder's `input_check.json` writes them out. So an app can refuse a photograph as
predict_covid19.py does.
"""

import json
import os

import numpy as np

from .calibration import EPSILON
from .cli import lazy_import
from .input_check import OUTCOMES, outcome_outputs

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# Beside the SavedModel's own files: the class of each output, in order, and the input check.
CLASS_NAMES_FILE = "class_names.json"
INPUT_CHECK_FILE = "input_check.json"


def network_with_check(model, input_check):
    """`model` with the input check's outputs (`input_check.outcome_outputs`), on an input
    named `images`: what both exports run when the model has a check."""
    images = keras.Input(shape=model.input_shape[1:], name="images")
    outputs = keras.Model(model.inputs, outcome_outputs(model, input_check))
    return keras.Model(images, outputs(images))


def input_check_facts(input_check):
    """What `input_check.json` says: the outputs and the thresholds they were computed with."""
    return {"outputs": {"input_distance": "distance to the nearest training image, in units of "
                                          "the median distance of a training image to its "
                                          "nearest other",
                        "input_check": dict(enumerate(OUTCOMES))},
            "unlike_training_above": input_check.unlike_factor,
            "rejected_above": input_check.reject_factor,
            "fitted_on": input_check.fitted_on}


def export_saved_model(model, folder, class_names, input_check=None):
    """Write `model` as a SavedModel into the new `folder`, with its class names, and its input
    check as a second endpoint when it has one.

    This is what `model.export(folder)` writes, less one copy of the weights: there, the
    `track(model)` it does first stores every weight a second time (keras-team/keras#23553; seen
    with Keras 3.15.1: a 118 MB folder for the 59 MB of VGG16 and its head, and twice the memory
    in whatever loads it). The endpoint's traced function names every variable it uses, so it
    needs no tracking.
    """
    archive = keras.export.ExportArchive()
    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images")]
    archive.add_endpoint("serve", lambda images: model(images, training=False),
                         input_signature=signature)
    if input_check is not None:
        with_check = network_with_check(model, input_check)
        archive.add_endpoint("serve_checked", lambda images: with_check(images, training=False),
                             input_signature=signature)
    archive.write_out(folder, verbose=False)
    facts = [(CLASS_NAMES_FILE, class_names)]
    if input_check is not None:
        facts.append((INPUT_CHECK_FILE, input_check_facts(input_check)))
    for name, value in facts:
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1)
            f.write("\n")


def export_tflite(model, path, input_check=None):
    """Write `model` as a TensorFlow Lite file at `path` (named .tflite): Keras's converter,
    float32, no quantisation, so that it gives the model's probabilities; with an input check,
    its outputs too (`probabilities`, `input_distance`, `input_check`, by name)."""
    network = model if input_check is None else network_with_check(model, input_check)
    network.export(path, format="litert", verbose=False)


def with_recalibration(model, recalibration):
    """`model` whose output is its probabilities after `recalibration` (a
    `calibration.Recalibration`), inside the graph, for the exports: the same layers, so the
    input check's outputs read the same network."""
    p = keras.ops.cast(model.output, "float32")
    if recalibration.offsets:
        z = (keras.ops.log(keras.ops.clip(p, EPSILON, 1.0)) / recalibration.temperature
             + np.asarray(recalibration.offsets, np.float32))
        return keras.Model(model.inputs, keras.ops.softmax(z, axis=-1))
    c = recalibration.positive
    q = keras.ops.clip(p[:, c], EPSILON, 1 - EPSILON)
    fixed = keras.ops.sigmoid(recalibration.intercept + recalibration.slope
                              * (keras.ops.log(q) - keras.ops.log(1 - q)))
    columns = [fixed, 1 - fixed] if c == 0 else [1 - fixed, fixed]
    return keras.Model(model.inputs, keras.ops.stack(columns, axis=-1))
