"""The input check: does an image look like the frontal chest films the model was trained on?

A classifier answers whatever it is shown: before this check, a flat grey square was "covid
0.998". So train_covid19.py fits a check on its training images and saves it in the model file,
and every prediction says one of three things:

- `ok`: the image is as close to some training image as training images are to each other;
- `unlike_training`: classified, with a warning: farther from every training image than
  `UNLIKE_FACTOR` times that (an adult's film, for a model trained on children's films);
- `rejected`: not classified: farther than `REJECT_FACTOR` times that. It looks like no frontal
  chest X-ray the model knows: a photograph, a page, a blank or noise image, a CT or MR slice.

Each image is described by `frozen.description_output`: the frozen VGG16 is read at its five
pooling layers. Of each, the mean and the standard deviation of every channel over the image
(what textures are there, and how much they vary), and the fourth pooling layer's channels
averaged over the image's four quarters (where they are: a lateral film and a frontal one share
textures, not their layout). Each part is square-rooted (activations are non-negative, and a
few strong channels would otherwise drown the rest), scaled to unit length, and the parts are
joined with equal weight. It costs nothing beyond the forward pass that predicts: the pooled
values are read off layers the model computes anyway. The distance of an image to the training
images is the Euclidean distance of its description to the nearest training image's
(`InputCheck.distances`). Its unit, `scale`, is the median distance of a training image to its
nearest other training image: the thresholds are 1.4 and 1.7 of it.

Why this, measured (BENCHMARKS.md, "The input check"): nearest-neighbour distances of these
descriptions met every target on the probe sets; Mahalanobis distances with a shrunk covariance
(FRODO's method) did not: with 40 training images the shrinkage leaves flat and noise images
within the spread of real films.
"""

import dataclasses
import json

import numpy as np

from .cli import UserError, lazy_import
from .frozen import LAYOUT_GRID, LAYOUT_LAYER, POOLING_LAYERS, description_output

keras = lazy_import("keras")

OK, UNLIKE_TRAINING, REJECTED = "ok", "unlike_training", "rejected"
OUTCOMES = (OK, UNLIKE_TRAINING, REJECTED)

# The thresholds, in units of `InputCheck.scale` (chosen by measurement: BENCHMARKS.md).
UNLIKE_FACTOR, REJECT_FACTOR = 1.4, 1.7
# Training images kept as the reference: a seeded sample beyond this (about 20 MB in the file).
MAX_REFERENCE = 1000
# The format of the check as a model file keeps it (`model_file`).
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# The check inside the model, for the exports
# ---------------------------------------------------------------------------------------------


def outcome_outputs(model, input_check):
    """The check inside `model`'s graph, for exports that run without this project:
    {"probabilities", "input_distance" (in units of `scale`), "input_check" (0 ok, 1
    unlike_training, 2 rejected)}, computed as `InputCheck.distances` and `outcomes` do."""
    described = description_output(model)
    reference = input_check.reference.astype(np.float32)
    squared = (keras.ops.sum(described * described, axis=1, keepdims=True)
               + (reference * reference).sum(1)[None]
               - 2 * keras.ops.matmul(described, reference.T))
    distance = keras.ops.sqrt(keras.ops.maximum(keras.ops.min(squared, axis=1), 0.0))
    distance = distance / float(input_check.scale)
    outcome = (keras.ops.cast(distance > input_check.unlike_factor, "int32")
               + keras.ops.cast(distance > input_check.reject_factor, "int32"))
    # NaN > threshold is false: a NaN or infinite input (or distance) would pass as ok.
    # Whatever is not a finite distance is rejected.
    outcome = keras.ops.where(keras.ops.isfinite(distance), outcome, 2)
    return {"probabilities": model.output, "input_distance": distance, "input_check": outcome}


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def squared_distances(descriptions, reference):
    """The squared Euclidean distance of each row of `descriptions` to each row of
    `reference`, in float64: (n, m)."""
    q = np.asarray(descriptions, np.float64)
    r = np.asarray(reference, np.float64)
    return np.maximum((q * q).sum(1)[:, None] + (r * r).sum(1)[None] - 2 * q @ r.T, 0)


def nearest_distances(descriptions, reference):
    """The Euclidean distance of each row of `descriptions` to its nearest row of
    `reference`: (n,) float64."""
    return np.sqrt(squared_distances(descriptions, reference).min(axis=1))


@dataclasses.dataclass(frozen=True)
class InputCheck:
    """The training images' descriptions, and the thresholds of the three outcomes."""

    reference: np.ndarray  # (n, description size) float32
    scale: float  # median distance of a training image to its nearest other
    unlike_factor: float = UNLIKE_FACTOR
    reject_factor: float = REJECT_FACTOR
    fitted_on: int = 0  # training images the check was fitted on (the reference may be fewer)

    def distances(self, descriptions):
        """How far each image is from the nearest training image, in units of `scale`."""
        return nearest_distances(descriptions, self.reference) / self.scale

    def outcomes(self, distances):
        """`ok`, `unlike_training` or `rejected`, for distances in units of `scale`."""
        return [REJECTED if d > self.reject_factor else UNLIKE_TRAINING
                if d > self.unlike_factor else OK for d in distances]

    def summary(self):
        """What a report says of the check."""
        return {"method": "distance to the nearest training image, pooled VGG16 activations",
                "fitted_on": self.fitted_on, "reference_images": int(len(self.reference)),
                "unit": self.scale, "unlike_training_above": self.unlike_factor,
                "rejected_above": self.reject_factor}


def fit_input_check(descriptions, seed=0):
    """The check fitted on the training images' `descriptions` (at least two)."""
    descriptions = np.asarray(descriptions, np.float32)
    fitted_on = len(descriptions)
    if fitted_on > MAX_REFERENCE:
        keep = np.sort(np.random.default_rng(seed).choice(fitted_on, MAX_REFERENCE,
                                                         replace=False))
        descriptions = descriptions[keep]
    squared = squared_distances(descriptions, descriptions)
    np.fill_diagonal(squared, np.inf)
    nearest_other = np.sqrt(squared.min(axis=1))
    # identical training images would make the unit 0; a tiny floor keeps every ratio finite
    scale = max(float(np.median(nearest_other)), 1e-6)
    return InputCheck(reference=descriptions, scale=scale, fitted_on=fitted_on)


# ---------------------------------------------------------------------------------------------
# In the model file
# ---------------------------------------------------------------------------------------------


def metadata_text(input_check):
    """The check's thresholds and layers as the model file keeps them (JSON)."""
    return json.dumps({"version": FORMAT_VERSION, "layers": list(POOLING_LAYERS),
                       "layout": [LAYOUT_LAYER, LAYOUT_GRID], "scale": input_check.scale,
                       "unlike_factor": input_check.unlike_factor,
                       "reject_factor": input_check.reject_factor,
                       "fitted_on": input_check.fitted_on})


def not_ours(path, why):
    return UserError(f"--model {path!r}: its input check ({why}) is damaged or not this "
                     "project's; retrain with train_covid19.py, or use a file it saved")


def from_stored(path, metadata_text, reference):
    """The `InputCheck` a model file at `path` keeps as `metadata_text` and `reference`
    (`model_file.read_input_check`), every number checked finite and in range."""
    try:
        metadata = json.loads(metadata_text)
        version, scale = metadata["version"], float(metadata["scale"])
        unlike, reject = float(metadata["unlike_factor"]), float(metadata["reject_factor"])
        fitted_on = int(metadata["fitted_on"])
        layers, layout = metadata["layers"], metadata["layout"]
    except (ValueError, TypeError, KeyError, OverflowError):  # Infinity, 1e400 in an int
        raise not_ours(path, "its metadata is not what this project writes") from None
    if version != FORMAT_VERSION:
        raise UserError(f"--model {path!r}: its input check is of format {version!r}, this "
                        f"project reads format {FORMAT_VERSION}; retrain with this "
                        "train_covid19.py")
    if layers != list(POOLING_LAYERS) or layout != [LAYOUT_LAYER, LAYOUT_GRID]:
        raise not_ours(path, "it describes images on other layers")
    if not (np.isfinite([scale, unlike, reject]).all() and scale > 0 and 0 < unlike <= reject):
        raise not_ours(path, "its thresholds are not positive numbers in order")
    if fitted_on < 0:
        raise not_ours(path, "it was fitted on a negative number of images")
    if (reference.ndim != 2 or not 1 <= len(reference) <= MAX_REFERENCE
            or not np.isfinite(reference).all()):
        raise not_ours(path, f"its reference is an array of shape {reference.shape}")
    return InputCheck(reference=reference.astype(np.float32), scale=scale,
                      unlike_factor=unlike, reject_factor=reject, fitted_on=fitted_on)
