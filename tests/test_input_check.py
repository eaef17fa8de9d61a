"""The input check: fitted by train_covid19.py, saved in the model file, applied by predict.

With the random weights the tests use, the check still knows its own training images (each is
its own nearest neighbour: distance 0) and tells a flat grey square or noise from them; how well
it does on real kinds of input is measured with the ImageNet weights (BENCHMARKS.md).
"""

import csv
import json
import os

import cv2
import h5py
import keras
import numpy as np
import pytest

import predict_covid19
from covid19xray.images import list_images
from covid19xray.input_check import REJECT_FACTOR, UNLIKE_FACTOR, fit_input_check
from covid19xray.model_file import (
    CLASS_NAMES_ATTR,
    INPUT_CHECK_GROUP,
    load_classifier,
    read_input_check,
    save_model,
)
from helpers import assert_one_line_error, readable_image, run_main


def predict(*argv):
    return run_main(predict_covid19.main, [str(arg) for arg in argv])


def training_images(trained):
    """The images the trained fixture's model was trained on: the readable ones of its dataset
    that are not in its test split."""
    report = json.loads(open(trained["report"]).read())
    test = {os.path.join(trained["dataset"], name) for name in report["test_files"]}
    return [path for path in list_images(trained["dataset"])
            if readable_image(path) and path not in test]




def test_flat_and_noise_are_rejected_and_the_training_images_are_ok(trained, tmp_path,
                                                                    odd_inputs):
    training = training_images(trained)
    assert len(training) == 8
    csv_path, cams = tmp_path / "p.csv", tmp_path / "cams"
    code, out, err = predict("--model", trained["model"], *training, *odd_inputs, "--csv",
                             csv_path, "--gradcam", cams)
    assert code == 0, err
    lines = out.strip().splitlines()
    for line in lines[:8]:  # each is its own nearest training image: distance 0, but for the
        # rounding of a forward pass in other batches
        assert "[input ok: distance " in line and line.endswith(f" <= {UNLIKE_FACTOR:g}]"), line
        assert float(line.split("distance ")[1].split(" ")[0]) <= 0.05, line
    for line, path in zip(lines[8:10], odd_inputs):
        assert line.startswith(f"{path}: not classified [input rejected: distance ")
        distance = float(line.split("distance ")[1].split(" ")[0])
        assert distance > REJECT_FACTOR
        assert line.endswith(f" > {REJECT_FACTOR:g}: looks like no frontal chest X-ray the "
                             "model knows]")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["input_check"] for row in rows] == ["ok"] * 8 + ["rejected"] * 2
    for row in rows[8:]:  # a rejected row has no class and no probabilities
        assert row["predicted"] == row["p_covid"] == row["p_normal"] == ""
        assert float(row["input_distance"]) > REJECT_FACTOR
    assert all(row["predicted"] in ("covid", "normal") for row in rows[:8])
    # no overlay for a rejected image
    assert len(os.listdir(cams)) == 8
    assert not any(name.startswith(("flat", "noise")) for name in os.listdir(cams))


def test_classify_rejected_classifies_them_and_still_says_rejected(trained, tmp_path,
                                                                  odd_inputs):
    csv_path = tmp_path / "p.csv"
    code, out, err = predict("--model", trained["model"], *odd_inputs, "--csv", csv_path,
                             "--classify-rejected")
    assert code == 0, err
    model, _ = load_classifier(trained["model"])
    expected = model.predict(np.stack([cv2.cvtColor(cv2.resize(cv2.imread(path), (224, 224)),
                                                    cv2.COLOR_BGR2RGB) for path in odd_inputs])
                             .astype(np.float32) / 255, verbose=0)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["input_check"] for row in rows] == ["rejected", "rejected"]
    np.testing.assert_allclose([[float(row["p_covid"]), float(row["p_normal"])] for row in rows],
                               expected, atol=1e-5)
    for line in out.splitlines()[:2]:
        assert "(covid " in line and "[input rejected: distance " in line


def test_a_model_without_a_check_predicts_as_before_with_one_line(trained, tmp_path, odd_inputs):
    """A model file trained before the check existed: one line says so, every image is
    classified, and the CSV's check cells are empty."""
    model = keras.models.load_model(trained["model"], compile=False)
    model.save(tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        f.attrs[CLASS_NAMES_ATTR] = '["covid", "normal"]'
    code, out, err = predict("--model", tmp_path / "old.h5", *odd_inputs, "--csv",
                             tmp_path / "p.csv")
    assert code == 0, err
    assert err.splitlines() == [
        f"[WARNING] --model {tmp_path / 'old.h5'} carries no input check (it was trained "
        "before train_covid19.py fitted one): every image is classified unchecked; retrain it "
        "to have its inputs checked"]
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == f"[INFO] wrote {tmp_path / 'p.csv'}"
    assert all("(covid " in line and "[input" not in line for line in lines[:2])
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["input_check"], row["input_distance"]) for row in rows] == [("", "")] * 2
    assert all(row["predicted"] for row in rows)


def test_the_labelled_report_scores_every_image_and_counts_the_rejected(trained, tmp_path,
                                                                        odd_inputs):
    training = training_images(trained)
    folder = tmp_path / "labelled"
    for path in training:
        label = os.path.basename(os.path.dirname(path))
        os.makedirs(folder / label, exist_ok=True)
        with open(path, "rb") as source:
            (folder / label / os.path.basename(path)).write_bytes(source.read())
    for path in odd_inputs:  # two inputs the check rejects, labelled normal
        with open(path, "rb") as source:
            (folder / "normal" / os.path.basename(path)).write_bytes(source.read())
    code, out, err = predict("--model", trained["model"], folder, "--labelled", "--report",
                             tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"]["trials"] == 10  # every image scored, the rejected ones too
    checked = report["input_check"]
    assert checked["counts"] == {"ok": 8, "unlike_training": 0, "rejected": 2}
    covid = sum(os.path.basename(os.path.dirname(p)) == "covid" for p in training)
    assert checked["by_class"] == {
        "covid": {"ok": covid, "unlike_training": 0, "rejected": 0},
        "normal": {"ok": 8 - covid, "unlike_training": 0, "rejected": 2}}
    assert checked["accepted"] == 8 and checked["on_accepted"]["accuracy"]["trials"] == 8
    assert "input check on these 10 images: 8 ok, 0 unlike the training images, 2 rejected" in out
    assert f"  normal ({10 - covid}): {8 - covid} ok, 0 unlike the training images, 2 rejected" \
        in out
    assert "on the 8 images it accepted (ok or unlike the training images):" in out


def test_h5_and_keras_files_carry_the_same_check(trained, tmp_path):
    check = read_input_check(trained["model"])
    assert check is not None and check.fitted_on == 8 and check.reference.shape[0] == 8
    model, class_names = load_classifier(trained["model"])
    save_model(model, str(tmp_path / "m.keras"), class_names, check)
    again = read_input_check(str(tmp_path / "m.keras"))
    np.testing.assert_array_equal(again.reference, check.reference)
    assert (again.scale, again.unlike_factor, again.reject_factor, again.fitted_on) == (
        check.scale, check.unlike_factor, check.reject_factor, check.fitted_on)


def narrower_reference(group):
    del group["reference"]
    group.create_dataset("reference", data=np.zeros((8, 10), np.float32))


@pytest.mark.parametrize("damage, phrase", [
    (lambda group: group.attrs.__setitem__("metadata", "{not json"),
     "its metadata is not what this project writes"),
    (lambda group: group.attrs.__setitem__("metadata", group.attrs["metadata"].decode().replace(
        "block5_pool", "block9_pool")), "it describes images on other layers"),
    (lambda group: group["reference"].__setitem__((0, 0), np.nan),
     "its reference is an array of shape"),
    (narrower_reference, "its input check describes images with 10 numbers, its network with"),
])
def test_a_damaged_check_is_one_line(trained, tmp_path, odd_inputs, damage, phrase):
    path = tmp_path / "m.h5"
    path.write_bytes(open(trained["model"], "rb").read())
    with h5py.File(path, "a") as f:
        damage(f[INPUT_CHECK_GROUP])
    code, _, err = predict("--model", path, *odd_inputs)
    assert_one_line_error(code, err, "predict_covid19.py", f"--model '{path}': its input check ",
                          phrase)


def test_the_distance_is_to_the_nearest_training_image_in_units_of_their_spacing():
    # training images 1 apart on a line: each one's nearest other is 1 away, so the unit is 1
    reference = np.zeros((5, 3), np.float32)
    reference[:, 0] = np.arange(5)
    check = fit_input_check(reference)
    assert check.scale == pytest.approx(1.0) and check.fitted_on == 5
    queries = np.array([[2, 0, 0], [4, 1.3, 0], [4, 1.5, 0], [-1.8, 0, 0]], np.float32)
    distances = check.distances(queries)
    np.testing.assert_allclose(distances, [0, 1.3, 1.5, 1.8], atol=1e-6)
    assert check.outcomes(distances) == ["ok", "ok", "unlike_training", "rejected"]
