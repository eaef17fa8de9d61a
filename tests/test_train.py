"""train_covid19.py: the tutorial's pipeline, step for step, on Keras 3."""

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import types
import zipfile

import cv2
import h5py
import keras
import numpy as np
import pytest
from imutils import paths as imutils_paths
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer

import predict_covid19
import train_covid19
from bench.benchmark import comparable  # what two identical runs print alike
from covid19xray import frozen, store
from covid19xray.cache import FeatureCache
from covid19xray.head import epoch_batches, make_head
from covid19xray.images import list_images, load_xray, scale_pixels
from covid19xray.layout import load_dataset
from covid19xray.model import build_model
from covid19xray.model_file import CLASS_NAMES_ATTR, CLASS_NAMES_MEMBER, load_classifier
from covid19xray.report import wilson
from covid19xray.transforms import Rotation, rotate, rotation_angles, rotation_matrices
from helpers import (
    NOT_UTF8,
    ROOT,
    assert_one_line_error,
    computed_outputs,
    made_once,
    make_dataset,
    outputs_in,
    parse_report,
    progress_counts,
    read_only,
    run_main,
    small_dataset,
    snapshot,
    to_12_bits,
    write_dicom,
    write_huge_png,
    write_image,
    write_junk,
    write_png16,
)


def split_of(dataset, seed, kind="random"):
    """train_covid19's `split_dataset` step on the dataset as `load_dataset` loads it: a
    `Split`."""
    config = train_covid19.TrainConfig(split_by=kind, dataset=dataset, seed=seed)
    images, paths, labels = load_dataset(dataset)
    images.close()  # the split reads only the digests, taken before
    return train_covid19.split_dataset(config, images, paths, labels)


def predict_files(model_path, paths):
    """The saved model on the images at `paths`, prepared as training prepares them."""
    model = keras.models.load_model(model_path)
    images = np.stack([load_xray(path) for path in paths])
    return model.predict(np.asarray(scale_pixels(images)), verbose=0)




# ---------------------------------------------------------------------------------------------
# Load, encode, split, augment
# ---------------------------------------------------------------------------------------------


def test_split_and_class_order_are_the_tutorials(tmp_path):
    dataset = str(tmp_path / "d")
    make_dataset(dataset, per_class=10)
    parts = split_of(dataset, 42)
    class_names, trainP, testP = parts.class_names, parts.trainP, parts.testP
    trainY, testY = parts.trainY, parts.testY

    # The tutorial's own code on the sorted listing: LabelBinarizer + to_categorical,
    # train_test_split(test_size=0.20, stratify=labels, random_state=42).
    image_paths = sorted(imutils_paths.list_images(dataset))
    labels = [p.split(os.path.sep)[-2] for p in image_paths]
    onehot = keras.utils.to_categorical(LabelBinarizer().fit_transform(labels))
    ref_train, ref_test = train_test_split(image_paths, test_size=0.20, stratify=onehot,
                                           random_state=42)

    assert class_names == ["covid", "normal"]
    assert testP == ref_test and trainP == ref_train
    assert len(trainP) == 16 and len(testP) == 4
    # covid is index 0, normal index 1; the test side holds 2 of each class
    for path, row in zip(testP + trainP, np.concatenate([testY, trainY])):
        assert row.tolist() == ([1.0, 0.0] if "/covid/" in path else [0.0, 1.0])
    assert testY.sum(axis=0).tolist() == [2.0, 2.0]


def test_every_training_label_is_its_images_folder(tmp_path):
    # Each image is one flat grey level, unique in the dataset: a rotation (fill "nearest")
    # keeps it flat, so every image that comes out of the real pipeline names its source file.
    level = {}
    for c, name in enumerate(["covid", "normal"]):
        for i in range(6):
            path = str(tmp_path / name / f"{i}.png")
            level[20 * i + 120 * c + 5] = path
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, np.full((40, 30), 20 * i + 120 * c + 5, np.uint8))
    config = train_covid19.TrainConfig(dataset=str(tmp_path), seed=3)
    images, paths, labels = load_dataset(str(tmp_path))
    parts = train_covid19.split_dataset(config, images, paths, labels)
    rotated = computed_outputs(lambda x: x, images, parts.trainP, 3,  # features = the images
                               Rotation(seed=3), epochs=2)
    batches = epoch_batches(rotated, parts.trainY, 3, 3)
    seen = []
    for x, y in batches:  # both epochs, one after the other
        for image, row in zip(np.asarray(x), np.asarray(y)):
            assert np.ptp(image) < 1e-6  # one flat image, not a mix of two
            source = level[round(float(image.mean()) * 255)]
            folder = os.path.basename(os.path.dirname(source))
            assert row.tolist() == ([1.0, 0.0] if folder == "covid" else [0.0, 1.0])
            seen.append(source)
    # every training image once an epoch (9 // 3 whole batches), and only training images
    assert sorted(seen[:9]) == sorted(seen[9:]) == sorted(parts.trainP)
    assert seen[:9] != seen[9:]  # shuffled anew


def test_training_data_is_read_once_per_step_and_never_after_fit(trained):
    """The end-of-training stall came from tf.data's autotuning thread, which a finished
    iterator waited for, and prefetched batches no step used; neither may come back."""
    assert trained["autotuning"] is False
    # Every image is read back from the store once for each feature it has, in batches of 4:
    # the cost line times each network on the run's own first two batches (the 8 training
    # images whole, their features and descriptions from one pass; then their first epoch's
    # rotation), then the 2 test images, then the second epoch's rotations; the descriptions
    # are those the timing kept. None while the head trains or after (while main evaluates,
    # plots and saves), and none twice.
    assert [n for n, after in trained["reads"]] == [4, 4] + [4, 4] + [2] + [4, 4]
    assert not any(after for n, after in trained["reads"])


def test_decoding_and_feature_extraction_show_progress_in_a_log(trained):
    # the fixture logs a line for every update, as a long step would every 10 s
    listed = len(list_images(trained["dataset"]))
    decoding = progress_counts(trained["stderr"], "decoding")
    assert decoding[0] == (0, listed) and decoding[-1] == (listed, listed)
    # the 2 test images, 2 epochs of the 8 training images, then the 8 training images'
    # descriptions for the input check, each bar saying which; what the cost line computed
    # to time each network (the first epoch's rotations, the descriptions: two batches of 4)
    # counts at once as done in its bar
    assert progress_counts(trained["stderr"], "VGG16 features") == [(0, 2), (2, 2)]
    assert progress_counts(trained["stderr"], "VGG16 features (rotated)") == [
        (0, 16), (8, 16), (16, 16)]
    assert progress_counts(trained["stderr"], "VGG16 features and descriptions") == [
        (0, 8), (8, 8)]


def test_rotation_angles_come_from_the_seed_epoch_and_image_alone():
    digests = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(500)]
    angles = rotation_angles(42, 0, digests)
    assert angles.min() >= -15 and angles.max() < 15
    assert angles.min() < -14 and angles.max() > 14  # the whole range, either way
    assert len(set(angles.tolist())) == 500
    # the same image gets the same angle whatever the others are, or their order
    assert rotation_angles(42, 0, digests[7:8])[0] == angles[7]
    np.testing.assert_array_equal(rotation_angles(42, 0, digests[::-1]), angles[::-1])
    # and another in another epoch, or with another seed
    assert not np.isin(rotation_angles(42, 1, digests), angles).any()
    assert not np.isin(rotation_angles(7, 0, digests), angles).any()
    assert rotation_angles(2**32 - 1, 0, digests[:1]).shape == (1,)  # the largest --seed


def test_rotation_is_keras_random_rotation_with_nearest_fill():
    image = np.zeros((1, 64, 48, 3), np.float32)
    image[:, 28:36, :, :] = 1.0  # a horizontal bar: any rotation moves its ends
    for angle in (-14.5, 3.25, 15.0):
        # the tutorial's augmentation as Keras 3 spells it, held at one angle
        layer = keras.layers.RandomRotation(factor=(angle / 360, angle / 360),
                                            fill_mode="nearest")
        expected = np.asarray(layer(image, training=True))
        rotated = np.asarray(rotate(image, rotation_matrices([angle], 64, 48)))
        assert not np.allclose(rotated, image)
        np.testing.assert_allclose(rotated, expected, atol=1e-4)
    # "nearest" fills the corners from the nearest edge pixel: no black corners
    white = np.ones((1, 64, 48, 3), np.float32)
    np.testing.assert_allclose(rotate(white, rotation_matrices([15.0], 64, 48)), 1.0, atol=1e-6)


def test_encode_labels_two_classes_as_the_tutorial_and_more():
    onehot, names = train_covid19.encode_labels(np.array(["normal", "covid", "normal"]))
    assert names == ["covid", "normal"]
    assert onehot.tolist() == [[0, 1], [1, 0], [0, 1]]
    onehot, names = train_covid19.encode_labels(np.array(["pneumonia", "covid", "normal"]))
    assert names == ["covid", "normal", "pneumonia"]
    assert onehot.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------




def test_messy_folder_loads_what_it_can_and_says_what_it_skipped(trained):
    # the session dataset holds notes.txt, .DS_Store and Thumbs.db (ignored: not image types),
    # three files with image names that do not decode, and 16-bit/RGBA/palette PNGs (used)
    warnings = [line for line in trained["stderr"].splitlines() if "[WARNING]" in line]
    covid = os.path.join(trained["dataset"], "covid")
    assert warnings == [
        f"[WARNING] skipping {os.path.join(covid, 'empty.jpg')}: not an image (no JPEG, PNG, "
        "BMP or TIFF signature, no DICOM marker)",
        f"[WARNING] skipping {os.path.join(covid, 'text.jpg')}: not an image (no JPEG, PNG, "
        "BMP or TIFF signature, no DICOM marker)",
        f"[WARNING] skipping {os.path.join(covid, 'truncated.png')}: not a readable image",
        "[WARNING] skipped 3 unreadable image(s)"]
    # the rest trained: 10 images, 8 for training and 2 for testing
    report = json.loads(open(trained["report"]).read())
    assert report["counts"] == {"train": {"covid": 4, "normal": 4},
                                "test": {"covid": 1, "normal": 1}}


def test_saved_model_loads_and_reproduces_the_report(trained):
    model = keras.models.load_model(trained["model"])
    # the whole network, not only the head (test_model.py checks the real VGG16's counts)
    assert model.count_params() == build_model(keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(224, 224, 3))).count_params()
    with h5py.File(trained["model"], "r") as f:
        assert "model_weights" in f  # a real HDF5 Keras model
        assert bytes(f.attrs[CLASS_NAMES_ATTR]) == b'["covid", "normal"]'  # fixed length
    parts = split_of(trained["dataset"], trained["seed"])
    testP, testY = parts.testP, parts.testY
    probabilities = predict_files(trained["model"], testP)
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # the report's confusion matrix is what the saved model predicts on the test split
    cm = np.array(json.loads(open(trained["report"]).read())["confusion_matrix"])
    actual = testY.argmax(axis=1)
    assert confusion_matrix(actual, probabilities.argmax(axis=1)).tolist() == cm.tolist()


def test_report_json_says_what_the_run_printed(trained):
    report = json.loads(open(trained["report"]).read())
    out = trained["stdout"]
    assert report["class_names"] == ["covid", "normal"]
    assert report["counts"] == {"train": {"covid": 4, "normal": 4},
                                "test": {"covid": 1, "normal": 1}}
    assert report["split"] == {"kind": "random", "patients_on_both_sides": None}
    parts = split_of(trained["dataset"], trained["seed"])
    testP, testY = parts.testP, parts.testY
    assert report["test_files"] == [os.path.relpath(p, trained["dataset"]) for p in testP]
    assert report["augmentation"] == "random rotation up to 15 degrees either way"
    assert report["precision"] == "float32"
    assert report["seed"] == 7 and report["flags"]["epochs"] == 2
    assert report["flags"]["dataset"] == trained["dataset"]
    assert report["versions"]["keras"] == keras.__version__

    # every number from the saved model's own predictions on the test files
    probabilities = predict_files(trained["model"], testP)
    actual, predicted = testY.argmax(axis=1), probabilities.argmax(axis=1)
    cm = confusion_matrix(actual, predicted, labels=[0, 1])
    assert report["confusion_matrix"] == cm.tolist()
    for name, key, successes, trials in [
            ("acc", "accuracy", cm[0, 0] + cm[1, 1], 2),
            ("sensitivity", "sensitivity", cm[0, 0], cm[0].sum()),
            ("specificity", "specificity", cm[1, 1], cm[1].sum())]:
        m = report[key]
        assert (m["successes"], m["trials"]) == (successes, trials)
        assert m["ci95"] == pytest.approx(wilson(successes, trials))
        # the printed line is the tutorial's, with the interval after it
        assert (f"{name}: {m['value']:.4f} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"
                in out.splitlines())
    assert report["positive_class"] == "covid"
    # each class against the rest: normal's sensitivity is its recall, its specificity covid's
    assert (report["per_class"]["normal"]["sensitivity"]["successes"],
            report["per_class"]["normal"]["specificity"]["successes"]) == (cm[1, 1], cm[0, 0])
    assert report["roc_auc"] == pytest.approx(roc_auc_score(actual == 0, probabilities[:, 0]),
                                              abs=1e-4)
    assert f"ROC AUC: {report['roc_auc']:.4f}" in out


def test_plots_are_the_pngs_this_run_drew(trained):
    import matplotlib.image

    history = matplotlib.image.imread(trained["plot"])
    roc = matplotlib.image.imread(os.path.join(os.path.dirname(trained["plot"]), "roc.png"))
    # two different drawings, each with something on it
    assert history.shape == roc.shape and not np.array_equal(history, roc)
    assert np.ptp(history) > 0.5 and np.ptp(roc) > 0.5


@pytest.fixture(scope="session")
def cached_run(tiny_dataset, tmp_path_factory):
    """A --cache-features run, then the same again (cold, then warm); made once for the run
    (`made_once`)."""
    def make(out):
        argv = ["--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights",
                "none", "--seed", "3", "--cache-features", "--cache-dir", str(out / "cache"),
                "--model", str(out / "m.h5"), "--plot", str(out / "p.png"),
                "--report", str(out / "r.json")]
        return {"runs": [run_main(train_covid19.main, argv) for _ in range(2)],
                "out": str(out)}

    made = made_once(tmp_path_factory, "cached", make)
    return {"runs": made["runs"], "out": pathlib.Path(made["out"])}


def test_cache_features_run_matches_the_saved_model(cached_run, tiny_dataset):
    code, out, err = cached_run["runs"][0]
    assert code == 0, err
    assert "[INFO] --cache-features: augmentation off, each image passes through VGG16 once" in out
    assert "(trained with --cache-features: no augmentation)" in out
    report = json.loads((cached_run["out"] / "r.json").read_text())
    assert report["augmentation"] == "off (--cache-features)"

    # The saved file is the whole network: run on the test images, it predicts what the head
    # predicted on the cached features (same confusion matrix, same ROC AUC).
    parts = split_of(tiny_dataset, 3)
    testP, testY = parts.testP, parts.testY
    probabilities = predict_files(str(cached_run["out"] / "m.h5"), testP)
    actual, predicted = testY.argmax(axis=1), probabilities.argmax(axis=1)
    assert confusion_matrix(actual, predicted, labels=[0, 1]).tolist() == (
        report["confusion_matrix"])
    assert parse_report(out)[0].tolist() == report["confusion_matrix"]
    assert roc_auc_score(actual == 0, probabilities[:, 0]) == pytest.approx(report["roc_auc"])


def test_a_keras_format_model_carries_its_class_names_and_predicts_as_the_h5(cached_run,
                                                                            tiny_dataset):
    """--model m.keras: Keras's own format (a zip), with the class names in it as the .h5 holds
    them; the cached run's command again (every feature in its cache) trains the same model."""
    out = cached_run["out"]
    argv = ["--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights", "none",
            "--seed", "3", "--cache-features", "--cache-dir", str(out / "cache"),
            "--model", str(out / "m.keras"), "--plot", str(out / "k.png"),
            "--report", str(out / "k.json")]
    code, stdout, err = run_main(train_covid19.main, argv)
    assert code == 0, err
    assert f"[INFO] wrote {out / 'm.keras'} (model)" in stdout
    with zipfile.ZipFile(out / "m.keras") as archive:
        assert {"config.json", "metadata.json", "model.weights.h5"} <= set(archive.namelist())
        assert json.loads(archive.read(CLASS_NAMES_MEMBER)) == ["covid", "normal"]
    assert load_classifier(str(out / "m.keras"))[1] == ["covid", "normal"]
    testP = split_of(tiny_dataset, 3).testP
    np.testing.assert_allclose(predict_files(str(out / "m.keras"), testP),
                               predict_files(str(out / "m.h5"), testP), atol=1e-6)


def test_a_warm_feature_cache_computes_nothing_and_changes_nothing(cached_run):
    (_, cold, _), (code, warm, err) = cached_run["runs"]
    assert code == 0, err
    cache = cached_run["out"] / "cache"
    # --cache-features: every image whole, its features from the pass that describes it
    assert f"[INFO] feature cache {cache}: 0 whole image(s) found, 10 computed;" in cold
    assert f"[INFO] feature cache {cache}: 10 whole image(s) found, 0 computed;" in warm

    def losses(out):
        return re.findall(r"loss: (\d\.\d{4})", out)

    assert losses(cold) == losses(warm) and len(losses(cold)) == 4
    assert parse_report(cold)[0].tolist() == parse_report(warm)[0].tolist()


def cache_counts(stdout):
    """The cache line's (found, computed) of images, then of rotated training images."""
    line = next(line for line in stdout.splitlines() if line.startswith("[INFO] feature cache"))
    return [tuple(map(int, pair)) for pair in re.findall(r"(\d+) [a-z ]*image\(s\)[^;]*? found, "
                                                         r"(\d+) computed", line)]


@pytest.mark.slow
def test_a_rerun_computes_no_feature_and_prints_the_same(trained, tmp_path):
    """The trained fixture's run filled its own cache: 2 test images, and 8 training images
    rotated in each of 2 epochs. The same command again computes nothing and prints the same
    epoch lines and report; more epochs and another learning rate reuse every epoch there is;
    --no-cache neither reads nor writes the cache, and changes no number."""
    def rerun(name, *flags):
        out = tmp_path / name
        out.mkdir()
        code, stdout, stderr = run_main(train_covid19.main, [
            "--dataset", trained["dataset"], "--batch-size", "4", "--weights", "none",
            "--seed", "7", "--model", str(out / "m.h5"), "--plot", str(out / "p.png"),
            "--report", str(out / "r.json"), *flags])
        assert code == 0, stderr
        report = json.loads((out / "r.json").read_text())
        return stdout, {key: report[key] for key in ("confusion_matrix", "accuracy", "per_class",
                                                     "sensitivity", "specificity", "roc_auc")}

    first = trained["stdout"]
    first_report = json.loads(open(trained["report"]).read())
    cache = ["--cache-dir", trained["cache"]]
    # the test images, each training image's rotation in each epoch, and the training images
    # whole (kept from the pass that described them for the input check)
    assert cache_counts(first) == [(0, 2), (0, 16), (0, 8)]

    again, report = rerun("again", "--epochs", "2", *cache)
    assert cache_counts(again) == [(2, 0), (16, 0), (8, 0)]
    assert comparable(again.splitlines()) == comparable(first.splitlines())
    assert len(re.findall(r"^Epoch \d/2$", again, re.M)) == 2
    assert report == {key: first_report[key] for key in report}

    more, _ = rerun("more", "--epochs", "3", "--lr", "0.01", *cache)
    assert cache_counts(more) == [(2, 0), (16, 8), (8, 0)]  # only the third epoch is new

    no_cache = tmp_path / "no-cache"
    uncached, report = rerun("uncached", "--epochs", "2", "--no-cache",
                             "--cache-dir", str(no_cache))
    assert not no_cache.exists() and "[INFO] feature cache" not in uncached
    assert comparable(uncached.splitlines()) == comparable(first.splitlines())
    assert report == {key: first_report[key] for key in report}


@pytest.mark.slow
def test_same_seed_same_split_and_losses(trained, tiny_dataset, tmp_path):
    def run(seed):
        out = tmp_path / str(seed)
        out.mkdir(exist_ok=True)
        code, stdout, err = run_main(train_covid19.main, [
            "--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights",
            "none", "--seed", str(seed), "--model", str(out / "m.h5"),
            "--plot", str(out / "p.png"), "--report", str(out / "r.json")])
        assert code == 0, err
        report = json.loads((out / "r.json").read_text())
        return report["test_files"], re.findall(r"loss: (\d\.\d{4})", stdout)

    # the session's run had seed 7 and these very flags
    report = json.loads(open(trained["report"]).read())
    split_a, loss_a = report["test_files"], re.findall(r"loss: (\d\.\d{4})", trained["stdout"])
    split_b, loss_b = run(trained["seed"])
    assert split_a == split_b and loss_a == loss_b and len(loss_a) == 4
    assert run(12)[1] != loss_a  # the seed matters, so the equality above means something


def test_three_classes_are_reported_one_vs_rest(capsys):
    # the report's step on its own: a three-class head on random features
    keras.utils.set_random_seed(3)
    head = make_head(build_model(keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(224, 224, 3)), 3))
    testY = np.eye(3, dtype="float32")[[0, 1, 2, 0, 1, 2]]
    features = np.random.default_rng(3).normal(size=(6, head.input_shape[-1])).astype("float32")
    names = ["covid", "normal", "pneumonia"]
    test = train_covid19.TestSplit([f"{k}.png" for k in range(6)], testY, features)
    evaluation = train_covid19.evaluate(head, test, names)
    results, probabilities, true_classes = (evaluation.results, evaluation.probabilities,
                                            evaluation.true_classes)
    stdout = capsys.readouterr().out
    assert probabilities.shape == (6, 3) and true_classes.tolist() == [0, 1, 2, 0, 1, 2]
    assert "sensitivity" not in results  # the two-class summary only makes sense for two
    cm = np.array(results["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 6
    for c, name in enumerate(names):
        m = results["per_class"][name]
        assert (m["sensitivity"]["successes"], m["sensitivity"]["trials"]) == (cm[c, c], 2)
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        assert (m["specificity"]["successes"], m["specificity"]["trials"]) == (tn, 4)
        assert f"{name}: sensitivity: {m['sensitivity']['value']:.4f} (95% CI " in stdout
    assert f"ROC AUC: {results['roc_auc']:.4f}" in stdout


def test_imagenet_offline_says_what_to_do(tiny_dataset, tmp_path, monkeypatch):
    import keras.src.backend.config

    # A proxy on a closed local port makes the download fail at once, online or not; an empty
    # Keras home makes sure no earlier download is found.
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]:
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    (tmp_path / "keras").mkdir()
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path / "keras"))
    code, out, err = run_main(train_covid19.main, [
        "--dataset", tiny_dataset, "--model", str(tmp_path / "m.h5"),
        "--plot", str(tmp_path / "p.png"), "--report", str(tmp_path / "r.json")])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("train_covid19.py: error: cannot get the VGG16 ImageNet weights")
    assert f"copy vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 into " \
           f"{tmp_path / 'keras' / 'models'}/ or pass --weights PATH" in last
    assert sorted(os.listdir(tmp_path)) == ["keras"]  # no output written
    assert not os.path.exists(tmp_path / "keras" / "models" /
                              "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert "[INFO] loading images..." not in out  # failed before the long work


# ---------------------------------------------------------------------------------------------
# Patient-level split
# ---------------------------------------------------------------------------------------------


def make_patient_dataset(root, patients_per_class=8, images_per_patient=2):
    """Classes of several patients with several images each, and the builders' manifest."""
    rows = ["file,class,patient_id,source"]  # a manifest from before license/url existed
    for c, name in enumerate(["covid", "normal"]):
        for p in range(patients_per_class):
            for i in range(images_per_patient):
                file = f"{name}/{name}-p{p}-{i}.png"
                write_image(os.path.join(root, file), seed=100 * c + 10 * p + i, size=(40, 40))
                rows.append(f"{file},{name},{name}{p},test")
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return root


def patient(path):
    return os.path.basename(path).rsplit("-", 1)[0]


@pytest.mark.parametrize("seed", [1, 42, 7])
def test_patient_split_keeps_every_patient_on_one_side(tmp_path, seed, capsys):
    dataset = make_patient_dataset(str(tmp_path / "d"))
    parts = split_of(dataset, seed, "patient")
    trainP, testP, trainY, testY = parts.trainP, parts.testP, parts.trainY, parts.testY
    assert not {patient(p) for p in trainP} & {patient(p) for p in testP}
    assert len(trainP) + len(testP) == 32
    # stratified: both classes on both sides, about a fifth of the patients held out
    assert testY.sum(axis=0).min() >= 2 and trainY.sum(axis=0).min() >= 2
    assert len({patient(p) for p in testP}) in (3, 4)  # a fifth of 16 patients
    assert parts.patients_on_both_sides == 0
    assert "[WARNING]" not in capsys.readouterr().err


def test_random_split_warns_how_many_patients_it_puts_on_both_sides(tmp_path, capsys):
    dataset = make_patient_dataset(str(tmp_path / "d"))
    parts = split_of(dataset, 42)
    shared = {patient(p) for p in parts.trainP} & {patient(p) for p in parts.testP}
    assert len(shared) > 0 and parts.patients_on_both_sides == len(shared)
    assert (f"[WARNING] {len(shared)} patient(s) have images on both sides of the random split"
            in capsys.readouterr().err)


def test_patient_split_run_writes_it_in_the_report(tmp_path):
    # 5 patients of each class: the fewest a fifth can be held out of
    dataset = make_patient_dataset(str(tmp_path / "d"), patients_per_class=5,
                                   images_per_patient=1)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--epochs", "1", "--batch-size", "4", "--weights", "none",
        "--cache-features", "--split", "patient", "--model", str(out / "m.h5"),
        "--plot", str(out / "p.png"), "--report", str(out / "r.json")])
    assert code == 0, err
    report = json.loads((out / "r.json").read_text())
    assert report["split"] == {"kind": "patient", "patients_on_both_sides": 0}
    tested = {patient(file) for file in report["test_files"]}
    # a fifth of the patients: one of each class
    assert sorted(name.split("-")[0] for name in tested) == ["covid", "normal"]
    assert report["counts"]["test"] == {"covid": 1, "normal": 1}


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


def test_a_bfloat16_run_says_so_and_saves_a_float32_model(tiny_dataset, tmp_path):
    code, out, err = run_main(train_covid19.main, [
        "--dataset", tiny_dataset, "--epochs", "1", "--batch-size", "4", "--weights", "none",
        "--precision", "bfloat16", "--cache-features", "--model", str(tmp_path / "m.h5"),
        "--plot", str(tmp_path / "p.png"), "--report", str(tmp_path / "r.json")])
    assert code == 0, err
    assert "(frozen VGG16 computed in bfloat16; head, loss and model in float32)" in out
    assert json.loads((tmp_path / "r.json").read_text())["precision"] == "bfloat16"
    model = keras.models.load_model(str(tmp_path / "m.h5"))
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x = np.asarray(scale_pixels(load_xray(os.path.join(tiny_dataset, "normal",
                                                       "normal-00.jpg"))[None]))
    assert np.asarray(model(x)).dtype == np.float32


@pytest.mark.parametrize("precision, native, warning", [
    ("bfloat16", False, "[WARNING] --precision bfloat16 on a CPU without native bfloat16 "
                        "(AVX512_BF16 or AMX): this will be slower than float32"),
    ("bfloat16", True, None),
    ("float16", True, "[WARNING] --precision float16 without a GPU: CPUs emulate float16, so "
                      "this will be slower than float32"),
    ("float32", False, None),
])
def test_a_precision_this_hardware_runs_slowly_is_said_in_one_line(monkeypatch, capsys,
                                                                   precision, native, warning):
    import tensorflow as tf

    from covid19xray import model as covid19_model

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the warnings are for machines without a GPU")
    monkeypatch.setattr(covid19_model, "cpu_has_native_bfloat16", lambda: native)
    covid19_model.check_precision(precision)
    assert capsys.readouterr().err == ("" if warning is None else warning + "\n")


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing touched
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding a previous run's outputs, which no failing run may touch."""
    monkeypatch.chdir(tmp_path)
    for name, content in [("covid19.h5", b"earlier model"), ("plot.png", b"earlier plot"),
                          ("roc.png", b"earlier roc"), ("calibration.png", b"earlier one"),
                          ("report.json", b"{}")]:
        (tmp_path / name).write_bytes(content)
    return tmp_path


def train(*argv):
    return run_main(train_covid19.main, ["--weights", "none", "--epochs", "1",
                                         "--batch-size", "2", *argv])


def outputs_after(workdir):
    return {name: (workdir / name).read_bytes() for name in
            ["covid19.h5", "plot.png", "roc.png", "calibration.png", "report.json"]}


@pytest.mark.parametrize("case, argv, phrases, exit_code", [
    ("no --dataset", [], ["the following arguments are required: -d/--dataset"], 2),
    ("missing", ["--dataset", "nowhere"], ["--dataset 'nowhere' is not a folder"], 1),
    ("a file", ["--dataset", "covid19.h5"], ["--dataset 'covid19.h5' is not a folder"], 1),
    ("empty", ["--dataset", "empty"], ["--dataset 'empty' has no images",
                                       "put one folder of images per class in it"], 1),
    ("one class", ["--dataset", "one"], ["found 1 class folder(s) (covid); training needs two "
                                         "or more, such as covid/ and normal/"], 1),
    ("class too small", ["--dataset", "small"], [
        "too few images for a stratified 80/20 split (covid: 1, normal: 5); scikit-learn: "
        "The least populated classes in y have only 1 member, which is too few"], 1),
    ("patient split, no manifest", ["--dataset", "ok", "--split", "patient"], [
        "--split patient needs ok/manifest.csv", "use --split random"], 1),
    ("--epochs 0", ["--dataset", "ok", "--epochs", "0"],
     ["argument --epochs: must be a finite number greater than 0, got 0"], 2),
    ("negative --batch-size", ["--dataset", "ok", "--batch-size", "-4"],
     ["argument --batch-size: must be a finite number greater than 0, got -4"], 2),
    ("negative --seed", ["--dataset", "ok", "--seed", "-1"],
     ["argument --seed: must be from 0 to 4294967295, got -1"], 2),
    ("--seed over 2**32 - 1", ["--dataset", "ok", "--seed", "4294967296"],
     ["argument --seed: must be from 0 to 4294967295, got 4294967296"], 2),
    ("--batch-size over the split", ["--dataset", "ok", "--batch-size", "9"],
     ["--batch-size 9 is larger than the training split (8 images); use --batch-size 8 or less"],
     1),
    ("--model missing folder", ["--dataset", "ok", "--model", "no/m.h5"],
     ["--model 'no/m.h5'", "does not exist; create it first"], 1),
    ("--plot missing folder", ["--dataset", "ok", "--plot", "no/p.png"],
     ["--plot 'no/p.png'", "does not exist"], 1),
    ("--report missing folder", ["--dataset", "ok", "--report", "no/r.json"],
     ["--report 'no/r.json'", "does not exist"], 1),
    ("--model neither .h5 nor .keras", ["--dataset", "ok", "--model", "covid19.model"],
     ["--model 'covid19.model' must end in .h5 or .keras"], 1),
    ("--plot inside --dataset", ["--dataset", "ok", "--plot", "ok/covid/plot.png"],
     ["--plot 'ok/covid/plot.png' is inside --dataset 'ok'", "source data is never modified"],
     1),
    ("--plot inside --external", ["--dataset", "ok", "--external", "small", "--plot",
                                  "small/covid/plot.png"],
     ["--plot 'small/covid/plot.png' is inside --external 'small'"], 1),
    # the cache's files would be read as the dataset's next time, or modify it
    ("--cache-dir inside --dataset", ["--dataset", "ok", "--cache-dir", "ok/cache"],
     ["--cache-dir 'ok/cache' is inside --dataset 'ok'", "source data is never modified"], 1),
    ("--cache-dir inside --external", ["--dataset", "ok", "--external", "small", "--cache-dir",
                                       "small/normal/cache"],
     ["--cache-dir 'small/normal/cache' is inside --external 'small'"], 1),
    ("--weights missing", ["--dataset", "ok", "--weights", "none.h5"],
     ["--weights 'none.h5': no such file"], 1),
    ("--weights not HDF5", ["--dataset", "ok", "--weights", "report.json"],
     ["--weights 'report.json' is not a VGG16 no-top weights file"], 1),
])
def test_training_refuses_bad_input_in_one_line(workdir, case, argv, phrases, exit_code):
    (workdir / "empty").mkdir()
    small_dataset(workdir / "one", {"covid": 4})
    small_dataset(workdir / "small", {"covid": 1, "normal": 5})
    small_dataset(workdir / "ok", {"covid": 5, "normal": 5})
    before = snapshot(str(workdir))
    code, out, err = run_main(train_covid19.main, argv) if case == "no --dataset" else train(
        *argv)
    assert_one_line_error(code, err, "train_covid19.py", *phrases, exit_code=exit_code)
    assert snapshot(str(workdir)) == before
    assert "[INFO] training head..." not in out  # found before any training


def test_a_dataset_mixing_jpeg_16_bit_png_and_dicom_trains_on_all_of_it(workdir):
    for c, name in enumerate(["covid", "normal"]):
        folder = workdir / "d" / name
        for i in range(5):
            source = write_image(str(workdir / "sources" / f"{name}{i}.jpg"), seed=10 * c + i,
                                 size=(90, 80))
            grey = cv2.cvtColor(cv2.imread(source), cv2.COLOR_BGR2GRAY)
            if i == 0:
                os.renames(source, folder / "0.jpg")
            elif i == 1:
                write_png16(str(folder / "1.png"), to_12_bits(grey))
            else:  # DICOM: MONOCHROME2, MONOCHROME1, and one named without an extension
                write_dicom(str(folder / (f"{i}.dcm" if i < 4 else f"IM{i}")),
                            4095 - to_12_bits(grey) if i == 3 else to_12_bits(grey),
                            "MONOCHROME1" if i == 3 else "MONOCHROME2")
    code, out, err = train("--dataset", "d", "--model", "m.h5", "--plot", "p.png",
                           "--report", "r.json")
    assert code == 0, err
    assert "[WARNING]" not in err
    assert "[INFO] 10 images, classes ['covid', 'normal']: 8 for training, 2 for testing" in out
    report = json.loads((workdir / "r.json").read_text())
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["test"].values()) == 10


def test_external_folders_get_the_same_report_as_predict_gives_on_their_files(workdir):
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    small_dataset(workdir / "ext", {"covid": 3, "normal": 3}, size=(40, 36))
    shutil.copy(workdir / "d" / "covid" / "2.png", workdir / "ext" / "covid" / "copy.png")
    code, out, err = train("--dataset", "d", "--external", "ext", "--model", "m.h5",
                           "--plot", "p.png", "--report", "r.json")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"[WARNING] refusing {os.path.join('ext', 'covid', 'copy.png')}: byte-identical to "
        f"{os.path.join('d', 'covid', '2.png')} of --dataset, so it is no external test",
        "[WARNING] refused 1 external image(s) identical to a training image"]
    assert "[INFO] external test: ext\n" in out
    assert "[INFO] 6 external images (covid: 3, normal: 3)" in out
    external = json.loads((workdir / "r.json").read_text())["external"]["ext"]
    assert external["refused_identical_to_dataset"] == [os.path.join("covid", "copy.png")]
    assert external["counts"] == {"covid": 3, "normal": 3}
    # the saved model on the same files, through predict_covid19.py --labelled
    kept = [os.path.join("ext", file) for file in external["files"]]
    code, _, err = run_main(predict_covid19.main, ["--model", "m.h5", "--labelled",
                                                  "--report", "e.json", *kept])
    assert code == 0, err
    predicted = json.loads((workdir / "e.json").read_text())
    assert predicted["files"] == kept
    for key in ["confusion_matrix", "accuracy", "sensitivity", "specificity"]:
        assert predicted[key] == external[key], key
    assert predicted["roc_auc"] == pytest.approx(external["roc_auc"], abs=1e-6)
    # and the same input check: the model file carries the one train fitted, and both say
    # what it made of every image, by class
    checked = external["input_check"]
    assert sum(checked["counts"].values()) == 6
    assert {name: sum(c.values()) for name, c in checked["by_class"].items()} == {
        "covid": 3, "normal": 3}
    assert predicted["input_check"]["counts"] == checked["counts"]
    assert predicted["input_check"]["by_class"] == checked["by_class"]
    counts = checked["counts"]
    assert (f"input check on these 6 images: {counts['ok']} ok, {counts['unlike_training']} "
            f"unlike the training images, {counts['rejected']} rejected") in out


def test_an_external_folder_with_other_classes_stops_before_training(workdir):
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    small_dataset(workdir / "ext", {"covid": 2, "pneumonia": 2})
    before = snapshot(str(workdir))
    code, out, err = train("--dataset", "d", "--external", "ext")
    assert_one_line_error(
        code, err, "train_covid19.py", "--external 'ext' has class folders ['covid', "
        "'pneumonia'], the model's classes are ['covid', 'normal'] (missing normal; not in "
        "the model: pneumonia)")
    assert "[INFO] training head..." not in out
    assert snapshot(str(workdir)) == before


def test_weights_with_the_wrong_layer_shapes(workdir, tiny_dataset, real_vgg16):
    # a VGG16 for one-channel images: block1_conv1's kernel is 3x3x1x64, not 3x3x3x64
    gray = real_vgg16(weights=None, include_top=False, input_shape=(224, 224, 1))
    gray.save(str(workdir / "gray_vgg16.h5"))
    before = snapshot(str(workdir))
    code, out, err = train("--dataset", tiny_dataset, "--weights", "gray_vgg16.h5")
    assert_one_line_error(code, err, "train_covid19.py", "--weights 'gray_vgg16.h5' is not a "
                          "VGG16 no-top weights file like "
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert snapshot(str(workdir)) == before
    assert "[INFO] loading images..." not in out  # the weights fail before the images load


def test_unwritable_output_folder_is_found_before_training(workdir, tiny_dataset, monkeypatch):
    (workdir / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) == str(workdir / "locked") else real_access(path, mode)))
    code, out, err = train("--dataset", tiny_dataset, "--model", "locked/m.h5")
    assert_one_line_error(code, err, "train_covid19.py",
                          f"--model 'locked/m.h5': folder '{workdir / 'locked'}' is not writable")
    assert out == ""


def test_only_unreadable_images(workdir):
    write_junk(str(workdir / "junk" / "covid"))
    write_junk(str(workdir / "junk" / "normal"))
    code, _, err = train("--dataset", "junk")
    assert_one_line_error(code, err, "train_covid19.py",
                          "--dataset 'junk': none of its images could be read", warnings=7)
    assert "[WARNING] skipped 6 unreadable image(s)" in err


@pytest.mark.parametrize("where", ["mid-training", "mid-save"])
def test_ctrl_c_keeps_every_earlier_output(workdir, tiny_dataset, monkeypatch, where):
    before = outputs_after(workdir)
    if where == "mid-training":
        def interrupted_train(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(train_covid19, "train", interrupted_train)
    else:
        def interrupted_save(model, path, *rest):
            with open(path, "wb") as f:
                f.write(b"half a mod")  # plot, roc and report are written already
            raise KeyboardInterrupt
        monkeypatch.setattr(train_covid19, "save_model", interrupted_save)
    code, _, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size", "4")
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        "train_covid19.py: interrupted; no output was replaced")
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["calibration.png", "covid19.h5", "plot.png",
                                           "report.json", "roc.png"]


def test_a_full_disk_mid_save_is_one_line_and_keeps_every_earlier_output(workdir, tiny_dataset,
                                                                         monkeypatch):
    before = outputs_after(workdir)

    def full_disk(model, path, *rest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_covid19, "save_model", full_disk)
    code, _, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size", "4")
    # the 4 warnings come from the junk in the dataset
    assert_one_line_error(code, err, "train_covid19.py", "cannot write the outputs (No space "
                          "left on device); every earlier covid19.h5, plot.png, report.json, "
                          "roc.png, calibration.png was kept", warnings=4)
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["calibration.png", "covid19.h5", "plot.png",
                                           "report.json", "roc.png"]


@pytest.fixture
def bomb_dataset(tmp_path):
    """A small dataset with, among its images, a 1 MB-class PNG that claims 100.5 megapixels."""
    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    bomb = write_huge_png(os.path.join(dataset, "covid", "bomb.png"), 10050, 10000)
    return dataset, bomb


def test_a_decompression_bomb_is_skipped_from_its_header_never_decoded(bomb_dataset, tmp_path,
                                                                      monkeypatch):
    from covid19xray import images as covid19_images

    dataset, bomb = bomb_dataset
    with open(bomb, "rb") as f:
        bomb_bytes = f.read()
    decoded = []
    real_imdecode = covid19_images.cv2.imdecode
    monkeypatch.setattr(covid19_images.cv2, "imdecode",
                        lambda data, flags: decoded.append(len(data)) or real_imdecode(data,
                                                                                       flags))
    code, out, err = train("--dataset", dataset, "--cache-features", "--model",
                           str(tmp_path / "m.h5"), "--plot", str(tmp_path / "p.png"),
                           "--report", str(tmp_path / "r.json"), "--batch-size", "4")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"[WARNING] skipping {bomb}: 10050x10000 pixels (100.5 megapixels), over the limit of "
        "100 megapixels", "[WARNING] skipped 1 unreadable image(s)"]
    assert "[INFO] 10 images" in out
    assert len(bomb_bytes) not in decoded and len(decoded) == 10
    # prediction and the builders' checks refuse it the same way
    code, out, err = run_main(predict_covid19.main, ["--model", str(tmp_path / "m.h5"), bomb])
    assert_one_line_error(code, err, "predict_covid19.py", "none of the given images could be "
                          "read", warnings=1)
    assert "over the limit of 100 megapixels" in err.splitlines()[0]


def test_names_that_are_not_utf8_are_trained_on_predicted_and_written_back(tmp_path):
    import csv
    import json

    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    odd = os.path.join(dataset, "covid", NOT_UTF8)
    os.rename(os.path.join(dataset, "covid", "0.png"), odd)
    shown_name = "x-\ufffd\ufffd.png"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # seed 25 puts the file in the test split, so report.json lists it
    code, out, err = train("--dataset", dataset, "--cache-features", "--seed", "25",
                           "--batch-size", "4", "--model", str(out_dir / "m.h5"),
                           "--plot", str(out_dir / "p.png"), "--report", str(out_dir / "r.json"))
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"[WARNING] {os.path.join(dataset, 'covid', shown_name)}: the name is not valid UTF-8; "
        "it is shown with U+FFFD here and kept as it is in the files this run writes"]
    report = json.loads((out_dir / "r.json").read_text())
    assert os.path.join("covid", NOT_UTF8) in report["test_files"]  # the real name, recovered

    code, out, err = run_main(predict_covid19.main, [
        "--model", str(out_dir / "m.h5"), odd, "--csv", str(out_dir / "p.csv"),
        "--gradcam", str(out_dir / "gradcam")])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"{os.path.join(dataset, 'covid', shown_name)}: ")
    with open(out_dir / "p.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        assert list(csv.reader(f))[1][0] == odd
    assert os.listdir(out_dir / "gradcam") == [os.fsdecode(b"x-\xff\xfe_gradcam.png")]


def test_sigterm_during_training_is_ctrl_c_exit_143(workdir, tiny_dataset, monkeypatch):
    import signal
    import threading

    before = outputs_after(workdir)
    real_fit_head, epochs_begun = train_covid19.fit_head, []

    def terminate_soon(epoch, logs):
        epochs_begun.append(epoch)
        if epoch == 1:  # a real SIGTERM from outside, while the second epoch runs
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()

    def fit_then_terminated(head, *args, **kwargs):
        real_fit = head.fit
        head.fit = lambda *a, callbacks=(), **k: real_fit(*a, **k, callbacks=[
            *callbacks, keras.callbacks.LambdaCallback(on_epoch_begin=terminate_soon)])
        return real_fit_head(head, *args, **kwargs)

    monkeypatch.setattr(train_covid19, "fit_head", fit_then_terminated)
    signal.alarm(120)  # a lost SIGTERM would train for hours: it fails the test instead
    try:
        code, out, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size",
                               "4", "--epochs", "100000")
    finally:
        signal.alarm(0)
    assert code == 143 and 1 < len(epochs_begun) < 100000  # stopped while it trained
    assert "Epoch 2/100000" in out
    assert err.strip().splitlines()[-1] == (
        "train_covid19.py: terminated (SIGTERM); no output was replaced")
    assert "Traceback" not in err
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["calibration.png", "covid19.h5", "plot.png",
                                           "report.json", "roc.png"]


def test_a_second_run_on_the_same_outputs_stops_at_its_start(workdir, tiny_dataset):


    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom covid19xray.writing import claim_outputs\n"
         f"with claim_outputs({str(workdir / 'report.json')!r}):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(str(workdir))
        code, out, err = train("--dataset", tiny_dataset)
        assert_one_line_error(code, err, "train_covid19.py", f"'{workdir / 'report.json'}' is "
                              f"being written by another run (process {holder.pid}); wait for "
                              "it to end, or write elsewhere")
        assert out == "" and snapshot(str(workdir)) == before
    finally:
        holder.kill()
        holder.wait()
    # once that run is gone (killed: its lock was never released by hand), the next one runs
    code, out, err = train("--dataset", tiny_dataset, "--batch-size", "4", "--cache-features")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# A full disk elsewhere, and checks before VGG16 loads
# ---------------------------------------------------------------------------------------------


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def test_a_full_temporary_folder_while_decoding_is_one_line(workdir, monkeypatch):
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    before = outputs_after(workdir)

    class FullFile:
        write = full_disk
        close = flush = staticmethod(lambda: None)

    monkeypatch.setattr(store.tempfile, "TemporaryFile", FullFile)
    code, _, err = train("--dataset", "d")
    assert_one_line_error(code, err, "train_covid19.py", "error: No space left on device "
                          "(/full/disk/file); no output was left half-written")
    assert outputs_after(workdir) == before and sorted(os.listdir(workdir)) == [
        "calibration.png", "covid19.h5", "d", "plot.png", "report.json", "roc.png"]


def test_a_full_feature_cache_is_one_line(workdir, monkeypatch):
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    before = outputs_after(workdir)
    monkeypatch.setattr(FeatureCache, "put", full_disk)
    code, _, err = train("--dataset", "d", "--cache-features", "--cache-dir", "cache")
    assert_one_line_error(code, err, "train_covid19.py", "error: No space left on device")
    assert outputs_after(workdir) == before


@pytest.mark.parametrize("case, phrase", [
    ("cache-dir is a file", "--cache-dir 'cache' is not a folder"),
    ("no room in TMPDIR", "decoded images need 1.4 MB; set TMPDIR to a folder with room"),
    ("manifest field over the csv limit", "not a readable manifest (field larger than field "
                                          "limit"),
])
def test_inputs_that_would_fail_later_are_found_before_vgg16_loads(workdir, monkeypatch, case,
                                                                   phrase):
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    argv = ["--dataset", "d", "--cache-features", "--cache-dir", "cache"]
    if case == "cache-dir is a file":
        (workdir / "cache").write_text("a file")
    elif case == "no room in TMPDIR":
        free = 10 * store.ImageStore.IMAGE_BYTES - 1  # one byte short of 10 images
        monkeypatch.setattr(store.shutil, "disk_usage", lambda folder: types.SimpleNamespace(
            total=free, used=0, free=free))
    else:
        (workdir / "d" / "manifest.csv").write_text(
            "file,class,patient_id,source\ncovid/0.png,covid," + "x" * 200_000 + ",cohen\n")
    before = snapshot(str(workdir))
    code, out, err = train(*argv)
    assert_one_line_error(code, err, "train_covid19.py", phrase)
    assert out == ""  # not even "[INFO] loading VGG16 base"
    assert snapshot(str(workdir)) == before


# ---------------------------------------------------------------------------------------------
# A set of outputs that can be checked, and a run's leftovers
# ---------------------------------------------------------------------------------------------


def test_the_report_names_the_sha256_of_the_model_and_plots_it_came_with(trained):
    report = json.loads(open(trained["report"]).read())
    folder = os.path.dirname(trained["report"])
    assert set(report["outputs"]) == {"model", "plot", "roc", "calibration"}
    for role, path in [("model", trained["model"]), ("plot", trained["plot"]),
                       ("roc", os.path.join(folder, "roc.png")),
                       ("calibration", os.path.join(folder, "calibration.png"))]:
        assert report["outputs"][role]["file"] == os.path.basename(path)
        assert report["outputs"][role]["sha256"] == hashlib.sha256(
            open(path, "rb").read()).hexdigest(), role


def test_the_next_run_removes_the_temporary_files_a_killed_run_left(workdir, tiny_dataset):
    """A kill between the renames leaves temporaries (.name.<12 hex>.tmp.ext) beside the
    outputs; the next run holding those outputs removes them, and only them."""
    left = [".covid19.h5.0123456789ab.tmp.h5", ".report.json.ba9876543210.tmp.json",
            ".plot.png.00000000000f.tmp.png"]
    kept = [".covid19.h5.not-ours.tmp.h5", "notes.txt"]
    for name in left + kept:
        (workdir / name).write_bytes(b"half")
    code, out, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size", "4")
    assert code == 0, err
    assert ("[WARNING] removed 3 temporary file(s) an interrupted run left beside the outputs"
            in err.splitlines())
    assert sorted(os.listdir(workdir)) == sorted(["covid19.h5", "plot.png", "report.json",
                                                  "roc.png", "calibration.png", *kept])


def test_training_runs_deterministic_ops_on_a_gpu_and_no_tf32(monkeypatch):
    """The same command gives the same report on a GPU too: op determinism on there, and
    float32 never run as TF32. No GPU is needed: TensorFlow's answer about one is stood in
    for."""
    import tensorflow as tf

    from covid19xray.model import make_deterministic

    switched = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: switched.append("determinism"))
    make_deterministic()  # on this CPU: no determinism switch, TF32 off
    assert switched == [] and not tf.config.experimental.tensor_float_32_execution_enabled()
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else [])
    tf.config.experimental.enable_tensor_float_32_execution(True)
    make_deterministic()
    assert switched == ["determinism"]
    assert not tf.config.experimental.tensor_float_32_execution_enabled()


def test_ctrl_c_while_tensorflow_starts_is_one_line(tmp_path):
    """Ctrl-C in the first seconds lands while TensorFlow starts and writes its C++ lines to
    fd 2 (absl, oneDNN, cudart), which `cli.import_tensorflow` holds back: the run ends in its
    one line, and none of theirs. In a fresh process, with stand-ins for keras and tensorflow
    that write such lines to fd 2 as they import (a real import takes 5 s), and whose runtime
    start is interrupted."""
    fake = tmp_path / "fake"
    (fake / "keras").mkdir(parents=True)
    (fake / "keras" / "__init__.py").write_text("import tensorflow\n")
    (fake / "tensorflow").mkdir()
    (fake / "tensorflow" / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\nI0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "def list_physical_devices(kind=None):\n"
        "    os.write(2, b'E0000 cuda_platform.cc:52] failed call to cuInit\\n')\n"
        "    raise KeyboardInterrupt  # Ctrl-C as the runtime starts\n"
        "config = types.SimpleNamespace(list_physical_devices=list_physical_devices)\n")
    outputs = tmp_path / "out"
    outputs.mkdir()
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_covid19.py"), "--dataset",
         os.path.join(ROOT, "dataset"), "--weights", "none", "--model", str(outputs / "m.h5"),
         "--plot", str(outputs / "p.png"), "--report", str(outputs / "r.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(fake)})
    assert result.returncode == 130
    assert result.stderr == "train_covid19.py: interrupted; no output was replaced\n"
    assert os.listdir(outputs) == []


def test_a_fifo_in_the_cache_is_named_replaced_and_changes_no_number(workdir, tiny_dataset):
    """A FIFO where a cache entry should be hung training for good; now the run names it in one
    warning, computes the entry again, and reports what the first run reported."""
    cache = workdir / "cache"
    argv = ["--dataset", tiny_dataset, "--cache-features", "--batch-size", "4", "--cache-dir",
            str(cache)]
    code, _, err = train(*argv, "--report", "first.json")
    assert code == 0, err
    entry = sorted(cache.rglob("*.features"))[0]
    entry.unlink()
    os.mkfifo(entry)
    signal.alarm(120)  # a hang fails the test instead of the suite
    try:
        code, _, err = train(*argv, "--report", "second.json")
    finally:
        signal.alarm(0)
    assert code == 0, err
    assert [line for line in err.splitlines() if str(entry) in line] == [
        f"[WARNING] feature cache entry {entry} is a FIFO, not an entry; removed, computing it "
        "again"]
    assert entry.is_file()  # replaced by the entry computed again
    first, second = (json.loads((workdir / name).read_text())
                     for name in ("first.json", "second.json"))
    for key in ["confusion_matrix", "accuracy", "sensitivity", "specificity", "roc_auc",
                "test_files"]:
        assert first[key] == second[key], key


def test_a_cache_folder_that_cannot_be_written_stops_training_before_vgg16(workdir,
                                                                           monkeypatch):
    """Found after the VGG16 work, a read-only cache folder cost that work; now the run stops
    before any image passes through VGG16, in one line."""
    small_dataset(workdir / "d", {"covid": 5, "normal": 5})
    cache = workdir / "cache"
    argv = ["--dataset", "d", "--batch-size", "4", "--cache-dir", str(cache)]
    code, _, err = train(*argv)
    assert code == 0, err
    [rotations] = [folder for folder in cache.iterdir() if folder.is_dir()
                   and '"Rotation"' in (folder / "configuration.json").read_text()]
    entries = sorted(folder for folder in rotations.iterdir() if folder.is_dir())[0]
    batches = []  # every image reaches VGG16 through frozen.model_batches
    real_batches = frozen.model_batches
    monkeypatch.setattr(frozen, "model_batches",
                        lambda *args, **kwargs: batches.append(1) or real_batches(*args,
                                                                                  **kwargs))
    with read_only(str(entries)):
        code, out, err = train(*argv, "--epochs", "2")  # the second epoch would be computed
    assert_one_line_error(code, err, "train_covid19.py",
                          f"its folder '{entries}' cannot be written", "--no-cache")
    assert batches == [] and "[INFO] training head..." not in out


def test_the_cost_line_counts_damaged_cache_entries_as_work_to_do(trained, tmp_path):
    """Three entries of a full cache damaged (a payload byte flipped, the size kept): the run
    says it will compute 3 passes, and computes those 3."""
    cache = tmp_path / "cache"
    shutil.copytree(trained["cache"], cache)
    entries = sorted(path for path in cache.rglob("*.features"))
    for path in entries[:3]:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    code, stdout, stderr = run_main(train_covid19.main, [
        "--dataset", trained["dataset"], "--batch-size", "4", "--weights", "none", "--seed",
        "7", "--epochs", "2", "--model", str(tmp_path / "m.h5"), "--plot",
        str(tmp_path / "p.png"), "--report", str(tmp_path / "r.json"), "--cache-dir",
        str(cache)])
    assert code == 0, stderr
    assert re.search(r"^\[INFO\] VGG16 work: .* = 3 passes to compute", stdout, re.M), stdout
    assert sum(computed for _, computed in cache_counts(stdout)) == 3
    assert stderr.count("is damaged or was written for something else") == 3


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


@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_a_learning_rate_that_is_no_number_is_a_usage_error(lr):
    code, _, err = run_main(train_covid19.main, ["--dataset", "d", "--lr", lr])
    assert_one_line_error(code, err, "train_covid19.py", "argument --lr: must be a finite "
                          f"number greater than 0, got {lr}", exit_code=2)


def test_a_learning_rate_that_makes_training_diverge_stops_before_any_output(tmp_path):
    """1e30 is a finite number: the loss stops being one, and the run ends at that epoch in one
    line, with no model, plot or report written."""
    dataset = small_dataset(tmp_path / "d", {"covid": 6, "normal": 6})
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--weights", "none", "--epochs", "3", "--batch-size", "4",
        "--lr", "1e30", "--cache-features", "--model", str(out / "m.h5"), "--plot",
        str(out / "p.png"), "--report", str(out / "r.json"), "--cache-dir",
        str(tmp_path / "c")])
    assert_one_line_error(code, err, "train_covid19.py", "training diverged: the loss is",
                          "at epoch 1", "try a lower --lr")
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["M.KERAS", "M.H5"])
def test_an_upper_case_model_suffix_is_refused_before_training(tmp_path, name):
    code, out, err = run_main(train_covid19.main, ["--dataset", str(tmp_path), "--model",
                                                   str(tmp_path / name)])
    assert_one_line_error(code, err, "train_covid19.py", "in lower case, as Keras reads the "
                          "name")
    assert "[INFO] loading images..." not in out
