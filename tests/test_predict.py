"""predict_covid19.py: the saved model applied to new X-rays, with Grad-CAM overlays."""

import csv
import os
import re
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

import predict_covid19
from conftest import ROOT, run_main, write_image
from covid19_common import list_images, load_xray, scale_pixels

LINE = re.compile(r"^(?P<path>.+): (?P<label>\w+) \(covid (?P<covid>\d\.\d{4}), "
                  r"normal (?P<normal>\d\.\d{4})\)$")


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
        "--model", trained["model"], covid, normal_file, "--csv", str(csv_path)])
    assert code == 0, err

    readable = [p for p in list_images(covid) if load_xray(p) is not None] + [normal_file]
    assert len(readable) == 6
    expected = expected_probabilities(trained["model"], readable)
    lines = out.strip().splitlines()
    assert lines[-1] == f"[INFO] wrote {csv_path}"
    parsed = [LINE.match(line) for line in lines[:-1]]
    assert all(parsed), lines
    assert [m["path"] for m in parsed] == readable  # folder contents sorted, then the file
    for m, row in zip(parsed, expected):
        assert float(m["covid"]) == pytest.approx(row[0], abs=5e-5)
        assert float(m["normal"]) == pytest.approx(row[1], abs=5e-5)
        assert m["label"] == ["covid", "normal"][int(row.argmax())]

    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "predicted", "p_covid", "p_normal"]
    assert [r[0] for r in rows[1:]] == readable
    np.testing.assert_allclose(np.array([r[2:] for r in rows[1:]], dtype=float), expected,
                               atol=1e-6)
    # the three undecodable files in covid/ are reported and skipped; .txt etc. are ignored
    assert [line.split(": ")[0] for line in err.splitlines()] == [
        f"[WARNING] skipping {os.path.join(covid, name)}"
        for name in ["empty.jpg", "text.jpg", "truncated.png"]]


def test_gradcam_writes_an_overlay_of_each_images_own_size(trained, tmp_path):
    images = [write_image(str(tmp_path / "in" / "wide.jpg"), seed=1, size=(180, 320)),
              write_image(str(tmp_path / "in" / "tall.png"), seed=2, size=(300, 150), gray=True),
              write_image(str(tmp_path / "in" / "sub" / "wide.jpg"), seed=3, size=(100, 90))]
    out = tmp_path / "gradcam"
    code, stdout, err = run_main(predict_covid19.main, [
        "--model", trained["model"], str(tmp_path / "in"), "--gradcam", str(out)])
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == f"[INFO] wrote 3 Grad-CAM overlay(s) to {out}"
    # listed sorted: sub/wide.jpg, tall.png, wide.jpg; the second wide.jpg gets its own name
    assert sorted(os.listdir(out)) == ["tall_gradcam.png", "wide_2_gradcam.png",
                                       "wide_gradcam.png"]
    for source, name in [(images[2], "wide_gradcam.png"), (images[1], "tall_gradcam.png"),
                         (images[0], "wide_2_gradcam.png")]:
        overlay = cv2.imread(str(out / name))
        original = cv2.imread(source, cv2.IMREAD_COLOR)
        assert overlay.shape == original.shape
        assert not np.array_equal(overlay, original)  # the heatmap is drawn over it


def test_gradcam_heatmap_of_a_head_that_uses_the_features(trained, tmp_path):
    model = keras.models.load_model(trained["model"])
    # A head whose covid score rises with every feature, whatever VGG16's random weights are:
    # non-negative hidden weights, and the covid output +1 / normal output -1 on each unit.
    dense, out = model.get_layer(index=-3), model.get_layer(index=-1)
    dense.set_weights([np.abs(dense.get_weights()[0]), np.zeros(64)])
    out.set_weights([np.stack([np.ones(64), -np.ones(64)], axis=1), np.zeros(2)])
    image = load_xray(write_image(str(tmp_path / "x.png"), seed=5, size=(224, 224)))
    assert predict_covid19.last_conv_layer(model).name == "block5_conv3"
    grad_model = predict_covid19.gradcam_model(model)
    heatmap = predict_covid19.grad_cam(grad_model, image, class_index=0)
    assert heatmap.shape == (14, 14)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    # for the other class every channel weighs negatively: no evidence anywhere
    assert predict_covid19.grad_cam(grad_model, image, class_index=1).max() == 0


def test_command_line_run_in_a_subprocess(trained, tmp_path):
    image = write_image(str(tmp_path / "x.jpg"), seed=9, size=(120, 140))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "predict_covid19.py"), "--model", trained["model"],
         image], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    m = LINE.match(result.stdout.strip())
    assert m and m["path"] == image
    row = expected_probabilities(trained["model"], [image])[0]
    assert float(m["covid"]) == pytest.approx(row[0], abs=5e-5)
