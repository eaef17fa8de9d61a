"""covid19xray/extractor.py and covid19xray/cost.py: one extractor over N cached outputs, what a
run's VGG16 work will cost, and a run stopped halfway that keeps what it computed."""

import numpy as np
import pytest

import train_covid19
from covid19xray.cache import FeatureCache
from covid19xray.cost import estimate_cost
from covid19xray.extractor import make_extractors
from covid19xray.frozen import cache_configuration, make_feature_extractor
from covid19xray.images import list_images
from covid19xray.layout import load_dataset
from covid19xray.model import build_model, load_vgg16_base
from covid19xray.store import ImageStore
from covid19xray.transforms import UNCHANGED
from helpers import (
    computed_outputs,
    small_dataset,
)


@pytest.fixture(scope="module")
def narrow_model():
    import keras

    keras.utils.set_random_seed(1)
    return build_model(load_vgg16_base("none"), 2)


def test_the_cost_counts_the_passes_this_run_would_make(tmp_path, narrow_model, monkeypatch):
    """Every pass before the first run (test images, each training image in each epoch, each
    training image's description); none after it; --cache-features' alternative beside. The
    run makes exactly those passes: the cost line's timing is done on the run's own first
    batches (it threw two batches away for each network before)."""
    from covid19xray import frozen

    passed = []  # the images of every batch through either network

    def counted(function, model):
        compiled = real(function, model)

        def run(images):
            passed.append(len(images))
            return compiled(images)

        return run

    real = frozen.on_image_batches
    monkeypatch.setattr(frozen, "on_image_batches", counted)
    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    config = train_covid19.TrainConfig(dataset=dataset, epochs=3, batch_size=4,
                                       cache_dir=str(tmp_path / "c"))
    images, paths, labels = load_dataset(dataset)
    split = train_covid19.split_dataset(config, images, paths, labels)
    extractors = train_covid19.frozen_base(config, narrow_model)
    cost = estimate_cost(extractors, images, split, config.epochs)
    # --cache-features: each image once, its features and description from the same pass
    assert cost.passes == 2 + 8 * 3 + 8 and cost.cache_features_passes == 2 + 8
    assert cost.seconds > 0
    train_covid19.compute_test_features(extractors, images, split)
    train_covid19.augment(config, extractors, images, split.trainP)
    train_covid19.describe_training_images(extractors, images, split.trainP)
    assert sum(passed) == cost.passes
    again = estimate_cost(extractors, images, split, config.epochs)
    # the descriptions' pass kept the training images' whole features: only the test images
    assert again.passes == 0 and again.cache_features_passes == 2
    images.close()


def test_a_run_stopped_halfway_keeps_what_it_computed(tmp_path, narrow_model):
    """Entries reach the cache as each batch finishes: after an interruption at the third
    batch, the rerun computes only the images the first two did not."""
    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    paths = list_images(dataset)
    store = ImageStore(paths)
    extract, crops = make_feature_extractor(narrow_model)
    cache = FeatureCache(str(tmp_path / "c"), cache_configuration(narrow_model, crops,
                                                                  "float32"))
    computed = []

    def stopped_at_third_batch(batch):
        if len(computed) == 2:
            raise KeyboardInterrupt
        computed.append(len(batch))
        return extract(batch)

    with pytest.raises(KeyboardInterrupt):
        computed_outputs(stopped_at_third_batch, store, paths, 3, UNCHANGED, 1, cache)
    assert cache.computed == 6 and sum(cache.has(store.digest(p)) for p in paths) == 6

    def counted(batch):
        counted.images += len(batch)
        return extract(batch)

    counted.images = 0
    rerun = FeatureCache(str(tmp_path / "c"), cache_configuration(narrow_model, crops,
                                                                  "float32"))
    features = computed_outputs(counted, store, paths, 3, UNCHANGED, 1, rerun)
    assert counted.images == 4 and (rerun.found, rerun.computed) == (6, 4)
    np.testing.assert_allclose(features[0], computed_outputs(extract, store, paths, 3)[0],
                               atol=1e-5)
    store.close()


def test_extractors_say_what_they_compute(narrow_model, tmp_path):
    config = train_covid19.TrainConfig(dataset="d", cache_dir=str(tmp_path / "c"))
    whole, [features] = make_extractors(config, narrow_model, [UNCHANGED])
    assert features.what == "VGG16 features"
    assert whole.what == "VGG16 features and descriptions"
    assert [cache.what for cache in whole.caches] == ["whole image(s)",
                                                      "input check description(s)"]


def test_one_pass_gives_an_images_features_and_description(tmp_path, narrow_model):
    """--cache-features and the external tests: asked for the features, then the
    descriptions, of the same images, the joint pass computes each image once, and both equal
    what the whole network computes."""
    import keras

    dataset = small_dataset(tmp_path / "d", {"covid": 3, "normal": 3})
    paths = list_images(dataset)
    store = ImageStore(paths)
    config = train_covid19.TrainConfig(dataset=dataset, batch_size=4,
                                       cache_dir=str(tmp_path / "c"))
    whole, _ = make_extractors(config, narrow_model)
    calls = []
    real = whole.extract
    whole.extract = lambda batch: calls.append(len(batch)) or real(batch)
    features = whole.features(store, paths)
    descriptions = whole.outputs(store, paths)[1]
    assert sum(calls) == 6  # not 12
    flatten = keras.Model(narrow_model.input, narrow_model.get_layer("flatten").output)
    from covid19xray.images import load_xray, scale_pixels
    pixels = np.asarray(scale_pixels(np.stack([load_xray(p) for p in paths])))
    np.testing.assert_allclose(features, np.asarray(flatten(pixels)), rtol=1e-5, atol=1e-6)
    assert descriptions.shape[0] == 6 and np.allclose(np.linalg.norm(descriptions, axis=1), 1,
                                                      atol=1e-5)
    # a later run finds both in the cache: no pass at all
    again, _ = make_extractors(config, narrow_model)
    assert again.passes(store, paths) == 0
    store.close()
