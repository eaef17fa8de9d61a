"""predict_covid19.py: the saved model applied to new X-rays, with Grad-CAM overlays."""

import contextlib
import csv
import errno
import json
import os
import re
import subprocess
import sys

import cv2
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import predict_covid19
from covid19xray import prediction, progress
from covid19xray.calibration import Recalibration
from covid19xray.images import list_images, load_xray, scale_pixels
from covid19xray.model_file import (
    CLASS_NAMES_ATTR,
    load_classifier,
    read_input_check,
    save_model,
    store_recalibration,
)
from helpers import (
    ROOT,
    assert_no_tensorflow_log_lines,
    assert_one_line_error,
    progress_counts,
    readable_image,
    run_main,
    small_dataset,
    snapshot,
    terminate_here,
    write_encodings,
    write_image,
    write_junk,
    write_refused_radiology_files,
)

LINE = re.compile(r"^(?P<path>.+): (?P<label>\w+) \(covid (?P<covid>\d\.\d{4}), "
                  r"normal (?P<normal>\d\.\d{4})\)"
                  r"(?: \[input (?P<check>\w+): distance (?P<distance>\d+\.\d\d) .*\])?$")


def expected_probabilities(model_path, paths):
    """model.predict on the arrays training's own preprocessing makes."""
    model = keras.models.load_model(model_path)
    images = np.stack([load_xray(path) for path in paths])
    return model.predict(np.asarray(scale_pixels(images)), verbose=0)


def test_predictions_equal_model_predict_on_the_same_arrays(trained, tmp_path):
    covid = os.path.join(trained["dataset"], "covid")
    normal_file = os.path.join(trained["dataset"], "normal", "odd-rgba.png")
    csv_path = tmp_path / "predictions.csv"
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], covid, normal_file, "--csv", str(csv_path),
        "--classify-rejected"])  # whatever the input check says of random weights' features
    assert code == 0, err

    readable = [p for p in list_images(covid) if readable_image(p)] + [normal_file]
    assert len(readable) == 6
    expected = expected_probabilities(trained["model"], readable)
    lines = out.strip().splitlines()
    assert lines[-1] == f"[INFO] wrote {csv_path}"
    assert lines[-2].startswith("[INFO] input check: ")
    parsed = [LINE.match(line) for line in lines[:-2]]
    assert all(parsed), lines
    assert [m["path"] for m in parsed] == readable  # folder contents sorted, then the file
    for m, row in zip(parsed, expected):
        assert float(m["covid"]) == pytest.approx(row[0], abs=5e-5)
        assert float(m["normal"]) == pytest.approx(row[1], abs=5e-5)
        assert m["label"] == ["covid", "normal"][int(row.argmax())]

    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "predicted", "p_covid", "p_normal", "input_check",
                       "input_distance"]
    assert [r[0] for r in rows[1:]] == readable
    np.testing.assert_allclose(np.array([r[2:4] for r in rows[1:]], dtype=float), expected,
                               atol=1e-6)
    # the check's word and distance, as the lines say them
    assert [r[4] for r in rows[1:]] == [m["check"] for m in parsed]
    assert [f"{float(r[5]):.2f}" for r in rows[1:]] == [m["distance"] for m in parsed]
    # the three undecodable files in covid/ are reported and skipped; .txt etc. are ignored
    assert [line.split(": ")[0] for line in err.splitlines()] == [
        f"[WARNING] skipping {os.path.join(covid, name)}"
        for name in ["empty.jpg", "text.jpg", "truncated.png"]]


def model_that_uses_its_features(trained, path):
    """The trained model, with a head whose covid score rises with every feature whatever
    VGG16's random weights are: non-negative hidden weights, and the covid output +0.01 / normal
    output -0.01 on each unit (small, so that the softmax is not saturated). So its covid
    Grad-CAM has evidence to show."""
    model = keras.models.load_model(trained["model"])
    dense, out = model.get_layer(index=-3), model.get_layer(index=-1)
    dense.set_weights([np.abs(dense.get_weights()[0]), np.zeros(64)])
    out.set_weights([np.stack([np.full(64, 0.01), np.full(64, -0.01)], axis=1), np.zeros(2)])
    # the trained model's input check: the head changed, the base and its descriptions did not
    save_model(model, path, ["covid", "normal"], read_input_check(trained["model"]))
    return model


def test_gradcam_overlays_the_predicted_classs_heatmap_at_each_images_size(trained, tmp_path):
    model = model_that_uses_its_features(trained, str(tmp_path / "m.h5"))
    images = [write_image(str(tmp_path / "in" / "wide.jpg"), seed=1, size=(180, 320)),
              write_image(str(tmp_path / "in" / "tall.png"), seed=2, size=(300, 150), gray=True),
              write_image(str(tmp_path / "in" / "sub" / "wide.jpg"), seed=3, size=(100, 90))]
    out = tmp_path / "gradcam"
    code, stdout, err = run_main(predict_covid19.main, [
        "--model", str(tmp_path / "m.h5"), str(tmp_path / "in"), "--gradcam", str(out)])
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == f"[INFO] wrote 3 Grad-CAM overlay(s) to {out}"
    # listed sorted: sub/wide.jpg, tall.png, wide.jpg; the second wide.jpg gets its own name
    assert sorted(os.listdir(out)) == ["tall_gradcam.png", "wide_2_gradcam.png",
                                       "wide_gradcam.png"]
    for source, name in [(images[2], "wide_gradcam.png"), (images[1], "tall_gradcam.png"),
                         (images[0], "wide_2_gradcam.png")]:
        image = load_xray(source)
        predicted = int(model.predict(np.asarray(scale_pixels(image[None])), verbose=0).argmax())
        assert predicted == 0  # covid: every feature raises its score
        [heatmap] = reference_gradcam(model, image[None], [predicted])
        assert heatmap.max() == pytest.approx(1.0) and heatmap.min() < 0.5  # a real map
        # the file is the X-ray at its own size blended with that map in the jet colours
        original = cv2.imread(source, cv2.IMREAD_COLOR)
        heat = cv2.resize(heatmap.astype(np.float32), original.shape[1::-1])
        expected = cv2.addWeighted(cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET),
                                   0.4, original, 0.6, 0)
        written = cv2.imread(str(out / name))
        assert written.shape == original.shape
        assert np.abs(written.astype(int) - expected).max() <= 1


def reference_gradcam(model, images, class_indices):
    """Grad-CAM as keras-io's example computes it, one image at a time through the whole
    network: the gradient of the class's score before the softmax with respect to the last
    convolution's output, averaged per channel, weighting that output; negatives clipped,
    scaled to a peak of 1."""
    conv_layer = model.get_layer("block5_conv3")
    last = model.layers[-1]
    scores = keras.ops.matmul(last.input, last.kernel) + last.bias
    grad_model = keras.Model(model.inputs, [conv_layer.output, scores])
    maps = []
    for image, class_index in zip(images, class_indices):
        with tf.GradientTape() as tape:
            conv, logits = grad_model(scale_pixels(image[None]), training=False)
            score = logits[:, class_index]
        weights = tf.reduce_mean(tape.gradient(score, conv), axis=(0, 1, 2))
        heatmap = tf.nn.relu(tf.reduce_sum(conv[0] * weights, axis=-1)).numpy()
        maps.append(heatmap / heatmap.max() if heatmap.max() > 0 else heatmap)
    return maps


def batch_gradcam(model_path, images, class_indices):
    """The heatmaps predict draws: from the conv maps of its one forward pass, through the
    layers after them."""
    model_file = prediction.load_model(model_path, gradcam=True)
    classifier = prediction.make_classifier(model_path, model_file, gradcam=True)
    outputs = dict(zip(classifier.outputs, classifier.forward(scale_pixels(images))))
    return np.asarray(classifier.heatmaps(outputs["conv"], np.int32(class_indices)))


def test_gradcam_from_the_prediction_pass_equals_the_whole_networks_per_image(trained,
                                                                              tmp_path):
    model = model_that_uses_its_features(trained, str(tmp_path / "m.h5"))
    images = np.stack([load_xray(write_image(str(tmp_path / f"{i}.png"), seed=i, size=(90, 80)))
                       for i in range(5)])
    classes = [0, 1, 0, 0, 1]
    batched = batch_gradcam(str(tmp_path / "m.h5"), images, classes)
    assert batched.shape == (5, 14, 14)
    np.testing.assert_allclose(batched, reference_gradcam(model, images, classes), atol=1e-4)


def test_gradcam_of_a_class_without_evidence_is_all_zero(trained, tmp_path):
    model_that_uses_its_features(trained, str(tmp_path / "m.h5"))
    image = load_xray(write_image(str(tmp_path / "x.png"), seed=5, size=(224, 224)))
    heatmap, other = batch_gradcam(str(tmp_path / "m.h5"), np.stack([image, image]), [0, 1])
    assert heatmap.shape == (14, 14)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    # for the other class every channel weighs negatively: no evidence anywhere
    assert other.max() == 0


def test_gradcam_weighs_the_score_before_the_softmax_so_a_sure_model_still_shows_where(
        trained, tmp_path):
    model = model_that_uses_its_features(trained, str(tmp_path / "m.h5"))
    image = load_xray(write_image(str(tmp_path / "x.png"), seed=5, size=(224, 224)))
    batch = scale_pixels(image[None])
    [unsure] = batch_gradcam(str(tmp_path / "m.h5"), image[None], [0])
    # the same head a thousand times as sure: the softmax saturates, and the probability's
    # gradient (p times 1 - p) is zero; the score's is a thousand times larger, the map the same
    last = model.layers[-1]
    last.set_weights([1000 * weight for weight in last.get_weights()])
    save_model(model, str(tmp_path / "sure.h5"), ["covid", "normal"],
               read_input_check(trained["model"]))
    assert float(model(batch, training=False)[0, 0]) == 1.0
    [sure] = batch_gradcam(str(tmp_path / "sure.h5"), image[None], [0])
    assert sure.max() == pytest.approx(1.0)
    np.testing.assert_allclose(sure, unsure, atol=1e-4)


def test_bfloat16_prediction_is_close_to_float32(trained, tmp_path):
    image = write_image(str(tmp_path / "x.jpg"), seed=9, size=(120, 140))
    lines = {}
    for precision in ["float32", "bfloat16"]:
        code, out, err = run_main(predict_covid19.main, [
            "--model", trained["model"], image, "--precision", precision, "--classify-rejected"])
        assert code == 0, err
        lines[precision] = LINE.match(out.strip().splitlines()[0])
    assert abs(float(lines["float32"]["covid"]) - float(lines["bfloat16"]["covid"])) < 0.02


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing touched
# ---------------------------------------------------------------------------------------------


def predict(*argv):
    return run_main(predict_covid19.main, list(argv))


@pytest.fixture(scope="module")
def models(tmp_path_factory, trained):
    """Files that are not usable models, beside an image to predict: copies of the trained
    model's file with its class names removed or wrong, one named as another format, a .keras
    file without class names, and a text file."""
    import shutil

    folder = tmp_path_factory.mktemp("models")
    (folder / "text.h5").write_text("not a model")
    for name, class_names in [("no_names.h5", None),
                              ("three_names.h5", '["covid", "normal", "pneumonia"]'),
                              ("not_json.h5", "covid, normal"), ("model.keras", None),
                              ("model.onnx", None)]:
        shutil.copyfile(trained["model"], folder / name)
        with h5py.File(folder / name, "a") as f:
            del f.attrs[CLASS_NAMES_ATTR]
            if class_names:
                f.attrs[CLASS_NAMES_ATTR] = class_names
    # Keras's own format, saved by Keras alone: no class names in it
    keras.models.load_model(trained["model"]).save(folder / "plain.keras")
    # models of other shapes: one that takes 64x64 grey images, one with no convolution
    small = keras.Input((64, 64, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(small))
    flat = keras.Input((224, 224, 3))
    y = keras.layers.GlobalAveragePooling2D()(flat)
    for name, inputs, features in [("small_input.h5", small, x), ("no_conv.h5", flat, y)]:
        keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features)).save(
            folder / name)
        with h5py.File(folder / name, "a") as f:
            f.attrs[CLASS_NAMES_ATTR] = '["covid", "normal"]'
    write_image(str(folder / "x.jpg"), seed=1, size=(40, 40))
    write_image(str(folder / "inputs" / "covid" / "y.jpg"), seed=2, size=(40, 40))
    return folder


@pytest.mark.parametrize("model, extra, phrases", [
    ("missing.h5", [], ["--model", "missing.h5': no such file; train one with train_covid19.py"]),
    ("text.h5", [], ["text.h5' is not an HDF5 model file (.h5) saved by train_covid19.py"]),
    ("no_names.h5", [], ["no_names.h5' has no class names", "retrain if it is older"]),
    ("three_names.h5", [], ["three_names.h5' has 2 outputs but 3 class names "
                            "(covid, normal, pneumonia)"]),
    ("not_json.h5", [], ["not_json.h5': its class names (covid19_class_names) are not a JSON "
                         "list of names"]),
    # an HDF5 file named as another format: no other loader may ever read it
    ("model.keras", [], ["model.keras' is not a Keras model file (.keras) saved by "
                         "train_covid19.py"]),
    ("model.onnx", [], ["model.onnx' must be a model file named .h5, .hdf5 or .keras"]),
    ("plain.keras", [], ["plain.keras' has no class names", "retrain if it is older"]),
    ("TRAINED", ["nowhere.jpg"], ["'nowhere.jpg': no such file or folder"]),
    ("TRAINED", ["--csv", "no/p.csv"], ["--csv 'no/p.csv'", "does not exist"]),
    ("TRAINED", ["--gradcam", "x.jpg"], ["--gradcam 'x.jpg' is a file, not a folder"]),
    ("small_input.h5", [], ["small_input.h5' takes inputs of shape (None, 64, 64, 1), not the "
                            "224x224 RGB images (None, 224, 224, 3)"]),
    ("no_conv.h5", ["--gradcam", "cams"], ["--gradcam: --model 'no_conv.h5' has no "
                                           "convolutional layer"]),
    # an overlay written into a folder predict reads would be read as an X-ray next time (and
    # trained on as a class of its own): refused, as every other output there
    ("TRAINED", ["inputs", "--gradcam", "inputs/covid/gradcam"],
     ["--gradcam 'inputs/covid/gradcam' is inside the image folder 'inputs'",
      "source data is never modified"]),
    ("TRAINED", ["inputs", "--csv", "inputs/p.csv"],
     ["--csv 'inputs/p.csv' is inside the image folder 'inputs'"]),
])
def test_prediction_refuses_bad_input_in_one_line(models, trained, monkeypatch, model, extra,
                                                  phrases):
    monkeypatch.chdir(models)
    model = trained["model"] if model == "TRAINED" else model
    before = snapshot(str(models), trained["dataset"])
    code, out, err = predict("--model", model, "x.jpg", *extra)
    assert_one_line_error(code, err, "predict_covid19.py", *phrases)
    assert out == ""
    assert snapshot(str(models), trained["dataset"]) == before


def test_a_model_that_is_a_link_to_a_device_is_named_as_such(tmp_path, trained):
    """Not "no such file": what it is, unread (a link to /dev/zero would be read without end)."""
    os.symlink("/dev/zero", tmp_path / "zero.h5")
    write_image(str(tmp_path / "x.jpg"), seed=1, size=(40, 40))
    code, out, err = predict("--model", str(tmp_path / "zero.h5"), str(tmp_path / "x.jpg"))
    assert_one_line_error(code, err, "predict_covid19.py",
                          f"--model '{tmp_path / 'zero.h5'}' is a link to a character device "
                          "(/dev/zero), not a model file")
    assert out == ""


def test_prediction_with_only_unreadable_images(tmp_path, trained):
    junk = write_junk(str(tmp_path))
    code, out, err = predict("--model", trained["model"], *junk)
    assert_one_line_error(code, err, "predict_covid19.py",
                          "none of the given images could be read", warnings=3)


def test_prediction_reads_predicts_and_writes_a_batch_at_a_time(trained, tmp_path, monkeypatch):
    images = [write_image(str(tmp_path / "in" / f"{i:02d}.png"), seed=i, size=(60, 50))
              for i in range(11)]
    batches = []
    real_predict = prediction.predict

    def recorded(classifier, batch, gradcam=False):
        batches.append(len(batch))
        return real_predict(classifier, batch, gradcam)

    monkeypatch.setattr(prediction, "predict", recorded)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a progress line for every update
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                     str(tmp_path / "in"), "--batch-size", "4",
                                                     "--csv", str(tmp_path / "p.csv")])
    assert code == 0, err
    assert batches == [4, 4, 3]
    # a line an image, then the input check's count and the CSV's line
    assert [line.split(":")[0] for line in out.splitlines()[:-2]] == images
    # progress on stderr, a file at a time; stdout keeps only the predictions
    assert progress_counts(err, "predicting") == [(k, 11) for k in range(12)]


def test_sigterm_between_batches_is_one_line_and_writes_no_csv(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(prediction, "predict", terminate_here)
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                   trained["dataset"], "--csv",
                                                   str(tmp_path / "p.csv")])
    assert code == 143 and err.strip().splitlines()[-1] == (
        "predict_covid19.py: terminated (SIGTERM); no output was replaced")
    assert os.listdir(tmp_path) == []


def test_a_file_name_a_spreadsheet_would_run_is_quoted_in_the_csv(trained, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(str(tmp_path / "=cmd.jpg"), seed=4, size=(40, 40))
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"], "=cmd.jpg",
                                                     "--csv", "p.csv"])
    assert code == 0, err
    assert out.startswith("=cmd.jpg: ")  # printed as it is
    with open(tmp_path / "p.csv", newline="") as f:
        assert [row[0] for row in csv.reader(f)] == ["file", "'=cmd.jpg"]


# ---------------------------------------------------------------------------------------------
# Radiology files
# ---------------------------------------------------------------------------------------------


def test_every_file_an_xray_could_come_as_predicts_and_maps_alike(trained, tmp_path):
    files = write_encodings(str(tmp_path / "in"))
    csv_path, cams = tmp_path / "p.csv", tmp_path / "cams"
    code, _, err = run_main(predict_covid19.main, [
        "--model", trained["model"], "--csv", str(csv_path), "--gradcam", str(cams),
        "--classify-rejected", *files.values()])
    assert code == 0, err
    assert err == ""  # no file skipped, no warning
    with open(csv_path, newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    jpeg = files["8-bit JPEG"]
    overlay = cv2.imread(str(cams / (os.path.splitext(os.path.basename(jpeg))[0] +
                                     "_gradcam.png")))
    for kind, path in files.items():
        assert abs(float(rows[path]["p_covid"]) - float(rows[jpeg]["p_covid"])) <= 0.01, kind
        # the heatmap is drawn over what the model saw: the windowed, scaled grey image
        drawn = cv2.imread(str(cams / (os.path.splitext(os.path.basename(path))[0] +
                                       "_gradcam.png")))
        assert drawn.shape == overlay.shape and np.abs(
            drawn.astype(int) - overlay).max() <= 2, kind


def test_radiology_files_that_cannot_be_read_are_named_with_their_reason(trained, tmp_path):
    refused = write_refused_radiology_files(str(tmp_path / "in"))
    good = sorted(path for kind, path in write_encodings(str(tmp_path / "in" / "good")).items()
                  if kind != "8-bit JPEG")  # that one is the shipped file, elsewhere
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                    str(tmp_path / "in"), "--classify-rejected"])
    assert code == 0, err
    assert [m["path"] for m in map(LINE.match, out.splitlines()) if m] == good
    warnings = err.strip().splitlines()
    assert len(warnings) == len(refused)
    for line, (path, reason) in zip(warnings, sorted(refused.items())):
        assert line.startswith(f"[WARNING] skipping {path}: {reason}")


# ---------------------------------------------------------------------------------------------
# --labelled: the report on a folder laid out as a dataset
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, phrase", [
    (["--report", "r.json"], "--report needs --labelled: without true classes there is no "
                             "report"),
    (["--labelled"], "--labelled: 'in/pneumonia/0.png' is in a folder named 'pneumonia', which "
                     "is not a class of the model (covid, normal)"),
])
def test_labelled_input_that_cannot_be_scored_is_one_line(trained, tmp_path, monkeypatch, argv,
                                                         phrase):
    monkeypatch.chdir(tmp_path)
    small_dataset(tmp_path / "in", {"covid": 1, "pneumonia": 1})
    before = snapshot(str(tmp_path))
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"], "in", *argv])
    assert_one_line_error(code, err, "predict_covid19.py", phrase)
    assert out == "" and snapshot(str(tmp_path)) == before


# ---------------------------------------------------------------------------------------------
# A full disk: one line, nothing half-written
# ---------------------------------------------------------------------------------------------


def test_a_full_disk_while_writing_the_csv_or_the_overlays_leaves_nothing(trained, tmp_path,
                                                                          monkeypatch):
    images = [write_image(str(tmp_path / "in" / f"{i}.jpg"), seed=i, size=(60, 50))
              for i in range(3)]
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "0_gradcam.png").write_bytes(b"an earlier overlay")
    (tmp_path / "p.csv").write_bytes(b"earlier predictions")
    before = snapshot(str(tmp_path))
    real_save, saved = predict_covid19.save_image, []

    def disk_full_on_the_second(path, image):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        saved.append(path)
        real_save(path, image)

    monkeypatch.setattr(predict_covid19, "save_image", disk_full_on_the_second)
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], "--csv", str(tmp_path / "p.csv"), "--gradcam",
        str(tmp_path / "cams"), "--classify-rejected", *images])
    assert_one_line_error(code, err, "predict_covid19.py", "error: No space left on device",
                          "no output was left half-written")
    # the first overlay was written, then the disk filled: neither it nor the CSV is there,
    # the earlier files are as they were, and no temporary file is left
    assert len(saved) == 1
    assert snapshot(str(tmp_path)) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB filesystem (tmpfs), where mounting one is allowed (root); else skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk_ends_in_one_line_and_leaves_nothing_on_it(trained, tmp_path,
                                                                      small_tmpfs):
    # six overlays of about 400 KB each do not fit in 1 MB
    images = [write_image(str(tmp_path / "in" / f"{i}.png"), seed=i, size=(400, 400))
              for i in range(6)]
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], "--gradcam", str(small_tmpfs / "cams"),
        "--csv", str(small_tmpfs / "p.csv"), *images])
    assert_one_line_error(code, err, "predict_covid19.py", "error: No space left on device",
                          "no output was left half-written")
    # the overlays written before the disk filled are gone with the rest, and so is the
    # --gradcam folder this run made
    assert os.listdir(small_tmpfs) == []


def test_a_disk_full_from_the_start_leaves_no_lock_file(trained, tmp_path, small_tmpfs):
    # the lock file can be created (an inode) but not written: before, `.p.csv.lock` stayed
    with open(small_tmpfs / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    image = write_image(str(tmp_path / "in" / "a.png"), seed=0)
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], "--csv", str(small_tmpfs / "p.csv"), image])
    assert_one_line_error(code, err, "predict_covid19.py", "error: No space left on device",
                          "no output was left half-written")
    assert sorted(os.listdir(small_tmpfs)) == ["filler"]


# ---------------------------------------------------------------------------------------------
# The export: a SavedModel and a TensorFlow Lite file that plain TensorFlow runs
# ---------------------------------------------------------------------------------------------

# What a user of the export runs: TensorFlow and OpenCV in a fresh Python, none of this project
# (the README's example). Each image is prepared as train_covid19.py prepares it.
PLAIN_TENSORFLOW = r"""
import json, sys
import cv2, keras, numpy as np, tensorflow as tf
try:
    import covid19xray
    sys.exit("this project's package is importable here")
except ImportError:
    pass
saved_model, tflite, h5, *paths = sys.argv[1:]


def prepared(path):  # RGB, 224x224, floats in [0, 1]
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (224, 224)).astype(np.float32) / 255


images = np.stack([prepared(path) for path in paths])
loaded = tf.saved_model.load(saved_model)
serving = loaded.signatures["serving_default"]
checked = {name: value.numpy().tolist() for name, value in loaded.serve_checked(images).items()}
interpreter = tf.lite.Interpreter(model_path=tflite)
run = interpreter.get_signature_runner()
lite = [run(images=image[None]) for image in images]
[served] = serving(tf.constant(images)).values()
# a NaN pixel, an infinite one: the written files' check must reject both (2), not fail open
hostile = np.full((2, 224, 224, 3), 0.5, np.float32)
hostile[0, 10, 10, 0], hostile[1, 20, 20, 1] = np.nan, np.inf
hostile_checked = loaded.serve_checked(hostile)["input_check"].numpy().tolist()
print(json.dumps({"hostile_serve_checked": hostile_checked,
                  "hostile_tflite": [int(run(images=image[None])["input_check"][0])
                                     for image in hostile],
                  "serve": loaded.serve(images).numpy().tolist(),
                  "serving_default": served.numpy().tolist(), "serve_checked": checked,
                  "tflite": [out["probabilities"][0].tolist() for out in lite],
                  "tflite_distance": [float(out["input_distance"][0]) for out in lite],
                  "tflite_check": [int(out["input_check"][0]) for out in lite],
                  "tflite_input": interpreter.get_input_details()[0]["shape"].tolist(),
                  # the model file, in plain Keras: nothing of this project is needed
                  "h5": keras.models.load_model(h5).predict(images, verbose=0).tolist()}))
"""


def shipped_jpegs():
    """Three normal films (224x224 colour JPEGs) and three COVID-19 films (large grey JPEGs)."""
    def jpegs(kind):
        return [path for path in list_images(os.path.join(ROOT, "dataset", kind))
                if path.endswith((".jpg", ".jpeg"))][:3]
    return jpegs("normal") + jpegs("covid")


@pytest.mark.slow(seconds=17)
def test_command_line_run_exports_what_plain_tensorflow_runs_with_its_probabilities(trained,
                                                                                   tmp_path):
    """The script in a subprocess: its predictions, and a SavedModel and a TensorFlow Lite file
    that a fresh Python with TensorFlow alone loads and runs to the same probabilities. The
    model carries a recalibration (recalibrate_covid19.py's): predict and both exports apply
    it; plain Keras, which loads the same .h5, gives the network's own probabilities."""
    model_that_uses_its_features(trained, str(tmp_path / "m.h5"))  # probabilities that vary
    update = Recalibration("intercept and slope", intercept=-0.4, slope=1.6, positive=0,
                           fitted_on=24, folder="site")
    store_recalibration(str(tmp_path / "m.h5"), update)
    images = shipped_jpegs()
    saved, lite, csv_path = tmp_path / "savedmodel", tmp_path / "m.tflite", tmp_path / "p.csv"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "predict_covid19.py"), "--model", "m.h5",
         "--export", "savedmodel", "--tflite", "m.tflite", "--csv", "p.csv",
         "--classify-rejected", *images],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_no_tensorflow_log_lines(result.stderr)
    assert result.stderr == ""  # nothing of the converters' C++ lines either
    assert saved.is_dir() and lite.is_file()
    assert "probabilities recalibrated on 24 films of site" in result.stdout
    network = expected_probabilities(str(tmp_path / "m.h5"), images)  # before the update
    expected = update.apply(network)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["file"] for row in rows] == images
    for row, probabilities in zip(rows, expected, strict=True):
        assert float(row["p_covid"]) == pytest.approx(probabilities[0], abs=5e-5)
    assert np.abs(expected - network).max() > 0.01  # the update changes what is compared
    # no temporary file or folder, no lock file
    assert sorted(os.listdir(tmp_path)) == ["m.h5", "m.tflite", "p.csv", "savedmodel"]
    assert json.loads((saved / "class_names.json").read_text()) == ["covid", "normal"]
    check = read_input_check(trained["model"])
    assert json.loads((saved / "input_check.json").read_text())["rejected_above"] == (
        check.reject_factor)
    # every weight stored once (Keras's model.export stores each twice: keras-team/keras#23553)
    weights = 4 * keras.models.load_model(tmp_path / "m.h5").count_params()
    [stored] = [entry.stat().st_size for entry in (saved / "variables").iterdir()
                if entry.name.startswith("variables.data")]
    assert weights <= stored < 1.05 * weights
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    printed = np.array([row[2:4] for row in rows], dtype=float)
    assert printed.shape == (6, 2) and np.ptp(printed[:, 0]) > 0.01  # a comparison that can fail
    outcomes = [row[4] for row in rows]
    distances = np.array([row[5] for row in rows], dtype=float)

    result = subprocess.run([sys.executable, "-c", PLAIN_TENSORFLOW, str(saved), str(lite),
                             "m.h5", *images], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # predict's CSV holds 6 decimals: 5e-7 of the 1e-5 is rounding
    np.testing.assert_allclose(got["serve"], printed, atol=1e-5)
    np.testing.assert_allclose(got["serving_default"], printed, atol=1e-5)
    np.testing.assert_allclose(got["tflite"], printed, atol=1e-5)
    assert got["tflite_input"] == [1, 224, 224, 3]
    assert got["hostile_serve_checked"] == [2, 2] and got["hostile_tflite"] == [2, 2]
    # plain Keras, in that fresh process without this project, loads the model file with its
    # input check and its recalibration, and gives the network's own probabilities: the
    # update lives beside the network, not in it
    np.testing.assert_allclose(got["h5"], network, atol=1e-5)
    # the input check travels with the exports: the same distances and words as predict's
    words = ["ok", "unlike_training", "rejected"]
    for served in (got["serve_checked"], {"input_distance": got["tflite_distance"],
                                          "input_check": got["tflite_check"],
                                          "probabilities": got["tflite"]}):
        np.testing.assert_allclose(served["probabilities"], printed, atol=1e-5)
        np.testing.assert_allclose(served["input_distance"], distances, atol=2e-3)
        assert [words[k] for k in served["input_check"]] == outcomes


def test_a_keras_format_model_predicts_and_exports_as_its_h5(trained, tmp_path):
    model, class_names = load_classifier(trained["model"])
    save_model(model, str(tmp_path / "m.keras"), class_names, read_input_check(trained["model"]))
    image = write_image(str(tmp_path / "x.png"), seed=5, size=(100, 120))
    lines = [predict("--model", path, image, "--classify-rejected")[1]
             for path in (trained["model"], str(tmp_path / "m.keras"))]
    assert lines[0] == lines[1] and LINE.match(lines[0].splitlines()[0])
    # Keras's own loader reads the .keras file with its input check as any .keras file: the
    # project adds members it does not read (the .h5 is loaded so in a fresh process, in the
    # export test)
    plain = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(plain.predict(np.zeros((1, 224, 224, 3)), verbose=0),
                               model.predict(np.zeros((1, 224, 224, 3)), verbose=0), atol=1e-6)


@pytest.mark.parametrize("argv, phrases", [
    (["--export", "exists"], ["--export 'exists' exists; give a new folder's name (nothing is "
                              "written over an existing one)"]),
    (["--export", "x.jpg"], ["--export 'x.jpg' exists"]),
    (["--export", "no/savedmodel"], ["--export 'no/savedmodel'", "does not exist; create it "
                                     "first"]),
    (["--tflite", "m.onnx"], ["--tflite 'm.onnx' must end in .tflite"]),
    (["--tflite", "exists"], ["--tflite 'exists' must end in .tflite"]),
    (["--tflite", "no/m.tflite"], ["--tflite 'no/m.tflite'", "does not exist"]),
])
def test_an_export_refuses_bad_input_in_one_line(models, trained, monkeypatch, argv, phrases):
    monkeypatch.chdir(models)
    (models / "exists").mkdir(exist_ok=True)
    before = snapshot(str(models))
    code, out, err = predict("--model", trained["model"], *argv)
    assert_one_line_error(code, err, "predict_covid19.py", *phrases)
    assert out == "" and snapshot(str(models)) == before


def test_an_unwritable_place_for_the_export_is_one_line(trained, tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) == str(tmp_path / "locked") else real_access(path, mode)))
    for flag, path in [("--export", "locked/savedmodel"), ("--tflite", "locked/m.tflite")]:
        code, out, err = predict("--model", trained["model"], flag, str(tmp_path / path))
        assert_one_line_error(code, err, "predict_covid19.py",
                              f"folder '{tmp_path / 'locked'}' is not writable")
    assert os.listdir(tmp_path / "locked") == []


@pytest.mark.parametrize("argv, phrase", [
    ([], "give the images to predict, or --export or --tflite to export the model"),
    (["--export", "e", "--csv", "p.csv"], "--csv needs the images to predict"),
    (["--tflite", "m.tflite", "--labelled"], "--labelled needs the images to predict"),
])
def test_nothing_to_predict_is_a_usage_error(argv, phrase):
    code, out, err = predict("--model", "m.h5", *argv)
    assert_one_line_error(code, err, "predict_covid19.py", phrase, exit_code=2)


def test_a_model_that_is_not_this_projects_exports_nothing(models, trained, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(models)
    before = snapshot(str(models))
    for model in ["text.h5", "no_names.h5", "model.keras", "plain.keras"]:
        code, out, err = predict("--model", model, "--export", str(tmp_path / "savedmodel"),
                                 "--tflite", str(tmp_path / "m.tflite"))
        assert code == 1 and out == "" and len(err.splitlines()) == 1, (model, err)
    assert snapshot(str(models)) == before and os.listdir(tmp_path) == []


def test_a_failed_conversion_is_one_line_and_leaves_nothing(trained, tmp_path, monkeypatch):
    def failing(model, path, check):
        with open(path, "wb") as f:
            f.write(b"half a file")
        os.write(2, b"E0000 converter.cc:1] a C++ line\n")
        raise RuntimeError("the converter failed\nwith details")

    monkeypatch.setattr(predict_covid19, "export_tflite", failing)
    code, out, err = predict("--model", trained["model"], "--export", str(tmp_path / "saved"),
                             "--tflite", str(tmp_path / "m.tflite"))
    assert_one_line_error(code, err, "predict_covid19.py", "cannot export --model",
                          "the converter failed (TensorFlow said: E0000 converter.cc:1] a C++ "
                          "line)")
    assert os.listdir(tmp_path) == []  # neither the SavedModel written first nor half a file


def test_the_exports_check_rejects_nan_and_infinite_input(trained):
    """The graph both exports run (`export.network_with_check`): NaN or infinite pixels give a
    NaN distance, which compared with a threshold is never above it; they are rejected (2)."""
    from covid19xray.export import network_with_check
    from covid19xray.model_file import load_classifier, read_input_check

    model, _ = load_classifier(trained["model"])
    network = network_with_check(model, read_input_check(trained["model"]))
    images = np.full((3, 224, 224, 3), 0.5, np.float32)
    images[0, 10, 10, 0] = np.nan
    images[1, 20, 20, 1] = np.inf
    outputs = network(images, training=False)
    checked = np.asarray(outputs["input_check"]).tolist()
    assert checked[:2] == [2, 2]
    assert not np.isfinite(np.asarray(outputs["input_distance"])[:2]).any()


def test_a_failed_predict_leaves_no_gradcam_folder_it_made(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "junk.png").write_bytes(b"not an image")
    gradcam = tmp_path / "new" / "deeper" / "gradcam"
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"], str(folder),
                                                   "--gradcam", str(gradcam)])
    assert_one_line_error(code, err, "predict_covid19.py", "none of the given images could be "
                          "read", warnings=1)
    assert sorted(os.listdir(tmp_path)) == ["in"]  # new/deeper/gradcam made, then removed
