"""Past fifty images: the layouts published sets ship in, any number of classes, a chosen
positive class, class weights, the cost said before the VGG16 work, and a run stopped halfway
that keeps what it computed."""

import json
import os

import numpy as np
import pytest

import predict_covid19
import train_covid19
from covid19xray.cache import FeatureCache
from covid19xray.extractor import make_extractors, make_whole_extractor
from covid19xray.frozen import cache_configuration, make_feature_extractor
from covid19xray.images import list_images
from covid19xray.layout import find_dataset, load_dataset
from covid19xray.model import build_model, load_vgg16_base
from covid19xray.store import ImageStore
from covid19xray.transforms import UNCHANGED
from helpers import (
    assert_one_line_error,
    computed_outputs,
    radiography,
    run_main,
    small_dataset,
    write_image,
)


def test_the_radiography_layout_reads_images_by_class_and_never_a_mask(tmp_path):
    dataset = radiography(tmp_path / "r", {"COVID": 3, "Normal": 2})
    layout = find_dataset(dataset)
    assert layout.labels == ["COVID"] * 3 + ["Normal"] * 2
    assert all(os.sep + "images" + os.sep in path for path in layout.paths)
    assert {os.path.relpath(m, dataset) for m in layout.masks.values()} == {
        os.path.join(name, "masks", f"{name}-{i}.png")
        for name, n in (("COVID", 3), ("Normal", 2)) for i in range(n)}
    images, paths, labels = load_dataset(dataset)
    images.close()
    assert paths == layout.paths and labels.tolist() == layout.labels


def outputs_in(folder):
    """A run's outputs and cache in `folder`: never the defaults in the working folder, where
    another test's run would hold their lock."""
    return ["--model", str(folder / "m.h5"), "--plot", str(folder / "p.png"), "--report",
            str(folder / "r.json"), "--cache-dir", str(folder / "c")]


def one_radiography_class(root):
    radiography(root, {"COVID": 2})
    return os.path.join(root, "COVID")


def kaggle_as_unpacked(root):
    small_dataset(os.path.join(root, "train"), {"NORMAL": 2, "PNEUMONIA": 2})
    return root


def loose_image(root):
    small_dataset(root, {"covid": 2})
    write_image(os.path.join(root, "loose.png"), seed=1)
    return root


@pytest.mark.parametrize("make, phrase", [
    # one class of the Radiography Database given as the dataset: "images" and "masks"
    (one_radiography_class, "is one class of the COVID-19 Radiography Database"),
    # Kaggle's download as it unpacks: train/NORMAL/x.png
    (kaggle_as_unpacked, "4 image(s) are not in a class folder (train/NORMAL/0.png"),
    # an image directly in the folder
    (loose_image, "1 image(s) are not in a class folder (loose.png)"),
])
def test_a_layout_that_fits_neither_is_refused_in_one_line_before_training(tmp_path, make,
                                                                             phrase):
    dataset = make(str(tmp_path / "d"))
    code, out, err = run_main(train_covid19.main, ["--dataset", dataset, "--weights", "none",
                                                   *outputs_in(tmp_path)])
    assert_one_line_error(code, err, "train_covid19.py", phrase)
    assert "[INFO] training head..." not in out


def three_classes(root):
    return small_dataset(root, {"covid": 6, "normal": 6, "pneumonia": 6})


@pytest.mark.slow(seconds=6)
def test_three_classes_end_to_end_train_external_and_predict(tmp_path):
    dataset = three_classes(tmp_path / "d")
    external = small_dataset(tmp_path / "e", {"covid": 2, "normal": 2, "pneumonia": 2},
                             size=(31, 29))
    report_path, model = tmp_path / "r.json", str(tmp_path / "m.h5")
    code, out, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--external", external, "--weights", "none", "--epochs", "1",
        "--batch-size", "4", "--cache-features", "--model", model, "--plot",
        str(tmp_path / "p.png"), "--report", str(report_path), "--cache-dir",
        str(tmp_path / "c")])
    assert code == 0, err
    report = json.loads(report_path.read_text())
    for part in (report, report["external"][external]):
        assert set(part["per_class"]) == {"covid", "normal", "pneumonia"}
        cm = np.array(part["confusion_matrix"])
        for c, name in enumerate(["covid", "normal", "pneumonia"]):
            m = part["per_class"][name]
            # PPV: of the images predicted as the class (its column), those that are
            assert (m["ppv"]["successes"], m["ppv"]["trials"]) == (cm[c, c], cm[:, c].sum())
        aucs = [m["auc"] for m in part["per_class"].values()]
        assert part["macro_auc"] == pytest.approx(np.mean(aucs))
        assert part["roc_auc"] == pytest.approx(part["macro_auc"])
        assert "sensitivity" not in part and "positive_class" not in part
    csv_path = tmp_path / "p.csv"
    code, out, err = run_main(predict_covid19.main, ["--model", model, external, "--labelled",
                                                     "--csv", str(csv_path)])
    assert code == 0, err
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["file", "predicted", "p_covid", "p_normal", "p_pneumonia"]


def test_positive_chooses_the_class_whose_recall_is_the_sensitivity(tmp_path):
    dataset = small_dataset(tmp_path / "d", {"NORMAL": 5, "PNEUMONIA": 5})
    runs = {}
    for positive in (None, "PNEUMONIA"):
        report_path = tmp_path / f"{positive}.json"
        code, out, err = run_main(train_covid19.main, [
            "--dataset", dataset, "--weights", "none", "--epochs", "1", "--batch-size", "4",
            "--cache-features", "--model", str(tmp_path / f"{positive}.h5"), "--plot",
            str(tmp_path / f"{positive}.png"), "--report", str(report_path),
            "--cache-dir", str(tmp_path / "c"), *(["--positive", positive] if positive else [])])
        assert code == 0, err
        runs[positive] = json.loads(report_path.read_text())
    default, chosen = runs[None], runs["PNEUMONIA"]
    assert default["positive_class"] == "NORMAL" and chosen["positive_class"] == "PNEUMONIA"
    assert chosen["sensitivity"] == chosen["per_class"]["PNEUMONIA"]["sensitivity"]
    assert chosen["specificity"] == chosen["per_class"]["PNEUMONIA"]["specificity"]
    assert chosen["confusion_matrix"] == default["confusion_matrix"]  # the same model


@pytest.mark.parametrize("counts, positive, phrase", [
    ({"NORMAL": 4, "PNEUMONIA": 4}, "COVID", "--positive 'COVID' is not a class of the dataset"),
    ({"a": 4, "b": 4, "c": 4}, "a", "a positive class needs two classes"),
])
def test_a_positive_class_that_cannot_be_is_one_line(tmp_path, counts, positive, phrase):
    dataset = small_dataset(tmp_path / "d", counts)
    code, out, err = run_main(train_covid19.main, ["--dataset", dataset, "--weights", "none",
                                                   "--positive", positive,
                                                   *outputs_in(tmp_path)])
    assert_one_line_error(code, err, "train_covid19.py", phrase)
    assert "[INFO] training head..." not in out


def test_balanced_class_weights_are_used_and_reported(tmp_path):
    dataset = small_dataset(tmp_path / "d", {"covid": 4, "normal": 16})
    report_path = tmp_path / "r.json"
    code, out, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--weights", "none", "--epochs", "1", "--batch-size", "4",
        "--cache-features", "--class-weight", "balanced", "--model", str(tmp_path / "m.h5"),
        "--plot", str(tmp_path / "p.png"), "--report", str(report_path), "--cache-dir",
        str(tmp_path / "c")])
    assert code == 0, err
    report = json.loads(report_path.read_text())
    train = report["counts"]["train"]
    total = sum(train.values())
    assert report["class_weight"] == pytest.approx(
        {name: total / (2 * n) for name, n in train.items()})
    assert report["flags"]["class_weight"] == "balanced"


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
    cost = train_covid19.estimate_cost(config, extractors, images, split)
    # --cache-features: each image once, its features and description from the same pass
    assert cost.passes == 2 + 8 * 3 + 8 and cost.cache_features_passes == 2 + 8
    assert cost.seconds > 0
    train_covid19.compute_test_features(extractors, images, split)
    train_covid19.augment(config, extractors, images, split.trainP)
    train_covid19.describe_training_images(extractors, images, split.trainP)
    assert sum(passed) == cost.passes
    again = train_covid19.estimate_cost(config, extractors, images, split)
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
    [features] = make_extractors(config, narrow_model, [UNCHANGED])
    assert features.what == "VGG16 features"
    whole = make_whole_extractor(config, narrow_model)
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
    whole = make_whole_extractor(config, narrow_model)
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
    again = make_whole_extractor(config, narrow_model)
    assert again.passes(store, paths) == 0
    store.close()
