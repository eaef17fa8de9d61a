"""The frozen base: what VGG16 is given, what it computes, and the key that names the result.

Only the head learns (Dense, Dropout, Dense: 32,962 weights; `head`). Everything before it,
VGG16 plus the head's pooling and flatten, is a fixed function of the image, so it is part of
the input pipeline: each image's features are computed once and kept in the feature cache
(`cache`). This module, with the modules that decide the pixels (`images`, `store`,
`transforms`), holds everything that decides a cached feature, and nothing else: the features
the head reads, and the input check's description of an image. Their code is part of the
cache's key (`frozen_code_digest`); the head's code never is, so editing the optimizer keeps
the cache warm.

The steps, in the order an image takes them:

1. `model_batches`: the images of an `ImageStore`, in batches, scaled to [0, 1] and changed by
   a transform (as they are, rotated, masked);
2. the frozen network on those batches (`make_feature_extractor`: cropped to what the head
   reads; `make_joint_extractor`: the whole image, its features and its description for the
   input check, `description_output`, from one pass), in a precision (`with_precision`,
   `model_with_precision`);
3. an `Extractor` (the cropped network with its batch size, transform and cache, all made at
   once by `make_extractors`; `features_per_epoch` computes each distinct image, and rotation,
   once and keeps it), or a `Joint` (`make_joint`: both outputs, each in its cache).

How the input check describes an image (`description_output`): the frozen VGG16 is read at its
five pooling layers. Of each, the mean and the standard deviation of every channel over the
image (what textures are there, and how much they vary), and the fourth pooling layer's
channels averaged over the image's four quarters (where they are: a lateral film and a frontal
one share textures, not their layout). Each part is square-rooted (activations are
non-negative, and a few strong channels would otherwise drown the rest), scaled to unit length,
and the parts are joined with equal weight. The description costs nothing beyond the forward
pass that predicts: the pooled values are read off layers the model computes anyway. The check
that compares descriptions (`input_check`) is not part of the key.

The extractor computes only the region of the image that the head reads. The tutorial's
`AveragePooling2D(4x4)` on VGG16's 7x7 output uses "valid" pooling, so it reads only the
top-left 4x4 cells; those depend only on the top-left 218x218 pixels and, after each of VGG16's
pooling layers, only on a top-left region of the map. `feature_crops` derives these regions from
the model's own layers, walking back from the flatten layer: the same numbers with 15% fewer
operations, and when a learner changes the head (a 7x7 pool reads everything), the crop
follows, or there is none.

The pipelines never run autotuning: tf.data's autotuning thread sleeps for up to a minute
between rounds, and destroying an iterator waits for it to wake, which stalled the end of every
training run by up to that long.
"""

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import time

import cv2
import numpy as np

from .cache import FeatureCache
from .cli import lazy_import
from .images import scale_pixels
from .progress import progress
from .transforms import UNCHANGED

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# The files whose code decides a cached feature (`frozen_code_digest`): decoding, resizing and
# scaling, the store of decoded images, the transforms, and this module.
FROZEN_SOURCES = ("images.py", "store.py", "transforms.py", "frozen.py")
# The head's Flatten: its output is the features the head trains on, the end of the frozen part.
FEATURES_LAYER = "flatten"
# What an image's description reads: every pooling layer's channel means and deviations, and
# one layer's channels on a grid of quarters.
POOLING_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
LAYOUT_LAYER, LAYOUT_GRID = "block4_pool", 2
PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))


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
    """`dataset`, prefetching one element, with tf.data's autotuning off (why: the module's
    docstring)."""
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


def description_model(model):
    """The part of `model` that describes an image, alone (for the training images)."""
    return keras.Model(model.inputs, description_output(model))


def model_with_description(model):
    """`model` with a second output, each image's description: one forward pass gives both
    the class probabilities and what the input check needs (predict's)."""
    return keras.Model(model.inputs, [model.output, description_output(model)])


def layers_missing_for_description(model):
    """The layers the description reads that `model` lacks (none for the tutorial's VGG16)."""
    names = {layer.name for layer in model.layers}
    return [name for name in (*POOLING_LAYERS, LAYOUT_LAYER) if name not in names]


def on_image_batches(function, model):
    """`function` of a batch of scaled images as `model` takes them (224x224 RGB), compiled
    into one graph (a tf.function) for batches of any size: traced once, a last, smaller batch
    too (traced anew before: a second trace of the whole network, 0.1-0.5 s), at the same
    speed (137.6 against 138.3 ms an image for VGG16 on a Zen 4).

    TensorFlow counts traces by the Python code, not by the function object, so a process that
    builds a few models in turn (a server calling the scripts' `main`, the tests) would print
    its "triggered tf.function retracing" warning, as Keras's `predict_on_batch` does: it is
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
# The key: everything besides the image that a cached feature depends on
# ---------------------------------------------------------------------------------------------


class _WithoutWords(ast.NodeTransformer):
    """A module's syntax tree less what cannot change a pixel: docstrings, and the words of
    what it prints or raises. (Comments and layout are not in the tree.)"""

    def _without_docstring(self, node):
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        return self.generic_visit(node)

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = (
        _without_docstring)

    def visit_Raise(self, node):
        return _Blank().visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            return _Blank().visit(node)
        return self.generic_visit(node)


class _Blank(ast.NodeTransformer):
    """Every string in a message, f-strings and their values too, as one empty string."""

    def visit_JoinedStr(self, node):
        return ast.Constant("")

    def visit_Constant(self, node):
        return ast.Constant("") if isinstance(node.value, str) else node


def code_digest(paths):
    """SHA-256 of the code of the Python files at `paths`, in order: their syntax trees, less
    docstrings, comments, layout and the words of messages (`_WithoutWords`). What the code
    does changes it; how it is explained does not."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
        digest.update(ast.dump(_WithoutWords().visit(tree)).encode())
    return digest.hexdigest()


@functools.cache  # the code does not change while a run reads it
def frozen_code_digest(folder=PACKAGE_FOLDER):
    """`code_digest` of FROZEN_SOURCES in the package `folder`: part of every cache key, so
    that features computed by other code are never reused (docs/code.md says why the key is
    the code, not a fingerprint of its output)."""
    return code_digest([os.path.join(folder, name) for name in FROZEN_SOURCES])


def decoder_versions():
    """The DICOM decoders' versions (read from their metadata, without importing them)."""
    versions = {}
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
    its parameters (`Transform.describe`); `output` is what is kept: the head's `features`, or
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
        "transform": transform.describe(),
        "output": output,
        "libraries": {"tensorflow": tf.__version__, "keras": keras.__version__,
                      "opencv": cv2.__version__, **decoder_versions()},
        "device": device_class(),
    }


# ---------------------------------------------------------------------------------------------
# Extractors: the frozen network, its batches and its cache
# ---------------------------------------------------------------------------------------------


def _entries(images, paths, transform, epochs):
    """The images at `paths` changed by `transform` in each of `epochs` epochs: the entry key
    of every place (`transforms.entry_key`), epoch by epoch, image by image within each, and
    {each distinct key: (the path it is computed from, its row of parameters)}, in the order
    the keys are first wanted."""
    parameters, keys = transform.parameters_and_keys([images.digest(path) for path in paths],
                                                     epochs)
    sources = {}
    for n, key in enumerate(keys):
        if key not in sources:
            sources[key] = (paths[n % len(paths)], parameters[n])
    return keys, sources


def _computed(extract, images, sources, keys, batch_size, transform, cache):
    """Compute the entries `keys` (each from its image and parameters in `sources`), a batch
    at a time, storing each batch in `cache` as it finishes: yields (the batch's keys, their
    outputs, the batch)."""
    batches = model_batches(images, [sources[key][0] for key in keys], batch_size, transform,
                            np.stack([sources[key][1] for key in keys]))
    done = 0
    for batch in batches:
        outputs = extract(batch).numpy()
        batch_keys = keys[done:done + len(outputs)]
        if cache is not None:
            cache.store(batch_keys, outputs)
        done += len(outputs)
        yield batch_keys, outputs, batch


def features_per_epoch(extract, images, paths, batch_size, transform, epochs, cache=None,
                       what="VGG16 features", ahead=None):
    """The features of the images at `paths` changed by `transform` as it changes them in each
    of `epochs` epochs: (epochs, len(paths), features), in order.

    Each distinct entry (`transforms.entry_key`: the image and its parameters) is computed
    once: an image that `transform` leaves the same every epoch passes through VGG16 once, not
    once per epoch, and so does a file that stands twice. With `cache` (a `cache.FeatureCache`
    for this transform), features found there are not computed again, and those computed are
    stored as each batch finishes: a run stopped halfway keeps what it computed, and the rerun
    computes only the rest. Every missing entry goes through VGG16 in one pass, under one
    progress bar that says `what` it computes. Entries in `ahead` ({key: features}, computed
    by this run to time the cost line: `time_own_batches`) are taken from it, counted in the
    bar as done, and removed from it.
    """
    keys, sources = _entries(images, paths, transform, epochs)
    early = {key: ahead.pop(key) for key in sources if key in (ahead or {})}
    rest = [key for key in sources if key not in early]
    features_of = dict(zip(rest, [None] * len(rest) if cache is None or not rest
                           else cache.lookup(rest)))
    features_of.update(early)
    missing = [key for key in rest if features_of[key] is None]
    if missing or early:
        with progress(len(missing) + len(early), what) as bar:
            bar.update(len(early))
            if missing:
                for batch_keys, features, _ in _computed(extract, images, sources, missing,
                                                         batch_size, transform, cache):
                    features_of.update(zip(batch_keys, features))
                    bar.update(len(features))
    return np.stack([features_of[key] for key in keys]).reshape(epochs, len(paths), -1)


def extract_features(extract, images, paths, batch_size, transform=UNCHANGED, cache=None,
                     what="VGG16 features"):
    """The features of the images at `paths` changed by `transform` (by default, as they are):
    (len(paths), features), in order. See `features_per_epoch`."""
    return features_per_epoch(extract, images, paths, batch_size, transform, 1, cache, what)[0]


def entries_to_compute(images, paths, transform, epochs, cache=None):
    """How many distinct entries of the images at `paths` over `epochs` epochs are not in
    `cache` (all of them without one): the VGG16 passes `features_per_epoch` would make. Asks
    whether each entry's file exists; reads none."""
    _, keys = transform.parameters_and_keys([images.digest(path) for path in paths], epochs)
    distinct = list(dict.fromkeys(keys))
    return len(distinct) if cache is None else sum(not cache.has(key) for key in distinct)


@dataclasses.dataclass(frozen=True)
class Extractor:
    """A frozen network's output for images of an `ImageStore`, as they are or changed by
    `transform`, computed `batch_size` at a time and kept in `cache` (None: --no-cache)."""

    extract: object  # a batch of scaled images -> its outputs (a tf.function)
    batch_size: int
    transform: object = UNCHANGED
    cache: object = None
    what: str = "VGG16 features"  # what its progress bar says it computes
    # entries computed to time the cost line, until the run's own pass takes them
    ahead: dict = dataclasses.field(default_factory=dict, compare=False)

    def features(self, images, paths):
        """(len(paths), features), in order (`features_per_epoch`)."""
        return self.features_per_epoch(images, paths, 1)[0]

    def features_per_epoch(self, images, paths, epochs):
        """(epochs, len(paths), features): as `transform` changes them each epoch."""
        return features_per_epoch(self.extract, images, paths, self.batch_size, self.transform,
                                  epochs, self.cache, self.what, self.ahead)

    def passes(self, images, paths, epochs=1):
        """The VGG16 passes computing them would take now (`entries_to_compute`)."""
        return entries_to_compute(images, paths, self.transform, epochs, self.cache)

    def seconds_per_image(self, images, paths, epochs=1):
        """What one image costs this extractor here, timed on the first two batches of what
        computing `paths` over `epochs` epochs will compute (`time_own_batches`)."""
        _, sources = _entries(images, paths, self.transform, epochs)
        pending = [key for key in sources if key not in self.ahead
                   and (self.cache is None or not self.cache.has(key))]
        if not pending:
            return 0.0
        pending = pending[:2 * self.batch_size]
        return time_own_batches(
            _computed(self.extract, images, sources, pending, self.batch_size, self.transform,
                      self.cache),
            self.ahead.update, self.extract)


def time_own_batches(batches, keep, extract):
    """Seconds an image costs `extract`, for the cost line before a long run, timed on the
    run's own work: of `batches` (an iterator computing (keys, outputs, the batch), a batch at
    a time), the first traces the network, the second is timed, and both go to `keep` (as
    (key, output) pairs: the run takes them from there, nothing is computed twice). With a
    single batch of work, that batch is timed once more: a batch thrown away, in a run of one
    batch."""
    first = start = None
    for count, (keys, outputs, batch) in enumerate(batches):
        if count == 1:
            seconds = (time.perf_counter() - start) / len(keys)
            keep(zip(keys, outputs))
            return seconds
        keep(zip(keys, outputs))
        first, start = batch, time.perf_counter()
    return timed_batch(extract, first)


def timed_batch(extract, batch):
    """Seconds an image of `batch` costs `extract`, already traced."""
    start = time.perf_counter()
    tf.nest.map_structure(np.asarray, extract(batch))
    return (time.perf_counter() - start) / len(batch)


@dataclasses.dataclass
class Joint:
    """The features and descriptions of images as they are, from one pass of each
    (`make_joint_extractor`), each kept in its own cache (None: --no-cache) and, for this run,
    in memory: asked for one, then the other, an image passes through VGG16 once."""

    extract: object
    batch_size: int
    caches: tuple  # (the features' cache, the descriptions' cache), or (None, None)
    computed: dict = dataclasses.field(default_factory=dict)  # digest -> (features, description)
    # digests computed to time the cost line, until a progress bar of the run counts them
    ahead: set = dataclasses.field(default_factory=set)

    @staticmethod
    def _digests(images, paths):
        """Each path's image digest, and each digest's first path."""
        digests = [images.digest(path) for path in paths]
        return digests, dict(zip(reversed(digests), reversed(paths)))

    def _pending(self, images, paths):
        """The distinct images of `paths` this run would pass through VGG16 (their digests),
        and each digest's first path."""
        digests, first = self._digests(images, paths)
        pending = [d for d in dict.fromkeys(digests) if d not in self.computed and (
            self.caches[0] is None or not all(cache.has(d) for cache in self.caches))]
        return pending, first

    def _compute(self, images, first, digests):
        """Pass the images `digests` (each from its path in `first`) through VGG16 a batch at a
        time, each batch kept in memory and in the caches as it finishes: yields (the batch's
        digests, their (features, description) pairs, the batch)."""
        done = 0
        for batch in model_batches(images, [first[d] for d in digests], self.batch_size):
            features, descriptions = (part.numpy() for part in self.extract(batch))
            keys = digests[done:done + len(features)]
            pairs = list(zip(features, descriptions))
            self.computed.update(zip(keys, pairs))
            if self.caches[0] is not None:
                for cache, rows in zip(self.caches, (features, descriptions)):
                    cache.store(keys, rows)
            done += len(features)
            yield keys, pairs, batch

    def both(self, images, paths):
        """(features, descriptions) of the images at `paths`, in order."""
        digests, first = self._digests(images, paths)
        distinct = list(dict.fromkeys(digests))
        early = [d for d in distinct if d in self.ahead]  # computed to time the cost line
        self.ahead.difference_update(early)
        wanted = [d for d in distinct if d not in self.computed]
        if self.caches[0] is not None and wanted:
            found = zip(wanted, *(cache.lookup(wanted) for cache in self.caches))
            self.computed.update({d: (f, e) for d, f, e in found
                                  if f is not None and e is not None})
        missing = [d for d in wanted if d not in self.computed]
        if missing or early:
            with progress(len(missing) + len(early), "VGG16 features and descriptions") as bar:
                bar.update(len(early))
                for keys, _, _ in self._compute(images, first, missing):
                    bar.update(len(keys))
        return (np.stack([self.computed[d][0] for d in digests]),
                np.stack([self.computed[d][1] for d in digests]))

    def missing(self, images, paths):
        """How many distinct images of `paths` this run would pass through VGG16."""
        return len(self._pending(images, paths)[0])

    def seconds_per_image(self, images, paths):
        """What one image costs here, timed on the first two batches of the images of `paths`
        this run will pass through VGG16 (`time_own_batches`)."""
        pending, first = self._pending(images, paths)
        if not pending:
            return 0.0
        pending = pending[:2 * self.batch_size]
        return time_own_batches(self._compute(images, first, pending),
                                lambda pairs: self.ahead.update(key for key, _ in pairs),
                                self.extract)


@dataclasses.dataclass(frozen=True)
class JointView:
    """One of a `Joint`'s two outputs (0 the features, 1 the descriptions), used as an
    `Extractor` is: both are computed the first time either is asked for."""

    joint: Joint
    output: int
    what: str

    @property
    def cache(self):
        return self.joint.caches[self.output]

    def features(self, images, paths):
        return self.joint.both(images, paths)[self.output]

    def passes(self, images, paths, epochs=1):
        return self.joint.missing(images, paths)

    def seconds_per_image(self, images, paths):
        return self.joint.seconds_per_image(images, paths)


def make_joint(config, model):
    """The features and descriptions of images as they are, one VGG16 pass for both
    (`Joint`): a (features, descriptions) pair of `JointView`s."""
    caches = (None, None)
    if config.cache_folder is not None:
        caches = (FeatureCache(config.cache_folder,
                               cache_configuration(model, {}, config.precision),
                               what="whole image(s)"),
                  FeatureCache(config.cache_folder,
                               cache_configuration(model, {}, config.precision,
                                                   output="description"),
                               what="input check description(s)"))
    joint = Joint(make_joint_extractor(model, config.precision), config.batch_size, caches)
    return (JointView(joint, 0, "VGG16 features and descriptions"),
            JointView(joint, 1, "VGG16 features and descriptions"))


def make_extractors(config, model, transforms):
    """One `Extractor` of `model`'s features per transform, each with its cache: all made,
    their folders checked, before any image passes through VGG16. `config` is a
    `config.RunConfig`. (The input check's descriptions: `make_joint`.)"""
    extract, crops = make_feature_extractor(model, config.precision)
    return [Extractor(extract, config.batch_size, transform,
                      None if config.cache_folder is None
                      else FeatureCache(config.cache_folder,
                                        cache_configuration(model, crops, config.precision,
                                                            transform),
                                        what=transform.entries),
                      "VGG16 features" + (f" ({transform.label})" if transform.label else ""))
            for transform in transforms]
