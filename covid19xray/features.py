"""The frozen part of the network as a feature extractor, the key that names what it computes in
the feature cache, and the trainable head on its output.

Only the head learns (Dense, Dropout, Dense: 32,962 weights). Everything before it, VGG16 plus
the head's pooling and flatten, is a fixed function of the image: `make_feature_extractor`
computes it, once per image where the image does not change (`pipeline` keeps it), and
`make_head` is the part that trains on its output. Both share their layers with the whole
model, which is what gets saved.

The extractor computes only the region of the image that the head reads. The tutorial's
`AveragePooling2D(4x4)` on VGG16's 7x7 output uses "valid" pooling, so it reads only the
top-left 4x4 cells; those depend only on the top-left 218x218 pixels and, after each of VGG16's
pooling layers, only on a top-left region of the map. `feature_crops` derives these regions from
the model's own layers, walking back from the flatten layer: the same numbers with 15% fewer
operations, and when a learner changes the head (a 7x7 pool reads everything), the crop
follows, or there is none.

Extractors compute in float32, bfloat16 or float16: `with_precision` and
`model_with_precision` copy layers, or a whole network (predict's), into Keras's mixed policy
(variables stay float32, computations run in the lower precision).

What an extractor computes depends on the image and on everything `cache_configuration` names:
the weights, the layers, the crop, the precision, the code that decides the pixels, the
transform, the libraries and the device. That is the key of its `cache.FeatureCache`
(`feature_cache`; `description_cache` for the input check's descriptions).
"""

import functools
import hashlib
import importlib
import importlib.metadata

import cv2
import numpy as np

from .cache import SAME_PIXELS_AS, FeatureCache
from .cli import lazy_import
from .input_check import description_model
from .model import FEATURES_LAYER
from .transforms import UNCHANGED

# The modules whose code decides what VGG16 sees, and what it makes of it
# (`preprocessing_digest`).
PREPROCESSING_MODULES = ("covid19xray.images", "covid19xray.data", "covid19xray.transforms",
                         __name__, "covid19xray.pipeline")

keras = lazy_import("keras")
tf = lazy_import("tensorflow")


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

    Walks back from FEATURES_LAYER, which reads all of its input, through every frozen layer,
    computing how much of each layer's output the layers after it need. Crops are taken where
    the old tutorial-only code took them, at the input and after each pooling layer; cropping
    after every convolution too would save a little more and change nothing in the features.
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

    @tf.function(reduce_retracing=True)
    def extract(images):
        x = crop(images, "input")
        for layer in frozen:
            x = crop(layer(x, training=False), layer.name)
        return tf.cast(x, tf.float32)

    return extract, crops


def make_description_extractor(model, precision="float32"):
    """`model`'s description of each image for the input check (`input_check`), as a function
    of a batch of scaled images, computed in `precision`; the whole image, never cropped."""
    describe = description_model(model_with_precision(model, precision))

    @tf.function(reduce_retracing=True)
    def extract(images):
        return tf.cast(describe(images, training=False), tf.float32)

    return extract


def make_head(model):
    """The layers after FEATURES_LAYER (Dense, Dropout, Dense) as a model on the features.

    It shares its layers, and so its weights, with `model`: training the head trains the model.
    """
    features_layer = model.get_layer(FEATURES_LAYER)
    features = keras.Input(shape=(features_layer.output.shape[-1],))
    x = features
    for layer in model.layers[model.layers.index(features_layer) + 1:]:
        x = layer(x)
    return keras.Model(features, x, name="head")


# ---------------------------------------------------------------------------------------------
# The feature cache's key
# ---------------------------------------------------------------------------------------------


def decoder_versions():
    """The DICOM decoders' versions (read from their metadata, without importing them)."""
    versions = {}
    for package in ("pydicom", "python-gdcm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _source_digest(modules):
    digest = hashlib.sha256()
    for module in modules:
        with open(importlib.import_module(module).__file__, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


@functools.cache  # the source does not change while a run reads it
def preprocessing_digest():
    """SHA-256 of the source of every module that decides the pixels VGG16 sees: decoding,
    resizing and scaling (`images`), the store they are kept in (`data`), the transforms
    (`transforms`), the extractors here and the pipeline that feeds them (`pipeline`). Derived,
    not kept by hand: any edit to them, even one that changes nothing, computes the features
    afresh rather than reusing old ones. Except where `cache.SAME_PIXELS_AS` names the digest
    of earlier code that this code was checked to compute the same features as, bit for bit: a
    move of code between these modules keeps the cache warm."""
    digest = _source_digest(PREPROCESSING_MODULES)
    return SAME_PIXELS_AS.get(digest, digest)


@functools.cache
def description_digest():
    """SHA-256 of `input_check`'s source, which decides the input check's descriptions: part
    of their cache key only, so that an edit there leaves the head's features cached."""
    return _source_digest(["covid19xray.input_check"])


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


def cache_configuration(model, crops, precision, transform=UNCHANGED, output=None):
    """Everything besides the image that the features of `model`'s extractor depend on: the
    key of a `cache.FeatureCache`, built here and nowhere else. `transform` names itself and
    its parameters (`Transform.describe`); `output` names what is kept when it is not the
    head's features (the input check's descriptions)."""
    frozen = frozen_layers(model)
    configuration = {
        "weights": weights_digest(frozen),
        "layers": [[type(layer).__name__, {k: v for k, v in layer.get_config().items()
                                           if k not in ("name", "trainable")}]
                   for layer in frozen],
        "crops": crops,
        "precision": precision,
        "preprocessing": preprocessing_digest(),
        "transform": transform.describe(),
        "libraries": {"tensorflow": tf.__version__, "keras": keras.__version__,
                      "opencv": cv2.__version__, **decoder_versions()},
        "device": device_class(),
    }
    if output is not None:
        configuration["output"] = output
    return configuration


def feature_cache(cache_folder, model, crops, precision, transform=UNCHANGED):
    """The feature cache of `transform`'s features in `cache_folder`, or None (--no-cache)."""
    if cache_folder is None:
        return None
    configuration = cache_configuration(model, crops, precision, transform)
    return FeatureCache(cache_folder, configuration, what=transform.entries)


def description_cache(cache_folder, model, precision):
    """The feature cache of the input check's descriptions (`make_description_extractor`) in
    `cache_folder`, or None (--no-cache)."""
    if cache_folder is None:
        return None
    configuration = cache_configuration(model, {}, precision,
                                        output={"input_check": description_digest()})
    return FeatureCache(cache_folder, configuration, what="input check description(s)")
