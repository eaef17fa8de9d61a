"""The tutorial's hyperparameters, in one place, and the frozen configuration of a run.

The tutorial hard-coded `INIT_LR = 1e-3`, `EPOCHS = 25`, `BS = 8`, `random_state=42`,
`test_size=0.20` and `ImageDataGenerator(rotation_range=15, fill_mode="nearest")`. They are the
defaults of the flags here, and nowhere else, so that train_covid19.py, audit_covid19.py and
predict_covid19.py use the same numbers.

`Config` is what a script is told, built once from its flags and never changed: the steps read
it, none rewrites it, and a test builds one directly (`TrainConfig(dataset=...)`) instead of
faking argparse's namespace. Each field is its flag (`flag`: default, help and argparse options
in one place), and `add_flags` makes the parser from the fields, as transformers'
`HfArgumentParser` does. `RunConfig` holds the flags of a run that trains heads on the frozen
VGG16 (train and the audit); each script extends it with its own.
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
# What the frozen VGG16 computes in unless told otherwise, and the model's file (the tutorial's
# covid19.model, as HDF5 under the name Keras 3 loads HDF5 from).
PRECISION = "float32"
MODEL_FILE = "covid19.h5"
# The file Keras downloads for `VGG16(weights="imagenet", include_top=False)`.
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def default_cache_folder():
    """`$XDG_CACHE_HOME/covid19-xray`, else `~/.cache/covid19-xray` (the XDG rule)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "covid19-xray")


def flag(default=dataclasses.MISSING, *, help, short=None, option=None,
         default_factory=dataclasses.MISSING, **argparse_options):
    """A configuration field that is also a command-line flag: `--name-with-dashes` (or
    `option`, where the field's name says more than the flag's: `external_folders` is
    `--external`), `short`, its `default`, and `help` and any other argparse options (`type`,
    `choices`, `metavar`) in its metadata, where `add_flags` reads them. The default is written
    here and nowhere else; `(default: ...)` is added to the help unless the default says
    nothing (None, False, empty)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "short": short, "option": option,
                                       "argparse": argparse_options})


def option_of(field):
    """The command-line flag of a `flag` field: `--batch-size` for `batch_size`."""
    return field.metadata.get("option") or f"--{field.name.replace('_', '-')}"


def add_flags(ap, config_class):
    """One argparse flag per `flag` field of `config_class`, in the fields' order: what
    `Config.from_flags` turns back into the configuration. A field without a default is a
    required flag, a bool one is switched on by its flag, a tuple one is repeatable, and one
    with `positional=True` in its options is a positional argument."""
    for field in dataclasses.fields(config_class):
        if "help" not in field.metadata:
            continue
        options = dict(field.metadata["argparse"])
        default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else field.default)
        help_text = field.metadata["help"]
        if options.pop("positional", False):
            ap.add_argument(field.name, help=help_text, **options)
            continue
        if default is dataclasses.MISSING:
            options["required"] = True
        elif isinstance(default, bool):
            options.update(action="store_true")
        elif isinstance(default, tuple):
            options.setdefault("action", "append")
            options["default"] = list(default)
        else:
            options["default"] = default
            if default is not None:
                help_text += " (default: %(default)s)"
        names = [option_of(field)]
        if field.metadata["short"]:
            names.insert(0, field.metadata["short"])
        ap.add_argument(*names, dest=field.name, help=help_text, **options)


def seed_flag(what):
    """A builder's --seed: the same default and range as every script's, its help naming
    `what` it seeds."""
    return flag(SEED, type=seed_value, help=f"seed of {what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """A script's flags, parsed once into a frozen dataclass that no step rewrites."""

    @classmethod
    def from_flags(cls, namespace):
        """The configuration of argparse's parsed flags, once."""
        return cls(**vars(namespace))

    def flags(self):
        """Every flag and its value, by the flag's name (`external` for --external): the
        `flags` of a report, to repeat the run."""
        return {option_of(field).lstrip("-").replace("-", "_"): getattr(self, field.name)
                for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(Config):
    """The flags that train_covid19.py and audit_covid19.py share; each script extends this
    with its own flags."""

    dataset: str = flag(short="-d", help="path to input dataset: one folder of images per class")
    weights: str = flag("imagenet", help=(
        "VGG16 base weights: imagenet (downloaded by Keras on first use), none (random), or the "
        f"path of a local {VGG16_NOTOP_FILE}"))
    precision: str = flag(PRECISION, choices=PRECISIONS, help=(
        "what the frozen VGG16 computes in; bfloat16 is about twice as fast on CPUs with "
        "AVX512_BF16 and about six times on CPUs with AMX, float16 on GPUs. The head, the loss "
        "and the saved model stay float32"))
    seed: int = flag(SEED, type=seed_value, help=(
        "seeds the split or folds, Python, NumPy and TensorFlow: the same seed gives the same "
        "run"))
    epochs: int = flag(EPOCHS, type=positive(int), help="training epochs of the head")
    batch_size: int = flag(BATCH_SIZE, type=positive(int), help="images per training step")
    lr: float = flag(LEARNING_RATE, type=positive(float), help=(
        "initial learning rate, decayed per step as Keras 2's decay=lr/epochs did"))
    cache_dir: str = flag(default_factory=default_cache_folder, help=(
        "the feature cache that every run of train_covid19.py and audit_covid19.py reads and "
        "fills: VGG16's features of each image, and of each training image's rotation in each "
        "epoch, so that a rerun with the same images, weights and seed recomputes none of them; "
        "delete the folder to clear it"))
    no_cache: bool = flag(False, help=(
        "neither read nor fill the feature cache: compute every feature, keep none on disk"))

    @property
    def cache_folder(self):
        """The feature cache's folder, or None with --no-cache."""
        return None if self.no_cache else self.cache_dir
