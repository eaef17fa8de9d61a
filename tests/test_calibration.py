"""Calibration beside discrimination, on generated data where the answer is known: a model
whose logits are twice what they should be, one shifted, and their recalibration."""

import csv
import json

import numpy as np
import pytest

import predict_covid19
import recalibrate_covid19
from covid19xray.calibration import (
    ECE_BINS,
    Recalibration,
    calibration,
    expected_calibration_error,
    fit_recalibration,
)
from covid19xray.model_file import read_recalibration
from helpers import assert_one_line_error, run_main, small_dataset


def outcomes(n=4000, seed=0):
    """True logits and outcomes drawn from them: a perfectly calibrated model's ground."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x))).astype(int)
    return x, y


def two_class(probability_of_positive):
    """(n, 2) probabilities with the positive class first, as the reports order covid."""
    p = np.asarray(probability_of_positive)
    return np.column_stack([p, 1 - p])


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_logits_twice_too_large_give_a_slope_near_one_half():
    x, y = outcomes()
    result = calibration(1 - y, two_class(sigmoid(2 * x)), ["covid", "normal"])
    slope, intercept = result["slope"], result["intercept"]
    assert slope["value"] == pytest.approx(0.5, abs=0.05)
    assert slope["ci95"][0] < slope["value"] < slope["ci95"][1] < 1
    assert abs(intercept["value"]) < 0.1  # not shifted, only too sure


def test_a_shifted_model_gets_the_matching_intercept():
    x, y = outcomes(seed=1)
    result = calibration(1 - y, two_class(sigmoid(x + 1)), ["covid", "normal"])
    assert result["intercept"]["value"] == pytest.approx(-1, abs=0.12)
    assert result["slope"]["value"] == pytest.approx(1, abs=0.1)
    # a calibrated model, for comparison: 0 and 1 inside their intervals
    calibrated = calibration(1 - y, two_class(sigmoid(x)), ["covid", "normal"])
    low, high = calibrated["slope"]["ci95"]
    assert low < 1 < high and abs(calibrated["intercept"]["value"]) < 0.1


def test_the_brier_score_and_the_base_rate_and_every_case_in_a_bin():
    x, y = outcomes(n=1000, seed=2)
    p = two_class(sigmoid(x))
    result = calibration(1 - y, p, ["covid", "normal"])
    # two classes: the positive (covid, y = 1) class's Brier score
    assert result["brier"]["value"] == pytest.approx(((p[:, 0] - y) ** 2).mean())
    rate = y.mean()
    assert result["base_rate_brier"]["value"] == pytest.approx(rate * (1 - rate))
    assert result["brier"]["value"] < result["base_rate_brier"]["value"]
    ece, bins = expected_calibration_error(y == 1, p[:, 0])  # covid, class 0, where y is 1
    assert len(bins) == ECE_BINS and sum(row[1] for row in bins) == 1000
    assert ece == pytest.approx(result["ece"]) and ece < 0.05
    # 1.0 falls in the last bin, 0.0 in the first
    assert [row[1] for row in expected_calibration_error([1, 0], [1.0, 0.0])[1]] == (
        [1] + [0] * 8 + [1])


def test_recalibration_fits_the_simplest_update_and_undoes_the_overconfidence():
    x, y = outcomes(seed=3)
    true_classes = 1 - y
    sure = two_class(sigmoid(2 * x))
    update = fit_recalibration(true_classes, sure, ["covid", "normal"])
    assert update.kind == "intercept and slope" and update.slope == pytest.approx(0.5, abs=0.05)
    fixed = update.apply(sure)
    assert np.allclose(fixed.sum(axis=1), 1, atol=1e-6)
    before = calibration(true_classes, sure, ["covid", "normal"])
    after = calibration(true_classes, fixed, ["covid", "normal"])
    assert after["brier"]["value"] < before["brier"]["value"]
    assert after["slope"]["value"] == pytest.approx(1, abs=0.05)
    assert Recalibration.from_json(update.to_json()) == update


def test_a_shift_alone_lets_the_slope_in_only_as_often_as_akaikes_criterion_allows():
    """A model off by a shift only: the intercept undoes it, and the slope (truly 1) enters
    only when chance makes it lower the AIC, in 15.7% of samples (chi-squared, one degree of
    freedom, above 2); a 5% test would let it in 5% of the time, fitting both always 100%."""
    kinds = []
    for seed in range(200):
        x, y = outcomes(n=400, seed=100 + seed)
        shifted = fit_recalibration(1 - y, two_class(sigmoid(x + 1)), ["covid", "normal"])
        if shifted.kind == "intercept":
            assert shifted.intercept == pytest.approx(-1, abs=0.4)
        else:
            assert shifted.slope == pytest.approx(1, abs=0.4)
        kinds.append(shifted.kind)
    assert 0.10 < kinds.count("intercept and slope") / len(kinds) < 0.22


def test_three_classes_get_a_temperature_and_offsets():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.5, (3000, 3))
    truth = np.array([rng.choice(3, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    sure = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    update = fit_recalibration(truth, sure, ["covid", "normal", "pneumonia"])
    assert update.kind == "temperature and offsets"
    assert update.temperature == pytest.approx(2, abs=0.15)
    result = calibration(truth, update.apply(sure), ["covid", "normal", "pneumonia"])
    assert set(result["per_class"]) == {"covid", "normal", "pneumonia"}
    assert "slope" not in result  # per class only, with more than two
    for m in result["per_class"].values():
        assert m["slope"]["value"] == pytest.approx(1, abs=0.1)


# ---------------------------------------------------------------------------------------------
# recalibrate_covid19.py and predict_covid19.py
# ---------------------------------------------------------------------------------------------


def csv_probabilities(path):
    with open(path, newline="") as f:
        return np.array([[float(row["p_covid"]), float(row["p_normal"])]
                         for row in csv.DictReader(f)])


def test_a_recalibrated_model_is_applied_by_predict(trained, tmp_path):
    site = small_dataset(tmp_path / "site", {"covid": 12, "normal": 12}, size=(40, 36))
    output = tmp_path / "site.h5"
    code, out, err = run_main(recalibrate_covid19.main, ["--model", trained["model"],
                                                         "--labelled", site,
                                                         "--output", str(output)])
    assert code == 0, err
    assert "fewer than 100 films of a class (covid 12, normal 12)" in err
    update = read_recalibration(str(output))
    assert update.fitted_on == 24 and update.kind in ("intercept", "intercept and slope")
    assert read_recalibration(trained["model"]) is None  # the original is left as it was

    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    for model, csv_path in ((trained["model"], before), (str(output), after)):
        code, out, err = run_main(predict_covid19.main, ["--model", model, site, "--csv",
                                                         str(csv_path),
                                                         "--classify-rejected"])
        assert code == 0, err
    assert "probabilities recalibrated on 24 films of" in out
    np.testing.assert_allclose(csv_probabilities(after),
                               update.apply(csv_probabilities(before)), atol=2e-6)

    # plain Keras loading the recalibrated .h5 in a fresh process, with the original
    # probabilities: the export test (tests/test_predict.py), in its process of plain TensorFlow
    assert json.loads(update.to_json())["version"] == 1


def test_a_folder_too_small_to_recalibrate_on_is_one_line(trained, tmp_path):
    site = small_dataset(tmp_path / "site", {"covid": 12, "normal": 4})
    code, _, err = run_main(recalibrate_covid19.main, ["--model", trained["model"],
                                                       "--labelled", site, "--output",
                                                       str(tmp_path / "o.h5")])
    assert_one_line_error(code, err, "recalibrate_covid19.py",
                          "too few films to fit a recalibration (normal 4): it needs at least "
                          "5 of every class")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("update", [
    Recalibration("intercept and slope", intercept=-1.5, slope=0.5, positive=0),
    Recalibration("intercept and slope", intercept=0.7, slope=1.3, positive=1),
    Recalibration("temperature and offsets", temperature=2.0, offsets=(0.0, -0.4, 0.9)),
])
def test_the_exports_graph_applies_the_update_as_predict_does(update):
    """--export and --tflite build `with_recalibration` into the graph they write: its
    probabilities are those predict gives with `Recalibration.apply`."""
    import keras

    from covid19xray.export import with_recalibration

    classes = 3 if update.offsets else 2
    inputs = keras.Input((4,))
    model = keras.Model([inputs], keras.layers.Dense(classes, activation="softmax")(inputs))
    x = [np.random.default_rng(5).normal(0, 2, (50, 4)).astype(np.float32)]
    original = np.asarray(model(x))
    exported = np.asarray(with_recalibration(model, update)(x))
    np.testing.assert_allclose(exported, update.apply(original), atol=1e-5)
    assert np.abs(exported - original).max() > 0.05  # the update changed them


def test_recalibrating_a_model_into_itself_is_refused_by_any_path(trained, tmp_path):
    import hashlib
    import os
    import shutil

    model = shutil.copy(trained["model"], str(tmp_path / "m.h5"))
    os.symlink(model, tmp_path / "link.h5")
    os.link(model, tmp_path / "hard.h5")
    digest = hashlib.sha256(open(model, "rb").read()).hexdigest()
    site = str(tmp_path / "site")  # never read: refused before any work
    for output in [model, str(tmp_path / "." / "m.h5"), str(tmp_path / "link.h5"),
                   str(tmp_path / "hard.h5")]:
        code, _, err = run_main(recalibrate_covid19.main, ["--model", str(model), "--labelled",
                                                           site, "--output", output])
        assert_one_line_error(code, err, "recalibrate_covid19.py", "is --model", "itself")
    assert hashlib.sha256(open(model, "rb").read()).hexdigest() == digest
    assert read_recalibration(str(model)) is None
