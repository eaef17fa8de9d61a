"""The tutorial's network: VGG16, loaded seeded, the head on it, its file, and its precision.

- `load_vgg16(weights, seed, precision)`: the first step of a run that trains heads: everything
  seeded and deterministic, then `load_vgg16_base(weights)`: VGG16 without its classifier, with
  `imagenet`, `none` or a file's weights; a failed download or a wrong file is a one-line
  `UserError`.
- `build_model(base_model, num_classes)`: the tutorial's head on the frozen base.
- `compiled`: a network as the one compiled function predict runs (the model file, what it
  carries and how it is read: `model_file`).
- `check_precision`: whether this CPU computes the chosen precision natively (the copies in
  that precision are `frozen.with_precision` and `model_with_precision`). The saved model is
  always float32.
"""

import os
import platform
import sys

from .cli import UserError, first_line, import_tensorflow, lazy_import, shown
from .config import VGG16_NOTOP_FILE
from .frozen import FEATURES_LAYER, on_image_batches
from .images import IMAGE_SIZE

keras = lazy_import("keras")
tf = lazy_import("tensorflow")



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
    except Exception as err:  # h5py and Keras raise many types for a damaged or foreign file
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


def compiled(network):
    """`network` in inference mode as one compiled function of a batch of scaled images
    (`on_image_batches`). In a graph, TensorFlow fuses each convolution with its bias and ReLU:
    about 6% faster than calling the model eagerly (on a Zen 4)."""
    def forward(images):
        return network(images, training=False)

    return on_image_batches(forward, network)


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
