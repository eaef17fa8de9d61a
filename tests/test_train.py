"""train_covid19.py: the tutorial's pipeline, step for step, on Keras 3."""

import os
import re
import subprocess
import sys

import json

import h5py
import keras
import numpy as np
import pytest
from imutils import paths as imutils_paths
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer

import train_covid19
from conftest import ROOT, make_dataset, run_main, write_image
from covid19_common import CLASS_NAMES_ATTR, UserError, list_images, load_xray, scale_pixels


def load_and_split(dataset, seed):
    _, paths, labels = train_covid19.find_images(dataset)
    onehot, class_names = train_covid19.encode_labels(labels)
    return class_names, train_covid19.split_dataset(paths, onehot, class_names, seed)


def load_images(paths):
    """The uint8 images at `paths`, as the input pipelines read them."""
    return np.stack([load_xray(path) for path in paths])


def random_model(num_classes=2):
    return train_covid19.build_model(train_covid19.load_vgg16_base("none"), num_classes)


# ---------------------------------------------------------------------------------------------
# Loading and splitting
# ---------------------------------------------------------------------------------------------


def test_split_and_class_order_are_the_tutorials(tmp_path):
    dataset = str(tmp_path / "d")
    make_dataset(dataset, per_class=10)
    class_names, (trainP, testP, trainY, testY) = load_and_split(dataset, 42)

    # The tutorial's own code on the sorted listing: LabelBinarizer + to_categorical,
    # train_test_split(test_size=0.20, stratify=labels, random_state=42).
    image_paths = sorted(imutils_paths.list_images(dataset))
    labels = [p.split(os.path.sep)[-2] for p in image_paths]
    lb = LabelBinarizer()
    onehot = keras.utils.to_categorical(lb.fit_transform(labels))
    ref_train, ref_test = train_test_split(image_paths, test_size=0.20, stratify=onehot,
                                           random_state=42)

    assert class_names == ["covid", "normal"]
    assert testP == ref_test and trainP == ref_train
    assert len(trainP) == 16 and len(testP) == 4
    # covid is index 0, normal index 1; the test side holds 2 of each class
    for path, row in zip(testP + trainP, np.concatenate([testY, trainY])):
        assert row.tolist() == ([1.0, 0.0] if "/covid/" in path else [0.0, 1.0])
    assert testY.sum(axis=0).tolist() == [2.0, 2.0]


def test_training_batches_are_uint8_from_disk_then_scaled_and_rotated(tiny_dataset):
    _, (trainP, _, trainY, _) = load_and_split(tiny_dataset, 42)
    images = train_covid19.DecodedImages(trainP)
    image = train_covid19.reader(images)(images.slots(trainP)[0])
    assert image.dtype.name == "uint8" and tuple(image.shape) == (224, 224, 3)
    np.testing.assert_array_equal(image.numpy(), load_xray(trainP[0]))

    batches = train_covid19.make_train_dataset(trainP, trainY, 4, seed=1, images=images)
    x, y = next(iter(batches))
    assert x.dtype.name == "float32" and tuple(x.shape) == (4, 224, 224, 3)
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    assert all(any((row == other).all() for other in trainY) for row in np.asarray(y))
    # rotated: no batch image equals its unrotated, scaled original
    originals = np.asarray(scale_pixels(load_images(trainP)))
    assert not any(np.allclose(image, original) for image in np.asarray(x)
                   for original in originals)


def test_listing_is_sorted_recursive_and_skips_non_images(tmp_path):
    for name in ["b/z.png", "a/y.JPG", "a/sub/x.jpeg", "a/.hidden.jpg", "__MACOSX/a/w.jpg"]:
        write_image(str(tmp_path / name), seed=1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    relative = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert relative == ["a/sub/x.jpeg", "a/y.JPG", "b/z.png"]


def test_preprocessing_matches_the_tutorial(tmp_path):
    import cv2

    path = write_image(str(tmp_path / "x.png"), seed=3, size=(300, 180))
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(image, (224, 224)) / 255.0  # the tutorial's float64 pipeline
    loaded = load_xray(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (224, 224, 3)
    scaled = np.asarray(scale_pixels(loaded[None]))[0]
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, expected, rtol=0, atol=1e-7)


def test_grayscale_images_load_as_three_channels(tmp_path):
    path = write_image(str(tmp_path / "g.jpg"), seed=4, gray=True)
    image = load_xray(path)
    assert image.shape == (224, 224, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


# ---------------------------------------------------------------------------------------------
# Model and optimizer
# ---------------------------------------------------------------------------------------------


def test_model_layers_and_parameter_counts():
    model = random_model()
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
    optimizer = train_covid19.make_optimizer(lr, epochs)
    decay = lr / epochs
    for step in [0, 1, 5, 125, 10_000]:
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(lr / (1 + decay * step),
                                                               rel=1e-6)
    # and it really decays: after 10,000 steps the rate is 1/(1+0.4) of the initial one
    assert float(optimizer.learning_rate) == pytest.approx(lr / 1.4, rel=1e-6)


def test_weights_path_loads_that_file(tmp_path):
    base = keras.applications.VGG16(weights=None, include_top=False,
                                    input_tensor=keras.Input((224, 224, 3)))
    path = str(tmp_path / "vgg16_notop.h5")
    base.save(path)
    model = train_covid19.build_model(train_covid19.load_vgg16_base(path))
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
        train_covid19.load_vgg16_base(str(path))


def test_imagenet_offline_says_what_to_do(tiny_dataset, tmp_path):
    # A proxy on a closed local port makes the download fail at once, online or not.
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_covid19.py"), "--dataset", tiny_dataset,
         "--model", str(tmp_path / "m.h5"), "--plot", str(tmp_path / "p.png")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert last.startswith("train_covid19.py: error: cannot get the VGG16 ImageNet weights")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in last
    assert os.path.join(str(tmp_path / "keras"), "models") in last
    assert "--weights PATH" in last
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "p.png").exists()
    assert "[INFO] loading images..." not in result.stdout  # failed before the long work


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def parse_report(stdout):
    """The confusion matrix and the three metric lines the tutorial prints."""
    rows = re.findall(r"^\s*\[+\s*(\d+)\s+(\d+)\s*\]+\s*$", stdout, re.M)
    # the tutorial's "acc: 0.9000", now followed by " (95% CI 0.60-0.98)"
    metrics = dict(re.findall(r"^(acc|sensitivity|specificity): (\d\.\d{4}) \(95% CI ", stdout,
                              re.M))
    return np.array(rows, dtype=int), {k: float(v) for k, v in metrics.items()}


def test_training_run_prints_the_tutorials_report(trained):
    assert trained["code"] == 0, trained["stderr"]
    out = trained["stdout"]
    for line in ["[INFO] loading images...", "[INFO] compiling model...",
                 "[INFO] training head...", "Epoch 1/2", "Epoch 2/2",
                 "[INFO] evaluating network...", "[INFO] saving COVID-19 detector model..."]:
        assert line in out
    assert "--cache-features" not in out  # the default run augments and does not say otherwise
    assert re.search(r"^\s+precision\s+recall\s+f1-score\s+support$", out, re.M)
    # scikit-learn prints a support of 1 as "1.0" when every score of the row is 0
    assert re.search(r"^\s+covid\s+\d\.\d\d\s+\d\.\d\d\s+\d\.\d\d\s+1(\.0)?$", out, re.M)
    assert re.search(r"^\s+normal\s+\d\.\d\d\s+\d\.\d\d\s+\d\.\d\d\s+1(\.0)?$", out, re.M)
    cm, metrics = parse_report(out)
    assert cm.shape == (2, 2) and cm.sum() == 2 and cm.sum(axis=1).tolist() == [1, 1]
    assert metrics["acc"] == pytest.approx((cm[0, 0] + cm[1, 1]) / cm.sum(), abs=1e-4)
    assert metrics["sensitivity"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-4)
    assert metrics["specificity"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-4)
    out_dir = os.path.dirname(trained["model"])
    assert out.strip().splitlines()[-1] == (
        f"[INFO] wrote {trained['model']} (model), {trained['plot']} and "
        f"{os.path.join(out_dir, 'roc.png')} (plots), {trained['report']} (report)")


def test_messy_folder_loads_what_it_can_and_says_what_it_skipped(trained):
    # the session dataset holds notes.txt, .DS_Store and Thumbs.db (ignored: not image types),
    # three files with image names that do not decode, and 16-bit/RGBA/palette PNGs (used)
    warnings = [line for line in trained["stderr"].splitlines() if "[WARNING]" in line]
    covid = os.path.join(trained["dataset"], "covid")
    assert warnings == [
        f"[WARNING] skipping {os.path.join(covid, name)}: not a readable image"
        for name in ["empty.jpg", "text.jpg", "truncated.png"]
    ] + ["[WARNING] skipped 3 unreadable image(s)"]
    assert "[INFO] 10 images, classes ['covid', 'normal']: 8 for training, 2 for testing" in (
        trained["stdout"])


def test_saved_model_loads_and_reproduces_the_report(trained):
    model = keras.models.load_model(trained["model"])
    assert model.count_params() == 32_962 + 14_714_688
    with h5py.File(trained["model"], "r") as f:
        assert "model_weights" in f  # a real HDF5 Keras model
        assert f.attrs[CLASS_NAMES_ATTR] == '["covid", "normal"]'
    _, (_, testP, _, testY) = load_and_split(trained["dataset"], trained["seed"])
    probabilities = model.predict(np.asarray(scale_pixels(load_images(testP))), verbose=0)
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # the printed confusion matrix is what the saved model predicts on the test split
    cm, _ = parse_report(trained["stdout"])
    predicted, actual = probabilities.argmax(axis=1), testY.argmax(axis=1)
    assert [[int(((actual == i) & (predicted == j)).sum()) for j in (0, 1)]
            for i in (0, 1)] == cm.tolist()


def test_cached_test_features_equal_the_frozen_base_on_whole_images(tiny_dataset):
    model = random_model()
    _, (_, testP, _, _) = load_and_split(tiny_dataset, 42)
    # what the tutorial computes every epoch: the whole 224x224 image through VGG16 + pooling
    frozen = keras.Model(model.input, model.get_layer("flatten").output)
    expected = frozen.predict(np.asarray(scale_pixels(load_images(testP))), verbose=0)
    images, _, _ = train_covid19.find_images(tiny_dataset)
    cached = train_covid19.extract_features(train_covid19.make_feature_extractor(model), images,
                                            testP, batch_size=8)
    assert cached.shape == (2, 512)
    assert np.abs(expected).max() > 0  # random weights still give non-zero features
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-7)


def test_head_shares_its_weights_with_the_saved_network():
    model = random_model()
    head = train_covid19.make_head(model)
    assert [w.shape for w in head.trainable_weights] == [(512, 64), (64,), (64, 2), (2,)]
    head.trainable_weights[0].assign(np.ones((512, 64)))
    np.testing.assert_array_equal(model.get_layer(index=-3).get_weights()[0], 1.0)


@pytest.fixture(scope="module")
def cached_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cached")
    argv = ["--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights", "none",
            "--seed", "3", "--cache-features", "--model", str(out / "m.h5"),
            "--plot", str(out / "p.png"), "--report", str(out / "r.json")]
    code, stdout, stderr = run_main(train_covid19.main, argv)
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out}


def test_cache_features_run_matches_the_saved_model(cached_run, tiny_dataset):
    assert cached_run["code"] == 0, cached_run["stderr"]
    out = cached_run["stdout"]
    assert "[INFO] --cache-features: augmentation off, each image passes through VGG16 once" in out
    assert "(trained with --cache-features: no augmentation)" in out
    report = json.loads((cached_run["out"] / "r.json").read_text())
    assert report["augmentation"] == "off (--cache-features)"

    # The saved file is the whole network: run on the test images, it predicts what the head
    # predicted on the cached features (same confusion matrix, same ROC AUC).
    model = keras.models.load_model(str(cached_run["out"] / "m.h5"))
    assert model.input_shape == (None, 224, 224, 3)
    _, (_, testP, _, testY) = load_and_split(tiny_dataset, 3)
    probabilities = model.predict(np.asarray(scale_pixels(load_images(testP))), verbose=0)
    actual, predicted = testY.argmax(axis=1), probabilities.argmax(axis=1)
    assert confusion_matrix(actual, predicted, labels=[0, 1]).tolist() == (
        report["confusion_matrix"])
    assert parse_report(out)[0].tolist() == report["confusion_matrix"]
    assert roc_auc_score(actual == 0, probabilities[:, 0]) == pytest.approx(report["roc_auc"])


def test_plot_is_a_png_with_four_curves(trained, tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt

    image = matplotlib.image.imread(trained["plot"])
    assert image.shape[:2] == (480, 640)
    history = {"loss": [0.7, 0.6, 0.5], "val_loss": [0.69, 0.65, 0.6],
               "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.5, 0.9]}
    figure = train_covid19.plot_history(history, str(tmp_path / "p.png"))
    axis = figure.axes[0]
    assert [line.get_label() for line in axis.lines] == [
        "train_loss", "val_loss", "train_acc", "val_acc"]
    assert [list(line.get_ydata()) for line in axis.lines] == [
        history["loss"], history["val_loss"], history["accuracy"], history["val_accuracy"]]
    assert axis.get_title() == "Training Loss and Accuracy on COVID-19 Dataset"
    plt.close(figure)


def test_same_seed_same_split_and_first_epoch_loss(tiny_dataset):
    def first_epoch(seed):
        keras.utils.set_random_seed(seed)  # as main() does
        _, (trainP, testP, trainY, testY) = load_and_split(tiny_dataset, seed)
        images, _, _ = train_covid19.find_images(tiny_dataset)
        model = random_model()
        extract = train_covid19.make_feature_extractor(model)
        testF = train_covid19.extract_features(extract, images, testP, 4)
        history = train_covid19.train(train_covid19.make_head(model), trainP, trainY, testF,
                                      testY, epochs=1, batch_size=4, lr=1e-3, seed=seed,
                                      extract=extract, images=images)
        return testP, history.history["loss"][0]

    split_a, loss_a = first_epoch(11)
    split_b, loss_b = first_epoch(11)
    _, loss_c = first_epoch(12)
    assert split_a == split_b
    assert loss_a == loss_b
    assert loss_c != loss_a  # the seed matters, so the equality above means something


def test_command_line_run_in_a_subprocess(tiny_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_covid19.py"), "--dataset", tiny_dataset,
         "--epochs", "1", "--batch-size", "4", "--weights", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # Keras prints no "Epoch 1/1" header for a single epoch, only its line of metrics
    assert re.search(r"^2/2 - .* - accuracy: \d\.\d{4} - loss: \d\.\d{4} - val_accuracy: ",
                     result.stdout, re.M)
    assert re.search(r"^acc: \d\.\d{4} \(95% CI \d\.\d\d-\d\.\d\d\)$", result.stdout, re.M)
    assert result.stdout.strip().splitlines()[-1] == (
        "[INFO] wrote covid19.h5 (model), plot.png and roc.png (plots), report.json (report)")
    assert keras.models.load_model(str(tmp_path / "covid19.h5")).output_shape == (None, 2)
    for name in ["plot.png", "roc.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["class_names"] == [
        "covid", "normal"]
    # no temporary file is left beside the outputs
    assert sorted(os.listdir(tmp_path)) == ["covid19.h5", "plot.png", "report.json", "roc.png"]
