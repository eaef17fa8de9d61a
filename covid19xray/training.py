"""What train_covid19.py and audit_covid19.py share: the checks of their inputs and outputs,
the start of a run, and how the head is trained (their flags are `config.add_run_flags`).

Both train the tutorial's head on the frozen VGG16's output the same way (the same optimizer,
learning-rate decay, loss, epochs and batch size), so that the audit's probes measure what the
trainer would learn. Writing this once keeps the two from drifting apart.
"""

import os
import sys

from .cli import UserError, import_tensorflow, lazy_import, shown
from .data import check_room_for_decoded
from .images import list_images
from .manifest import read_manifest
from .model import check_precision, load_vgg16_base, loss_for, make_optimizer
from .outputs import check_not_inside_inputs, check_output_path
from .report import CONFIDENCE, versions

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

def check_outputs(inputs, outputs):
    """Fail now, not after training, if an output cannot be written, would land inside one of
    the input folders `inputs` ([(flag, folder)]: source data is never modified), or two
    outputs are one file. `outputs` is [(path, flag, suffix)]; returns their paths."""
    for path, flag, suffix in outputs:
        check_output_path(path, flag, suffix=suffix)
        check_not_inside_inputs(path, flag, inputs)
    paths = [path for path, _, _ in outputs]
    if len({os.path.abspath(path) for path in paths}) < len(paths):
        raise UserError(f"{', '.join(shown(path) for path in paths)} must be {len(paths)} "
                        "different files")
    return paths


def check_cache_folder(folder):
    """A `UserError` unless `folder` (--cache-dir) is a folder, or can be created as one."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--cache-dir {folder!r} is not a folder; give a folder for the "
                        "feature cache, or delete that file")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--cache-dir {folder!r}: folder {existing!r} is not writable; give "
                        "another --cache-dir")


def check_inputs(inputs, cache_dir=None):
    """Before VGG16 or any image loads: the cache folder is usable and lies outside the input
    folders `inputs` ([(flag, folder)]), the temporary folder has room for their decoded
    images, and their manifests can be read (each problem one line, in seconds rather than
    after minutes of work)."""
    if cache_dir is not None:
        check_not_inside_inputs(cache_dir, "--cache-dir", inputs)
        check_cache_folder(cache_dir)
    existing = [folder for _, folder in inputs if os.path.isdir(folder)]
    check_room_for_decoded(sum(len(list_images(folder)) for folder in existing))
    for folder in existing:
        read_manifest(folder)


def start(config):
    """The start of a run (`config`: a `config.RunConfig`): seed Python's random, NumPy and
    TensorFlow, warn about a slow precision, and load the VGG16 base first, so that a wrong
    --weights, or no network for ImageNet's, fails in seconds rather than after the images."""
    import_tensorflow()
    keras.utils.set_random_seed(config.seed)
    make_deterministic()
    check_precision(config.precision)
    return load_vgg16_base(config.weights)


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


def compile_head(head, num_classes, lr, epochs):
    """Compile the head as the tutorial compiled its model: Adam with the per-step decay, the
    tutorial's loss, accuracy."""
    head.compile(loss=loss_for(num_classes), optimizer=make_optimizer(lr, epochs),
                 metrics=["accuracy"])


def fit_head(head, batches, steps, epochs, validation=None, batch_size=None, verbose=0):
    """Train the compiled head on `batches` (one finite pass an epoch), validating on
    `validation` (features, one-hot rows) after every epoch if given."""
    return head.fit(
        batches,
        # as the tutorial: len(train) // batch size whole batches an epoch. Given, it also
        # makes Keras start each epoch's pass over the data exactly once.
        steps_per_epoch=steps,
        validation_data=validation,
        validation_batch_size=batch_size,
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself; Keras warns if asked to as well
        verbose=verbose,
    )


def keras_verbosity():
    """Keras's live bar on a terminal; one line per epoch in logs and CI output."""
    return 1 if sys.stdout.isatty() else 2


def run_facts(config):
    """The end of every report: what is needed to repeat the run."""
    return {"confidence_level": CONFIDENCE, "seed": config.seed, "flags": config.flags(),
            "versions": versions()}
