"""covid19xray.features: the frozen part computed once, on what the head reads, and kept in the
feature cache."""

import os

import keras
import numpy as np
import pytest

from covid19xray.cache import FeatureCache
from covid19xray.data import ImageStore
from covid19xray.features import (
    cache_configuration,
    extract_features,
    feature_crops,
    make_feature_extractor,
    make_head,
)
from covid19xray.images import PREPROCESSING, list_images, load_xray, scale_pixels
from covid19xray.model import build_model, load_vgg16_base
from helpers import make_dataset, write_image


@pytest.fixture(scope="module")
def base():
    keras.utils.set_random_seed(5)
    return load_vgg16_base("none")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # one image of each class: what is compared is each image's features, not their number
    paths = make_dataset(str(tmp_path_factory.mktemp("d")), per_class=1)
    return ImageStore(paths), paths


def model_with_head(base, pooling):
    """The tutorial's network with another pooling layer at the top of its head."""
    x = pooling(base.output)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(base.input, keras.layers.Dense(2, activation="softmax")(x))


def whole_image_features(model, paths):
    """What the tutorial computes: the whole 224x224 image through everything before the head."""
    frozen = keras.Model(model.input, model.get_layer("flatten").output)
    return frozen.predict(np.asarray(scale_pixels(np.stack([load_xray(p) for p in paths]))),
                          verbose=0)


def test_the_tutorials_head_reads_the_top_left_218_pixels(base):
    model = build_model(base)
    assert feature_crops(model) == {"input": 218, "block1_pool": 108, "block2_pool": 53,
                                    "block3_pool": 25, "block4_pool": 11, "block5_pool": 4}


POOLINGS = {
    "the tutorial's 4x4": lambda: keras.layers.AveragePooling2D((4, 4)),
    "2x2, which reads 6x6 of block5_pool": lambda: keras.layers.AveragePooling2D((2, 2)),
    "3x3 stride 2, which reads all 7x7": lambda: keras.layers.MaxPooling2D((3, 3), strides=2),
    "7x7": lambda: keras.layers.AveragePooling2D((7, 7)),
    "global": lambda: keras.layers.GlobalAveragePooling2D(),
    "4x4 'same', not derived": lambda: keras.layers.AveragePooling2D((4, 4), padding="same"),
}


@pytest.mark.parametrize("pooling, crops", [
    ("the tutorial's 4x4", 6), ("2x2, which reads 6x6 of block5_pool", 1),
    ("3x3 stride 2, which reads all 7x7", 0), ("7x7", 0), ("global", 0),
    ("4x4 'same', not derived", 0),  # not derived: no crop
])
def test_the_crop_follows_the_heads_pooling(base, pooling, crops):
    assert len(feature_crops(model_with_head(base, POOLINGS[pooling]()))) == crops


@pytest.mark.parametrize("pooling", ["the tutorial's 4x4", "2x2, which reads 6x6 of block5_pool",
                                     "4x4 'same', not derived"])
def test_features_equal_the_whole_models_whatever_the_heads_pooling(base, images, pooling):
    store, paths = images
    model = model_with_head(base, POOLINGS[pooling]())
    extract, crops = make_feature_extractor(model)
    assert crops == feature_crops(model)
    features = extract_features(extract, store, paths, batch_size=3)
    expected = whole_image_features(model, paths)
    assert features.shape == expected.shape and np.abs(expected).max() > 0
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_features_are_close_and_the_model_stays_float32(base, images):
    store, paths = images
    model = build_model(base)
    full = extract_features(make_feature_extractor(model)[0], store, paths, batch_size=4)
    extract, _ = make_feature_extractor(model, "bfloat16")
    half = extract_features(extract, store, paths, batch_size=4)
    assert half.dtype == np.float32
    relative = np.linalg.norm(half - full) / np.linalg.norm(full)
    assert 0 < relative < 0.05  # rounded differently, but the same features
    assert {w.dtype for w in model.weights} == {"float32"}
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)


def test_head_shares_its_weights_with_the_saved_network(base):
    model = build_model(base)
    head = make_head(model)
    features = base.output_shape[-1]  # one 1x1 cell after the 4x4 pooling: VGG16's channels
    assert [w.shape for w in head.trainable_weights] == [(features, 64), (64,), (64, 2), (2,)]
    head.trainable_weights[0].assign(np.ones((features, 64)))
    np.testing.assert_array_equal(model.get_layer(index=-3).get_weights()[0], 1.0)


# ---------------------------------------------------------------------------------------------
# The on-disk feature cache
# ---------------------------------------------------------------------------------------------


def counting(extract):
    """`extract`, counting the images it is given."""
    def counted(batch):
        counted.images += int(batch.shape[0])
        return extract(batch)

    counted.images = 0
    return counted


def test_cache_recomputes_exactly_what_changed(base, tmp_path, capsys):
    dataset = str(tmp_path / "d")
    make_dataset(dataset, per_class=3)
    model = build_model(base)
    extract, crops = make_feature_extractor(model)
    configuration = cache_configuration(model, crops, "float32")

    def run(precision_configuration=configuration):
        paths = list_images(dataset)
        store = ImageStore(paths)
        cache = FeatureCache(str(tmp_path / "cache"), precision_configuration)
        counted = counting(extract)
        features = extract_features(counted, store, paths, 4, cache=cache)
        return counted.images, features, cache

    computed, first, cache = run()
    assert computed == 6 and (cache.found, cache.computed) == (0, 6)
    computed, again, cache = run()
    assert computed == 0 and (cache.found, cache.computed) == (6, 0)  # no VGG16 pass
    np.testing.assert_array_equal(first, again)

    # one image changes: only it is computed again
    changed = os.path.join(dataset, "normal", "normal-01.png")
    write_image(changed, seed=999, size=(100, 100))
    computed, _, cache = run()
    assert computed == 1 and (cache.found, cache.computed) == (5, 1)

    # other weights or another precision: a configuration of its own, computed afresh
    assert run({**configuration, "precision": "bfloat16"})[0] == 6
    # and so does any other decoding: the preprocessing's text and the DICOM decoders' versions
    # are in the key, so features cached before DICOM and 16-bit scaling are never reused
    assert configuration["preprocessing"] == PREPROCESSING and "DICOM" in PREPROCESSING
    assert set(configuration["versions"]) >= {"pydicom", "python-gdcm", "opencv"}
    assert run({**configuration, "preprocessing": "cv2.imdecode IMREAD_COLOR"})[0] == 6
    assert capsys.readouterr().err == ""
