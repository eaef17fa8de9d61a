"""The tutorial's hyperparameters, in one place, and the frozen configuration of a run.

The tutorial hard-coded `INIT_LR = 1e-3`, `EPOCHS = 25`, `BS = 8`, `random_state=42`,
`test_size=0.20` and `ImageDataGenerator(rotation_range=15, fill_mode="nearest")`. They are the
defaults of the flags here, and nowhere else, so that train_covid19.py, audit_covid19.py and
predict_covid19.py use the same numbers.

`Config` is what a script is told, built once from its flags and never changed: the steps read
it, none rewrites it, and a test builds one directly (`TrainConfig(dataset=...)`) instead of
faking argparse's namespace. `RunConfig` holds the flags of a run that trains heads on the
frozen VGG16 (train and the audit); each script extends it with its own.
"""

import dataclasses
import os

from .cli import positive, seed_value

# The tutorial's initial learning rate, number of epochs to train for, and batch size.
LEARNING_RATE = 1e-3
EPOCHS = 25
BATCH_SIZE = 8
# Its random_state, for the split, the heads and everything seeded; its test split.
SEED = 42
TEST_SIZE = 0.20
# Its augmentation: ImageDataGenerator(rotation_range=15, fill_mode="nearest"), which
# interpolates bilinearly.
ROTATION_DEGREES = 15
FILL_MODE = "nearest"
INTERPOLATION = "bilinear"
# The audit's cross-validation folds.
FOLDS = 5

PRECISIONS = ("float32", "bfloat16", "float16")
# The file Keras downloads for `VGG16(weights="imagenet", include_top=False)`.
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def default_cache_folder():
    """`$XDG_CACHE_HOME/covid19-xray`, else `~/.cache/covid19-xray` (the XDG rule)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "covid19-xray")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """A script's flags, parsed once into a frozen dataclass that no step rewrites."""

    @classmethod
    def from_flags(cls, namespace):
        """The configuration of argparse's parsed flags, once."""
        return cls(**vars(namespace))

    def flags(self):
        """Every flag and its value: the `flags` of a report, to repeat the run."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(Config):
    """The flags that train_covid19.py and audit_covid19.py share (`add_run_flags`)."""

    dataset: str
    weights: str = "imagenet"
    precision: str = "float32"
    seed: int = SEED
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    cache_dir: str = dataclasses.field(default_factory=default_cache_folder)
    no_cache: bool = False

    @property
    def cache_folder(self):
        """The feature cache's folder, or None with --no-cache."""
        return None if self.no_cache else self.cache_dir


def add_run_flags(ap, dataset_help):
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
