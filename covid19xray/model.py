"""The tutorial's network: VGG16, loaded seeded, the head on it, its file, and its precision.

- `load_vgg16(weights, seed, precision)`: the first step of a run that trains heads: everything
  seeded and deterministic, then `load_vgg16_base(weights)`: VGG16 without its classifier, with
  `imagenet`, `none` or a file's weights; a failed download or a wrong file is a one-line
  `UserError`.
- `build_model(base_model, num_classes)`: the tutorial's head on the frozen base.
- `save_model` / `load_classifier`: the model file, HDF5 (the tutorial's, with the class names in
  its attributes) or Keras's own `.keras` (with the class names in a member of its zip); both
  carry the input check (`input_check`) beside the network.
- `check_precision`: whether this CPU computes the chosen precision natively (the copies in
  that precision are `frozen.with_precision` and `model_with_precision`). The saved model is
  always float32.
"""

import json
import logging
import os
import platform
import sys
import zipfile

import h5py
import numpy as np

from .cli import UserError, first_line, import_tensorflow, lazy_import, shown
from .config import VGG16_NOTOP_FILE
from .frozen import FEATURES_LAYER, on_image_batches
from .h5attributes import stored_length
from .images import IMAGE_SIZE
from .input_check import store_input_check
from .outputs import file_kind

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# The HDF5 attribute that holds the class names (a JSON list, in the order of the outputs), and
# the member of a .keras file (a zip) that holds them.
CLASS_NAMES_ATTR = "covid19_class_names"
CLASS_NAMES_MEMBER = "covid19_class_names.json"
# The model files train_covid19.py writes: HDF5 as the tutorial, or Keras's own format.
MODEL_SUFFIXES = (".h5", ".keras")
# Far above any list of class names: a member larger than this is not ours.
MAX_CLASS_NAMES_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def keras_models_folder():
    """Where Keras looks for downloaded weights: its own rule (KERAS_HOME, else ~/.keras, else
    /tmp/.keras when home is not writable), plus `models/`. Keras has no public accessor."""
    from keras.src.backend.config import keras_home

    return os.path.join(keras_home(), "models")


def load_vgg16(weights, seed, precision):
    """Seed Python's random, NumPy and TensorFlow, warn about a slow precision, and load the
    VGG16 base: the first step of a run, so that a wrong --weights, or no network for
    ImageNet's, fails in seconds rather than after the images."""
    import_tensorflow()
    keras.utils.set_random_seed(seed)
    make_deterministic()
    check_precision(precision)
    return load_vgg16_base(weights)


def make_deterministic():
    """The same command gives the same report wherever TensorFlow runs (docs/porting.md).

    On a GPU, TensorFlow's ops are made deterministic: some of its kernels would otherwise add
    in a varying order. On the CPU they already repeat, and switching it on there costs time
    and writes a C++ warning from tf.data, so it stays off. Everywhere, float32 stays float32:
    on NVIDIA Ampere and later, TensorFlow otherwise runs float32 convolutions and matrix
    products as TF32, with a 10-bit mantissa."""
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(False)


def load_vgg16_base(weights):
    """VGG16 without its classifier on a 224x224x3 input, with `weights` imagenet|none|PATH;
    says so on stdout, as the tutorial's scripts say what they are doing.

    (The tutorial passed `input_tensor=Input(shape=(224, 224, 3))`; `input_shape` builds the
    same network, whose input Keras 3 then takes as a tensor rather than a list of one.)
    """
    print(f"[INFO] loading VGG16 base (weights: {shown(weights)})...")
    input_shape = (*IMAGE_SIZE, 3)
    if weights == "none":
        return keras.applications.VGG16(weights=None, include_top=False, input_shape=input_shape)
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(weights="imagenet", include_top=False,
                                            input_shape=input_shape)
        except Exception as err:  # Keras raises a bare Exception for a failed download
            raise UserError(
                f"cannot get the VGG16 ImageNet weights ({first_line(err)}). Offline, copy "
                f"{VGG16_NOTOP_FILE} into {keras_models_folder()}/ or pass --weights PATH "
                "(a local copy of that file), or --weights none for random weights"
            ) from None
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights!r}: no such file; use imagenet, none or the path "
                        f"of a local {VGG16_NOTOP_FILE}")
    try:
        return keras.applications.VGG16(weights=weights, include_top=False,
                                        input_shape=input_shape)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"--weights {weights!r} is not a VGG16 no-top weights file like "
                        f"{VGG16_NOTOP_FILE}: {first_line(err)}") from None


def build_model(base_model, num_classes=2):
    """The tutorial's network: frozen VGG16 base, then pool, flatten, dense, dropout, softmax."""
    # construct the head of the model that will be placed on top of the base model
    head = base_model.output
    head = keras.layers.AveragePooling2D(pool_size=(4, 4))(head)
    head = keras.layers.Flatten(name=FEATURES_LAYER)(head)
    head = keras.layers.Dense(64, activation="relu")(head)
    head = keras.layers.Dropout(0.5)(head)
    head = keras.layers.Dense(num_classes, activation="softmax")(head)

    # place the head on top of the base model (this is the model we will train)
    model = keras.Model(inputs=base_model.input, outputs=head)

    # freeze every layer of the base so only the head is trained
    for layer in base_model.layers:
        layer.trainable = False
    return model


# ---------------------------------------------------------------------------------------------
# The model file
# ---------------------------------------------------------------------------------------------


def save_model(model, path, class_names, input_check=None):
    """Save the whole model, with its class names and its input check in the file: HDF5
    (`.h5`, the tutorial's format) or Keras's own format (`.keras`, a zip), chosen by the name
    as Keras chooses.

    predict_covid19.py reads both back, so it never has to guess which output is which class,
    and the model file is all it needs to check its inputs.
    """
    if path.lower().endswith(".keras"):
        model.save(path)
        with zipfile.ZipFile(path, "a") as archive:  # Keras reads only the members it knows
            archive.writestr(CLASS_NAMES_MEMBER, json.dumps(class_names))
        if input_check is not None:
            store_input_check(path, input_check)
        return
    # HDF5 is the tutorial's format; Keras 3 logs a warning calling it legacy on every save.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        model.save(path)
    finally:
        absl_logger.setLevel(level)
    with h5py.File(path, "a") as f:
        # fixed length: its stored size bounds it before it is read (`_stored_class_names`)
        f.attrs[CLASS_NAMES_ATTR] = np.bytes_(json.dumps(class_names).encode())
    if input_check is not None:
        store_input_check(path, input_check)


def _stored_class_names(path):
    """The class names' JSON text stored in the model file at `path`, or None."""
    if path.lower().endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(CLASS_NAMES_MEMBER)
                if info.file_size > MAX_CLASS_NAMES_BYTES:
                    return None
                with archive.open(info) as member:
                    return member.read(MAX_CLASS_NAMES_BYTES).decode("utf-8", "replace")
        except KeyError:  # a .keras file, but not one train_covid19.py saved
            return None
        except (zipfile.BadZipFile, OSError, ValueError):
            raise UserError(f"--model {path!r} is not a Keras model file (.keras) saved by "
                            "train_covid19.py") from None
    try:
        with h5py.File(path, "r") as f:
            if CLASS_NAMES_ATTR not in f.attrs:
                return None
            try:
                size = stored_length(f, CLASS_NAMES_ATTR)
            except ValueError as err:
                raise UserError(f"--model {path!r}: its class names ({CLASS_NAMES_ATTR}) cannot "
                                f"be sized before they are read ({err}); use a model saved by "
                                "train_covid19.py") from None
            if size > MAX_CLASS_NAMES_BYTES:
                raise UserError(f"--model {path!r}: its class names ({CLASS_NAMES_ATTR}) hold "
                                f"more than {MAX_CLASS_NAMES_BYTES} bytes; use a model saved "
                                "by train_covid19.py")
            return f.attrs.get(CLASS_NAMES_ATTR)
    except OSError:
        raise UserError(f"--model {path!r} is not an HDF5 model file (.h5) saved by "
                        "train_covid19.py") from None


def _not_a_file(path):
    """What `path` is when it is not a regular file, or None when nothing is there."""
    try:
        kind = file_kind(os.stat(path).st_mode)
    except OSError:
        return "a link to nothing" if os.path.islink(path) else None
    if os.path.islink(path):
        kind = f"a link to {kind} ({os.path.realpath(path)})"
    return kind


def compiled(network):
    """`network` in inference mode as one compiled function of a batch of scaled images
    (`on_image_batches`). In a graph, TensorFlow fuses each convolution with its bias and ReLU:
    about 6% faster than calling the model eagerly (on a Zen 4)."""
    def forward(images):
        return network(images, training=False)

    return on_image_batches(forward, network)


def load_classifier(path):
    """The Keras model at `path` (HDF5 or .keras) and its class names, in the order of its
    outputs; a model that does not take the tutorial's 224x224 RGB images is refused."""
    if not os.path.isfile(path):
        kind = _not_a_file(path)
        if kind is not None:
            raise UserError(f"--model {path!r} is {kind}, not a model file; give the file "
                            "train_covid19.py saved")
        raise UserError(f"--model {path!r}: no such file; train one with train_covid19.py")
    if not path.lower().endswith((".h5", ".hdf5", ".keras")):
        # Keras picks its loader from the name: a model must be named as its format, so that
        # no other loader ever reads the file (a file can parse as a zip and as HDF5 at once)
        raise UserError(f"--model {path!r} must be a model file named .h5, .hdf5 or .keras, as "
                        "train_covid19.py saves it")
    stored = _stored_class_names(path)
    if stored is None:
        raise UserError(f"--model {path!r} has no class names, so its outputs cannot be named; "
                        "use a model saved by this train_covid19.py (retrain if it is older)")
    try:
        class_names = json.loads(stored)
    except (ValueError, TypeError):
        class_names = None
    if not (isinstance(class_names, list) and class_names
            and all(isinstance(name, str) for name in class_names)):
        where = CLASS_NAMES_MEMBER if path.lower().endswith(".keras") else CLASS_NAMES_ATTR
        raise UserError(f"--model {path!r}: its class names ({where}) are not a JSON list of "
                        "names; use a model saved by this train_covid19.py")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a damaged or foreign file
        raise UserError(f"--model {path!r} cannot be loaded as a Keras model: "
                        f"{first_line(err)}") from None
    if model.output_shape[-1] != len(class_names):
        raise UserError(f"--model {path!r} has {model.output_shape[-1]} outputs but "
                        f"{len(class_names)} class names ({', '.join(class_names)}); it was not "
                        "saved by train_covid19.py as it is")
    expected = (*IMAGE_SIZE, 3)
    if (len(model.inputs) != 1 or not isinstance(model.input_shape, tuple)
            or tuple(model.input_shape[1:]) != expected):
        raise UserError(f"--model {path!r} takes inputs of shape {model.input_shape}, not the "
                        f"{expected[0]}x{expected[1]} RGB images (None, {expected[0]}, "
                        f"{expected[1]}, 3) that train_covid19.py's models take")
    return model, class_names


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


def cpu_has_native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU computes bfloat16 in hardware (x86: AVX512_BF16 or AMX; Arm: BF16)."""
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().lower().split())
    except OSError:  # not Linux: assume the worst, the warning only says it may be slow
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def check_precision(precision):
    """Warn, in one line, when `precision` will run slower than float32 on this hardware."""
    if precision == "float32":
        return
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if precision == "float16" and not has_gpu:
        print("[WARNING] --precision float16 without a GPU: CPUs emulate float16, so this will "
              "be slower than float32", file=sys.stderr)
    elif precision == "bfloat16" and not has_gpu and not cpu_has_native_bfloat16():
        print("[WARNING] --precision bfloat16 on a CPU without native bfloat16 (AVX512_BF16 or "
              "AMX): this will be slower than float32", file=sys.stderr)
