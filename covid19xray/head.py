"""The head that learns: the tutorial's Dense, Dropout, Dense on the frozen base's features,
its training batches (and, with --class-weight balanced, each class's weight), and its compile
and fit.

Nothing here decides a cached feature (`frozen` does), so nothing here is part of the feature
cache's key: editing the optimizer, the loss or the batches keeps every cached feature.
"""

import math
import sys

import numpy as np

from .cli import UserError, lazy_import
from .frozen import FEATURES_LAYER, without_autotuning

keras = lazy_import("keras")
tf = lazy_import("tensorflow")


def make_head(model):
    """The layers after FEATURES_LAYER (Dense, Dropout, Dense) as a model on the features.

    It shares its layers, and so its weights, with `model`: training the head trains the model.
    """
    features_layer = model.get_layer(FEATURES_LAYER)
    features = keras.Input(shape=(features_layer.output.shape[-1],))
    x = features
    for layer in model.layers[model.layers.index(features_layer) + 1:]:
        x = layer(x)
    return keras.Model(features, x, name="head")


# ---------------------------------------------------------------------------------------------
# Features to the head's batches
# ---------------------------------------------------------------------------------------------


def training_batches(features, labels, batch_size, seed):
    """One epoch of (feature batch, label batch) of features that are the same every epoch
    (--cache-features, the audit's heads): shuffled anew each epoch, whole batches.

    As in the tutorial, an epoch is `len(features) // batch_size` whole batches; an image left
    over by that division waits for another epoch's shuffle. Keras iterates the dataset once
    per epoch.
    """
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
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


# ---------------------------------------------------------------------------------------------
# Compile and fit
# ---------------------------------------------------------------------------------------------


def balanced_class_weights(onehot):
    """{class index: weight} that make every class weigh as much in the loss as the largest:
    images / (classes x images of the class), scikit-learn's `class_weight="balanced"`."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.asarray(onehot).argmax(axis=1)
    present = np.unique(classes)
    weights = compute_class_weight("balanced", classes=present, y=classes)
    return {int(c): float(w) for c, w in zip(present, weights)}


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
    tutorial's loss, accuracy.

    Then build the optimizer's and the metric's variables. Without a distribution strategy,
    Keras creates them inside the first trace of its training step, and TensorFlow traces a
    function that created variables a second time: a third of what `fit` cost a small run
    (0.56 against 0.36-0.44 s on a Zen 4), the same numbers either way."""
    head.compile(loss=loss_for(num_classes), optimizer=make_optimizer(lr, epochs),
                 metrics=["accuracy"])
    head.optimizer.build(head.trainable_variables)
    one_row = np.zeros((1, num_classes), np.float32)
    head.compute_metrics(None, one_row, one_row)  # builds them; their state is then reset
    head.reset_metrics()


def _stop_when_not_finite():
    """A Keras callback that ends training with one line when the loss stops being a finite
    number (a learning rate that makes it diverge): nothing after it, no output, is written."""
    class StopWhenNotFinite(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise UserError(f"training diverged: the loss is {loss} at epoch {epoch + 1}; "
                                "nothing was written; try a lower --lr")

    return StopWhenNotFinite()


def fit_head(head, batches, steps, epochs, validation=None, batch_size=None, verbose=0,
             class_weight=None):
    """Train the compiled head on `batches` (one finite pass an epoch), validating on
    `validation` (features, one-hot rows) after every epoch if given; `class_weight` ({class
    index: weight}) weighs each image's loss by its class. A loss that is no longer finite ends
    the run in one line."""
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
        class_weight=class_weight,
        callbacks=[_stop_when_not_finite()],
    )


def keras_verbosity():
    """Keras's live bar on a terminal; one line per epoch in logs and CI output."""
    return 1 if sys.stdout.isatty() else 2


def head_probabilities(head, features):
    """The head's probabilities of `features` ((n, features) -> (n, classes)), in inference
    mode (no dropout): what the tutorial's `model.predict(testX, batch_size=BS)` gives. Called
    directly, not through Keras's `predict`, which traces a function anew for every model
    (about 0.1 s each time: once a run here, once a fold in the audit) to compute what is, on
    features, two small matrix products."""
    return np.asarray(head(features, training=False))
