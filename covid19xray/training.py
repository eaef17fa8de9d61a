"""What train_covid19.py and audit_covid19.py share: their flags, the checks of their outputs,
the start of a run, how the head is trained, and how the outputs are written.

Both train the tutorial's head on the frozen VGG16's output the same way (the same optimizer,
learning-rate decay, loss, epochs and batch size), so that the audit's probes measure what the
trainer would learn. Writing this once keeps the two from drifting apart.
"""

import os
import sys

from .cache import default_cache_folder
from .cli import UserError, import_tensorflow, lazy_import, positive, seed_value, shown
from .data import check_room_for_decoded
from .images import list_images
from .manifest import read_manifest
from .model import (
    BATCH_SIZE,
    EPOCHS,
    LEARNING_RATE,
    PRECISIONS,
    VGG16_NOTOP_FILE,
    check_precision,
    load_vgg16_base,
    loss_for,
    make_optimizer,
)
from .outputs import atomic_outputs, check_output_path, same_or_inside
from .report import CONFIDENCE, versions

keras = lazy_import("keras")

# The tutorial's random_state, for the split, the heads and everything seeded.
SEED = 42


def add_training_flags(ap, dataset_help):
    """The flags of a run that trains heads on the frozen VGG16: --dataset, --weights,
    --precision, --seed, --epochs, --batch-size, --lr, --cache-dir, --no-cache."""
    ap.add_argument("-d", "--dataset", required=True, help=dataset_help)
    ap.add_argument("--weights", default="imagenet",
                    help="VGG16 base weights: imagenet (downloaded by Keras on first use), none "
                         f"(random), or the path of a local {VGG16_NOTOP_FILE} "
                         "(default: %(default)s)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="what the frozen VGG16 computes in; bfloat16 is about twice as fast on "
                         "CPUs with AVX512_BF16 and about six times on CPUs with AMX, float16 "
                         "on GPUs. The head, the loss and the saved model stay float32 "
                         "(default: %(default)s)")
    ap.add_argument("--seed", type=seed_value, default=SEED,
                    help="seeds the split or folds, Python, NumPy and TensorFlow: the same seed "
                         "gives the same run (default: %(default)s)")
    ap.add_argument("--epochs", type=positive(int), default=EPOCHS,
                    help="training epochs of the head (default: %(default)s)")
    ap.add_argument("--batch-size", type=positive(int), default=BATCH_SIZE,
                    help="images per training step (default: %(default)s)")
    ap.add_argument("--lr", type=positive(float), default=LEARNING_RATE,
                    help="initial learning rate, decayed per step as Keras 2's decay=lr/epochs "
                         "did (default: %(default)s)")
    ap.add_argument("--cache-dir", default=default_cache_folder(),
                    help="the feature cache that every run of train_covid19.py and "
                         "audit_covid19.py reads and fills: VGG16's features of each image, and "
                         "of each training image's rotation in each epoch, so that a rerun with "
                         "the same images, weights and seed recomputes none of them; delete the "
                         "folder to clear it (default: %(default)s)")
    ap.add_argument("--no-cache", action="store_true",
                    help="neither read nor fill the feature cache: compute every feature, keep "
                         "none on disk")


def check_outputs(dataset, outputs):
    """Fail now, not after training, if an output cannot be written, would land inside
    `dataset` (source data is never modified), or two outputs are one file. `outputs` is
    [(path, flag, suffix)]; returns their paths."""
    for path, flag, suffix in outputs:
        check_output_path(path, flag, suffix=suffix)
        if os.path.isdir(dataset) and same_or_inside(path, dataset):
            raise UserError(f"{flag} {path!r} is inside --dataset {dataset!r}; write "
                            "outputs elsewhere, source data is never modified")
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


def check_inputs(folders, cache_dir=None):
    """Before VGG16 or any image loads: the cache folder is usable, the temporary folder has
    room for the decoded images of `folders`, and their manifests can be read (each problem one
    line, in seconds rather than after minutes of work)."""
    if cache_dir is not None:
        check_cache_folder(cache_dir)
    existing = [folder for folder in folders if os.path.isdir(folder)]
    check_room_for_decoded(sum(len(list_images(folder)) for folder in existing))
    for folder in existing:
        read_manifest(folder)


def start(args):
    """The start of a run: seed Python's random, NumPy and TensorFlow, warn about a slow
    precision, and load the VGG16 base first, so that a wrong --weights, or no network for
    ImageNet's, fails in seconds rather than after the images."""
    import_tensorflow()
    keras.utils.set_random_seed(args.seed)
    check_precision(args.precision)
    return load_vgg16_base(args.weights)


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


def run_facts(args):
    """The end of every report: what is needed to repeat the run."""
    return {"confidence_level": CONFIDENCE, "seed": args.seed, "flags": vars(args),
            "versions": versions()}


def write_outputs(paths, write):
    """Call `write(*temporary paths)`, then rename every output into place together. A crash,
    Ctrl-C, SIGTERM or a full disk before the end leaves every earlier output as it was; an
    `OSError` becomes one line."""
    try:
        with atomic_outputs(*paths) as temporaries:
            write(*temporaries)
    except OSError as err:  # a full disk, a folder removed meanwhile
        raise UserError(f"cannot write the outputs ({err.strerror or err}); every earlier "
                        f"{', '.join(shown(path) for path in paths)} was kept") from None
