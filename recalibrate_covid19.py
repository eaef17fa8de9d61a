"""Recalibrate a trained model for a new site, on a labelled folder of that site's films.

A model moved to another hospital ranks its films about as it did (or worse: the external test
says), but its probabilities mean something else there: "covid 0.93" may be right a third of
the time. The standard first repair (Steyerberg et al. 2004; Van Calster et al. 2019) is the
simplest update that the site's own labelled cases support: an intercept on the logit of the
model's probability, with a slope when the cases show it is needed (two classes), or a
temperature and per-class offsets (more). It changes no ranking, no decision of the input
check, no Grad-CAM map: only what the probabilities say. It makes the numbers honest for that
site; it does not make the model better at telling COVID-19 from normal.

Usage:
    python recalibrate_covid19.py --model covid19.h5 --labelled site/ --output covid19-site.h5
    python predict_covid19.py --model covid19-site.h5 new-films/    # applies it, and says so

`--labelled` holds one folder of films per class, named as the model's classes (as
train_covid19.py's --external). The output is the model file with the update in it (an HDF5
attribute, or a member of the .keras zip): plain Keras still loads it and gives the original
probabilities; predict_covid19.py and its exports apply the update. The numbers this script
prints are measured on the very films it was fitted on: docs/calibration.md measures it on
films it was not fitted on.
"""

import contextlib
import dataclasses
import os
import shutil
import sys

import numpy as np

from covid19xray.calibration import (
    ADVISED_PER_CLASS,
    MIN_PER_CLASS,
    calibration,
    fit_recalibration,
    print_calibration,
)
from covid19xray.cli import ArgumentParser, UserError, cli, import_tensorflow, positive, shown
from covid19xray.config import MODEL_FILE, Config, add_flags, flag
from covid19xray.external_set import check_classes
from covid19xray.frozen import model_batches
from covid19xray.layout import load_dataset
from covid19xray.model_file import (
    MODEL_SUFFIXES,
    load_classifier,
    read_recalibration,
    store_recalibration,
)
from covid19xray.preflight import check_paths
from covid19xray.writing import commit_outputs

# Images per forward pass (as predict_covid19.py's).
BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecalibrateConfig(Config):
    """What the script is told, built once from the flags (`parse_args`)."""

    model: str = flag(MODEL_FILE, short="-m", help="model saved by train_covid19.py, .h5 or "
                                                   ".keras")
    labelled: str = flag(metavar="DIR", help=(
        "the new site's labelled films: one folder per class, named as the model's classes"))
    output: str = flag(short="-o", help=(
        "the recalibrated model file to write, in --model's format (.h5 or .keras)"))
    batch_size: int = flag(BATCH_SIZE, type=positive(int), help="images per forward pass")

    def input_folders(self):
        return [("--labelled", self.labelled)]

    def outputs(self):
        suffix = os.path.splitext(self.model.lower())[1]
        return [(self.output, "--output", suffix if suffix in MODEL_SUFFIXES else MODEL_SUFFIXES)]


def parse_args(argv=None):
    ap = ArgumentParser(description="Recalibrate a trained model's probabilities on a new "
                                    "site's labelled films. For education only.")
    add_flags(ap, RecalibrateConfig)
    return RecalibrateConfig.from_flags(ap.parse_args(argv))


def check_not_the_model(config):
    """The model training wrote is never replaced: an --output that is --model, by any path
    (a link, another spelling, a hard link), is refused before any work."""
    same = os.path.realpath(config.output) == os.path.realpath(config.model)
    try:
        same = same or os.path.samefile(config.output, config.model)
    except OSError:  # one of them does not exist: not the same file
        pass
    if same:
        raise UserError(f"--output {config.output!r} is --model {config.model!r} itself; write "
                        "the recalibrated model to a new file (the model training wrote, and "
                        "its report's SHA-256, stay as they are)")


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def load_model(config):
    """The model, its class names, and a recalibration it carries already (refused: fit the
    new one on the original model)."""
    import_tensorflow()
    model, class_names = load_classifier(config.model)
    if read_recalibration(config.model) is not None:
        raise UserError(f"--model {config.model!r} is recalibrated already; recalibrate the "
                        "model train_covid19.py saved")
    return model, class_names


def check_enough(true_classes, class_names):
    """Refuse a folder too small to fit even an intercept; warn below the number of cases a
    class needs for calibration to be measured reliably."""
    counts = np.bincount(true_classes, minlength=len(class_names))
    small = [f"{name} {n}" for name, n in zip(class_names, counts) if n < MIN_PER_CLASS]
    if small:
        raise UserError(f"--labelled has too few films to fit a recalibration ({', '.join(small)}"
                        f"): it needs at least {MIN_PER_CLASS} of every class, so that no "
                        "single film decides the update")
    few = [f"{name} {n}" for name, n in zip(class_names, counts) if n < ADVISED_PER_CLASS]
    if few:
        print(f"[WARNING] fewer than {ADVISED_PER_CLASS} films of a class ({', '.join(few)}): "
              "the literature asks for at least 100 to fit and measure calibration; the update "
              "is uncertain", file=sys.stderr)


def predict_probabilities(model, images, paths, batch_size):
    """The model's probabilities for every film, as predict_covid19.py computes them."""
    return np.concatenate([np.asarray(model(batch, training=False), np.float32)
                           for batch in model_batches(images, paths, batch_size)])


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    check_not_the_model(config)
    # every path checked before any work; the output written to a temporary file, renamed
    with commit_outputs(*check_paths(config.input_folders(), config.outputs())) as commit:
        model, class_names = load_model(config)
        check_classes(config.labelled, class_names, "--labelled")
        print("[INFO] loading the labelled films...")
        images, paths, labels = load_dataset(config.labelled, "--labelled")
        with contextlib.closing(images):
            true_classes = np.array([class_names.index(label) for label in labels])
            check_enough(true_classes, class_names)
            probabilities = predict_probabilities(model, images, paths, config.batch_size)
        try:
            update = fit_recalibration(true_classes, probabilities, class_names,
                                       folder=shown(config.labelled))
        except ValueError as err:
            raise UserError(f"--labelled: {err}") from None
        print(f"[INFO] fitted on {len(paths)} films: {update.kind}")
        print("before (measured on the films it is fitted on):")
        print_calibration(calibration(true_classes, probabilities, class_names))
        print("after (on the same films: docs/calibration.md measures it on others):")
        print_calibration(calibration(true_classes, update.apply(probabilities), class_names))
        with commit.writing():
            temporary = commit.temporary(config.output)
            shutil.copyfile(config.model, temporary)
            store_recalibration(temporary, update)
    print(f"[INFO] wrote {shown(config.output)} ({update.summary()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
