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
"""

import json
import os

from .cli import lazy_import

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# Beside the SavedModel's own files: the class of each output, in order.
CLASS_NAMES_FILE = "class_names.json"


def export_saved_model(model, folder, class_names):
    """Write `model` as a SavedModel into the new `folder`, with its class names.

    This is what `model.export(folder)` writes, less one copy of the weights: there, the
    `track(model)` it does first stores every weight a second time (keras-team/keras#23553; seen
    with Keras 3.15.1: a 118 MB folder for the 59 MB of VGG16 and its head, and twice the memory
    in whatever loads it). The endpoint's traced function names every variable it uses, so it
    needs no tracking.
    """
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec((None, *model.input_shape[1:]),
                                                        tf.float32, name="images")])
    archive.write_out(folder, verbose=False)
    with open(os.path.join(folder, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
        json.dump(class_names, f)
        f.write("\n")


def export_tflite(model, path):
    """Write `model` as a TensorFlow Lite file at `path` (named .tflite): Keras's converter,
    float32, no quantisation, so that it gives the model's probabilities."""
    model.export(path, format="litert", verbose=False)
