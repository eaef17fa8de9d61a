"""covid19xray.model: the tutorial's network, its optimizer and its weights."""

import keras
import numpy as np
import pytest

from covid19xray.cli import UserError
from covid19xray.frozen import make_joint_extractor, model_with_precision
from covid19xray.head import compile_head, fit_head, loss_for, make_optimizer, training_batches
from covid19xray.model import build_model, compiled, load_vgg16_base


def test_model_layers_and_parameter_counts(real_vgg16, monkeypatch):
    monkeypatch.setattr(keras.applications, "VGG16", real_vgg16)
    model = build_model(load_vgg16_base("none"))
    head = model.layers[-5:]
    assert [type(layer).__name__ for layer in head] == [
        "AveragePooling2D", "Flatten", "Dense", "Dropout", "Dense"]
    assert head[0].pool_size == (4, 4)
    assert head[1].name == "flatten"
    assert head[2].units == 64 and head[2].activation.__name__ == "relu"
    assert head[3].rate == 0.5
    assert head[4].units == 2 and head[4].activation.__name__ == "softmax"
    assert model.input_shape == (None, 224, 224, 3)
    assert model.layers[-6].name == "block5_pool"

    def count(weights):
        return sum(int(np.prod(w.shape)) for w in weights)

    assert count(model.trainable_weights) == 32_962
    assert count(model.non_trainable_weights) == 14_714_688
    assert not any(layer.trainable for layer in model.layers[:-5])


def test_learning_rate_schedule_reproduces_keras2_decay():
    lr, epochs = 1e-3, 25
    optimizer = make_optimizer(lr, epochs)
    decay = lr / epochs
    for step in [0, 1, 5, 125, 10_000]:
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(lr / (1 + decay * step),
                                                               rel=1e-6)
    # and it really decays: after 10,000 steps the rate is 1/(1+0.4) of the initial one
    assert float(optimizer.learning_rate) == pytest.approx(lr / 1.4, rel=1e-6)


def test_a_compiled_head_creates_no_variable_when_fit_traces_its_step():
    """TensorFlow traces a function a second time when its first trace created variables.
    Keras, without a distribution strategy, creates the optimizer's and the accuracy's there:
    every run traced its training step twice. `compile_head` builds them first; fit then makes
    none, and trains to the same numbers as a head whose variables fit made."""
    classes = 2

    def head(prebuilt):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((8,))
        x = keras.layers.Dropout(0.5)(keras.layers.Dense(4, activation="relu")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
        if prebuilt:
            compile_head(model, classes, 1e-3, 2)
        else:  # the tutorial's compile alone
            model.compile(loss=loss_for(classes), optimizer=make_optimizer(1e-3, 2),
                          metrics=["accuracy"])
        return model

    def variables(model):
        return {v.path for v in [*model.optimizer.variables, *model.metrics_variables]}

    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 8)).astype("float32")
    onehot = np.eye(classes, dtype="float32")[np.arange(12) % classes]
    histories = []
    for prebuilt in (True, False):
        model = head(prebuilt)
        before = variables(model)
        history = fit_head(model, training_batches(features, onehot, 4, seed=1), 3, 2,
                           validation=(features[:4], onehot[:4]), batch_size=4)
        assert (variables(model) == before) is prebuilt
        histories.append(history.history)
    assert histories[0] == histories[1] and len(histories[0]["loss"]) == 2


def test_weights_path_loads_that_file(tmp_path, real_vgg16):
    base = real_vgg16(weights=None, include_top=False,
                                    input_tensor=keras.Input((224, 224, 3)))
    path = str(tmp_path / "vgg16_notop.h5")
    base.save(path)
    model = build_model(load_vgg16_base(path))
    for name in ["block1_conv1", "block5_conv3"]:
        for got, want in zip(model.get_layer(name).get_weights(),
                             base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("content", [None, b"not an hdf5 file"])
def test_bad_weights_path_is_a_user_error(tmp_path, content):
    path = tmp_path / "weights.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match="--weights"):
        load_vgg16_base(str(path))


def test_a_bfloat16_copy_keeps_the_weights_and_a_float32_softmax():
    model = build_model(load_vgg16_base("none"))
    copy = model_with_precision(model, "bfloat16")
    assert copy.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert copy.layers[-1].dtype_policy.name == "float32"
    for a, b in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    out = np.asarray(copy(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(model(x)), atol=0.02)
    assert model_with_precision(model, "float32") is model


def test_compiled_models_one_after_another_print_no_retracing_warning(capfd, caplog):
    """TensorFlow counts a tf.function's traces by its Python code: predict, run for one model
    after another in a process, printed "triggered tf.function retracing" from the fifth on
    (Keras's predict_on_batch does the same), and so did the feature extractors of a process
    training a few times (a test of the damaged files, once). Every trace there is of a new
    model."""
    for k in range(8):
        inputs = keras.Input((3,))
        network = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        forward = compiled(network)
        batch = np.ones((1 + k % 3, 3), np.float32)
        np.testing.assert_allclose(np.asarray(forward(batch)), np.asarray(network(batch)),
                                   atol=1e-6)
    model = build_model(keras.applications.VGG16(weights=None, include_top=False,
                                                 input_shape=(224, 224, 3)))
    images = np.full((1, 224, 224, 3), 0.5, np.float32)
    for _ in range(5):  # the one-pass extractor of five runs (the cropped one is made alike)
        make_joint_extractor(model)(images)
    # TensorFlow's logger writes to stderr once it has its handler, else to Python's logging
    assert "retracing" not in capfd.readouterr().err
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
