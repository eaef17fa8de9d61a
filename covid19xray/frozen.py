"""The frozen base: what VGG16 is given, what it computes, and the key that names the result.

Only the head learns (Dense, Dropout, Dense: 32,962 weights; `head`). Everything before it,
VGG16 plus the head's pooling and flatten, is a fixed function of the image: each image's
output is computed once and kept in the feature cache (`cache`), scheduled by `extractor`.
This module holds the pure code from pixels to that output: `model_batches` (the images of an
`ImageStore`, scaled to [0, 1] and changed by a transform), then the frozen network in a
precision, cropped to what the head reads (`make_feature_extractor`, `feature_crops`: 15% fewer
operations) or whole with the input check's description (`make_joint_extractor`); and the key
(`cache_configuration`) that says which code and settings an output depends on.
"""

import functools
import hashlib
import importlib.metadata
import os

import cv2
import numpy as np
import PIL

from .cli import lazy_import
from .code_digest import code_digest
from .images import scale_pixels
from .transforms import UNCHANGED

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# The head's Flatten: its output is the features the head trains on, the end of the frozen part.
FEATURES_LAYER = "flatten"
# What an image's description reads: every pooling layer's channel means and deviations, and
# one layer's channels on a grid of quarters.
POOLING_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
LAYOUT_LAYER, LAYOUT_GRID = "block4_pool", 2
PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# Where the code that turns a file into the network's output starts: a file's decoding to the
# model's uint8 input, the store's read-back, the transforms, the batches and the networks.
# The key's code digest (`frozen_code_digest`) is of these and everything they reach.
PIXEL_CODE = ("store._decode", "store.ImageStore.read", "store.ImageStore.read_tensor",
              "transforms.Unchanged", "transforms.Rotation", "transforms.BoxMask",
              "transforms.LungMasks", "frozen.model_batches", "frozen.make_feature_extractor",
              "frozen.make_joint_extractor")


# ---------------------------------------------------------------------------------------------
# What VGG16 is given
# ---------------------------------------------------------------------------------------------


def model_batches(images, paths, batch_size, transform=UNCHANGED, parameters=None):
    """The images at `paths` (in the `ImageStore` `images`), in order and in batches, scaled to
    [0, 1] and changed by `transform`, each by its row of `parameters`
    (`transform.parameters`)."""
    if parameters is None:
        parameters = np.zeros((len(paths), 0), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images.slots(paths), parameters))
    dataset = dataset.batch(batch_size).map(
        lambda slots, rows: transform.apply(scale_pixels(images.read_tensor(slots)), rows))
    return without_autotuning(dataset)


def without_autotuning(dataset):
    """`dataset`, prefetching one element, with tf.data's autotuning off: its thread sleeps for
    up to a minute between rounds, and destroying an iterator waits for it to wake, which
    stalled the end of every training run by up to that long."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(1).with_options(options)


# ---------------------------------------------------------------------------------------------
# What it computes
# ---------------------------------------------------------------------------------------------


def frozen_layers(model):
    """The layers from the input to FEATURES_LAYER: VGG16, the head's pooling and flatten."""
    names = [layer.name for layer in model.layers]
    return model.layers[1:names.index(FEATURES_LAYER) + 1]


def _needed_input(layer, needed):
    """How many leading rows (and columns) of `layer`'s input give `needed` correct leading
    rows of its output, or None when that cannot be said for this kind of layer."""
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        if layer.padding != "valid":
            return None
        return (needed - 1) * layer.strides[0] + layer.pool_size[0]
    if isinstance(layer, keras.layers.Conv2D):
        kernel, stride = layer.kernel_size[0], layer.strides[0]
        if layer.padding == "valid":
            return (needed - 1) * stride + kernel
        if stride == 1 and layer.dilation_rate[0] == 1:
            # "same" pads (kernel - 1) // 2 zeros before and the rest after: cropping the input
            # makes the last rows of the output wrong, never the first ones.
            return needed + (kernel - 1) - (kernel - 1) // 2
        return None
    return None


def feature_crops(model):
    """{"input" or a pooling layer's name: rows and columns of its output to keep}, or {} when
    every pixel counts (or when a layer's reach cannot be derived: then nothing is cropped).

    The tutorial's `AveragePooling2D(4x4)` on VGG16's 7x7 output pools "valid": it reads only
    the top-left 4x4 cells, which depend only on the top-left 218x218 pixels and, after each
    pooling layer, on a top-left region of the map. This walks back from FEATURES_LAYER, which
    reads all of its input, through every frozen layer, computing how much of each layer's
    output the layers after it need; when a learner changes the head (a 7x7 pool reads
    everything), the crop follows, or there is none. Crops are taken at the input and after
    each pooling layer; after every convolution too would save a little more.
    """
    frozen = frozen_layers(model)
    needed = frozen[-1].input.shape[1]  # the flatten reads its whole input
    crops = {}
    for layer in reversed(frozen[:-1]):
        if isinstance(layer, keras.layers.Flatten) or layer.input.shape[1] != layer.input.shape[2]:
            return {}
        if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            crops[layer.name] = needed
        needed = _needed_input(layer, needed)
        if needed is None:
            return {}
    crops["input"] = needed
    # a crop as large as the map it crops does nothing
    sizes = {layer.name: layer.output.shape[1] for layer in frozen}
    sizes["input"] = frozen[0].input.shape[1]
    return {name: rows for name, rows in crops.items() if rows < sizes[name]}


def with_precision(layer, precision):
    """A copy of `layer` computing in `precision` (Keras's mixed policy: float32 variables),
    with the same weights; the layer itself when `precision` is float32."""
    if precision == "float32":
        return layer
    config = {**layer.get_config(), "dtype": f"mixed_{precision}"}
    copy = type(layer).from_config(config)
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def model_with_precision(model, precision):
    """`model` computing in `precision`, its last layer (the softmax) kept in float32 as Keras's
    mixed-precision guide prescribes; `model` itself when `precision` is float32."""
    if precision == "float32":
        return model
    last = model.layers[-1]

    def clone(layer):
        dtype = "float32" if layer is last else f"mixed_{precision}"
        return type(layer).from_config({**layer.get_config(), "dtype": dtype})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _unit(part):
    """`part` (n, k) of non-negative values, square-rooted and scaled to unit length."""
    root = keras.ops.sqrt(keras.ops.maximum(part, 0.0))
    norm = keras.ops.sqrt(keras.ops.sum(root * root, axis=-1, keepdims=True))
    return root / keras.ops.maximum(norm, 1e-12)


def description_output(model):
    """The description of the image (module docstring) as a tensor of `model`'s graph, built
    on the layers it already has: (n, description size), float32, unit length."""
    parts = []
    for name in POOLING_LAYERS:
        x = keras.ops.cast(model.get_layer(name).output, "float32")
        parts += [keras.ops.mean(x, axis=(1, 2)), keras.ops.std(x, axis=(1, 2))]
    x = keras.ops.cast(model.get_layer(LAYOUT_LAYER).output, "float32")
    cells = x.shape[1] // LAYOUT_GRID
    grid = keras.ops.average_pool(x, pool_size=cells, strides=cells, padding="valid")
    parts.append(keras.ops.reshape(grid, (-1, grid.shape[1] * grid.shape[2] * grid.shape[3])))
    weight = float(1.0 / np.sqrt(len(parts)))  # a Python float keeps the parts float32
    return keras.ops.concatenate([_unit(part) * weight for part in parts], axis=-1)


def layers_missing_for_description(model):
    """The layers the description reads that `model` lacks (none for the tutorial's VGG16)."""
    names = {layer.name for layer in model.layers}
    return [name for name in (*POOLING_LAYERS, LAYOUT_LAYER) if name not in names]


def on_image_batches(function, model):
    """`function` of a batch of scaled images as `model` takes them (224x224 RGB), compiled
    into one graph (a tf.function) for batches of any size: traced once, a last, smaller batch
    too, at the same speed. TensorFlow counts traces by the Python code, so a process that
    builds a few models in turn (the page, the tests) would print its "retracing" warning:
    omitted, every trace here being of a new model."""
    signature = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)]
    compiled = tf.function(function, input_signature=signature)
    compiled._omit_frequent_tracing_warning = True  # read by TensorFlow at every call
    return compiled


def make_feature_extractor(model, precision="float32"):
    """The frozen part of `model` as a function, a batch of scaled images -> its features, and
    the crops it takes (`feature_crops`: part of the feature cache's key).

    It runs in inference mode, in `precision` (its last step casts the features to float32),
    and computes only the regions that `feature_crops` derives, so its output equals the frozen
    layers' output on the whole image, up to float rounding.
    """
    crops = feature_crops(model)
    frozen = [with_precision(layer, precision) for layer in frozen_layers(model)]

    def crop(x, name):
        rows = crops.get(name)
        return x if rows is None else x[:, :rows, :rows, :]

    def extract(images):
        x = crop(images, "input")
        for layer in frozen:
            x = crop(layer(x, training=False), layer.name)
        return tf.cast(x, tf.float32)

    return on_image_batches(extract, model), crops


def make_joint_extractor(model, precision="float32"):
    """Both of what the frozen base gives an image as it is, from one pass of the whole image
    through it: a function of a batch of scaled images -> (its features, as the head reads
    them, its description for the input check), both float32. Where an image needs both, this
    halves its VGG16 work; its features are the whole image's (no crop), kept apart from the
    cropped extractor's in the cache (their key says `crops: {}`)."""
    precise = model_with_precision(model, precision)
    both = keras.Model(precise.inputs, [precise.get_layer(FEATURES_LAYER).output,
                                        description_output(precise)])

    def extract(images):
        features, description = both(images, training=False)
        return tf.cast(features, tf.float32), tf.cast(description, tf.float32)

    return on_image_batches(extract, model)


# ---------------------------------------------------------------------------------------------
# The key: everything besides the image that a cached output depends on
# ---------------------------------------------------------------------------------------------


@functools.cache  # the code does not change while a run reads it
def frozen_code_digest(folder=PACKAGE_FOLDER):
    """`code_digest` of PIXEL_CODE in the package `folder`: part of every cache key, so that
    outputs computed by other code are never reused (docs/code.md says why the key is the
    code, not a fingerprint of its output)."""
    return code_digest(folder, PIXEL_CODE)


def library_versions():
    """The version of every library that touches a pixel on its way to the network: decoding
    (OpenCV, Pillow's header and EXIF reading, pydicom and GDCM), the 8-bit conversion and
    windowing (NumPy), and the network (TensorFlow, Keras). DICOM's are read from their
    metadata, without importing them."""
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__,
                "opencv": cv2.__version__, "numpy": np.__version__, "pillow": PIL.__version__}
    for package in ("pydicom", "python-gdcm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def device_class():
    """What computes the features, as far as it changes them: the CPU, or each GPU TensorFlow
    sees by name, and whether float32 runs as TF32 there (Ampere and later). Features computed
    on one are never served to a run on another."""
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
             for gpu in gpus]
    return {"kind": "gpu" if gpus else "cpu", "gpus": names,
            "tf32": bool(gpus) and tf.config.experimental.tensor_float_32_execution_enabled()}


def weights_digest(layers):
    """SHA-256 of the values of every weight of `layers`: the same for the same weights,
    however they were made (ImageNet download, a local file, `none` with a seed)."""
    digest = hashlib.sha256()
    for layer in layers:
        for weight in layer.get_weights():
            digest.update(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    return digest.hexdigest()


def cache_configuration(model, crops, precision, transform=UNCHANGED, output="features"):
    """Everything besides the image that what `model`'s frozen base computes depends on: the
    key of a `cache.FeatureCache`, built here and nowhere else. `transform` names itself and
    its parameters (`cache_key_part`); `output` is what is kept: the head's `features`, or
    the input check's `description`."""
    frozen = frozen_layers(model)
    return {
        "weights": weights_digest(frozen),
        "layers": [[type(layer).__name__, {k: v for k, v in layer.get_config().items()
                                           if k not in ("name", "trainable")}]
                   for layer in frozen],
        "crops": crops,
        "precision": precision,
        "code": frozen_code_digest(),
        "transform": transform.cache_key_part(),
        "output": output,
        "libraries": library_versions(),
        "device": device_class(),
    }
