"""From decoded images to the head's training batches: the one path train_covid19.py and
audit_covid19.py feed VGG16 and the head through.

The steps, in the order an image takes them:

1. `model_batches`: the images of an `ImageStore` (`data`), in batches, scaled to [0, 1] and
   changed by a transform (`transforms`: as they are, rotated, masked);
2. an `Extractor`: the frozen network on those batches (`features`), each distinct image (and
   rotation) computed once and kept in the feature cache (`cache`, its key built by
   `features.cache_configuration`). `feature_extractors` and `description_extractor` make
   them: the entry point of both scripts (train's through `head_inputs`);
3. `head_inputs` (train) or `training_batches` (the audit's folds): the features in shuffled
   batches of one-hot labels, every epoch's;
4. `compile_head` and `fit_head`: the tutorial's compile (its Adam with the per-step decay
   Keras 3 dropped: `make_optimizer`) and fit, on those batches.

Where this departs from the tutorial's `ImageDataGenerator` (a rotation drawn from the image,
features computed once): docs/porting.md.

The pipelines never run autotuning: tf.data's autotuning thread sleeps for up to a minute
between rounds, and destroying an iterator waits for it to wake, which stalled the end of every
training run by up to that long. Each epoch is one finite pass, so no batch is prepared that no
step will use.
"""

import dataclasses
import sys

import numpy as np

from .cli import lazy_import
from .features import (
    description_cache,
    feature_cache,
    make_description_extractor,
    make_feature_extractor,
)
from .images import scale_pixels
from .progress import progress
from .transforms import UNCHANGED, Rotation

keras = lazy_import("keras")
tf = lazy_import("tensorflow")


# ---------------------------------------------------------------------------------------------
# Images to VGG16's features
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


def features_per_epoch(extract, images, paths, batch_size, transform, epochs, cache=None):
    """The features of the images at `paths` changed by `transform` as it changes them in each
    of `epochs` epochs: (epochs, len(paths), features), in order.

    Each distinct entry (`transforms.entry_key`: the image and its parameters) is computed
    once: an image that `transform` leaves the same every epoch passes through VGG16 once, not
    once per epoch, and so does a file that stands twice. With `cache` (a `cache.FeatureCache`
    for this transform), features found there are not computed again, and those computed are
    stored. Every missing entry goes through VGG16 in one pass, under one progress bar.
    """
    # `wanted`, `parameters` and `keys` run epoch by epoch, image by image within each
    wanted = [(k, epoch) for epoch in range(epochs) for k in range(len(paths))]
    parameters, keys = transform.parameters_and_keys([images.digest(path) for path in paths],
                                                     epochs)
    first = {}  # each distinct key: the first place it is wanted
    for n, key in enumerate(keys):
        first.setdefault(key, n)
    distinct = list(first)
    features_of = dict(zip(distinct, [None] * len(distinct) if cache is None
                           else cache.lookup(distinct)))
    missing = [key for key in distinct if features_of[key] is None]
    if missing:
        places = [first[key] for key in missing]
        batches = model_batches(images, [paths[wanted[n][0]] for n in places], batch_size,
                                transform, parameters[places])
        parts = []
        with progress(len(missing), "VGG16 features") as bar:
            for batch in batches:
                parts.append(extract(batch).numpy())
                bar.update(len(parts[-1]))
        computed = np.concatenate(parts)
        features_of.update(zip(missing, computed))
        if cache is not None:
            cache.store(missing, computed)
    return np.stack([features_of[key] for key in keys]).reshape(epochs, len(paths), -1)


def extract_features(extract, images, paths, batch_size, transform=UNCHANGED, cache=None):
    """The features of the images at `paths` changed by `transform` (by default, as they are):
    (len(paths), features), in order. See `features_per_epoch`."""
    return features_per_epoch(extract, images, paths, batch_size, transform, 1, cache)[0]


@dataclasses.dataclass(frozen=True)
class Extractor:
    """A frozen network's output for images of an `ImageStore`, as they are or changed by
    `transform`, computed `batch_size` at a time and kept in `cache` (None: --no-cache)."""

    extract: object  # a batch of scaled images -> its outputs (a tf.function)
    batch_size: int
    transform: object = UNCHANGED
    cache: object = None

    def features(self, images, paths):
        """(len(paths), features), in order (`extract_features`)."""
        return extract_features(self.extract, images, paths, self.batch_size, self.transform,
                                self.cache)

    def features_per_epoch(self, images, paths, epochs):
        """(epochs, len(paths), features): as `transform` changes them each epoch."""
        return features_per_epoch(self.extract, images, paths, self.batch_size, self.transform,
                                  epochs, self.cache)


def feature_extractors(config, model, transforms):
    """The head's features of `model` (`features.make_feature_extractor`), one `Extractor` per
    transform, each with its cache: all made, their folders checked, before any image passes
    through VGG16. `config` is a `config.RunConfig`."""
    extract, crops = make_feature_extractor(model, config.precision)
    return [Extractor(extract, config.batch_size, transform,
                      feature_cache(config.cache_folder, model, crops, config.precision,
                                    transform))
            for transform in transforms]


def description_extractor(config, model):
    """The input check's description of each image by `model` (the whole image through the
    whole frozen VGG16), kept in its own cache."""
    return Extractor(make_description_extractor(model, config.precision), config.batch_size,
                     cache=description_cache(config.cache_folder, model, config.precision))


# ---------------------------------------------------------------------------------------------
# Features to the head's batches, and its training
# ---------------------------------------------------------------------------------------------


def training_batches(inputs, labels, batch_size, seed):
    """One epoch of (input batch, label batch) of features that are the same every epoch
    (--cache-features, the audit's heads): shuffled anew each epoch, whole batches.

    As in the tutorial, an epoch is `len(inputs) // batch_size` whole batches; an image left
    over by that division waits for another epoch's shuffle. Keras iterates the dataset once
    per epoch.
    """
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return without_autotuning(dataset.batch(batch_size, drop_remainder=True))


def epoch_batches(features, labels, batch_size, seed):
    """Every epoch's batches, one after the other: `features[epoch]` holds that epoch's
    features of each training image (its own rotation); `labels` their one-hot rows.

    Each epoch is a shuffle drawn from (seed, epoch) alone, cut into `len(labels) //
    batch_size` whole batches, as in `training_batches`. Keras, given that many steps an
    epoch, reads on through the next epoch's batches. Each batch is gathered from `features`
    when a step needs it, so the features are held once, whatever the number of epochs.
    """
    epochs, count = features.shape[:2]
    steps = count // batch_size
    order = np.stack([np.random.default_rng([seed, epoch]).permutation(count)
                      [:steps * batch_size].reshape(steps, batch_size)
                      for epoch in range(epochs)])
    # row k of features.reshape(epochs * count, -1) is image k % count in epoch k // count
    rows = (order + count * np.arange(epochs)[:, None, None]).reshape(epochs * steps, batch_size)
    flat = features.reshape(epochs * count, -1)
    y = np.asarray(labels, np.float32)[order].reshape(epochs * steps, batch_size, -1)

    def gather(batch_rows):
        batch = tf.numpy_function(lambda r: flat[r], [batch_rows], tf.float32, stateful=False)
        batch.set_shape((batch_size, flat.shape[1]))
        return batch

    dataset = tf.data.Dataset.from_tensor_slices((rows, y))
    return without_autotuning(dataset.map(lambda r, label: (gather(r), label)))


@dataclasses.dataclass(frozen=True)
class HeadInputs:
    """What the head trains and is tested on (`head_inputs`)."""

    batches: object  # the training batches, every epoch's
    steps: int  # whole batches an epoch, as the tutorial: len(train) // batch size
    testF: object  # the test split's features
    extractor: Extractor  # other images' features, as testF's (the external tests)
    describer: Extractor  # any image's description for the input check
    caches: list  # the caches all these are read from and kept in ([] with --no-cache)


def head_inputs(config, model, images, trainP, trainY, testP, augment=True):
    """What the head trains on: the training batches, the test split's features, the extractor
    that computes other images' features as the test split's, and the describer of images for
    the input check.

    Only the head learns, so the frozen base is part of the input pipeline, and what it
    computes depends on the image alone: it is computed once and kept in the feature cache.
    Test images are never augmented: their features are the same every epoch. The tutorial's
    augmentation, `ImageDataGenerator(rotation_range=15, fill_mode="nearest")`, rotated each
    training image by a random angle anew every epoch; here `Rotation` draws that angle from
    the seed, the epoch and the image alone, so that a rerun finds every rotated image's
    features in the cache. Each training image passes through VGG16 once per epoch, on the
    first run; without `augment` (--cache-features), once, not rotated.
    """
    transforms = [UNCHANGED] + ([Rotation(seed=config.seed)] if augment else [])
    # every cache made, its folder checked, before any image passes through VGG16
    describer = description_extractor(config, model)
    extractor, *rotated = feature_extractors(config, model, transforms)
    testF = extractor.features(images, testP)
    if augment:
        trainF = rotated[0].features_per_epoch(images, trainP, config.epochs)
        batches = epoch_batches(trainF, trainY, config.batch_size, config.seed)
    else:
        print("[INFO] --cache-features: augmentation off, each image passes through VGG16 once")
        batches = training_batches(extractor.features(images, trainP), trainY,
                                   config.batch_size, config.seed)
    caches = [e.cache for e in (extractor, *rotated, describer) if e.cache is not None]
    return HeadInputs(batches, len(trainP) // config.batch_size, testF, extractor, describer,
                      caches)


def make_optimizer(lr, epochs):
    """Adam with the tutorial's `decay=INIT_LR / EPOCHS`, which Keras 3 no longer accepts.

    Keras 2 applied that decay per batch as lr / (1 + decay * iterations). InverseTimeDecay
    with decay_steps=1 computes exactly that from the optimizer's iteration count; dropping
    `decay` instead would silently train at a constant learning rate.
    """
    schedule = keras.optimizers.schedules.InverseTimeDecay(
        initial_learning_rate=lr, decay_steps=1, decay_rate=lr / epochs)
    return keras.optimizers.Adam(learning_rate=schedule)


def loss_for(num_classes):
    """Two classes: binary cross-entropy on the 2-unit softmax, as in the tutorial. More:
    categorical cross-entropy, the loss that matches a softmax over all of them."""
    return "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"


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
