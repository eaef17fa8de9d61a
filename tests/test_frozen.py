"""covid19xray.frozen: the frozen part computed once, on what the head reads, and kept in the
feature cache under a key that changes with what VGG16 is given, and only then."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from covid19xray.cache import FeatureCache
from covid19xray.frozen import (
    cache_configuration,
    feature_crops,
    frozen_code_digest,
    make_feature_extractor,
)
from covid19xray.head import make_head
from covid19xray.images import list_images, load_xray, scale_pixels
from covid19xray.model import build_model, load_vgg16_base
from covid19xray.store import ImageStore
from covid19xray.transforms import UNCHANGED, BoxMask, Rotation
from helpers import ROOT, computed_outputs, make_dataset, write_image


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
    features = computed_outputs(extract, store, paths, 3)[0]
    expected = whole_image_features(model, paths)
    assert features.shape == expected.shape and np.abs(expected).max() > 0
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_features_are_close_and_the_model_stays_float32(base, images):
    store, paths = images
    model = build_model(base)
    full = computed_outputs(make_feature_extractor(model)[0], store, paths, 4)[0]
    extract, _ = make_feature_extractor(model, "bfloat16")
    half = computed_outputs(extract, store, paths, 4)[0]
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
        features = computed_outputs(counted, store, paths, 4, cache=cache)[0]
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
    # and so does any other decoding: the frozen code's digest and the DICOM decoders'
    # versions are in the key, so features cached by other code are never reused
    assert configuration["code"] == frozen_code_digest()
    assert set(configuration["libraries"]) >= {"pydicom", "python-gdcm", "opencv"}
    assert run({**configuration, "code": "0" * 64})[0] == 6
    assert capsys.readouterr().err == ""


def test_a_transforms_parameters_are_in_the_key_so_editing_one_recomputes(base, tmp_path):
    """The audit's lung box and the rotation's seed name themselves in the cache's key: an
    edited box reuses nothing computed with the old one, and the same box reuses everything."""
    dataset = str(tmp_path / "d")
    make_dataset(dataset, per_class=2)
    paths = list_images(dataset)
    store = ImageStore(paths)
    model = build_model(base)
    extract, crops = make_feature_extractor(model)

    def run(transform):
        cache = FeatureCache(str(tmp_path / "cache"),
                             cache_configuration(model, crops, "float32", transform))
        counted = counting(extract)
        features = computed_outputs(counted, store, paths, 4, transform, 2, cache)
        return counted.images, features

    lungs_hidden = BoxMask(box=(0.1, 0.1, 0.9, 0.9), keep="outside")
    computed, hidden = run(lungs_hidden)
    assert computed == 4  # 4 images; a mask is the same every epoch: one pass
    assert run(BoxMask(box=(0.1, 0.1, 0.9, 0.9), keep="outside"))[0] == 0
    computed, wider = run(BoxMask(box=(0.05, 0.1, 0.9, 0.9), keep="outside"))
    assert computed == 4 and not np.allclose(wider, hidden)
    # a mask is the same every epoch; a rotation is not (4 images, 2 epochs), and its seed is
    # in its key
    np.testing.assert_array_equal(hidden[0], hidden[1])
    computed, rotated = run(Rotation(seed=1))
    assert computed == 8 and not np.allclose(rotated[0], rotated[1])
    assert run(Rotation(seed=1))[0] == 0 and run(Rotation(seed=2))[0] == 8
    assert run(UNCHANGED)[0] == 4 and run(UNCHANGED)[0] == 0  # one pass: the same each epoch


def package_copy(tmp_path, name):
    """A copy of the package's source, to edit: its folder."""
    folder = tmp_path / name / "covid19xray"
    shutil.copytree(os.path.join(ROOT, "covid19xray"), folder)
    return folder


def edit(path, old, new):
    source = path.read_text()
    assert source.count(old) == 1, old
    path.write_text(source.replace(old, new))


def test_changing_what_vgg16_is_given_changes_the_key(tmp_path):
    """Derived, not kept by hand: a copy of the package whose scaling divides by 256 instead of
    255, whose rotation fills with zeros, or whose resize interpolates otherwise gets another
    key; the unchanged copy gets this one."""
    same = package_copy(tmp_path, "same")
    assert frozen_code_digest.__wrapped__(str(same)) == frozen_code_digest()
    scaled = package_copy(tmp_path, "scaled")
    edit(scaled / "images.py", "/ 255.0", "/ 256.0")
    filled = package_copy(tmp_path, "filled")
    edit(filled / "transforms.py", 'fill_mode=FILL_MODE', 'fill_mode="constant"')
    resized = package_copy(tmp_path, "resized")
    edit(resized / "images.py", "cv2.COLOR_BGR2RGB), size)",
         "cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA)")
    keys = {frozen_code_digest.__wrapped__(str(folder))
            for folder in (same, scaled, filled, resized)}
    assert len(keys) == 4


def test_editing_the_head_words_or_the_scheduling_keeps_the_key(tmp_path):
    """What decides no feature keeps every cached feature: the optimizer's schedule, the loss,
    a docstring, a comment, an error's words, a warning's words and the cap on a decoder's
    message, a progress label, the cache line's name of an entry, and the scheduling of the
    batches (`extractor`). Wherever `make_optimizer` lives, it is not hashed."""
    edited = package_copy(tmp_path, "edited")
    [optimizer_file] = [path for path in edited.glob("*.py")
                        if "def make_optimizer(" in path.read_text()]
    edit(optimizer_file, "decay_steps=1,", "decay_steps=2,")
    edit(optimizer_file, 'return "binary_crossentropy"', 'return "categorical_crossentropy"')
    edit(edited / "frozen.py", '"""The layers from the input to FEATURES_LAYER',
         '"""Every layer from the input to FEATURES_LAYER')
    edit(edited / "frozen.py", "    return tf.cast(x, tf.float32)\n",
         "    return tf.cast(x, tf.float32)  # the features, as the head reads them\n")
    edit(edited / "images.py", '"not a readable image") from None',
         '"not an image OpenCV or Pillow can read") from None')
    edit(edited / "images.py", "damaged, used as far as it decodes", "damaged, read in part")
    edit(edited / "images.py", "if len(message) <= 300 else message[:297]",
         "if len(message) <= 200 else message[:197]")
    edit(edited / "store.py", 'progress(len(image_paths), "decoding")',
         'progress(len(image_paths), "reading images")')
    edit(edited / "transforms.py", 'entries = "rotated image(s) (one per training image and '
         'epoch)"', 'entries = "rotations"')
    edit(edited / "extractor.py", "[:2 * self.batch_size]", "[:3 * self.batch_size]")
    edit(edited / "extractor.py", '"whole image(s)"', '"images as they are"')
    assert frozen_code_digest.__wrapped__(str(edited)) == frozen_code_digest()


def test_every_library_that_touches_a_pixel_is_in_the_key(base, monkeypatch):
    """A new Pillow, NumPy, OpenCV, pydicom, GDCM, TensorFlow or Keras may decode, convert or
    compute differently: each version is in the key, and another version makes another key."""
    import importlib.metadata

    import cv2
    import PIL

    model = build_model(base, 2)
    crops = feature_crops(model)

    def key():
        return json.dumps(cache_configuration(model, crops, "float32"), sort_keys=True)

    libraries = cache_configuration(model, crops, "float32")["libraries"]
    assert set(libraries) == {"tensorflow", "keras", "opencv", "numpy", "pillow", "pydicom",
                              "python-gdcm"}
    assert libraries["numpy"] == np.__version__ and libraries["pillow"] == PIL.__version__
    before = key()
    keys = set()
    for module in (np, PIL, cv2):
        with monkeypatch.context() as patched:
            patched.setattr(module, "__version__", "0.0.0")
            keys.add(key())
    real = importlib.metadata.version
    for package in ("pydicom", "python-gdcm"):
        with monkeypatch.context() as patched:
            patched.setattr(importlib.metadata, "version",
                            lambda name, package=package: "0.0.0" if name == package
                            else real(name))
            keys.add(key())
    assert before not in keys and len(keys) == 5
    assert key() == before


def test_the_cache_key_holds_the_device_and_tf32(base, monkeypatch):
    """Features computed on a GPU, with or without TF32, are never served to a CPU run, nor
    the other way round. No GPU is needed: TensorFlow's answers about one are stood in for."""
    import tensorflow as tf

    model = build_model(base, 2)
    crops = feature_crops(model)

    def key():
        return json.dumps(cache_configuration(model, crops, "float32"), sort_keys=True)

    on_cpu = key()
    assert cache_configuration(model, crops, "float32")["device"] == {
        "kind": "cpu", "gpus": [], "tf32": False}
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "NVIDIA A100-SXM4-40GB"})
    tf32 = {"on": True}
    monkeypatch.setattr(tf.config.experimental, "tensor_float_32_execution_enabled",
                        lambda: tf32["on"])
    with_tf32 = key()
    tf32["on"] = False
    without_tf32 = key()
    assert len({on_cpu, with_tf32, without_tf32}) == 3
    assert cache_configuration(model, crops, "float32")["device"] == {
        "kind": "gpu", "gpus": ["NVIDIA A100-SXM4-40GB"], "tf32": False}
