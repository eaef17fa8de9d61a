"""covid19xray.report: proportions with their intervals, the metrics of a labelled test."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covid19xray.report import (
    classification_metrics,
    metric,
    metric_line,
    wilson,
)


@pytest.mark.parametrize("successes, trials, low, high", [
    (5, 5, 0.5655, 1.0),       # the tutorial's sensitivity: 5 of 5 covid test images
    (4, 5, 0.3755, 0.9638),
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (9, 10, 0.5958, 0.9821),
])
def test_wilson_interval_matches_known_values(successes, trials, low, high):
    assert wilson(successes, trials) == pytest.approx([low, high], abs=5e-5)


def test_wilson_interval_of_nothing_is_none():
    assert wilson(0, 0) is None
    assert metric_line("sensitivity", metric(0, 0)) == "sensitivity: undefined (no images)"
    assert metric_line("sensitivity", metric(5, 5)) == "sensitivity: 1.0000 (95% CI 0.57-1.00)"


def test_classification_metrics_count_each_class_against_the_rest():
    # 3 classes; true labels and predictions chosen so that every count differs
    true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 2])
    probabilities = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    results = classification_metrics(true, probabilities, ["a", "b", "c"])
    assert results["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    assert (results["accuracy"]["successes"], results["accuracy"]["trials"]) == (7, 10)
    counts = {name: {key: (m["successes"], m["trials"]) for key, m in value.items()
                     if key != "auc"}
              for name, value in results["per_class"].items()}
    assert counts == {"a": {"sensitivity": (2, 4), "specificity": (5, 6), "ppv": (2, 3)},
                      "b": {"sensitivity": (2, 3), "specificity": (6, 7), "ppv": (2, 3)},
                      "c": {"sensitivity": (3, 3), "specificity": (6, 7), "ppv": (3, 4)}}
    # each class against the rest, ranked by its own probability; the macro AUC their mean
    for c, name in enumerate("abc"):
        assert results["per_class"][name]["auc"] == pytest.approx(
            roc_auc_score(true == c, probabilities[:, c]))
    assert results["macro_auc"] == pytest.approx(
        np.mean([results["per_class"][name]["auc"] for name in "abc"]))
    assert results["roc_auc"] == pytest.approx(results["macro_auc"])
    assert "sensitivity" not in results


def test_two_classes_name_covid_the_positive_class():
    true = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([[.9, .1], [.6, .4], [.3, .7], [.2, .8], [.55, .45]])
    results = classification_metrics(true, probabilities, ["covid", "normal"])
    assert results["positive_class"] == "covid"
    assert (results["sensitivity"]["successes"], results["sensitivity"]["trials"]) == (2, 3)
    assert (results["specificity"]["successes"], results["specificity"]["trials"]) == (1, 2)
    assert results["roc_auc"] == pytest.approx(roc_auc_score(true == 0, probabilities[:, 0]))


def test_a_report_on_one_class_says_undefined_and_writes_strict_json(trained, tmp_path):
    import json
    import warnings

    import predict_covid19
    from helpers import run_main, small_dataset

    folder = small_dataset(tmp_path / "one", {"covid": 4}, size=(40, 36))
    report = tmp_path / "r.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning would reach the terminal
        code, stdout, stderr = run_main(predict_covid19.main, [
            "--model", trained["model"], folder, "--labelled", "--report", str(report),
            "--classify-rejected"])
    assert code == 0, stderr
    assert "ROC AUC: undefined (one class only)" in stdout and "nan" not in stdout.lower()
    assert "Warning" not in stderr

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    result = json.loads(report.read_text(), parse_constant=refuse)
    assert result["roc_auc"] is None and result["per_class"]["covid"]["auc"] is None
