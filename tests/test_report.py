"""What the trainer reports, and how it splits: intervals, report.json, patients, N classes."""

import argparse
import csv
import json
import os
import re

import keras
import numpy as np
import pytest

import train_covid19
from conftest import make_dataset, run_main, write_image


# ---------------------------------------------------------------------------------------------
# Confidence intervals and report.json
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("successes, trials, low, high", [
    (5, 5, 0.5655, 1.0),       # the tutorial's sensitivity: 5 of 5 covid test images
    (4, 5, 0.3755, 0.9638),
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (9, 10, 0.5958, 0.9821),
])
def test_wilson_interval_matches_known_values(successes, trials, low, high):
    interval = train_covid19.wilson(successes, trials)
    assert interval == pytest.approx([low, high], abs=5e-5)


def test_wilson_interval_of_nothing_is_none():
    assert train_covid19.wilson(0, 0) is None
    assert train_covid19.describe("sensitivity", train_covid19.metric(0, 0)) == (
        "sensitivity: undefined (no images)")
    assert train_covid19.describe("sensitivity", train_covid19.metric(5, 5)) == (
        "sensitivity: 1.0000 (95% CI 0.57-1.00)")


def split_inputs(dataset):
    _, paths, labels = train_covid19.find_images(dataset)
    onehot, names = train_covid19.encode_labels(labels)
    return paths, onehot, names


def test_report_json_says_what_the_run_printed(trained):
    report = json.loads(open(trained["report"]).read())
    out = trained["stdout"]
    assert report["class_names"] == ["covid", "normal"]
    assert report["counts"] == {"train": {"covid": 4, "normal": 4},
                                "test": {"covid": 1, "normal": 1}}
    assert report["split"] == {"kind": "random", "patients_on_both_sides": None}
    _, testP, _, _ = train_covid19.split_dataset(*split_inputs(trained["dataset"]),
                                                 seed=trained["seed"])
    assert report["test_files"] == [os.path.relpath(p, trained["dataset"]) for p in testP]
    assert len(report["test_files"]) == 2
    assert report["augmentation"] == "random rotation up to 15 degrees either way"
    assert report["seed"] == 7 and report["flags"]["epochs"] == 2
    assert report["flags"]["dataset"] == trained["dataset"]
    assert set(report["versions"]) >= {"python", "tensorflow", "keras", "scikit-learn"}
    assert report["versions"]["keras"] == keras.__version__

    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 2
    for name, key, successes, trials in [
            ("acc", "accuracy", np.trace(cm), 2),
            ("sensitivity", "sensitivity", cm[0, 0], 1),
            ("specificity", "specificity", cm[1, 1], 1)]:
        m = report[key]
        assert (m["successes"], m["trials"]) == (successes, trials)
        assert m["ci95"] == pytest.approx(train_covid19.wilson(successes, trials))
        # the printed line is the tutorial's, with the interval after it
        assert (f"{name}: {m['value']:.4f} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"
                in out.splitlines())
    assert report["positive_class"] == "covid"
    assert report["per_class"]["covid"]["sensitivity"] == report["sensitivity"]
    assert report["per_class"]["normal"]["sensitivity"] == report["specificity"]
    assert 0.0 <= report["roc_auc"] <= 1.0
    assert f"ROC AUC: {report['roc_auc']:.4f}" in out


@pytest.mark.parametrize("classes, needed", [(2, 3), (3, 4), (4, 4), (5, 5), (12, 5)])
def test_min_images_per_class_is_what_the_split_needs(tmp_path, classes, needed):
    from sklearn.model_selection import train_test_split

    assert train_covid19.min_images_per_class(classes) == needed
    for per_class, works in [(needed, True), (needed - 1, False)]:
        labels = np.repeat(np.arange(classes), per_class)
        try:
            train_test_split(labels, test_size=0.2, stratify=labels, random_state=0)
            assert works
        except ValueError:
            assert not works


def test_encode_labels_two_classes_as_the_tutorial_and_more():
    onehot, names = train_covid19.encode_labels(np.array(["normal", "covid", "normal"]))
    assert names == ["covid", "normal"]
    assert onehot.tolist() == [[0, 1], [1, 0], [0, 1]]
    onehot, names = train_covid19.encode_labels(np.array(["pneumonia", "covid", "normal"]))
    assert names == ["covid", "normal", "pneumonia"]
    assert onehot.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]


def test_three_classes_train_and_report_one_vs_rest(tmp_path):
    dataset = str(tmp_path / "d")
    make_dataset(dataset, per_class=5, classes=("covid", "normal", "pneumonia"))
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--epochs", "1", "--batch-size", "4", "--weights", "none",
        "--cache-features", "--model", str(out / "m.h5"), "--plot", str(out / "p.png"),
        "--report", str(out / "r.json")])
    assert code == 0, err
    assert "classes ['covid', 'normal', 'pneumonia']: 12 for training, 3 for testing" in stdout
    model = keras.models.load_model(str(out / "m.h5"))
    assert model.output_shape == (None, 3)
    report = json.loads((out / "r.json").read_text())
    assert report["class_names"] == ["covid", "normal", "pneumonia"]
    assert np.array(report["confusion_matrix"]).shape == (3, 3)
    assert "sensitivity" not in report  # the two-class summary only makes sense for two
    cm = np.array(report["confusion_matrix"])
    for c, name in enumerate(report["class_names"]):
        m = report["per_class"][name]
        assert (m["sensitivity"]["successes"], m["sensitivity"]["trials"]) == (cm[c, c], 1)
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        assert (m["specificity"]["successes"], m["specificity"]["trials"]) == (tn, 2)
        assert re.search(rf"^{name}: sensitivity: \d\.\d{{4}} \(95% CI .*\), specificity: ",
                         stdout, re.M)
    assert 0.0 <= report["roc_auc"] <= 1.0


# ---------------------------------------------------------------------------------------------
# Patient-level split
# ---------------------------------------------------------------------------------------------


def make_patient_dataset(root, patients_per_class=8, images_per_patient=2):
    """Classes of several patients with several images each, and the builders' manifest."""
    rows = []
    for c, name in enumerate(["covid", "normal"]):
        for p in range(patients_per_class):
            for i in range(images_per_patient):
                file = f"{name}/{name}-p{p}-{i}.png"
                write_image(os.path.join(root, file), seed=100 * c + 10 * p + i, size=(40, 40))
                rows.append({"file": file, "class": name, "patient_id": f"{name}{p}",
                             "source": "test"})
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "class", "patient_id", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def split_with(dataset, kind, seed=42):
    _, paths, labels = train_covid19.find_images(dataset)
    onehot, names = train_covid19.encode_labels(labels)
    args = argparse.Namespace(split=kind, dataset=dataset, seed=seed)
    return train_covid19.split(args, paths, onehot, names)


def patient(path):
    return os.path.basename(path).rsplit("-", 1)[0]


@pytest.mark.parametrize("seed", [1, 42, 7])
def test_patient_split_keeps_every_patient_on_one_side(tmp_path, seed, capsys):
    dataset = make_patient_dataset(str(tmp_path / "d"))
    (trainP, testP, trainY, testY), info = split_with(dataset, "patient", seed)
    assert not {patient(p) for p in trainP} & {patient(p) for p in testP}
    assert len(trainP) + len(testP) == 32
    # stratified: both classes on both sides, about a fifth of the patients held out
    assert testY.sum(axis=0).min() >= 2 and trainY.sum(axis=0).min() >= 2
    assert len({patient(p) for p in testP}) in (3, 4)  # a fifth of 16 patients
    assert info == {"kind": "patient", "patients_on_both_sides": 0}
    assert "[WARNING]" not in capsys.readouterr().err


def test_random_split_warns_how_many_patients_it_puts_on_both_sides(tmp_path, capsys):
    dataset = make_patient_dataset(str(tmp_path / "d"))
    (trainP, testP, _, _), info = split_with(dataset, "random")
    shared = {patient(p) for p in trainP} & {patient(p) for p in testP}
    assert len(shared) > 0 and info["patients_on_both_sides"] == len(shared)
    assert (f"[WARNING] {len(shared)} patient(s) have images on both sides of the random split"
            in capsys.readouterr().err)


def test_patient_split_run_writes_it_in_the_report(tmp_path):
    dataset = make_patient_dataset(str(tmp_path / "d"))
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--epochs", "1", "--batch-size", "4", "--weights", "none",
        "--cache-features", "--split", "patient", "--model", str(out / "m.h5"),
        "--plot", str(out / "p.png"), "--report", str(out / "r.json")])
    assert code == 0, err
    report = json.loads((out / "r.json").read_text())
    assert report["split"] == {"kind": "patient", "patients_on_both_sides": 0}
    assert sum(report["counts"]["test"].values()) + sum(report["counts"]["train"].values()) == 32
